"""maze2d datasets by D4RL's own recipe, on the maintained simulator, in minutes.

The stitch datasets (``diffnorm.data.stitch``) reuse the controller and simulator below with OGBench's
stitch recipe: short separate episodes, far-apart tasks.

Recipe (Fu et al. 2020; D4RL ``scripts/generation/generate_maze2d_datasets.py`` with ``--noisy``):

- a waypoint controller: shortest path on the cell grid from the agent's cell to the goal's cell, each
  intermediate waypoint jittered by -U(0, 0.2) per coordinate; PD control 10 (waypoint - pos) - 1 vel,
  clipped to [-1, 1]; a waypoint (and the goal cell) counts as reached within 0.1 while the position
  moved less than 0.1 since the previous step;
- N(0, 0.5) noise added to every action, then clipped to [-1, 1];
- one continuous stream: when the goal cell is reached, or after ``max_episode_steps`` steps with one goal,
  that step gets ``timeouts = True`` and a new goal (uniform free cell + U(-0.1, 0.1)) is drawn; the point
  mass is never reset;
- ``rewards``: D4RL's sparse relabelling, 1 when the observation is within 0.5 of the *evaluation* goal;
  ``terminals`` all false.

Deliberate differences: D4RL's Q-iteration (50 iterations) is replaced by breadth-first search, which
gives the same shortest paths and breaks ties in the same action order; and D4RL's script records the
pre-step observation again on the step after each goal change (it skips ``s = next_s`` there), which
is not reproduced: here every observation is the simulator's state.

Speed: the loop steps the env's own MuJoCo model with ``mujoco.mj_step`` (``PointMassSim``), doing what
gymnasium-robotics' ``PointEnv.step`` does (clip action, clip velocity to +-5, ``frame_skip`` steps of
dt 0.01) without the wrappers; tests check it against ``make_env`` step by step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
from tqdm import tqdm

from diffnorm.data.d4rl_format import load_d4rl_hdf5, read_attrs, write_d4rl_hdf5
from diffnorm.envs.maze2d import (
    GOAL_RADIUS,
    NEIGHBOURS,
    RESET_POS_NOISE,
    RESET_VEL_STD,
    bfs_distances,
    build_point_maze,
    centred_frame,
    in_wall,
    make_env,
    maze_spec,
    normalized_score,
    xy_to_cell,
)
from diffnorm.errors import ConfigError, require

RECIPE_VERSION = "d4rl-noisy-bfs-1"
ACTION_NOISE_STD = 0.5
GOAL_NOISE = 0.1  # D4RL set_target: U(-0.1, 0.1) around a free cell
VELOCITY_LIMIT = 5.0  # PointEnv clips qvel to +-5 before each step
_CHUNK = 65536  # action noise is drawn in blocks of this many steps


class WaypointController:
    """D4RL's maze2d waypoint controller (``d4rl/pointmaze/waypoint_controller.py``), scalar inputs.

    ``rng`` draws the waypoint jitter. As in D4RL, a new plan is made only when the goal's *cell*
    changes, and the controller aims at the goal cell's centre, not at the (noisy) goal point.
    """

    def __init__(self, name: str, rng: np.random.Generator, solve_thresh: float = 0.1, p_gain: float = 10.0,
                 d_gain: float = -1.0, jitter: float = 0.2):
        self.name = name
        self.layout = maze_spec(name).layout
        self.rng = rng
        self.solve_thresh = solve_thresh
        self.vel_thresh = 0.1
        self.p_gain = p_gain
        self.d_gain = d_gain
        self.jitter = jitter
        self._distances: dict[tuple[int, int], np.ndarray] = {}
        self.target: tuple[int, int] | None = None
        self.waypoints: list[tuple[float, float]] = []
        self.index = 0
        self._prev = (0.0, 0.0)

    def reset(self) -> None:
        """Forget the plan (the next call replans even for the same goal cell)."""
        self.target = None

    def path(self, start: tuple[int, int], target: tuple[int, int]) -> list[tuple[int, int]]:
        """Cells after ``start`` up to and including ``target`` on a shortest path."""
        if target not in self._distances:
            self._distances[target] = bfs_distances(self.name, target)
        dist = self._distances[target]
        require(dist[start] >= 0, f"{self.name}: cell {start} cannot reach goal cell {target}")
        cells, (i, j) = [], start
        if start == target:
            return [target]
        while (i, j) != target:
            i, j = next((i + di, j + dj) for di, dj in NEIGHBOURS if dist[i + di, j + dj] == dist[i, j] - 1)
            cells.append((i, j))
        return cells

    def _plan(self, x: float, y: float, target: tuple[int, int]) -> None:
        start = (round(x), round(y))
        cells = self.path(start, target)
        jitter = self.rng.uniform(size=(len(cells), 2)) * self.jitter
        self.waypoints = [(c[0] - float(jit[0]), c[1] - float(jit[1])) if c != target else (float(c[0]), float(c[1]))
                          for c, jit in zip(cells, jitter)]
        self.index = 0
        self.target = target
        self._prev = (float(start[0]), float(start[1]))  # D4RL starts the motion check from the cell centre

    def act(self, x: float, y: float, vx: float, vy: float, goal_x: float, goal_y: float
            ) -> tuple[float, float, bool]:
        """(ax, ay, reached): PD action toward the current waypoint; ``reached`` when at the goal cell."""
        target = (round(goal_x), round(goal_y))
        if target != self.target:
            self._plan(x, y, target)
        moved = math.hypot(self._prev[0] - x, self._prev[1] - y)
        reached = math.hypot(x - target[0], y - target[1]) < self.solve_thresh and moved < self.vel_thresh
        wx, wy = (float(target[0]), float(target[1])) if reached else self.waypoints[self.index]
        ax = self.p_gain * (wx - x) + self.d_gain * vx
        ay = self.p_gain * (wy - y) + self.d_gain * vy
        if not reached and math.hypot(x - wx, y - wy) < self.solve_thresh and moved < self.vel_thresh:
            self.index += 1
        self._prev = (x, y)
        return min(max(ax, -1.0), 1.0), min(max(ay, -1.0), 1.0), reached


class PointMassSim:
    """The env's MuJoCo model stepped directly, in D4RL coordinates (the generator's hot loop).

    Same model, timestep and frame skip as ``make_env``; per step it clips the action and the velocity and
    calls ``mj_step``. (``PointEnv`` clips the velocity through ``set_state``, whose extra ``mj_forward``
    changes nothing because ``mj_step`` recomputes the forward dynamics first.)
    """

    def __init__(self, name: str):
        point_maze = build_point_maze(name)
        env = point_maze.point_env
        self.model = env.model
        self.frame_skip = int(env.frame_skip)
        self.data = mujoco.MjData(self.model)
        self.frame = centred_frame(name)
        point_maze.close()

    def reset(self, xy: np.ndarray, velocity: np.ndarray) -> tuple[float, float, float, float]:
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:] = self.frame.point_from_d4rl(xy)
        self.data.qvel[:] = self.frame.vector_from_d4rl(velocity)
        mujoco.mj_forward(self.model, self.data)
        return self.state()

    def state(self) -> tuple[float, float, float, float]:
        qx, qy = self.data.qpos.tolist()
        vx, vy = self.data.qvel.tolist()
        return self.frame.state_to_d4rl_scalars(qx, qy, vx, vy)

    def step(self, ax: float, ay: float) -> tuple[float, float, float, float]:
        ax, ay = min(max(ax, -1.0), 1.0), min(max(ay, -1.0), 1.0)
        np.clip(self.data.qvel, -VELOCITY_LIMIT, VELOCITY_LIMIT, out=self.data.qvel)
        self.data.ctrl[:] = self.frame.vector_from_d4rl_scalars(ax, ay)
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)
        return self.state()


def generate_maze2d(name: str, steps: int | None = None, seed: int = 0, progress: bool = True
                    ) -> dict[str, np.ndarray]:
    """A D4RL-layout maze2d stream of ``steps`` steps (default: D4RL's size), deterministic in ``seed``."""
    spec = maze_spec(name)
    steps = spec.dataset_steps if steps is None else steps
    require(isinstance(steps, (int, np.integer)) and steps > 0, f"steps={steps} must be a positive integer")
    goal_rng, noise_rng, jitter_rng, reset_rng = (np.random.default_rng(s)
                                                  for s in np.random.SeedSequence(seed).spawn(4))
    free = np.asarray(spec.free_cells, dtype=np.float64)

    def draw_goal() -> tuple[float, float]:
        gx, gy = free[goal_rng.integers(len(free))] + goal_rng.uniform(-GOAL_NOISE, GOAL_NOISE, size=2)
        return float(gx), float(gy)

    sim = PointMassSim(name)
    controller = WaypointController(name, jitter_rng)
    goal = draw_goal()
    start = free[reset_rng.integers(len(free))] + reset_rng.uniform(-RESET_POS_NOISE, RESET_POS_NOISE, size=2)
    x, y, vx, vy = sim.reset(start, reset_rng.normal(0.0, RESET_VEL_STD, size=2))

    observations = np.empty((steps, 4))
    actions = np.empty((steps, 2))
    goals = np.empty((steps, 2))
    timeouts = np.zeros(steps, dtype=bool)
    limit = spec.max_episode_steps
    bar = generation_bar(steps, name, progress)
    since_goal = 0
    for chunk_start in range(0, steps, _CHUNK):
        noise = noise_rng.normal(0.0, ACTION_NOISE_STD, size=(min(_CHUNK, steps - chunk_start), 2)).tolist()
        for t, (nx, ny) in enumerate(noise, start=chunk_start):
            ax, ay, done = controller.act(x, y, vx, vy, goal[0], goal[1])
            ax, ay = min(max(ax + nx, -1.0), 1.0), min(max(ay + ny, -1.0), 1.0)
            done = done or since_goal >= limit
            observations[t] = x, y, vx, vy
            actions[t] = ax, ay
            goals[t] = goal
            timeouts[t] = done
            x, y, vx, vy = sim.step(ax, ay)
            since_goal += 1
            if done:
                goal = draw_goal()
                since_goal = 0
        if bar is not None:
            bar.update(len(noise))
    if bar is not None:
        bar.close()
    rewards = np.linalg.norm(observations[:, :2] - spec.eval_goal_xy, axis=-1) <= GOAL_RADIUS
    return {"observations": observations.astype(np.float32), "actions": actions.astype(np.float32),
            "rewards": rewards.astype(np.float32), "terminals": np.zeros(steps, dtype=bool),
            "timeouts": timeouts, "infos/goal": goals.astype(np.float32),
            "infos/qpos": observations[:, :2].astype(np.float32),
            "infos/qvel": observations[:, 2:].astype(np.float32)}


def generation_bar(total: int, name: str, enabled: bool):
    if not enabled:
        return None
    return tqdm(total=total, desc=f"generating {name}", unit="step", unit_scale=True, mininterval=1.0)


def dataset_attrs(name: str, steps: int, seed: int) -> dict[str, Any]:
    """Metadata stored with a generated file; ``ensure_dataset`` checks it before reusing a cache."""
    return {"maze": name, "seed": int(seed), "steps": int(steps), "recipe_version": RECIPE_VERSION,
            "action_noise_std": ACTION_NOISE_STD, "max_episode_steps": maze_spec(name).max_episode_steps,
            "coordinates": "d4rl: cell (i, j) centred at x=i, y=j", "frame": "diffnorm",
            "generator": "diffnorm.data.generate"}


def dataset_path(env_name: str, steps: int, seed: int, data_dir: str | Path = "data") -> Path:
    return Path(data_dir) / f"{env_name}-{RECIPE_VERSION}-n{steps}-seed{seed}.hdf5"


def ensure_dataset(env_name: str, steps: int | None = None, seed: int = 0, data_dir: str | Path = "data",
                   progress: bool = True) -> Path:
    """Path of the generated dataset, generating and caching it on first use.

    A cached file whose metadata does not match (other recipe version, maze, seed or size) raises
    instead of being overwritten."""
    spec = maze_spec(env_name)
    steps = spec.dataset_steps if steps is None else int(steps)
    path = dataset_path(env_name, steps, seed, data_dir)
    if path.exists():
        found = read_attrs(path)
        expected = dataset_attrs(env_name, steps, seed)
        wrong = {k: found.get(k) for k in ("maze", "seed", "steps", "recipe_version") if found.get(k) != expected[k]}
        if wrong:
            raise ConfigError(f"{path}: cached dataset has {wrong}, expected "
                              f"{ {k: expected[k] for k in wrong} }; delete it to regenerate")
        return path
    data = generate_maze2d(env_name, steps, seed, progress=progress)
    return write_d4rl_hdf5(path, data, dataset_attrs(env_name, steps, seed))


def dataset_checks(name: str, data: dict[str, np.ndarray]) -> dict[str, Any]:
    """The acceptance checks of a generated stream, as numbers (the tests and the job assert on them).

    A goal segment ends at a ``timeouts`` step; it counts as reached when that step's position is within
    the controller's 0.1 of the goal cell, else it ended at the time limit. The last, open segment counts
    as neither."""
    spec = maze_spec(name)
    obs, goal, timeouts = data["observations"], data["infos/goal"], np.asarray(data["timeouts"], dtype=bool)
    xy = obs[:, :2].astype(np.float64)
    cells = xy_to_cell(xy)
    visited = {(int(i), int(j)) for i, j in np.unique(cells, axis=0)}
    free = set(spec.free_cells)
    ends = np.flatnonzero(timeouts)
    goal_cell = np.round(goal[ends].astype(np.float64))
    reached = np.linalg.norm(xy[ends] - goal_cell, axis=-1) < 0.1
    changes = np.flatnonzero(np.any(goal[1:] != goal[:-1], axis=-1))
    lengths = np.diff(np.concatenate([[-1], ends]))
    return {
        "steps": len(obs),
        "free_cells": len(free),
        "free_cells_visited": len(free & visited),
        "unvisited_free_cells": sorted(free - visited),
        "positions_in_wall": int(in_wall(name, xy).sum()),
        "action_min": float(data["actions"].min()),
        "action_max": float(data["actions"].max()),
        "goal_segments": len(ends),
        "goals_reached": int(reached.sum()),
        "goals_reached_fraction": float(reached.mean()) if len(ends) else 0.0,
        "segments_at_time_limit": int(np.sum(lengths > spec.max_episode_steps)),
        "timeouts_match_goal_changes": bool(np.array_equal(changes, ends[ends < len(obs) - 1])),
        "segment_length_mean": float(lengths.mean()) if len(ends) else 0.0,
        "segment_length_max": int(lengths.max()) if len(ends) else 0,
        "reward_fraction": float(np.mean(data["rewards"])),
        "xy_min": xy.min(axis=0).tolist(),
        "xy_max": xy.max(axis=0).tolist(),
    }


def load_or_generate(env_name: str, steps: int | None, seed: int, data_dir: str | Path = "data"
                     ) -> dict[str, np.ndarray]:
    """``ensure_dataset`` then ``load_d4rl_hdf5``: the arrays a training job needs."""
    return load_d4rl_hdf5(ensure_dataset(env_name, steps, seed, data_dir))



def controller_returns(name: str, episodes: int = 100, seed: int = 0, replan_each_episode: bool = True,
                       keep_paths: int = 0) -> dict[str, Any]:
    """Run the waypoint controller (no action noise) as a policy in ``make_env`` and score it.

    This is how D4RL measured ``ref_max_score`` (``scripts/reference_scores/maze2d_controller.py``). That
    script keeps one controller for all episodes; since the evaluation goal never changes, it plans only
    in the first episode and afterwards steers straight at the goal from wherever the next episode
    starts. ``replan_each_episode=False`` reproduces that; the default plans every episode.
    """
    require(episodes > 0, f"episodes={episodes} must be positive")
    env = make_env(name)
    controller = WaypointController(name, np.random.default_rng(seed))
    returns, reached, paths = [], [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed if episode == 0 else None)
        if replan_each_episode:
            controller.reset()
        gx, gy = (float(v) for v in env.get_wrapper_attr("goal"))
        total, truncated, path = 0.0, False, [obs[:2]]
        while not truncated:
            ax, ay, _ = controller.act(*obs.tolist(), gx, gy)
            obs, reward, _, truncated, _ = env.step(np.array([ax, ay]))
            total += reward
            path.append(obs[:2])
        returns.append(total)
        reached.append(total > 0)
        if episode < keep_paths:
            paths.append(np.asarray(path))
    env.close()
    returns = np.asarray(returns)
    scores = np.asarray(normalized_score(name, returns))
    return {"episodes": episodes, "return_mean": float(returns.mean()), "return_std": float(returns.std()),
            "score_mean": float(scores.mean()), "score_sem": float(scores.std(ddof=1) / np.sqrt(episodes))
            if episodes > 1 else 0.0, "score_min": float(scores.min()), "score_max": float(scores.max()),
            "episodes_reaching_goal": int(np.sum(reached)), "returns": returns.tolist(), "paths": paths}
