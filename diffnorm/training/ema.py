"""Exponential moving average of the network weights, on the Diffuser's schedule.

The Diffuser updates the average every ``every`` optimizer steps and, before ``start``, copies the
model instead of averaging, so the average does not remember the random initialisation.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Holds ``average``, a frozen eval-mode copy of the model updated by ``update(model, step)``."""

    def __init__(self, model: nn.Module, decay: float = 0.995, every: int = 10, start: int = 2000):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay={decay} must lie in [0, 1)")
        if every < 1 or start < 0:
            raise ValueError(f"ema every={every} must be positive and start={start} non-negative")
        self.decay, self.every, self.start = decay, every, start
        self.average = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Call after optimizer step number ``step`` (0-based); acts on every ``every``-th step.

        Parameters are averaged; buffers (BatchNorm running statistics) are copied, since averaging
        statistics of weights that no longer exist would describe no network.
        """
        if step % self.every:
            return
        if step < self.start:
            self.average.load_state_dict(model.state_dict())
            return
        # One foreach call over all parameters (the same lerp per tensor, without a Python loop).
        torch._foreach_lerp_(list(self.average.parameters()), list(model.parameters()), 1.0 - self.decay)
        for avg, new in zip(self.average.buffers(), model.buffers()):
            avg.copy_(new)
