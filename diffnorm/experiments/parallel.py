"""Run independent small trainings on all cores: one process per core, one thread per process.

The toy networks are too small for intra-op threading to pay off, so processes scale better.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import torch
from tqdm.auto import tqdm

from diffnorm.progress import POSITION_ENV

# Hydra's default job-logging format, so worker lines read like the main process's
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


# Set by the main process when the job stops: a trial the pool had already handed to a worker's queue
# (the executor keeps one ready per worker, beyond cancel_futures' reach) then returns without starting.
_STOPPING: Any = None


class TrialSkipped(RuntimeError):
    """A queued trial not started because the job was stopping."""


def _run_unless_stopping(fn: Callable[..., Any], **job: Any) -> Any:
    if _STOPPING is not None and _STOPPING.is_set():
        raise TrialSkipped("the job is stopping")
    return fn(**job)


def _worker_init(counter: Any, lock: Any, level: int, log_files: list[str], stopping: Any = None) -> None:
    """One thread per worker, and its own terminal line for progress bars (line 0 is the overall bar). A
    spawned worker starts without logging: it logs at the main process's level to stdout and appends
    to the main process's log files (the job's ``<job>.log``)."""
    global _STOPPING
    _STOPPING = stopping
    # Ctrl-C reaches every process of the job: a worker inside a training checkpoints and stops (the
    # training loop's own handler), any other work stops at once (KeyboardInterrupt, carried back to the
    # main process with the trial's result, which reports the interruption once).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    torch.set_num_threads(1)
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stdout)
    for path in log_files:
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.getLogger().addHandler(handler)
    with counter.get_lock():
        counter.value += 1
        os.environ[POSITION_ENV] = str(counter.value)
    tqdm.set_lock(lock)


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """While active, SIGTERM in the main process raises ``KeyboardInterrupt("SIGTERM")`` as Ctrl-C does,
    so a ``kill`` of the job ends its workers too instead of leaving them training. A handler someone else
    installed (a cluster launcher's, e.g. submitit's) is left in place."""
    if (threading.current_thread() is not threading.main_thread()  # signals reach the main thread only
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# How long stopped workers get to finish the step they are on and write its checkpoint.
GRACE_S = 60.0


def _stop_workers(pool: ProcessPoolExecutor, stopping: Any, forward: bool) -> None:
    """Stop every trial in flight the way Ctrl-C stops one training: each worker gets one SIGINT (``forward``:
    sent here; else Ctrl-C's own), on which a training checkpoints the step it is on and returns and other
    work, e.g. an evaluation, stops at once; queued trials are not started. Workers still busy after ``GRACE_S`` seconds, or when a
    second Ctrl-C arrives, are ended at once. The executor keeps its processes in a private mapping:
    there is no public way to signal them."""
    stopping.set()  # first: a worker between trials then starts no queued one
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    # Ctrl-C in a terminal has already reached every worker (it goes to the whole process group); a signal
    # sent to the main process alone (SIGTERM from a scheduler) is passed on as SIGINT. Never twice: a
    # second SIGINT would stop a training while it writes its final checkpoint.
    for process in processes if forward else ():
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGINT)
    deadline = time.monotonic() + GRACE_S
    try:
        for process in processes:  # a worker whose trial has returned exits: the pool is shut down
            process.join(timeout=max(0.0, deadline - time.monotonic()))
    except KeyboardInterrupt:
        pass
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()


def map_trials(fn: Callable[..., Any], jobs: Sequence[dict], workers: int, desc: str) -> list[Any]:
    """``[fn(**job) for job in jobs]``, spread over ``workers`` processes, in order, with a progress bar.

    Ctrl-C or SIGTERM to the main process ends the workers and raises ``KeyboardInterrupt``."""
    if workers <= 1 or len(jobs) <= 1:
        return [fn(**job) for job in tqdm(jobs, desc=desc)]
    context = get_context("spawn")
    counter, lock = context.Value("i", 0), context.RLock()
    tqdm.set_lock(lock)
    root = logging.getLogger()
    log_files = [h.baseFilename for h in root.handlers if isinstance(h, logging.FileHandler)]
    stopping = context.Event()
    settings = (counter, lock, root.getEffectiveLevel(), log_files, stopping)
    with _sigterm_as_ctrl_c(), ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context,
                                                   initializer=_worker_init, initargs=settings) as pool:
        try:
            futures = [pool.submit(_run_unless_stopping, fn, **job) for job in jobs]
            for future in tqdm(futures, desc=desc):
                future.result()
        except KeyboardInterrupt as err:
            _stop_workers(pool, stopping, forward=str(err) == "SIGTERM")
            raise
        return [f.result() for f in futures]
