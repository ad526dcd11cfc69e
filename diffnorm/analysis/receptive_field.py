"""Exact receptive field of one forward pass of any 1-D conv net in the package.

With every norm replaced by identity, a network of convolutions, pointwise activations, additions
and concatenations is local: output i depends only on a window of inputs. We measure that window
instead of entering it by hand: on a float64 copy whose parameters are all positive and whose input is
positive, every pre-activation is positive, so each activation has a positive slope and the Jacobian
entry d out_i / d in_j is a sum of positive path products. It is non-zero exactly where a path exists,
with no chance cancellation — the structural reach for generic weights.

That conv-only reach is the yardstick of the leak question. A norm whose statistics come from a window
of its layer's steps (``local_group``: attribute ``half_window``) widens its layer's reach by that many
steps each side; ``receptive_field(..., with_norms=True)`` measures the reach with those windows in
place (each such norm replaced by a positive window average), the reach such a network really has.
Norms that pool over the whole sequence have no finite reach and are refused there.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from diffnorm.models.norms import is_norm


class WindowReach(nn.Module):
    """Stand-in for a windowed norm in a positive copy: x plus the window average of its channel mean,
    positive wherever x is, with a path from every step within ``half_window`` of each output step."""

    def __init__(self, half_window: int):
        super().__init__()
        self.half_window = half_window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.half_window
        pooled = F.avg_pool1d(x.mean(1, keepdim=True), 2 * k + 1, stride=1, padding=k, count_include_pad=False)
        return x + pooled


# torch's own normalization layers: stripped like the registry's, so any network can be measured.
TORCH_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm, nn.modules.batchnorm._BatchNorm)


def is_any_norm(module: nn.Module) -> bool:
    """A registry norm or one of torch's (GroupNorm, LayerNorm, InstanceNorm*, BatchNorm*)."""
    return is_norm(module) or isinstance(module, TORCH_NORMS)


def strip_norms(model: nn.Module, keep_windows: bool = False) -> nn.Module:
    """A deep copy of ``model`` with every norm (``is_any_norm``) replaced by identity, or, with
    ``keep_windows``, a windowed norm (one with ``half_window``) by ``WindowReach``; then any other norm
    is refused with ``ValueError``."""
    stripped = copy.deepcopy(model)
    for name, module in list(stripped.named_modules()):
        if name and is_any_norm(module):
            if keep_windows and not hasattr(module, "half_window"):
                raise ValueError(f"{name} ({type(module).__name__}) pools over the whole sequence: its reach is "
                                 "every step, so there is no receptive field with norms included")
            stand_in = WindowReach(module.half_window) if keep_windows else nn.Identity()
            parent_name, _, child = name.rpartition(".")
            setattr(stripped.get_submodule(parent_name) if parent_name else stripped, child, stand_in)
    return stripped


def has_windowed_norms(model: nn.Module) -> bool:
    """True if some norm of ``model`` pools over a window of time steps (its reach exceeds the convs')."""
    return any(is_norm(m) and getattr(m, "half_window", 0) > 0 for m in model.modules())


def positive_copy(model: nn.Module, keep_windows: bool = False) -> nn.Module:
    """Float64 copy with norms stripped (``strip_norms``) and every parameter positive: Jacobian entries
    are non-zero exactly where a path exists (see the module docstring). Shared with analysis.influence."""
    probe = strip_norms(model, keep_windows).double().eval()
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


def receptive_field(model: nn.Module, length: int | None = None, with_norms: bool = False) -> tuple[int, int]:
    """One-sided reach (left, right) in input steps of one forward pass, norms replaced by identity, or
    with ``with_norms`` the reach windowed norms add included (``ValueError`` for a norm that pools over
    the whole sequence).

    ``model`` must expose ``sequence_axis`` and ``receptive_field_inputs(length)`` (example forward
    arguments). Without ``length`` the sequence is doubled until the reach no longer touches its ends.
    """
    probe = positive_copy(model, keep_windows=with_norms)
    multiple = getattr(model, "length_multiple", 1)
    if length is not None:
        return _reach(probe, length)
    length = 64 * multiple
    while True:
        left, right = _reach(probe, length)
        if max(left, right) + 8 < length // 2:
            return left, right
        length *= 2


def statistic_spans(model: nn.Module, length: int) -> list[dict[str, int]]:
    """What one normalization statistic pools at each norm of ``model`` on a ``length``-step input, in
    forward order: the layer's steps and ``stride`` (input steps per layer step), ``window`` (the layer
    steps one statistic pools: 0 for no norm, 1 for a per-step norm, the layer's steps for one that pools
    the whole sequence, at most that for a windowed one), ``span`` (= window * stride, in input steps) and
    ``pooled_values`` (window x channels per group, the statistic's sample size per sample).

    Registry norms only (``TypeError`` for others; BatchNorm also pools over the batch, not counted)."""
    from diffnorm.models.norms import BatchNorm, ChannelNorm, LocalGroupNorm, NoNorm  # leaf import, no cycle

    seen: list[tuple[nn.Module, int, int]] = []
    handles = [m.register_forward_pre_hook(lambda mod, args: seen.append((mod, args[0].shape[1], args[0].shape[2])))
               for m in model.modules() if is_norm(m)]
    try:
        with torch.no_grad():
            model(*model.receptive_field_inputs(length))
    finally:
        for handle in handles:
            handle.remove()
    rows = []
    for module, channels, steps in seen:
        if isinstance(module, NoNorm):
            window, per_group = 0, 0
        elif isinstance(module, ChannelNorm):
            window, per_group = 1, channels
        elif isinstance(module, LocalGroupNorm):
            window, per_group = min(module.window, steps), channels // module.groups
        elif isinstance(module, nn.GroupNorm):
            window, per_group = steps, channels // module.num_groups
        elif isinstance(module, BatchNorm):
            window, per_group = steps, 1
        else:
            raise TypeError(f"{type(module).__name__}: no statistic span known")
        stride = length // steps
        rows.append({"steps": steps, "stride": stride, "channels": channels, "window": window,
                     "span": window * stride, "pooled_values": window * per_group})
    return rows
