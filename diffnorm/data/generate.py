"""maze2d datasets by D4RL's own recipe, on the maintained simulator, in minutes; and stitch datasets.

The stitch datasets (``generate_stitch``, ``stitch_tasks``, ``stitch_check``; section at the end) reuse the
controller and simulator below with OGBench's stitch recipe: short separate episodes, far-apart tasks.

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

import functools
import json
import math
from pathlib import Path
from typing import Any

import mujoco
import numpy as np

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
    maze_spec,
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
    bar = _progress(steps, name, progress)
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


def _progress(total: int, name: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

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
    from diffnorm.envs.maze2d import make_env, normalized_score

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


# ---------------------------------------------------------------------------------------------------------
# Stitch datasets (OGBench's "stitch" recipe, Park et al. 2024, on maze2d's point mass)
#
# Every episode starts in a random free cell and goes to a cell at most STITCH_TRAVEL_CELLS BFS steps away
# (exactly that many where the maze allows) with the waypoint controller and D4RL's action noise, for a
# fixed number of steps; after arriving the controller holds the point at the goal cell's centre, as
# OGBench's oracle does. Evaluation tasks join cells at least STITCH_MIN_TASK_DISTANCE apart, so a
# planner must stitch pieces of several episodes; ``stitch_check`` verifies that no episode comes within
# one cell of both ends of a task.
# ---------------------------------------------------------------------------------------------------------

STITCH_RECIPE_VERSION = "stitch-waypoint-1"
STITCH_EPISODES = 5000  # OGBench's pointmaze-*-stitch size
STITCH_TRAVEL_CELLS = 4  # OGBench: each episode's goal is 4 BFS steps from its start
STITCH_MIN_TASK_DISTANCE = 8
STITCH_TASKS = 5  # OGBench evaluates 5 fixed tasks per maze
NEAR_CELLS = 1  # "within one cell": BFS distance <= 1 from a task's start or goal cell
# An episode whose cells lie within k BFS steps of each other can only come within NEAR_CELLS of both ends
# of a task at distance d if k >= d - 2 * NEAR_CELLS; one more cell of margin absorbs noise overshoot.
_TRAVEL_MARGIN = 2 * NEAR_CELLS + 1


@functools.cache
def _cell_distances(name: str) -> tuple[tuple[tuple[int, int], ...], np.ndarray]:
    """(free cells in row-major order, BFS distance matrix between them [F, F])."""
    cells = tuple(maze_spec(name).free_cells)
    matrix = np.stack([bfs_distances(name, c)[tuple(np.array(cells).T)] for c in cells])
    require(bool(np.all(matrix >= 0)), f"{name}: some free cells cannot reach each other")
    matrix.setflags(write=False)
    return cells, matrix


def stitch_task_cells(name: str, count: int = STITCH_TASKS, min_distance: int = STITCH_MIN_TASK_DISTANCE
                      ) -> list[tuple[tuple[int, int], tuple[int, int], int]]:
    """Deterministic evaluation tasks ``(start_cell, goal_cell, bfs_distance)``, spread over the maze.

    Candidates are ordered cell pairs at BFS distance >= ``min_distance``, or, when the maze has none
    (maze2d-umaze: its longest shortest path is 6), the pairs at the maze's largest distance. Greedy
    choice: each next task maximizes the BFS distance of its nearer endpoint to the endpoints already
    chosen (so tasks do not share or reverse each other while others exist), then its own length, then
    the row-major order of its cells. Fewer than ``count`` tasks when fewer candidates exist.
    """
    require(int(count) >= 1 and int(min_distance) >= 1, f"count={count} and min_distance={min_distance} must be "
            f"positive")
    cells, dist = _cell_distances(name)
    threshold = min(int(min_distance), int(dist.max()))
    candidates = [(a, b) for a in range(len(cells)) for b in range(len(cells)) if dist[a, b] >= threshold]
    chosen: list[tuple[int, int]] = []
    while candidates and len(chosen) < int(count):
        used = [e for pair in chosen for e in pair]

        def key(pair: tuple[int, int], used: list[int] = used) -> tuple[int, int, int, int]:
            spread = min(dist[e, used].min() for e in pair) if used else 0
            return (-int(spread), -int(dist[pair]), pair[0], pair[1])

        best = min(candidates, key=key)
        chosen.append(best)
        candidates.remove(best)
    return [(cells[a], cells[b], int(dist[a, b])) for a, b in chosen]


def stitch_tasks(name: str, count: int = STITCH_TASKS, min_distance: int = STITCH_MIN_TASK_DISTANCE
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The stitch evaluation tasks as ``(start_xy, goal_xy)`` cell centres in D4RL coordinates, ready for
    ``Maze2dEnv.reset(options={"start_xy": ..., "goal_xy": ...})`` or a planner."""
    return [(np.asarray(s, dtype=np.float64), np.asarray(g, dtype=np.float64))
            for s, g, _ in stitch_task_cells(name, count, min_distance)]


