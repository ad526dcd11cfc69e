"""Learning curves of Diffuser planners: normalized score (mean ± s.e.) and success rate against
optimizer steps and against training seconds, with the Diffuser's reported score as a band."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from diffnorm.plotting.style import save


def learning_curves(path: Path, runs: Sequence[dict[str, Any]], title: str = "") -> Path:
    """PNG with 2 x 2 panels (score / success x steps / seconds), one line per run.

    ``runs``: records of ``experiments.learning_curve`` (``label``, ``points`` with ``step``,
    ``train_seconds``, ``score_mean``, ``score_sem``, ``success_rate``; ``published`` mean and s.e.).
    """
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharey="row")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, run in enumerate(runs):
        pts = sorted(run["points"], key=lambda p: p["step"])
        steps = np.array([p["step"] for p in pts], dtype=float)
        secs = np.array([np.nan if p["train_seconds"] is None else p["train_seconds"] for p in pts]) / 60.0
        score = np.array([p["score_mean"] for p in pts])
        sem = np.array([p["score_sem"] for p in pts])
        success = 100 * np.array([p["success_rate"] for p in pts])
        colour = colours[k % len(colours)]
        for col, x in enumerate((steps, secs)):
            axes[0, col].errorbar(x, score, yerr=sem, marker="o", ms=4, capsize=3, color=colour, label=run["label"])
            axes[1, col].plot(x, success, marker="o", ms=4, color=colour, label=run["label"])
    if runs:
        mean, sem = runs[0]["published"]["mean"], runs[0]["published"]["sem"]
        for ax in axes[0]:
            ax.axhspan(mean - sem, mean + sem, color="0.8", zorder=0)
            ax.axhline(mean, color="0.3", ls="--", lw=1, label=f"Diffuser (published) {mean} ± {sem}")
    for col, xlabel in enumerate(("optimizer steps", "training wall-clock time (min)")):
        axes[0, col].set_ylabel("normalized score (mean ± s.e.)")
        axes[1, col].set_ylabel("success rate (%)")
        axes[1, col].set_ylim(-3, 103)
        for row in range(2):
            axes[row, col].set_xlabel(xlabel)
            axes[row, col].grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    return save(fig, path)
