"""Maze figures in D4RL coordinates (cell (i, j) centred at x = i, y = j): walls, trajectories, coverage.

``draw_maze`` is the base every maze figure draws on, so plans, rollouts and datasets share one frame.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from diffnorm.envs.maze2d import maze_spec


def draw_maze(ax: plt.Axes, name: str, show_goal: bool = True, wall_color: str = "0.35") -> plt.Axes:
    """Walls of ``name`` as unit squares centred on wall cells, equal aspect, labelled D4RL axes."""
    spec = maze_spec(name)
    rows, cols = spec.layout.shape
    for i, j in zip(*np.nonzero(spec.layout == 1)):
        ax.add_patch(Rectangle((i - 0.5, j - 0.5), 1.0, 1.0, facecolor=wall_color, edgecolor="none", zorder=1))
    if show_goal:
        gx, gy = spec.eval_goal_xy
        ax.add_patch(plt.Circle((gx, gy), 0.5, facecolor="none", edgecolor="tab:red", linestyle="--", zorder=3))
        ax.plot([gx], [gy], marker="*", color="tab:red", markersize=10, zorder=3, label="evaluation goal")
    ax.set_xlim(-0.5, rows - 0.5)
    ax.set_ylim(-0.5, cols - 0.5)
    ax.set_aspect("equal")
    ax.set_xlabel("x (D4RL; cell row i)")
    ax.set_ylabel("y (D4RL; cell column j)")
    ax.set_title(name)
    return ax


def plot_trajectory(ax: plt.Axes, xy: np.ndarray, **kwargs) -> plt.Axes:
    """A path [T, 2] coloured from start (dark) to end (light)."""
    xy = np.asarray(xy)
    ax.scatter(xy[:, 0], xy[:, 1], c=np.linspace(0, 1, len(xy)), cmap=kwargs.pop("cmap", "viridis"),
               s=kwargs.pop("s", 4), zorder=2, **kwargs)
    return ax


def dataset_coverage(name: str, xy: np.ndarray, path: Path, bins_per_cell: int = 10) -> Path:
    """PNG: log visit density of the dataset's positions on the maze."""
    spec = maze_spec(name)
    rows, cols = spec.layout.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * rows, 0.7 * cols + 0.8))
    counts, xe, ye = np.histogram2d(xy[:, 0], xy[:, 1], bins=(rows * bins_per_cell, cols * bins_per_cell),
                                    range=((-0.5, rows - 0.5), (-0.5, cols - 0.5)))
    masked = np.ma.masked_equal(counts.T, 0)
    image = ax.pcolormesh(xe, ye, np.ma.log10(masked), cmap="viridis", zorder=0)
    fig.colorbar(image, ax=ax, label="log10 visits per bin")
    draw_maze(ax, name)
    ax.set_title(f"{name}: {len(xy):,} dataset positions")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def stitch_coverage(name: str, xy: np.ndarray, tasks: list[tuple[np.ndarray, np.ndarray]], path: Path,
                    episodes: list[np.ndarray] = (), title: str | None = None, bins_per_cell: int = 10) -> Path:
    """PNG for a stitch dataset: left, log visit density with the evaluation tasks as arrows (start circle,
    goal star); right, a few whole episodes, to show how short each one is next to the tasks."""
    spec = maze_spec(name)
    rows, cols = spec.layout.shape
    fig, axes = plt.subplots(1, 2, figsize=(2 * (1.0 + 0.7 * rows), 0.7 * cols + 0.9))
    counts, xe, ye = np.histogram2d(xy[:, 0], xy[:, 1], bins=(rows * bins_per_cell, cols * bins_per_cell),
                                    range=((-0.5, rows - 0.5), (-0.5, cols - 0.5)))
    image = axes[0].pcolormesh(xe, ye, np.ma.log10(np.ma.masked_equal(counts.T, 0)), cmap="viridis", zorder=0)
    fig.colorbar(image, ax=axes[0], label="log10 visits per bin")
    for ax in axes:
        draw_maze(ax, name, show_goal=False)
    colors = plt.get_cmap("tab10")
    for k, (start, goal) in enumerate(tasks):
        (sx, sy), (gx, gy) = np.asarray(start, dtype=float), np.asarray(goal, dtype=float)
        for ax in axes:
            ax.annotate("", xy=(gx, gy), xytext=(sx, sy), zorder=4,
                        arrowprops={"arrowstyle": "->", "color": colors(k), "lw": 1.5, "alpha": 0.8})
            ax.plot([sx], [sy], "o", color=colors(k), markersize=7, zorder=5)
            ax.plot([gx], [gy], "*", color=colors(k), markersize=11, zorder=5)
    for episode in episodes:
        plot_trajectory(axes[1], episode, s=2)
    axes[0].set_title(title or f"{name}\n{len(xy):,} positions, {len(tasks)} tasks", fontsize=10)
    axes[1].set_title(f"{len(episodes)} whole episodes (dark: start)\nand the tasks (circle -> star)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