def stitch_travel_cells(name: str, tasks: list[tuple[np.ndarray, np.ndarray]] | None = None) -> int:
    """How far (in BFS steps) an episode may travel so that the stitch check can hold by construction.

    OGBench's 4 when every task is at least 4 + 3 steps long (medium, large); shorter otherwise
    (maze2d-umaze, whose tasks are 6 steps long: 3). See ``_TRAVEL_MARGIN``."""
    tasks = stitch_tasks(name) if tasks is None else tasks
    shortest = min(_task_distance(name, s, g) for s, g in tasks)
    travel = min(STITCH_TRAVEL_CELLS, shortest - _TRAVEL_MARGIN)
    require(travel >= 1, f"{name}: the shortest task is {shortest} BFS steps; episodes would have to travel "
            f"{travel} < 1 cells to stay clear of its ends")
    return travel


def _free_cell(name: str, xy: np.ndarray, what: str) -> tuple[int, int]:
    cell = tuple(int(v) for v in xy_to_cell(np.asarray(xy, dtype=np.float64)))
    layout = maze_spec(name).layout
    inside = 0 <= cell[0] < layout.shape[0] and 0 <= cell[1] < layout.shape[1]
    require(inside and layout[cell] == 0, f"{what} {tuple(np.asarray(xy).tolist())} is not in a free cell of {name}")
    return cell


def _task_distance(name: str, start_xy: np.ndarray, goal_xy: np.ndarray) -> int:
    start, goal = _free_cell(name, start_xy, "task start"), _free_cell(name, goal_xy, "task goal")
    return int(bfs_distances(name, start)[goal])


