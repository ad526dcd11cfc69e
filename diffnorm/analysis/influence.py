"""How far one forward pass of a sequence denoiser reaches, measured three ways against its receptive field.

Without norm layers, output i of a convolutional network depends only on inputs j with
-left <= j - i <= right (``analysis.receptive_field``): every Jacobian entry beyond that band is exactly
zero, and changing an input outside it leaves output i bit-identical. A norm that pools over time
(GroupNorm, InstanceNorm, ...) couples every index to every other (Pfrommer et al. 2025, Sec. 2). This
module measures that coupling for the Diffuser's U-Net:

* ``influence_map``: mean |d out_i / d in_j| with ``torch.func`` (jacrev over the selected output rows),
  and the fraction of its mass beyond the receptive field;
* ``site_receptive_fields``: the reach of every probe site, so probe localization can be judged against
  what the site could see without the norm;
* ``condition_leakage`` / ``chain_leakage``: the change of the denoiser's output far from a changed goal
  (or start) condition, in one forward pass and over a whole sampling chain (where information
  legitimately travels one receptive field per denoising step).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import jacrev

from diffnorm.analysis.receptive_field import positive_copy, receptive_field
from diffnorm.diffusion.gaussian import GaussianDiffusion
from diffnorm.errors import require
from diffnorm.probing.hooks import record_activations


@dataclass(frozen=True)
class Reach:
    """One-sided reach in input steps of a site whose index k sits at input position k * stride:
    site index k depends on inputs [k * stride - left, k * stride + right] at most."""

    left: int
    right: int
    stride: int


def sees_both_ends(left: int, right: int, horizon: int) -> dict[str, int | None]:
    """Which output indices of a horizon-long plan see both the start (index 0) and the goal (H - 1)
    in one forward pass: i <= left and i >= H - 1 - right. Returns the range and its size."""
    first, last = max(0, horizon - 1 - right), min(horizon - 1, left)
    count = max(0, last - first + 1)
    return {"horizon": horizon, "first": first if count else None, "last": last if count else None,
            "count": count, "fraction": count / horizon}


def interior_mask(length: int, reach: Reach) -> np.ndarray:
    """bool[length // stride]: site indices whose reach excludes both ends of a ``length``-step input.

    The ends carry the inpainted start and goal and border the zero padding; an index that sees neither
    gets, without a norm, the same output distribution as its interior neighbours of the same stride
    phase whenever the input is stationary (Appendix C of the paper, adapted to a strided network).
    """
    k = np.arange(length // reach.stride) * reach.stride
    return (k - reach.left >= 1) & (k + reach.right <= length - 2)


def blind_to(length: int, position: int, left: int, right: int) -> np.ndarray:
    """bool[length]: output indices i whose receptive field [i - left, i + right] excludes ``position``."""
    i = np.arange(length)
    return (position - i > right) | (i - position > left)


def beyond_band(rows: Sequence[int] | np.ndarray, length: int, left: int, right: int) -> np.ndarray:
    """bool[len(rows), length]: pairs (output row i, input j) with j - i outside [-left, right]."""
    offset = np.arange(length)[None, :] - np.asarray(rows)[:, None]
    return (offset < -left) | (offset > right)


def site_receptive_fields(model: nn.Module, sites: Sequence[str], length: int | None = None,
                          left: int | None = None, right: int | None = None) -> dict[str, Reach]:
    """Reach of every site (a module whose output is [B, C, T_s]) with norms stripped, as in
    ``receptive_field``: on a positive float64 copy, gradients of a few central site columns with
    respect to the input are non-zero exactly where a path exists.

    ``length`` defaults to four times the network's receptive field (``left + right``, measured if not
    given), so no central column's reach touches the ends.
    """
    multiple = getattr(model, "length_multiple", 1)
    if length is None:
        if left is None or right is None:
            left, right = receptive_field(model)
        length = multiple * math.ceil((4 * (left + right) + 8 * multiple) / multiple)
    probe = positive_copy(model)
    args = tuple(a.double() if a.is_floating_point() else a for a in probe.receptive_field_inputs(length))
    axis = probe.sequence_axis
    x = (args[0].abs() + 1.0).requires_grad_(True)
    with record_activations(probe, sites, detach=False) as acts:
        probe(x, *args[1:])
    reaches = {}
    for site in sites:
        act = acts[site]
        require(act.dim() == 3 and length % act.shape[2] == 0,
                f"site {site} gives shape {list(act.shape)}; expected [batch, channels, time] with time "
                f"dividing the input length {length}")
        steps = act.shape[2]
        stride = length // steps
        # Central columns covering every phase of the network's total stride.
        centre = steps // 2
        rows = list(range(max(0, centre - 4), min(steps, centre + 4)))
        cotangents = torch.zeros(len(rows), *act.shape, dtype=act.dtype)
        for n, k in enumerate(rows):
            cotangents[n, :, :, k] = 1.0
        (grads,) = torch.autograd.grad(act, x, cotangents, retain_graph=True, is_grads_batched=True)
        support = grads.abs().sum(dim=[d for d in range(1, grads.dim()) if d != axis + 1]) > 0  # [rows, L]
        lo = [k * stride - int(s.nonzero().min()) for k, s in zip(rows, support)]
        hi = [int(s.nonzero().max()) - k * stride for k, s in zip(rows, support)]
        reaches[site] = Reach(left=max(lo), right=max(hi), stride=stride)
    return reaches


def influence_map(model: nn.Module, x: torch.Tensor, t: torch.Tensor, rows: Sequence[int] | None = None,
                  chunk_size: int | None = None) -> torch.Tensor:
    """Mean over samples and channel pairs of |d out[i, c] / d in[j, d]|: [len(rows), H].

    ``model(x [B, H, D], t [B]) -> [B, H, D]``; ``x`` [N, H, D] and ``t`` [N] are the points at which
    the Jacobian is taken. Each sample's Jacobian of the selected output rows is one ``jacrev`` call
    (a vmap over all (row, channel) cotangents; ``chunk_size`` bounds how many run at once).
    """
    require(x.dim() == 3 and t.shape == (x.shape[0],), f"expected x [N, H, D] and t [N], got "
            f"{list(x.shape)} and {list(t.shape)}")
    length = x.shape[1]
    index = torch.arange(length) if rows is None else torch.as_tensor(list(rows), dtype=torch.long)
    require(bool(((index >= 0) & (index < length)).all()), f"rows must lie in [0, {length})")
    total = torch.zeros(len(index), length, dtype=x.dtype)
    with _frozen(model):
        for xi, ti in zip(x, t):  # samples one by one bound memory; positions are vectorized by jacrev
            def selected(inp: torch.Tensor, ti: torch.Tensor = ti) -> torch.Tensor:
                return model(inp[None], ti[None])[0, index]

            jac = jacrev(selected, chunk_size=chunk_size)(xi)  # [R, D, H, D]
            total += jac.detach().abs().mean(dim=(1, 3)).to(total.dtype).cpu()
    return total / len(x)


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Parameters out of autograd for the duration: with them in, the vmapped backward also carries
    per-cotangent weight gradients, about 4x the memory (2 GB instead of 0.5 GB at H = 384)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def beyond_fraction(influence: torch.Tensor | np.ndarray, mask: np.ndarray) -> float:
    """Share of the total influence mass on the masked (beyond-receptive-field) entries."""
    values = np.asarray(influence, dtype=np.float64)
    total = values.sum()
    return float(values[mask].sum() / total) if total > 0 else 0.0


def offset_profile(influence: torch.Tensor | np.ndarray, rows: Sequence[int] | np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Mean influence per offset j - i over the given rows: (offsets [2H - 1], profile [2H - 1])."""
    values = np.asarray(influence, dtype=np.float64)
    length = values.shape[1]
    offset = (np.arange(length)[None, :] - np.asarray(rows)[:, None]).ravel() + length - 1
    sums = np.bincount(offset, weights=values.ravel(), minlength=2 * length - 1)
    counts = np.bincount(offset, minlength=2 * length - 1)
    with np.errstate(invalid="ignore"):
        profile = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return np.arange(-(length - 1), length), profile


