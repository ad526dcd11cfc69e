"""D4RL maze2d on gymnasium-robotics' PointMaze: specs, coordinates, the environment, scoring.

The ``d4rl`` package needs mujoco-py; gymnasium-robotics' PointMaze is the maintained port of the same
point mass (dt 0.01, gear 100, damping 1, velocity clipped to +-5) on the ``mujoco`` wheel. It differs
from D4RL in conventions only, and this module restores D4RL's (Fu et al. 2020):

- coordinates: cell (i, j) has its centre at x = i, y = j. gymnasium-robotics centres the maze at the
  origin with x along columns and y up the rows; ``CentredFrame`` is the one place that converts.
- observation: flat ``[x, y, vx, vy]`` instead of a goal dict;
- reward: 1 within 0.5 of the goal (gymnasium-robotics: 0.45), episodes never terminate early;
- goal: D4RL's fixed evaluation cell by default, no new goal on arrival;
- reset: a uniformly drawn free cell + U(-0.1, 0.1) position noise and N(0, 0.1) velocity
  (gymnasium-robotics: +-0.25 and zero velocity).

One known difference to the original files: in D4RL's mujoco-py model the particle body sits at
(1.2, 1.2) while wall (i, j) sits at (i + 1, j + 1), so in raw D4RL qpos the walls are centred at
(i - 0.2, j - 0.2). Here walls are centred exactly on (i, j); real D4RL files are shifted into this frame
on load (``envs.frames``, ``data_frame``).
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections import deque
from dataclasses import dataclass
from importlib import resources
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import yaml

from diffnorm.envs.frames import DATA_FRAMES, CentredFrame, D4RLFileFrame, Frame, OGBenchFrame, PackageFrame
from diffnorm.errors import ConfigError, require

GOAL_RADIUS = 0.5  # D4RL sparse reward: 1 when ||xy - goal|| <= 0.5
RESET_POS_NOISE = 0.1  # D4RL reset: U(-0.1, 0.1) on each coordinate
RESET_VEL_STD = 0.1  # D4RL reset: N(0, 0.1) velocity
_ENV_ID = "diffnorm/{name}-v1"


@dataclass(frozen=True, eq=False)
class MazeSpec:
    """One maze2d task as D4RL defines it; ``layout[i, j] == 1`` is a wall."""

    name: str
    layout: np.ndarray
    eval_goal_cell: tuple[int, int]
    max_episode_steps: int
    dataset_steps: int
    ref_min_score: float
    ref_max_score: float
    diffuser_score: dict[str, tuple[float, float]]  # mode -> (mean, s.e.) reported by Janner et al. 2022

    @property
    def free_cells(self) -> list[tuple[int, int]]:
        """Non-wall cells in row-major order (D4RL's reset and goal candidates, same order)."""
        return [(int(i), int(j)) for i, j in zip(*np.nonzero(self.layout == 0))]

    @property
    def eval_goal_xy(self) -> np.ndarray:
        return np.asarray(self.eval_goal_cell, dtype=np.float64)


@functools.cache
def _mazes() -> dict[str, dict[str, Any]]:
    text = resources.files("diffnorm.envs").joinpath("mazes.yaml").read_text()
    return yaml.safe_load(text)


def maze_names() -> list[str]:
    return list(_mazes())


def maze_spec(name: str) -> MazeSpec:
    """The spec of ``maze2d-umaze|medium|large`` from mazes.yaml."""
    mazes = _mazes()
    if name not in mazes:
        raise ConfigError(f"unknown maze {name!r}; choose one of {list(mazes)}")
    m = mazes[name]
    layout = np.asarray(m["layout"], dtype=np.int8)
    layout.setflags(write=False)
    return MazeSpec(name=name, layout=layout, eval_goal_cell=tuple(m["eval_goal_cell"]),
                    max_episode_steps=int(m["max_episode_steps"]), dataset_steps=int(m["dataset_steps"]),
                    ref_min_score=float(m["ref_min_score"]), ref_max_score=float(m["ref_max_score"]),
                    diffuser_score={mode: (float(v[0]), float(v[1])) for mode, v in m["diffuser_score"].items()})


def normalized_score(name: str, episode_return: float | np.ndarray) -> float | np.ndarray:
    """D4RL's normalized score, 100 (return - ref_min) / (ref_max - ref_min)."""
    spec = maze_spec(name)
    return 100.0 * (np.asarray(episode_return) - spec.ref_min_score) / (spec.ref_max_score - spec.ref_min_score)


def xy_to_cell(xy: np.ndarray) -> np.ndarray:
    """Integer cell (i, j) of D4RL points [..., 2]: the nearest cell centre."""
    return np.floor(np.asarray(xy, dtype=np.float64) + 0.5).astype(np.int64)


def in_wall(name: str, xy: np.ndarray) -> np.ndarray:
    """Whether each point [..., 2] lies inside a wall block (unit squares centred on wall cells).

    Points outside the layout count as walls: the outer ring of every maze is wall, so nothing there
    is reachable."""
    layout = maze_spec(name).layout
    cell = xy_to_cell(xy)
    i, j = cell[..., 0], cell[..., 1]
    inside = (i >= 0) & (i < layout.shape[0]) & (j >= 0) & (j < layout.shape[1])
    out = np.ones(i.shape, dtype=bool)
    out[inside] = layout[i[inside], j[inside]] == 1
    return out


# Neighbour order = D4RL's grid actions UP, DOWN, LEFT, RIGHT (j-1, j+1, i-1, i+1): it breaks ties
# between equally short paths the way its Q-iteration argmax does.
NEIGHBOURS = ((0, -1), (0, 1), (-1, 0), (1, 0))


def bfs_distances(name: str, cell: tuple[int, int]) -> np.ndarray:
    """Shortest path length in cell moves from ``cell`` to every cell; -1 for walls and unreachable."""
    layout = maze_spec(name).layout
    i0, j0 = int(cell[0]), int(cell[1])
    require(0 <= i0 < layout.shape[0] and 0 <= j0 < layout.shape[1] and layout[i0, j0] == 0,
            f"cell {tuple(cell)} is not a free cell of {name}")
    dist = np.full(layout.shape, -1, dtype=np.int64)
    dist[i0, j0] = 0
    queue = deque([(i0, j0)])
    while queue:
        i, j = queue.popleft()
        for di, dj in NEIGHBOURS:
            ni, nj = i + di, j + dj
            if layout[ni, nj] == 0 and dist[ni, nj] < 0:  # the wall ring keeps indices in range
                dist[ni, nj] = dist[i, j] + 1
                queue.append((ni, nj))
    return dist


def centred_frame(name: str) -> CentredFrame:
    return CentredFrame(*maze_spec(name).layout.shape)


def data_frame(frame: str, maze: str | None = None) -> Frame:
    """The coordinate frame ``frame`` (one of ``DATA_FRAMES``) of data recorded in ``maze``; its
    ``point_to_d4rl`` / ``vector_to_d4rl`` map into the package's frame. ``centred`` needs the maze
    (the shift depends on the layout's size). Raises ConfigError for an unknown frame or a missing maze."""
    require(frame in DATA_FRAMES, f"unknown coordinate frame {frame!r}; choose one of {list(DATA_FRAMES)}")
    if frame == "centred":
        require(maze is not None, "data in gymnasium-robotics' centred frame needs its maze to be converted")
        return centred_frame(str(maze))
    return {"diffnorm": PackageFrame(), "d4rl": D4RLFileFrame(), "ogbench": OGBenchFrame()}[frame]


def build_point_maze(name: str, render_mode: str | None = None):
    """gymnasium-robotics' PointMazeEnv on this maze's layout (its MuJoCo model is the simulator)."""
    # gymnasium_robotics prints a notice about its (unrelated) Adroit envs to stderr on first import
    with contextlib.redirect_stderr(io.StringIO()):
        from gymnasium_robotics.envs.maze.point_maze import PointMazeEnv

    return PointMazeEnv(maze_map=maze_spec(name).layout.tolist(), render_mode=render_mode,
                        reward_type="sparse", continuing_task=True, reset_target=False)


class Maze2dEnv(gym.Env):
    """D4RL maze2d with gymnasium's API, simulated by gymnasium-robotics' PointMaze.

    ``reset(options={"start_xy": (x, y), "start_vel": (vx, vy), "goal_xy": (x, y)})``, every key optional:
    ``start_xy`` pins the start position (default: a random free cell with D4RL's reset noise),
    ``start_vel`` the start velocity (default: D4RL's N(0, 0.1) noise), ``goal_xy`` the goal (default: the
    evaluation goal), so a planner can run multi-task episodes.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array", "human"], "render_fps": 100}
    OPTIONS = ("start_xy", "start_vel", "goal_xy")

    def __init__(self, name: str, render_mode: str | None = None):
        self.maze = maze_spec(name)
        self.frame = centred_frame(name)
        self.render_mode = render_mode
        self._point_maze = build_point_maze(name, render_mode)
        self._sim = self._point_maze.point_env
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.goal = self.maze.eval_goal_xy.copy()
        self._free = np.asarray(self.maze.free_cells, dtype=np.float64)

    def _point(self, options: dict, key: str, check_wall: bool) -> np.ndarray | None:
        if options.get(key) is None:
            return None
        xy = np.asarray(options[key], dtype=np.float64)
        require(xy.shape == (2,) and bool(np.all(np.isfinite(xy))), f"reset option {key}={options[key]!r} "
                f"must be two finite numbers")
        require(not (check_wall and in_wall(self.maze.name, xy)),
                f"reset option {key}={tuple(xy)} lies inside a wall of {self.maze.name}")
        return xy

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.OPTIONS))
        require(not unknown, f"unknown reset option(s) {unknown}; choose from {list(self.OPTIONS)}")
        start = self._point(options, "start_xy", check_wall=True)
        velocity = self._point(options, "start_vel", check_wall=False)
        goal = self._point(options, "goal_xy", check_wall=True)
        if start is None:
            cell = self._free[self.np_random.integers(len(self._free))]
            start = cell + self.np_random.uniform(-RESET_POS_NOISE, RESET_POS_NOISE, size=2)
        if velocity is None:
            velocity = self.np_random.normal(0.0, RESET_VEL_STD, size=2)
        self.goal = self.maze.eval_goal_xy.copy() if goal is None else goal
        self._point_maze.goal = self.frame.point_from_d4rl(self.goal)
        self._point_maze.update_target_site_pos()
        self._sim.init_qpos[:] = self.frame.point_from_d4rl(start)
        self._sim.init_qvel[:] = self.frame.vector_from_d4rl(velocity)
        sim_obs, _ = self._sim.reset()
        obs = self.frame.state_to_d4rl(sim_obs[:2], sim_obs[2:])
        return obs, self._info(obs)

    def step(self, action: np.ndarray):
        action = np.asarray(action, dtype=np.float64)
        require(action.shape == (2,), f"action must have shape (2,), got {action.shape}")
        sim_obs, _, _, _, _ = self._sim.step(self.frame.vector_from_d4rl(action))
        obs = self.frame.state_to_d4rl(sim_obs[:2], sim_obs[2:])
        info = self._info(obs)
        return obs, float(info["success"]), False, False, info

    def _info(self, obs: np.ndarray) -> dict[str, Any]:
        return {"success": bool(np.linalg.norm(obs[:2] - self.goal) <= GOAL_RADIUS), "goal": self.goal.copy()}

    def render(self):
        return self._sim.render()

    def close(self):
        self._point_maze.close()


def make_env(name: str, **kwargs) -> gym.Env:
    """``gym.make`` of the D4RL-convention maze2d env; ``env.spec.max_episode_steps`` is D4RL's."""
    spec = maze_spec(name)
    env_id = _ENV_ID.format(name=name)
    if env_id not in gym.registry:
        gym.register(id=env_id, entry_point="diffnorm.envs.maze2d:Maze2dEnv", max_episode_steps=spec.max_episode_steps,
                     kwargs={"name": name})
    return gym.make(env_id, **kwargs)
