"""Figures of planning rollouts: what the Diffuser planned and where the agent went, on the maze.

Coordinates are D4RL's (see ``plotting.maze``). Plans are coloured from start (dark) to end (light);
rollouts are black lines; the goal is a red star inside its 0.5 reward circle.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from diffnorm.plotting.maze import draw_maze
from diffnorm.plotting.style import save


def _goal(ax: plt.Axes, goal: np.ndarray) -> None:
    ax.add_patch(plt.Circle(tuple(goal), 0.5, facecolor="none", edgecolor="tab:red", linestyle="--", zorder=3))
    ax.plot(*goal, marker="*", color="tab:red", markersize=9, zorder=6, linestyle="none", label="goal")


def _plan(ax: plt.Axes, plan: np.ndarray, size: float = 5) -> None:
    ax.plot(*plan.T, color="0.3", lw=0.4, zorder=3)
    ax.scatter(plan[:, 0], plan[:, 1], c=np.linspace(0, 1, len(plan)), cmap="viridis", s=size, zorder=4)


def _save(fig: plt.Figure, path: Path) -> Path:
    return save(fig, path)


def episode_grid(path: Path, maze: str, plans_xy: np.ndarray, rollouts_xy: np.ndarray, goals: np.ndarray,
                 labels: Sequence[str], replans_xy: np.ndarray | None = None, title: str = "",
                 max_panels: int = 12, columns: int = 4) -> Path:
    """PNG, one panel per episode (the first ``max_panels``): the first plan [N, H, 2], later plans
    ``replans_xy`` [R, N, H, 2] in thin grey, the rollout [N, T + 1, 2], start and goal [N, 2]."""
    n = min(len(rollouts_xy), max_panels)
    cols = min(columns, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.0 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        draw_maze(ax, maze, show_goal=False)
        if replans_xy is not None:
            for replan in replans_xy[:, k]:
                ax.plot(*replan.T, color="0.6", lw=0.5, zorder=2)
        _plan(ax, plans_xy[k])
        ax.plot(*rollouts_xy[k].T, color="black", lw=1.0, zorder=5, label="rollout")
        ax.plot(*rollouts_xy[k, 0], "o", color="tab:green", ms=6, zorder=6, label="start")
        _goal(ax, goals[k])
        ax.set_title(labels[k], fontsize=8)
        ax.set_xlabel("")
        ax.set_ylabel("")
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=6, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    _plan_key(fig, plans_xy.shape[1])
    return save(fig, path, layout=False)


def _plan_key(fig: plt.Figure, horizon: int) -> None:
    """The key of the plan dots' colours (the plan step, from the start, dark, to the goal, light) in a
    strip right of the panels; lays the figure out, so save it with ``layout=False``."""
    fig.tight_layout(rect=(0.0, 0.0, 0.9, 1.0))
    mappable = plt.cm.ScalarMappable(norm=plt.Normalize(0, horizon - 1), cmap="viridis")
    fig.colorbar(mappable, cax=fig.add_axes((0.92, 0.2, 0.015, 0.6)), label="plan step (dark: start, light: goal)")


def overview(path: Path, maze: str, plans_xy: np.ndarray, rollouts_xy: np.ndarray, goals: np.ndarray,
             title: str = "") -> Path:
    """PNG with two panels: every first plan [N, H, 2] overlaid, and every rollout [N, T + 1, 2]."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 4.6))
    for ax, name in ((left, f"{len(plans_xy)} plans (t = 0)"), (right, f"{len(rollouts_xy)} rollouts")):
        draw_maze(ax, maze, show_goal=False)
        for goal in np.unique(np.round(goals, 6), axis=0):
            _goal(ax, goal)
        ax.set_title(name, fontsize=10)
    for plan in plans_xy:
        _plan(left, plan, size=3)
    for rollout in rollouts_xy:
        right.plot(*rollout.T, lw=0.8, alpha=0.8, zorder=4)
        right.plot(*rollout[0], "o", color="tab:green", ms=4, zorder=6)
    if title:
        fig.suptitle(title, fontsize=10)
    _plan_key(fig, plans_xy.shape[1])
    return save(fig, path, layout=False)
