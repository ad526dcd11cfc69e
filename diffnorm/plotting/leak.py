"""Figures of the leak probe (``experiments.leak_probe``): one panel or line per norm, receptive-field
bounds always marked, log scales where the no-norm network's values are exactly zero (and so absent)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from diffnorm.plotting.style import save


def _save(fig: plt.Figure, path: Path) -> Path:
    return save(fig, path)


def _positive(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return np.where(values > 0, values, np.nan)


def _floor(measured: dict[str, dict[str, Any]]) -> tuple[float, float]:
    values = np.concatenate([np.ravel(m["influence"]["map"]) for m in measured.values()])
    values = values[values > 0]
    top = float(values.max()) if len(values) else 1.0
    return max(float(values.min()) if len(values) else top * 1e-6, top * 1e-8), top


def influence_heatmaps(measured: dict[str, dict[str, Any]], left: int, right: int, path: Path) -> Path:
    """Mean |d out_i / d in_j| per (output i, input j), log colour; the band between the dashed lines is
    the receptive field, white means exactly zero."""
    vmin, vmax = _floor(measured)
    fig, axes = plt.subplots(1, len(measured), figsize=(3.6 * len(measured) + 1.2, 4.0), squeeze=False,
                             sharey=True, layout="constrained")
    for ax, (label, m) in zip(axes[0], measured.items()):
        imap, rows = np.asarray(m["influence"]["map"]), np.asarray(m["influence"]["rows"])
        length = imap.shape[1]
        step = rows[1] - rows[0] if len(rows) > 1 else 1
        image = ax.imshow(_positive(imap), aspect="auto", interpolation="nearest", origin="lower",
                          norm=LogNorm(vmin=vmin, vmax=vmax), cmap="magma",
                          extent=(-0.5, length - 0.5, rows[0] - step / 2, rows[-1] + step / 2))
        i = np.array([0, length - 1])
        ax.plot(i - left, i, "--", color="cyan", lw=1)
        ax.plot(i + right, i, "--", color="cyan", lw=1)
        ax.set_xlim(-0.5, length - 0.5)
        ax.set_ylim(-0.5, length - 0.5)
        ax.set_xlabel("input index j")
        ax.set_title(f"{label}\nbeyond RF: {m['influence']['beyond_rf_fraction']:.2%} of the mass", fontsize=9)
    axes[0, 0].set_ylabel("output index i")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.9, label="mean |d out_i / d in_j| (white: exactly 0)")
    fig.savefig(path)
    plt.close(fig)
    return path


def influence_profiles(measured: dict[str, dict[str, Any]], left: int, right: int, path: Path) -> Path:
    """Left: mean influence versus offset j - i (log), RF bounds dashed. Right: beyond-RF share of the
    influence mass at each diffusion step."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    for label, m in measured.items():
        ax.plot(m["influence"]["offsets"], _positive(m["influence"]["profile"]), lw=1, label=label)
        steps = m["influence"]["per_step"]
        bx.plot([p["t"] for p in steps], [p["beyond_rf_fraction"] for p in steps], "o-", label=label)
    for x in (-left, right):
        ax.axvline(x, color="grey", linestyle="--", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("offset j - i (input index - output index)")
    ax.set_ylabel("mean |d out_i / d in_j| (absent = exactly 0)")
    ax.set_title(f"Influence profile; receptive field [-{left}, +{right}] dashed")
    ax.legend(fontsize=8)
    bx.set_xlabel("diffusion step t")
    bx.set_ylabel("influence mass beyond the RF (fraction)")
    bx.set_title("Beyond-RF share per diffusion step")
    bx.legend(fontsize=8)
    return _save(fig, path)


def probe_localization(measured: dict[str, dict[str, Any]], sites: Sequence[str], left: int, right: int,
                       length: int, path: Path) -> Path:
    """Site x plan index, black where a probe on that site localizes the index (Definition 2.3). Coarse
    sites are drawn at their input positions; between the dashed lines an index sees neither end."""
    fig, axes = plt.subplots(1, len(measured), figsize=(3.6 * len(measured) + 1.2, 0.16 * len(sites) + 2.0),
                             squeeze=False, sharey=True)
    for ax, (label, m) in zip(axes[0], measured.items()):
        grid = np.zeros((len(sites), length))
        for row, (site, mask) in enumerate(zip(sites, m["probes"]["masks"])):
            stride = m["probes"]["sites"][site]["stride"]
            grid[row, : len(mask) * stride] = np.repeat(np.asarray(mask, dtype=float), stride)
        ax.imshow(grid, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest",
                  extent=(-0.5, length - 0.5, len(sites) - 0.5, -0.5))
        for x in (left + 0.5, length - 1.5 - right):
            if -0.5 < x < length - 0.5:  # only inside the plan
                ax.axvline(x, color="tab:red", linestyle="--", lw=1)
        ax.set_xlabel("plan index")
        ax.set_title(f"{label}: {m['probes']['localized_beyond_rf']} localized beyond the RF", fontsize=9)
    axes[0, 0].set_yticks(range(len(sites)))
    axes[0, 0].set_yticklabels(sites, fontsize=5)
    key = [Patch(facecolor="black", label="index localized by a probe on this site"),
           Line2D([], [], color="tab:red", linestyle="--", label="receptive field from each end "
                  "(between the lines: sees neither end)")]
    fig.legend(handles=key, loc="lower center", ncol=2, fontsize=8, bbox_to_anchor=(0.5, -0.02))
    fig.subplots_adjust(bottom=0.25)
    return _save(fig, path)


def condition_leakage(measured: dict[str, dict[str, Any]], left: int, right: int, path: Path) -> Path:
    """Mean |output change| per plan index when only one condition changes: one forward pass (solid,
    averaged over diffusion steps) and the final plan of a whole sampling chain (dotted). Shaded: the
    indices whose receptive field does not contain the changed condition."""
    conditions = list(next(iter(measured.values()))["leakage"])
    fig, axes = plt.subplots(1, len(conditions), figsize=(6.5 * len(conditions), 4.2), squeeze=False)
    for ax, name in zip(axes[0], conditions):
        for k, (label, m) in enumerate(measured.items()):
            leak = m["leakage"][name]
            one_pass = np.mean([p["delta"] for p in leak["one_pass"]], axis=0)
            color = f"C{k}"
            ax.plot(_positive(one_pass), color=color, lw=1.2, label=f"{label}: one pass")
            ax.plot(_positive(leak["chain"]["plan_delta"]), color=color, lw=1, linestyle=":",
                    label=f"{label}: sampling chain")
        leak = next(iter(measured.values()))["leakage"][name]
        length, position = len(leak["chain"]["plan_delta"]), leak["position"]
        # Indices that cannot see the changed condition, clipped to the plan (none at short horizons).
        lo, hi = (0, position - right - 1) if position > 0 else (position + left + 1, length - 1)
        if lo <= hi:
            ax.axvspan(lo - 0.5, hi + 0.5, color="grey", alpha=0.15, label="beyond the RF")
        ax.set_yscale("log")
        ax.set_xlabel("plan index")
        ax.set_ylabel("mean |change of the output| (absent = exactly 0)")
        ax.set_title(f"Change only the {name} (index {position})")
        ax.legend(fontsize=7)
    return _save(fig, path)


def chain_spread(measured: dict[str, dict[str, Any]], path: Path) -> Path:
    """Over the sampling chain: mean |change| of the x0 prediction beyond the RF of the changed goal per
    denoising step (left) and the farthest index the change has reached (right)."""
    conditions = list(next(iter(measured.values()))["leakage"])
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.0))
    for k, (label, m) in enumerate(measured.items()):
        for name, style in zip(conditions, ("-", "--")):
            chain = m["leakage"][name]["chain"]
            steps = np.arange(1, len(chain["reach_per_step"]) + 1)
            ax.plot(steps, _positive(chain["per_step_mean_beyond_rf"]), style, color=f"C{k}", label=f"{label}, {name}")
            bx.plot(steps, chain["reach_per_step"], style, color=f"C{k}", label=f"{label}, {name}")
    ax.set_yscale("log")
    ax.set_xlabel("denoising step (1 = first, from pure noise)")
    ax.set_ylabel("mean |change of x0 prediction| beyond the RF")
    ax.set_title("Spread of a changed condition over the chain")
    ax.legend(fontsize=7)
    bx.set_xlabel("denoising step")
    bx.set_ylabel("farthest changed index from the condition")
    bx.set_title("Reach of the change (one RF per step without norm)")
    bx.legend(fontsize=7)
    return _save(fig, path)
