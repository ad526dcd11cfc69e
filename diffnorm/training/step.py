"""The gradient part of one training step, shared by the loop, DDP ranks and the benchmark.

Data parallelism of both kinds works the same way here: the randomness of the whole (global) batch is
drawn once from the step's generator (``GaussianDiffusion.draw``) and every worker takes its rows, so N
workers compute exactly the single-process loss and gradient, up to the order of float additions.

- **DDP ranks** (``torchrun``): rank r takes the r-th contiguous block of the global batch; the
  DistributedDataParallel wrapper averages gradients across ranks.
- **CPU shards** (``train.shards``): one process splits its minibatch into shards computed on as many
  Python threads, each with one intra-op thread, and sums their gradients in a fixed order (so runs stay
  bit-reproducible). Why: the U-Net's convolutions are small, and torch's intra-op threading splits each
  one across cores with a barrier per op; on shared cores every barrier waits for a descheduled thread.
  Independent shards need no barrier at all (``scripts/bench.py`` measures both).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import nn

from diffnorm.diffusion.gaussian import GaussianDiffusion
from diffnorm.errors import require
from diffnorm.training.distributed import DistInfo, dist_info

log = logging.getLogger(__name__)


def collate(items: Sequence[dict[str, Any]], device: torch.device
            ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Dataset items {"trajectory": [H, D], "conditions": {t: [obs_dim]}} -> x0 [B, H, D], {t: [B, obs_dim]}.

    One ``np.stack`` per field and one host-to-device copy each (not one tensor per item).
    """
    x0 = torch.from_numpy(np.stack([np.asarray(it["trajectory"], dtype=np.float32) for it in items]))
    conditions = {int(t): torch.from_numpy(np.stack([np.asarray(it["conditions"][t], dtype=np.float32)
                                                     for it in items])).to(device)
                  for t in items[0]["conditions"]}
    return x0.to(device), conditions


