"""Coordinate frames of maze data, and the maps from each into the package's frame.

The package's frame follows D4RL's cell convention: cell (i, j) of a maze layout has its centre at
x = i, y = j. Every environment, dataset, planner and figure of the package works in it. Data recorded
elsewhere arrives in one of these frames and is converted once, on load:

- ``diffnorm``: the package's own frame (files this package wrote; ``PackageFrame``, the identity);
- ``d4rl``: raw D4RL maze2d files. D4RL's mujoco-py maze model places the particle body at (1.2, 1.2)
  and wall (i, j) at (i + 1, j + 1), so recorded positions put cell (i, j)'s centre at (i - 0.2, j - 0.2)
  (``D4RLFileFrame``; velocities and actions are unchanged);
- ``centred``: gymnasium-robotics' PointMaze (and Minari's D4RL/pointmaze data): the maze centred on the
  origin, x along columns, y up the rows (``CentredFrame``, a rotation plus a shift);
- ``ogbench``: OGBench's pointmaze, cells 4 units wide with an offset of 4, axes swapped (``OGBenchFrame``).

Each frame maps points (positions, goals) and vectors (velocities, and for all but OGBench actions)
with ``point_to_d4rl`` / ``vector_to_d4rl`` ("d4rl" in these names is the package's frame, D4RL's cell
convention) and back with ``*_from_d4rl``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

DATA_FRAMES = ("diffnorm", "d4rl", "centred", "ogbench")

# D4RL's maze model: the particle body at (1.2, 1.2) while wall (i, j) sits at (i + 1, j + 1).
D4RL_BODY_OFFSET = 0.2


class Frame(Protocol):
    def point_to_d4rl(self, xy: np.ndarray) -> np.ndarray: ...
    def point_from_d4rl(self, xy: np.ndarray) -> np.ndarray: ...
    def vector_to_d4rl(self, v: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class PackageFrame:
    """The package's own frame: every map is the identity (as float64)."""

    @staticmethod
    def point_to_d4rl(xy: np.ndarray) -> np.ndarray:
        return np.asarray(xy, dtype=np.float64)

    point_from_d4rl = point_to_d4rl
    vector_to_d4rl = point_to_d4rl


@dataclass(frozen=True)
class D4RLFileFrame:
    """Raw D4RL files: positions are the package's minus ``offset`` (0.2) on both axes; vectors agree."""

    offset: float = D4RL_BODY_OFFSET

    def point_to_d4rl(self, xy: np.ndarray) -> np.ndarray:
        return np.asarray(xy, dtype=np.float64) + self.offset

    def point_from_d4rl(self, xy: np.ndarray) -> np.ndarray:
        return np.asarray(xy, dtype=np.float64) - self.offset

    @staticmethod
    def vector_to_d4rl(v: np.ndarray) -> np.ndarray:
        return np.asarray(v, dtype=np.float64)


@dataclass(frozen=True)
class CentredFrame:
    """gymnasium-robotics' centred frame <-> the package frame, for a layout of ``rows`` x ``cols``.

    gymnasium-robotics puts cell (i, j) at x = (j + 0.5) - cols / 2, y = rows / 2 - (i + 0.5); D4RL at
    (i, j). The map is a rotation by 90 degrees plus a shift, so vectors (velocities, forces) rotate
    without the shift. Every conversion in the package goes through here.
    """

    rows: int
    cols: int

    def point_to_d4rl(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, dtype=np.float64)
        return np.stack([self.rows / 2 - 0.5 - xy[..., 1], xy[..., 0] + self.cols / 2 - 0.5], axis=-1)

    def point_from_d4rl(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, dtype=np.float64)
        return np.stack([xy[..., 1] - self.cols / 2 + 0.5, self.rows / 2 - 0.5 - xy[..., 0]], axis=-1)

    @staticmethod
    def vector_to_d4rl(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        return np.stack([-v[..., 1], v[..., 0]], axis=-1)

    @staticmethod
    def vector_from_d4rl(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        return np.stack([v[..., 1], -v[..., 0]], axis=-1)

    def state_to_d4rl(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """[x, y, vx, vy] in the package frame from the simulator's centred qpos, qvel."""
        return np.concatenate([self.point_to_d4rl(qpos), self.vector_to_d4rl(qvel)], axis=-1)

    # Scalar versions of the same maps for the dataset generator's per-step loop, where building
    # small arrays would cost more than the physics step itself.
    def state_to_d4rl_scalars(self, qx: float, qy: float, vx: float, vy: float
                              ) -> tuple[float, float, float, float]:
        return self.rows / 2 - 0.5 - qy, qx + self.cols / 2 - 0.5, -vy, vx

    @staticmethod
    def vector_from_d4rl_scalars(vx: float, vy: float) -> tuple[float, float]:
        return vy, -vx



@dataclass(frozen=True)
class OGBenchFrame:
    """OGBench pointmaze coordinates <-> diffnorm's D4RL frame (maze_unit 4, offset 4, axes swapped)."""

    unit: float = 4.0
    offset: float = 4.0

    def point_to_d4rl(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, dtype=np.float64)
        return np.stack([(xy[..., 1] + self.offset) / self.unit, (xy[..., 0] + self.offset) / self.unit], axis=-1)

    def point_from_d4rl(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, dtype=np.float64)
        return np.stack([xy[..., 1] * self.unit - self.offset, xy[..., 0] * self.unit - self.offset], axis=-1)

    def vector_to_d4rl(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        return np.stack([v[..., 1], v[..., 0]], axis=-1) / self.unit

    @staticmethod
    def action_to_d4rl(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        return np.stack([a[..., 1], a[..., 0]], axis=-1)

    action_from_d4rl = action_to_d4rl  # swapping the axes is its own inverse


