"""Figures of the toy experiments (Pfrommer et al. 2025, Figs. 1, 3-6)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np


def _edges(ax: plt.Axes, length: int, radius: int) -> None:
    for x in (radius - 0.5, length - radius - 0.5):
        ax.axvline(x, color="grey", linestyle="--", linewidth=1)


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def localization_predictions(trials: dict[str, dict[str, Any]], radius: int, path: Path) -> Path:
    """Fig. 1a: mean +- std of the prediction per index, receptive-field bounds dashed."""
    fig, ax = plt.subplots(figsize=(7, 4))
    length = len(next(iter(trials.values()))["pred_mean"])
    index = np.arange(length)
    ax.plot(index, np.linspace(-1, 1, length), color="black", linewidth=1, label="target")
    for label, t in trials.items():
        mean, std = np.asarray(t["pred_mean"]), np.asarray(t["pred_std"])
        ax.plot(index, mean, label=label)
        ax.fill_between(index, mean - std, mean + std, alpha=0.25)
    _edges(ax, length, radius)
    ax.set_xlabel("sequence index")
    ax.set_ylabel("prediction (mean ± std over noise inputs)")
    ax.set_title(f"Localization of pure noise (dashed: receptive field r = {radius} from each edge)")
    ax.legend()
    return _save(fig, path)


def probe_heatmaps(masks: dict[str, np.ndarray], radius: int, path: Path) -> Path:
    """Fig. 1b: layer x index, dark where a probe on that layer localizes the index; one panel per norm."""
    fig, axes = plt.subplots(1, len(masks), figsize=(5 * len(masks), 3.5), squeeze=False)
    for ax, (label, mask) in zip(axes[0], masks.items()):
        mask = np.asarray(mask, dtype=float)
        ax.imshow(mask, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest",
                  extent=(-0.5, mask.shape[1] - 0.5, mask.shape[0] + 0.5, 0.5))
        _edges(ax, mask.shape[1], radius)
        ax.set_xlabel("sequence index")
        ax.set_ylabel("hidden layer")
        ax.set_title(f"{label}: probe-localized (black)")
    return _save(fig, path)


def localized_masks(masks: dict[str, np.ndarray], radius: int, path: Path) -> Path:
    """One row per setting: which indices the network's own output localizes."""
    labels = list(masks)
    grid = np.stack([np.asarray(masks[k], dtype=float) for k in labels])
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(labels) + 1.5))
    ax.imshow(grid, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    _edges(ax, grid.shape[1], radius)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("sequence index")
    ax.set_title("Indices localized by the output (black)")
    return _save(fig, path)


def _seed_curve(ax: plt.Axes, xs: list, spreads: list[dict[str, Any]], color: str, label: str) -> None:
    """Each seed as a dot and the mean over seeds as a line."""
    for x, spread in zip(xs, spreads):
        ax.scatter([x] * len(spread["per_seed"]), spread["per_seed"], color=color, alpha=0.4, s=14)
    ax.plot(xs, [s["mean"] for s in spreads], color=color, marker="o", label=label)


def localization_vs_groups(by_groups: dict[int, dict[str, Any]], channels: int, interior_size: int, n_test: int,
                           n_test_more: int | None, path: Path) -> Path:
    """Fig. 4: interior indices localized, localization distance and test MSE versus GroupNorm groups."""
    groups = sorted(by_groups)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    _seed_curve(axes[0], groups, [by_groups[g]["localized_interior"] for g in groups], "C0", f"n_test={n_test}")
    if n_test_more:
        _seed_curve(axes[0], groups, [by_groups[g]["more_tests"]["localized_interior"] for g in groups], "C1",
                    f"n_test={n_test_more}")
    axes[0].axhline(interior_size, color="grey", linestyle="--", label="whole interior")
    axes[0].set_ylabel(f"interior indices localized (of {interior_size})")
    _seed_curve(axes[1], groups, [by_groups[g]["localization_distance"] for g in groups], "C0", f"n_test={n_test}")
    if n_test_more:
        _seed_curve(axes[1], groups, [by_groups[g]["more_tests"]["localization_distance"] for g in groups], "C1",
                    f"n_test={n_test_more}")
    axes[1].set_ylabel("localization distance (indices)")
    lrs = list(by_groups[groups[0]]["all_lrs"])
    for i, lr in enumerate(lrs):
        axes[2].plot(groups, [by_groups[g]["all_lrs"][lr]["test_loss"]["mean"] for g in groups], marker="o",
                     color=f"C{i + 2}", label=f"lr {float(lr):g}")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("test MSE (mean over seeds)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(groups, [str(g) for g in groups])
        ax.set_xlabel(f"GroupNorm groups (of {channels} channels)")
        ax.legend(fontsize=8)
    fig.suptitle("GroupNorm: localization versus number of groups (seeds as dots; left, middle: the lr of lowest "
                 "training loss; right: every lr)")
    return _save(fig, path)


def outcome_bars(table: dict[str, dict[str, Any]], interior_size: int, what: str, title: str, path: Path) -> Path:
    """Interior indices localized and test MSE per setting (rows of ``table``): mean bars, seeds as dots."""
    labels = list(table)
    xs = np.arange(len(labels))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(labels) + 4), 4.5))
    for ax, key, ylabel in ((axes[0], "localized_interior", f"interior indices localized (of {interior_size})"),
                            (axes[1], "test_loss", "test MSE")):
        ax.bar(xs, [table[k][key]["mean"] for k in labels], color="C0", alpha=0.6)
        for x, k in zip(xs, labels):
            values = table[k][key]["per_seed"]
            ax.scatter([x] * len(values), values, color="k", s=14, zorder=3)
        ax.set_xticks(xs, labels, rotation=30, ha="right")
        ax.set_xlabel(what)
        ax.set_ylabel(ylabel)
    axes[0].axhline(interior_size, color="grey", linestyle="--")
    axes[1].set_yscale("log")
    fig.suptitle(f"{title}: localization beyond the receptive field (bars: mean; dots: seeds)")
    return _save(fig, path)


def mse_vs_overlap(by_overlap: dict[int, list[float]], constant_loss: float, length: int, path: Path) -> Path:
    """Fig. 3: final test MSE versus overlap, with the constant-prediction loss for reference."""
    fig, ax = plt.subplots(figsize=(6, 4))
    overlaps = sorted(by_overlap)
    for o in overlaps:
        ax.scatter([o] * len(by_overlap[o]), by_overlap[o], color="C0", alpha=0.5)
    ax.plot(overlaps, [np.mean(by_overlap[o]) for o in overlaps], color="C0", marker="o", label="mean over seeds")
    ax.axhline(constant_loss, color="grey", linestyle="--", label="constant prediction")
    ax.set_xlabel(f"overlap (entries, of sequence length {length})")
    ax.set_ylabel("test MSE")
    ax.set_title("PackNorm: two streams coupled only by normalization")
    ax.legend()
    return _save(fig, path)