def condition_leakage(diffusion: GaussianDiffusion, x_noisy: torch.Tensor, t: torch.Tensor,
                      conditions: Mapping[int, torch.Tensor], changed: Mapping[int, torch.Tensor]
                      ) -> torch.Tensor:
    """Mean |change| per index [H] of the denoiser's output (no clipping, no inpainting of the output)
    when the inpainted conditions of ``x_noisy`` go from ``conditions`` to ``changed``: one forward pass.

    The two passes are separate calls on equally shaped batches: stacking them into one batch puts a
    sample at another batch position, where float32 kernels may round differently (~1e-8), which would
    read as leakage. Separate calls run the same arithmetic on every untouched input, bit for bit.
    """
    with torch.no_grad():
        before = diffusion.model(diffusion.apply_conditions(x_noisy, conditions), t)
        after = diffusion.model(diffusion.apply_conditions(x_noisy, changed), t)
    return (after - before).abs().mean(dim=(0, 2)).cpu()


def chain_leakage(diffusion: GaussianDiffusion, conditions: Mapping[int, torch.Tensor],
                  changed: Mapping[int, torch.Tensor], seed: int, sampler: str | None = None,
                  num_steps: int | None = None) -> dict[str, torch.Tensor]:
    """Run the sampler twice with the same noise, once per set of conditions.

    Returns ``plan`` [H]: mean |change| of the final plans per index, and ``per_step`` [S, H]: the same
    for the denoiser's x0 prediction at each of the S denoising steps (recorded by a forward hook), which
    shows the change travelling out from the condition step by step.
    """
    runs = []
    for conds in (conditions, changed):
        calls: list[torch.Tensor] = []
        handle = diffusion.model.register_forward_hook(lambda _m, _i, out, calls=calls: calls.append(out.detach()))
        try:
            plan = diffusion.sample(dict(conds), sampler=sampler, num_steps=num_steps,
                                    generator=torch.Generator().manual_seed(seed))
        finally:
            handle.remove()
        runs.append((plan, torch.stack(calls)))
    (plan_a, steps_a), (plan_b, steps_b) = runs
    return {"plan": (plan_b - plan_a).abs().mean(dim=(0, 2)).cpu(),
            "per_step": (steps_b - steps_a).abs().mean(dim=(1, 3)).cpu()}
