"""Figures of Diffuser training: sampled plans on the maze next to the dataset windows they were
conditioned on, and the loss curve. Coordinates are D4RL's (see ``plotting.maze``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from diffnorm.plotting.maze import draw_maze


def plan_grid(path: Path, maze: str, plans_xy: np.ndarray, references_xy: np.ndarray | None = None,
              title: str = "", columns: int = 4) -> Path:
    """PNG of plans [N, H, 2], one panel each: the plan coloured from start (dark) to end (light), its
    start (green circle) and goal (red cross), and the dataset window it was conditioned on (grey)."""
    plans_xy = np.asarray(plans_xy)
    n = len(plans_xy)
    cols = min(columns, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.0 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        draw_maze(ax, maze, show_goal=False)
        if references_xy is not None:
            ax.plot(*np.asarray(references_xy[k]).T, color="0.6", lw=1.0, zorder=2, label="data window")
        plan = plans_xy[k]
        ax.plot(*plan.T, color="0.2", lw=0.5, zorder=3)
        ax.scatter(plan[:, 0], plan[:, 1], c=np.linspace(0, 1, len(plan)), cmap="viridis", s=5, zorder=4)
        ax.plot(*plan[0], "o", color="tab:green", ms=6, zorder=5, label="start")
        ax.plot(*plan[-1], "x", color="tab:red", ms=7, mew=2, zorder=5, label="goal")
        ax.set_title(f"plan {k}", fontsize=9)
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=6, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def loss_curve(path: Path, curve: Sequence[tuple[int, float]], title: str = "") -> Path:
    """PNG of the logged training loss (mean over each log interval) against the optimizer step."""
    steps, losses = zip(*curve) if curve else ((), ())
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(steps, losses, lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("x0 L2 loss (scaled units)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
