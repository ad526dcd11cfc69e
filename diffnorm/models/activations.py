"""Mish (Misra 2019), the Diffuser's activation, computed cheaply on the CPU.

Why: ATen's CPU mish evaluates exp, log1p and tanh per element in the forward pass and more in
the backward; profiled on the U-Net's training step, that was 11 % of it. The same function follows
from a single exp: with q = (1 + e^x)^2, tanh(softplus(x)) = 1 - 2 / (q + 1). Computed in place,
forward and backward together run 1.5-1.9x faster (``scripts/bench.py`` times the ablation). The price
is rounding for negative x, where 1 - 2 / (q + 1) cancels: up to 1.2e-6 absolute error (8e-5 relative
where |y| ~ 0.01), against ATen's 7e-7; tests/test_activations.py bounds values and gradients against
the float64 definition. On other devices ``F.mish`` is already one fused kernel and is used.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class _MishFunction(torch.autograd.Function):
    """Forward saves x and tanh(softplus(x)); the derivative is tsp + x * sigmoid(x) * (1 - tsp^2).

    Written in torch.func style (separate ``setup_context``, generated vmap rule) so influence maps can
    take Jacobians through it with ``jacrev``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # 1 - 2 / ((1 + e^x)^2 + 1), in place on one buffer (each fresh CPU tensor of this size costs
        # page faults; the more accurate n / (n + 2) form needs extra ones). exp overflowing to inf
        # gives exactly 1, as it should for large x.
        tanh_softplus = torch.exp(x).add_(1).pow_(2).add_(1).reciprocal_().mul_(-2).add_(1)
        return x * tanh_softplus, tanh_softplus

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor], output: tuple[torch.Tensor, torch.Tensor]) -> None:
        ctx.save_for_backward(inputs[0], output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, _: torch.Tensor | None) -> torch.Tensor:
        x, tanh_softplus = ctx.saved_tensors
        slope = tanh_softplus.square().neg_().add_(1).mul_(torch.sigmoid(x)).mul_(x).add_(tanh_softplus)
        return grad * slope  # out of place: under vmap ``grad`` may be batched while ``slope`` is not


def mish(x: torch.Tensor) -> torch.Tensor:
    """x * tanh(softplus(x)): the one-exp form on the CPU, ``F.mish`` elsewhere."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return F.mish(x)  # one fused kernel on GPUs; and half precision is better served by ATen's upcast
    return _MishFunction.apply(x)[0]


class Mish(nn.Module):
    """Drop-in for ``nn.Mish`` (no parameters, same function), faster on the CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mish(x)