def _block(n: int, parts: int, k: int) -> slice:
    """The k-th of ``parts`` contiguous, near-equal blocks of range(n)."""
    return slice(k * n // parts, (k + 1) * n // parts)


def has_batch_statistics(model: nn.Module) -> bool:
    """True if a layer normalizes over the batch: splitting the batch would change what it computes."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class GradientStep:
    """Accumulates into ``.grad`` the gradient of (loss of a global minibatch) / ``accum``.

    ``denoiser`` is what the loss calls (the model, or its compiled/DDP-wrapped form); ``autocast`` is
    entered around the forward pass. On a DDP rank only this rank's block of the batch is collated; with
    ``shards > 1`` (CPU, one process) the block is split further across threads.
    """

    def __init__(self, diffusion: GaussianDiffusion, accum: int, device: torch.device,
                 denoiser: nn.Module | None = None, autocast: contextlib.AbstractContextManager | None = None,
                 shards: int = 1, dist: DistInfo | None = None):
        self.diffusion, self.accum, self.device = diffusion, accum, device
        self.denoiser = denoiser if denoiser is not None else diffusion.model
        self.autocast = autocast if autocast is not None else contextlib.nullcontext()
        self.dist = dist if dist is not None else dist_info()
        require(shards >= 1, f"train.shards={shards} must be positive")
        if shards > 1:
            require(device.type == "cpu", f"train.shards={shards} is a CPU option (device is {device})")
            require(self.dist.world_size == 1, f"train.shards={shards} cannot be combined with DDP "
                    f"(world size {self.dist.world_size}); use one thread per rank instead")
            require(not has_batch_statistics(diffusion.model),
                    f"train.shards={shards} would change what a batch-statistics norm computes; use 1")
        self.shards = shards
        self.params = [p for p in diffusion.parameters() if p.requires_grad]
        self._pool = ThreadPoolExecutor(shards, thread_name_prefix="shard") if shards > 1 else None

    def close(self) -> None:
        """Stop the shard threads."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __call__(self, dataset: Sequence[dict[str, Any]], indices: Sequence[int], generator: torch.Generator,
                 sync: bool = True) -> torch.Tensor:
        """Add the gradient of the minibatch ``indices`` (global, same on every rank); return its loss
        (this rank's share, detached, divided by ``accum``). ``sync=False`` skips DDP's gradient
        all-reduce (every micro-batch of an accumulation but the last)."""
        batch = len(indices)
        world, rank = self.dist.world_size, self.dist.rank
        require(batch % world == 0, f"the global batch {batch} must divide evenly over {world} DDP ranks")
        rows = _block(batch, world, rank)
        x0, conditions = collate([dataset[i] for i in list(indices)[rows]], self.device)
        if self.shards == 1 and world == 1:
            # The unsplit path draws inside loss(), as the loop always has (bit-identical to older runs).
            with self.autocast:
                loss = self.diffusion.loss(x0, conditions, generator=generator, denoiser=self.denoiser) / self.accum
            loss.backward()
            return loss.detach()
        t, noise = self.diffusion.draw((batch, *x0.shape[1:]), generator, x0.dtype)
        drawn = (t[rows], noise[rows])
        if self.shards == 1:
            no_sync = self.denoiser.no_sync() if not sync and hasattr(self.denoiser, "no_sync") else contextlib.nullcontext()
            with no_sync:
                with self.autocast:
                    loss = self.diffusion.loss(x0, conditions, denoiser=self.denoiser, drawn=drawn) / self.accum
                loss.backward()
            return loss.detach()
        return self._sharded(x0, conditions, drawn)

    def _sharded(self, x0: torch.Tensor, conditions: dict[int, torch.Tensor],
                 drawn: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        n = len(x0)
        blocks = [_block(n, self.shards, k) for k in range(self.shards)]

        def shard(rows: slice) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
            torch.set_num_threads(1)  # this thread's intra-op pool: the shards are the parallelism
            weight = (rows.stop - rows.start) / n
            loss = self.diffusion.loss(x0[rows], {k: c[rows] for k, c in conditions.items()},
                                       denoiser=self.denoiser, drawn=(drawn[0][rows], drawn[1][rows]))
            loss = loss * weight / self.accum
            return loss.detach(), torch.autograd.grad(loss, self.params, allow_unused=True)

        threads = torch.get_num_threads()
        try:
            results = list(self._pool.map(shard, [b for b in blocks if b.stop > b.start]))
        finally:
            torch.set_num_threads(threads)
        total = results[0][0]
        for loss, _ in results[1:]:
            total = total + loss
        for i, p in enumerate(self.params):  # fixed order: the same sums, bit for bit, on every run
            grads = [g[i] for _, g in results if g[i] is not None]
            if not grads:
                continue
            # Summed into a tensor laid out like the parameter: autograd.grad may hand back another memory
            # order (the channels-last weights of models.layout), and fused Adam walks .grad in p's order.
            g = torch.empty_like(p).copy_(grads[0])
            for other in grads[1:]:
                g.add_(other)
            p.grad = g if p.grad is None else p.grad + g
        return total


LR_SCHEDULES = ("constant", "cosine", "wsd")


def learning_rate(step: int, lr: float, total: int, schedule: str = "constant", warmup_steps: int = 0,
                  decay_steps: int = 0) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``total``: a linear warmup from lr /
    warmup_steps to ``lr`` over the first ``warmup_steps`` steps, then ``constant`` (the Diffuser's), a
    ``cosine`` decay to 0 at ``total`` (Loshchilov & Hutter 2017, without restarts), or ``wsd``
    (warmup-stable-decay; Hägele et al. 2024): constant, then a linear decay towards 0 at ``total`` over
    the last ``decay_steps`` = N steps, which take lr N/(N+1), ..., lr 1/(N+1). Until its decay a ``wsd``
    run takes a constant run's rates, so a constant run's checkpoint can be resumed into a decay at any
    step. A pure function of the step, so a resumed run follows the same schedule without saving
    scheduler state.

    Raises ValueError for an unknown schedule, or ``wsd`` without decay steps.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {list(LR_SCHEDULES)}")
    if schedule == "wsd" and decay_steps < 1:
        raise ValueError(f"lr_schedule='wsd' needs decay_steps >= 1, got {decay_steps}")
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    if schedule == "wsd":
        return lr * min(1.0, (total - step) / (decay_steps + 1))
    progress = (step - warmup_steps) / max(total - warmup_steps, 1)
    return 0.5 * lr * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(params: Iterable[nn.Parameter], lr: float, device: torch.device) -> torch.optim.Optimizer:
    """Adam (the Diffuser's optimizer) in its fused form: one kernel over all parameters instead of
    ~10 per tensor. Falls back to the default implementation where this torch build has no fused Adam
    for ``device``."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError) as err:
        log.info("fused Adam unavailable on %s (%s); using the default Adam", device, err)
        return torch.optim.Adam(params, lr=lr)
