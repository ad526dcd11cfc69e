"""Figures of the stitching study: per-norm bars of a metric's mean over seeds with its 95% interval,
each seed's value as a dot (with 2-3 seeds the dots say more than the bar), the baseline hatched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from diffnorm.plotting.planning import _save


def norm_bars(path: Path, summary: dict[str, dict[str, Any]], metrics: list[tuple[str, str]], baseline: str,
              title: str = "") -> Path:
    """PNG with one panel per ``(key, label)`` in ``metrics``: for each norm of ``summary`` (as built by
    ``diffnorm.experiments.stitching.summarize``) a bar at the mean over seeds, the 95% CI as an error bar,
    and the seeds as dots. Metrics without a value for a norm leave its bar out."""
    norms = list(summary)
    fig, axes = plt.subplots(1, len(metrics), figsize=(1.2 + 1.1 * len(norms) * len(metrics), 3.6), squeeze=False)
    x = np.arange(len(norms))
    for ax, (key, label) in zip(axes.flat, metrics):
        for k, n in enumerate(norms):
            row = summary[n][key]
            if row["mean"] is None:
                continue
            ax.bar(k, row["mean"], color="tab:gray" if n == baseline else "tab:blue", alpha=0.6,
                   hatch="//" if n == baseline else None, edgecolor="black", lw=0.5)
            ax.errorbar(k, row["mean"], yerr=[[row["mean"] - row["ci_low"]], [row["ci_high"] - row["mean"]]],
                        color="black", capsize=4, lw=1)
            seeds = [v for v in row["per_seed"] if v is not None]
            ax.scatter(k + np.linspace(-0.15, 0.15, len(seeds)) if len(seeds) > 1 else [k], seeds, color="black",
                       s=12, zorder=5)
        ax.set_xticks(x, norms)
        ax.set_xlabel("norm")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
