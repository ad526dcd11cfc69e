"""Exact receptive field of one forward pass of any 1-D conv net in the package.

With every norm replaced by identity, a network of convolutions, pointwise activations, additions
and concatenations is local: output i depends only on a window of inputs. We measure that window
instead of entering it by hand: on a float64 copy whose parameters are all positive and whose input is
positive, every pre-activation is positive, so each activation has a positive slope and the Jacobian
entry d out_i / d in_j is a sum of positive path products. It is non-zero exactly where a path exists,
with no chance cancellation — the structural reach for generic weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from diffnorm.models.norms import is_norm


def strip_norms(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every registry norm replaced by identity."""
    stripped = copy.deepcopy(model)
    for name, module in list(stripped.named_modules()):
        if name and is_norm(module):
            parent_name, _, child = name.rpartition(".")
            setattr(stripped.get_submodule(parent_name) if parent_name else stripped, child, nn.Identity())
    return stripped


def positive_copy(model: nn.Module) -> nn.Module:
    """Float64 copy with norms stripped and every parameter positive: Jacobian entries are non-zero
    exactly where a path exists (see the module docstring). Shared with analysis.influence."""
    probe = strip_norms(model).double().eval()
    with torch.no_grad():
        for p in probe.parameters():
            # 1/fan-in keeps activations O(1) through deep stacks while staying strictly positive.
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.fill_(1.0 / fan_in if p.dim() > 1 else 0.01)
    return probe


def _reach(model: nn.Module, length: int) -> tuple[int, int]:
    args = tuple(a.double() if a.is_floating_point() else a for a in model.receptive_field_inputs(length))
    axis = model.sequence_axis
    x = args[0].abs() + 1.0
    x.requires_grad_(True)
    out = model(x, *args[1:])
    # Every residue class of the product of strides shows up among a handful of central outputs.
    centre = length // 2
    left = right = 0
    for i in range(centre - 4, centre + 4):
        (grad,) = torch.autograd.grad(out.select(axis, i).sum(), x, retain_graph=True)
        reached = grad.abs().sum(dim=[d for d in range(grad.dim()) if d != axis]).nonzero().flatten()
        left = max(left, i - int(reached.min()))
        right = max(right, int(reached.max()) - i)
    return left, right


def receptive_field(model: nn.Module, length: int | None = None) -> tuple[int, int]:
    """One-sided reach (left, right) in input steps of one forward pass, norms replaced by identity.

    ``model`` must expose ``sequence_axis`` and ``receptive_field_inputs(length)`` (example forward
    arguments). Without ``length`` the sequence is doubled until the reach no longer touches its ends.
    """
    probe = positive_copy(model)
    multiple = getattr(model, "length_multiple", 1)
    if length is not None:
        return _reach(probe, length)
    length = 64 * multiple
    while True:
        left, right = _reach(probe, length)
        if max(left, right) + 8 < length // 2:
            return left, right
        length *= 2
