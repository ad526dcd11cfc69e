"""Run independent small trainings on all cores: one process per core, one thread per process.

The toy networks are too small for intra-op threading to pay off, so processes scale better.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import torch
from tqdm.auto import tqdm


def _single_thread() -> None:
    torch.set_num_threads(1)


def map_trials(fn: Callable[..., Any], jobs: Sequence[dict], workers: int, desc: str) -> list[Any]:
    """``[fn(**job) for job in jobs]``, spread over ``workers`` processes, in order, with a progress bar."""
    if workers <= 1 or len(jobs) <= 1:
        return [fn(**job) for job in tqdm(jobs, desc=desc)]
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn"),
                             initializer=_single_thread) as pool:
        futures = [pool.submit(fn, **job) for job in jobs]
        for _ in tqdm(futures, desc=desc):
            _.result()
        return [f.result() for f in futures]
