"""Run independent small trainings on all cores: one process per core, one thread per process.

The toy networks are too small for intra-op threading to pay off, so processes scale better.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import torch
from tqdm.auto import tqdm

from diffnorm.progress import POSITION_ENV


def _worker_init(counter: Any, lock: Any) -> None:
    """One thread per worker, and its own terminal line for progress bars (line 0 is the overall bar).
    Workers ignore Ctrl-C: the main process handles it once and ends them (no trace per worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    with counter.get_lock():
        counter.value += 1
        os.environ[POSITION_ENV] = str(counter.value)
    tqdm.set_lock(lock)


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """While active, SIGTERM in the main process raises ``KeyboardInterrupt`` as Ctrl-C does, so a
    ``kill`` of the job ends its workers too instead of leaving them training."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def map_trials(fn: Callable[..., Any], jobs: Sequence[dict], workers: int, desc: str) -> list[Any]:
    """``[fn(**job) for job in jobs]``, spread over ``workers`` processes, in order, with a progress bar.

    Ctrl-C or SIGTERM to the main process ends the workers and raises ``KeyboardInterrupt``."""
    if workers <= 1 or len(jobs) <= 1:
        return [fn(**job) for job in tqdm(jobs, desc=desc)]
    context = get_context("spawn")
    counter, lock = context.Value("i", 0), context.RLock()
    tqdm.set_lock(lock)
    with _sigterm_as_ctrl_c(), ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context,
                                                   initializer=_worker_init, initargs=(counter, lock)) as pool:
        try:
            futures = [pool.submit(fn, **job) for job in jobs]
            for future in tqdm(futures, desc=desc):
                future.result()
        except KeyboardInterrupt:
            # Leaving the block would wait for every running trial; end the workers instead. The
            # executor keeps its processes in a private mapping: there is no public terminate().
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        return [f.result() for f in futures]