def generate_stitch(name: str, episode_steps: int, episodes: int = STITCH_EPISODES, travel_cells: int | None = None,
                    seed: int = 0, progress: bool = True) -> dict[str, np.ndarray]:
    """``episodes`` separate episodes of ``episode_steps`` steps each, in the D4RL layout.

    Each starts at a uniformly drawn free cell (+ D4RL's reset noise), aims at a uniformly drawn cell at
    BFS distance exactly ``travel_cells`` (default ``stitch_travel_cells(name)``; the farthest cell when
    none is that far, where OGBench would stay put) + U(-0.1, 0.1), and runs the noisy waypoint controller
    of ``generate_maze2d``. ``timeouts`` is true at every episode's last step (the point mass is reset
    after it); ``rewards`` are 1 within 0.5 of the episode's own goal; ``terminals`` all false.
    """
    require(isinstance(episode_steps, (int, np.integer)) and episode_steps >= 2,
            f"episode_steps={episode_steps} must be an integer >= 2")
    require(isinstance(episodes, (int, np.integer)) and episodes >= 1, f"episodes={episodes} must be a positive integer")
    travel = stitch_travel_cells(name) if travel_cells is None else int(travel_cells)
    require(travel >= 1, f"travel_cells={travel_cells} must be >= 1")
    cells, dist = _cell_distances(name)
    cell_rng, reset_rng, goal_rng, noise_rng, jitter_rng = (np.random.default_rng(s)
                                                            for s in np.random.SeedSequence(seed).spawn(5))
    sim = PointMassSim(name)
    controller = WaypointController(name, jitter_rng)
    n = int(episodes) * int(episode_steps)
    observations = np.empty((n, 4))
    actions = np.empty((n, 2))
    goals = np.empty((n, 2))
    timeouts = np.zeros(n, dtype=bool)
    bar = _progress(n, f"{name} stitch", progress)
    for e in range(int(episodes)):
        start = int(cell_rng.integers(len(cells)))
        reach = min(travel, int(dist[start].max()))
        targets = np.flatnonzero(dist[start] == reach)
        goal_cell = cells[int(targets[cell_rng.integers(len(targets))])]
        gx, gy = (float(v) for v in np.asarray(goal_cell) + goal_rng.uniform(-GOAL_NOISE, GOAL_NOISE, size=2))
        xy0 = np.asarray(cells[start], dtype=np.float64) + reset_rng.uniform(-RESET_POS_NOISE, RESET_POS_NOISE, size=2)
        x, y, vx, vy = sim.reset(xy0, reset_rng.normal(0.0, RESET_VEL_STD, size=2))
        controller.reset()
        first = e * int(episode_steps)
        noise = noise_rng.normal(0.0, ACTION_NOISE_STD, size=(int(episode_steps), 2)).tolist()
        for t, (nx, ny) in enumerate(noise, start=first):
            ax, ay, _ = controller.act(x, y, vx, vy, gx, gy)
            ax, ay = min(max(ax + nx, -1.0), 1.0), min(max(ay + ny, -1.0), 1.0)
            observations[t] = x, y, vx, vy
            actions[t] = ax, ay
            x, y, vx, vy = sim.step(ax, ay)
        goals[first:first + int(episode_steps)] = gx, gy
        timeouts[first + int(episode_steps) - 1] = True
        if bar is not None:
            bar.update(int(episode_steps))
    if bar is not None:
        bar.close()
    rewards = np.linalg.norm(observations[:, :2] - goals, axis=-1) <= GOAL_RADIUS
    return {"observations": observations.astype(np.float32), "actions": actions.astype(np.float32),
            "rewards": rewards.astype(np.float32), "terminals": np.zeros(n, dtype=bool), "timeouts": timeouts,
            "infos/goal": goals.astype(np.float32), "infos/qpos": observations[:, :2].astype(np.float32),
            "infos/qvel": observations[:, 2:].astype(np.float32)}


def episode_ranges(data: dict[str, np.ndarray]) -> list[tuple[int, int]]:
    """Half-open ``(start, end)`` of the episodes of data made of separate episodes: each ends at a step
    with ``timeouts`` or ``terminals`` set (a trailing open episode is kept)."""
    ends = np.flatnonzero(np.asarray(data["timeouts"], dtype=bool) | np.asarray(data["terminals"], dtype=bool)) + 1
    n = len(data["observations"])
    if n and (len(ends) == 0 or ends[-1] != n):
        ends = np.append(ends, n)
    starts = np.concatenate([[0], ends[:-1]])
    return [(int(s), int(e)) for s, e in zip(starts, ends)]


