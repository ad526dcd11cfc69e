"""Stitch datasets: OGBench's "stitch" recipe (Park et al. 2024) on maze2d's point mass.

Every episode starts in a random free cell and goes to a cell at most STITCH_TRAVEL_CELLS BFS steps away
(exactly that many where the maze allows) with the waypoint controller and D4RL's action noise of
``diffnorm.data.generate``, for a fixed number of steps; after arriving the controller holds the point
at the goal cell's centre, as OGBench's oracle does. Evaluation tasks join cells at least
STITCH_MIN_TASK_DISTANCE apart, so a planner must stitch pieces of several episodes; ``stitch_check``
verifies that no episode comes within one cell of both ends of a task.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from diffnorm.data.d4rl_format import read_attrs, write_d4rl_hdf5
from diffnorm.data.generate import (
    ACTION_NOISE_STD,
    GOAL_NOISE,
    PointMassSim,
    WaypointController,
    generation_bar,
)
from diffnorm.envs.maze2d import (
    GOAL_RADIUS,
    RESET_POS_NOISE,
    RESET_VEL_STD,
    bfs_distances,
    maze_spec,
    xy_to_cell,
)
from diffnorm.errors import ConfigError, require

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
    bar = generation_bar(n, f"{name} stitch", progress)
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
            "generator": "diffnorm.data.stitch.generate_stitch",
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