def stitch_check(data: dict[str, np.ndarray], tasks: list[tuple[np.ndarray, np.ndarray]], maze: str
                 ) -> dict[str, Any]:
    """Does any episode come within one cell of both a task's start and its goal?

    "Within one cell": the episode visits (``xy_to_cell`` of an observation) a cell at BFS distance
    <= ``NEAR_CELLS`` from the task's start cell, and likewise one near its goal cell; cells in walls or
    off the map never count as near. Such an episode would show the planner a whole task, so a stitch
    dataset must have none. Per task the report gives how many episodes come near each end and the
    closest approach: the smallest, over episodes, of max(distance to the start, distance to the goal);
    the check passes when it exceeds ``NEAR_CELLS`` for every task.
    """
    require(len(tasks) >= 1, "stitch_check needs at least one task")
    layout = maze_spec(maze).layout
    bounds = episode_ranges(data)
    starts = np.array([s for s, _ in bounds])
    cells = xy_to_cell(np.asarray(data["observations"], dtype=np.float64)[:, :2])
    inside = ((cells[:, 0] >= 0) & (cells[:, 0] < layout.shape[0]) & (cells[:, 1] >= 0)
              & (cells[:, 1] < layout.shape[1]))
    i, j = np.where(inside, cells[:, 0], 0), np.where(inside, cells[:, 1], 0)
    far = np.iinfo(np.int64).max

    def episode_min_distance(cell: tuple[int, int]) -> np.ndarray:
        d = bfs_distances(maze, cell)
        d = np.where(d < 0, far, d)[i, j]
        return np.minimum.reduceat(np.where(inside, d, far), starts)

    per_task, violating = [], np.zeros(len(bounds), dtype=bool)
    for start_xy, goal_xy in tasks:
        s_cell, g_cell = _free_cell(maze, start_xy, "task start"), _free_cell(maze, goal_xy, "task goal")
        to_start, to_goal = episode_min_distance(s_cell), episode_min_distance(g_cell)
        bad = (to_start <= NEAR_CELLS) & (to_goal <= NEAR_CELLS)
        violating |= bad
        closest = np.maximum(to_start, to_goal).min()
        per_task.append({"start_xy": np.asarray(start_xy, dtype=float).tolist(),
                         "goal_xy": np.asarray(goal_xy, dtype=float).tolist(),
                         "start_cell": list(s_cell), "goal_cell": list(g_cell),
                         "bfs_distance": int(bfs_distances(maze, s_cell)[g_cell]),
                         "episodes_near_start": int(np.sum(to_start <= NEAR_CELLS)),
                         "episodes_near_goal": int(np.sum(to_goal <= NEAR_CELLS)),
                         "violations": int(bad.sum()),
                         "closest_approach_cells": int(closest) if closest < far else None})
    return {"passed": not bool(violating.any()), "maze": maze, "episodes": len(bounds),
            "near_cells": NEAR_CELLS, "violations": int(violating.sum()),
            "violating_episodes": np.flatnonzero(violating)[:20].tolist(), "tasks": per_task}


def stitch_episode_stats(data: dict[str, np.ndarray], maze: str) -> dict[str, Any]:
    """Per-episode numbers of a stitch file: how far episodes range (BFS distance from the first cell to
    every visited cell), whether and when they reach their goal (first step within 0.5 of it)."""
    cells_list, dist = _cell_distances(maze)
    index = {c: k for k, c in enumerate(cells_list)}
    layout = maze_spec(maze).layout
    bounds = episode_ranges(data)
    xy = np.asarray(data["observations"], dtype=np.float64)[:, :2]
    cells = xy_to_cell(xy)
    inside = ((cells[:, 0] >= 0) & (cells[:, 0] < layout.shape[0]) & (cells[:, 1] >= 0)
              & (cells[:, 1] < layout.shape[1]))
    lookup = np.full(layout.shape, -1, dtype=np.int64)
    for c, k in index.items():
        lookup[c] = k
    k = np.where(inside, lookup[np.where(inside, cells[:, 0], 0), np.where(inside, cells[:, 1], 0)], -1)
    require(bool(np.all(k >= 0)), f"{maze}: {int(np.sum(k < 0))} positions lie in wall or off-map cells")
    starts = np.array([s for s, _ in bounds])
    first_cell = np.repeat(k[starts], [e - s for s, e in bounds])
    span = np.maximum.reduceat(dist[first_cell, k], starts)
    goal_cells = xy_to_cell(np.asarray(data["infos/goal"], dtype=np.float64)[starts])
    travel = dist[k[starts], lookup[goal_cells[:, 0], goal_cells[:, 1]]]
    at_goal = np.asarray(data["rewards"]) > 0
    arrival = np.array([int(np.argmax(at_goal[s:e])) if at_goal[s:e].any() else -1 for s, e in bounds])
    reached = arrival >= 0
    lengths = np.array([e - s for s, e in bounds])
    return {"episodes": len(bounds), "episode_steps_min": int(lengths.min()), "episode_steps_max": int(lengths.max()),
            "goal_distance_counts": {int(d): int(c) for d, c in zip(*np.unique(travel, return_counts=True))},
            "span_counts": {int(d): int(c) for d, c in zip(*np.unique(span, return_counts=True))},
            "episodes_reaching_goal": int(reached.sum()),
            "arrival_step_median": float(np.median(arrival[reached])) if reached.any() else None,
            "arrival_step_max": int(arrival[reached].max()) if reached.any() else None,
            "final_within_goal_radius": int(sum(at_goal[e - 1] for _, e in bounds))}


def stitch_attrs(name: str, episodes: int, episode_steps: int, travel_cells: int, seed: int,
                 tasks: list[tuple[np.ndarray, np.ndarray]], check: dict[str, Any]) -> dict[str, Any]:
    """Metadata of a stitch file: the recipe, the tasks and the stitch check's verdict (JSON strings).

    ``segments = "timeouts"`` tells readers (``train_diffuser``) to cut at ``timeouts`` only."""
    return {"maze": name, "seed": int(seed), "episodes": int(episodes), "episode_steps": int(episode_steps),
            "steps": int(episodes) * int(episode_steps), "travel_cells": int(travel_cells),
            "recipe_version": STITCH_RECIPE_VERSION, "action_noise_std": ACTION_NOISE_STD,
            "segments": "timeouts", "coordinates": "d4rl: cell (i, j) centred at x=i, y=j", "frame": "diffnorm",
            "generator": "diffnorm.data.generate.generate_stitch",
            "tasks_json": json.dumps([[np.asarray(s).tolist(), np.asarray(g).tolist()] for s, g in tasks]),
            "stitch_check_passed": bool(check["passed"]), "stitch_check_json": json.dumps(check)}


def stitch_dataset_path(env_name: str, episodes: int, episode_steps: int, seed: int, data_dir: str | Path = "data",
                        travel_cells: int | None = None) -> Path:
    travel = stitch_travel_cells(env_name) if travel_cells is None else int(travel_cells)
    return (Path(data_dir) / f"{env_name}-{STITCH_RECIPE_VERSION}-t{travel}-e{episodes}x{episode_steps}"
            f"-seed{seed}.hdf5")


def build_stitch_dataset(env_name: str, episode_steps: int, episodes: int = STITCH_EPISODES,
                         travel_cells: int | None = None, seed: int = 0, progress: bool = True
                         ) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """Generate and check: ``(data, attrs, check)``; the caller decides what a failed check means."""
    tasks = stitch_tasks(env_name)
    travel = stitch_travel_cells(env_name, tasks) if travel_cells is None else int(travel_cells)
    data = generate_stitch(env_name, episode_steps, episodes, travel, seed, progress=progress)
    check = stitch_check(data, tasks, env_name)
    return data, stitch_attrs(env_name, episodes, episode_steps, travel, seed, tasks, check), check


def ensure_stitch_dataset(env_name: str, episode_steps: int, episodes: int = STITCH_EPISODES,
                          travel_cells: int | None = None, seed: int = 0, data_dir: str | Path = "data",
                          progress: bool = True) -> Path:
    """Path of a checked stitch dataset, generating and caching it on first use.

    Raises ConfigError, writing nothing, when the stitch check fails, and for a cached file whose
    metadata does not match (or records a failed check)."""
    path = stitch_dataset_path(env_name, episodes, episode_steps, seed, data_dir, travel_cells)
    if path.exists():
        found = read_attrs(path)
        expected = {"maze": env_name, "seed": int(seed), "episodes": int(episodes), "episode_steps": int(episode_steps),
                    "recipe_version": STITCH_RECIPE_VERSION, "stitch_check_passed": True}
        wrong = {k: found.get(k) for k in expected if found.get(k) != expected[k]}
        if wrong:
            raise ConfigError(f"{path}: cached stitch dataset has {wrong}, expected "
                              f"{ {k: expected[k] for k in wrong} }; delete it to regenerate")
        return path
    data, attrs, check = build_stitch_dataset(env_name, episode_steps, episodes, travel_cells, seed, progress)
    if not check["passed"]:
        raise ConfigError(f"{env_name}: stitch check failed, {check['violations']} episode(s) come within "
                          f"{NEAR_CELLS} cell of both ends of a task (first: {check['violating_episodes'][:5]})")
    return write_d4rl_hdf5(path, data, attrs)
