"""OGBench's pointmaze (Park et al. 2024) as the external stitching benchmark: thin adapters only.

OGBench's ``ogbench`` wheel (optional extra ``diffnorm[ogbench]``) ships the environments, the BFS oracle
and the 5 evaluation tasks per maze, but not its data scripts. Here:

- ``generate_ogbench_stitch`` follows the published ``pointmaze-{medium,large}-stitch-v0`` recipe in
  OGBench's own env: 5000 episodes, each from a uniformly drawn free cell toward a uniformly drawn cell at
  BFS distance exactly 4 (the start cell itself when none is that far), steered by the oracle's unit
  vector toward its BFS subgoal plus N(0, 0.5) noise, clipped to [-1, 1]; ``max_episode_steps=201``, so
  201 rows per episode, which OGBench's loader turns into 200 transitions. OGBench's 10 % validation
  episodes are not generated.
- ``evaluate_ogbench`` runs a policy on the env's fixed tasks (``reset(options={"task_id": i})``, goal from
  ``info["goal"]``, env defaults: 1000 steps, episode ends at the goal) and scores each episode with the
  env's own ``info["success"]`` at its last step, as OGBench's ``evaluate`` does.

Frame. OGBench's medium and large layouts are maze2d's (checked when an env is made), with cell (i, j)
at x = 4 j - 4, y = 4 i - 4. Everything leaving this module is in diffnorm's D4RL frame (cell (i, j) at
x = i, y = j), so ``in_wall``, ``bfs_distances``, ``stitch_check`` and the maze plots apply unchanged;
``OGBenchFrame`` (in ``envs.frames``) is the one place that converts. Actions swap their axes but keep their scale (the box
[-1, 1]^2 maps onto itself); the point is kinematic, each unit of action moving it 0.2 OGBench units =
``OGBENCH_STEP`` cells in one step, and its observation is the position only, so data files hold
observations [N, 2] (``load_d4rl_hdf5(path, observation_dim=None)``). OGBench's success radius (1.0 of
its units) is 0.25 cells.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from diffnorm.data.d4rl_format import read_attrs, write_d4rl_hdf5
from diffnorm.data.generate import stitch_check, stitch_tasks
from diffnorm.envs.frames import OGBenchFrame
from diffnorm.envs.maze2d import bfs_distances, maze_spec, xy_to_cell
from diffnorm.errors import ConfigError, require

OGBENCH_ENVS = {"maze2d-medium": "pointmaze-medium-v0", "maze2d-large": "pointmaze-large-v0"}
OGBENCH_STITCH_EPISODES = 5000
OGBENCH_STITCH_EPISODE_STEPS = 201  # the published max_episode_steps; 200 transitions per episode
OGBENCH_TRAVEL_CELLS = 4
OGBENCH_ACTION_NOISE = 0.5
OGBENCH_STEP = 0.2 / 4.0  # cells moved per unit of action per step: PointEnv adds 0.2 * action, cells are 4 wide
OGBENCH_RECIPE_VERSION = "ogbench-stitch-1"

# policy(xy [N, 2], goal_xy [N, 2]) -> actions [N, 2], all in the D4RL frame
Policy = Callable[[np.ndarray, np.ndarray], np.ndarray]


def import_ogbench():
    """The ``ogbench`` package, or a ConfigError saying how to install it."""
    try:
        import ogbench.locomaze  # registers the pointmaze envs with gymnasium
    except ImportError as err:
        raise ConfigError("OGBench support needs the optional 'ogbench' package: pip install 'diffnorm[ogbench]' "
                          f"({err})") from None
    import ogbench

    return ogbench


def make_ogbench_env(maze: str, **kwargs):
    """``gymnasium.make`` of OGBench's twin of ``maze`` (maze2d-medium | maze2d-large); kwargs go to OGBench
    (``terminate_at_goal``, ``max_episode_steps``, ...). Raises if its layout differs from maze2d's."""
    require(maze in OGBENCH_ENVS, f"no OGBench pointmaze for {maze!r}; choose one of {list(OGBENCH_ENVS)}")
    import_ogbench()
    import gymnasium

    env = gymnasium.make(OGBENCH_ENVS[maze], **kwargs)
    layout = np.asarray(env.unwrapped.maze_map)
    require(np.array_equal(layout, maze_spec(maze).layout), f"{OGBENCH_ENVS[maze]}'s layout differs from {maze}'s")
    frame = OGBenchFrame()
    require((env.unwrapped._maze_unit, env.unwrapped._offset_x, env.unwrapped._offset_y)
            == (frame.unit, frame.offset, frame.offset), f"{OGBENCH_ENVS[maze]}: unexpected maze unit or offset")
    return env


def ogbench_maze_of(env_cfg: Any) -> str:
    """The maze2d name of an env config with an ``ogbench`` block (configs/env/ogbench_*.yaml), after
    checking that its OGBench id is that maze's twin."""
    maze, og_env = str(env_cfg["name"]), str(env_cfg["ogbench"]["env"])
    require(OGBENCH_ENVS.get(maze) == og_env, f"env.ogbench.env={og_env} is not the OGBench twin of {maze}; "
            f"the twins are {OGBENCH_ENVS}")
    return maze


@contextlib.contextmanager
def _numpy_global_seed(seed: int) -> Iterator[None]:
    """OGBench draws start and goal noise from numpy's global generator: seed it, then restore it."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def ogbench_tasks(maze: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """OGBench's fixed evaluation tasks of ``maze`` as ``(start_xy, goal_xy)`` cell centres, D4RL frame."""
    env = make_ogbench_env(maze)
    try:
        infos = env.unwrapped.task_infos
    finally:
        env.close()
    return [(np.asarray(t["init_ij"], dtype=np.float64), np.asarray(t["goal_ij"], dtype=np.float64)) for t in infos]


def generate_ogbench_stitch(maze: str, episodes: int = OGBENCH_STITCH_EPISODES,
                            episode_steps: int = OGBENCH_STITCH_EPISODE_STEPS,
                            travel_cells: int = OGBENCH_TRAVEL_CELLS, noise: float = OGBENCH_ACTION_NOISE,
                            seed: int = 0, progress: bool = True) -> dict[str, np.ndarray]:
    """Stitch data by OGBench's recipe in its env (module docstring), in the D4RL layout and frame.

    Observations are [N, 2] positions; ``infos/qpos``/``infos/qvel`` are the env's pre-step ``prev_qpos``/
    ``prev_qvel``; ``rewards`` the env's ``info["success"]`` after the step (its episode goal);
    ``timeouts`` true at each episode's last row, ``terminals`` false. Deterministic in ``seed``.
    """
    require(int(episodes) >= 1 and int(episode_steps) >= 2 and int(travel_cells) >= 1 and noise >= 0,
            f"episodes={episodes}, episode_steps={episode_steps}, travel_cells={travel_cells} must be positive "
            f"(episode_steps >= 2) and noise={noise} >= 0")
    episodes, episode_steps = int(episodes), int(episode_steps)
    env = make_ogbench_env(maze, terminate_at_goal=False, max_episode_steps=episode_steps)
    unwrapped = env.unwrapped
    frame = OGBenchFrame()
    cells = maze_spec(maze).free_cells
    distances = {c: bfs_distances(maze, c) for c in cells}
    cell_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    subgoals: dict[tuple[tuple[int, int], tuple[int, int]], np.ndarray] = {}
    n = episodes * episode_steps
    obs, actions, goals = np.empty((n, 2)), np.empty((n, 2)), np.empty((n, 2))
    qpos, qvel, rewards = np.empty((n, 2)), np.empty((n, 2)), np.zeros(n)
    timeouts = np.zeros(n, dtype=bool)
    bar = tqdm(total=n, desc=f"{OGBENCH_ENVS[maze]} stitch", unit="step", unit_scale=True, mininterval=1.0,
               disable=not progress)
    unwrapped.action_space.seed(int(seed))
    with _numpy_global_seed(int(seed)):
        for e in range(episodes):
            init = cells[int(cell_rng.integers(len(cells)))]
            targets = np.argwhere(distances[init] == int(travel_cells))
            goal = tuple(int(v) for v in targets[cell_rng.integers(len(targets))]) if len(targets) else init
            ob, _ = env.reset(seed=int(seed) if e == 0 else None,
                              options={"task_info": {"init_ij": init, "goal_ij": goal}})
            goal_xy = np.asarray(unwrapped.cur_goal_xy, dtype=np.float64)
            noise_block = noise_rng.normal(0.0, noise, size=(episode_steps, 2))
            for t in range(e * episode_steps, (e + 1) * episode_steps):
                xy = unwrapped.get_xy()
                key = (unwrapped.xy_to_ij(xy), unwrapped.xy_to_ij(goal_xy))
                if key not in subgoals:  # the oracle's answer depends on these two cells only
                    subgoals[key] = np.asarray(unwrapped.get_oracle_subgoal(xy, goal_xy)[0], dtype=np.float64)
                direction = subgoals[key] - xy
                direction = direction / (np.linalg.norm(direction) + 1e-6)
                action = np.clip(direction + noise_block[t - e * episode_steps], -1.0, 1.0)
                next_ob, _, _, truncated, info = env.step(action)
                obs[t], actions[t], goals[t] = ob, action, goal_xy
                qpos[t], qvel[t], rewards[t] = info["prev_qpos"], info["prev_qvel"], float(info["success"])
                ob = next_ob
            require(truncated, f"{OGBENCH_ENVS[maze]}: episode {e} did not end after {episode_steps} steps")
            timeouts[(e + 1) * episode_steps - 1] = True
            bar.update(episode_steps)
    env.close()
    bar.close()
    return {"observations": frame.point_to_d4rl(obs).astype(np.float32),
            "actions": frame.action_to_d4rl(actions).astype(np.float32), "rewards": rewards.astype(np.float32),
            "terminals": np.zeros(n, dtype=bool), "timeouts": timeouts,
            "infos/goal": frame.point_to_d4rl(goals).astype(np.float32),
            "infos/qpos": frame.point_to_d4rl(qpos).astype(np.float32),
            "infos/qvel": frame.vector_to_d4rl(qvel).astype(np.float32)}


def ogbench_stitch_checks(maze: str, data: dict[str, np.ndarray]) -> dict[str, Any]:
    """``stitch_check`` of the data against OGBench's own tasks and against diffnorm's stitch tasks."""
    return {"ogbench_tasks": stitch_check(data, ogbench_tasks(maze), maze),
            "diffnorm_tasks": stitch_check(data, stitch_tasks(maze), maze)}


def ogbench_stitch_attrs(maze: str, episodes: int, episode_steps: int, seed: int, checks: dict[str, Any]
                         ) -> dict[str, Any]:
    """Metadata of an OGBench stitch file; ``segments = "timeouts"`` and ``observation_dim`` tell readers
    how to cut and load it."""
    ogbench = import_ogbench()
    return {"maze": maze, "ogbench_env": OGBENCH_ENVS[maze], "ogbench_version": getattr(ogbench, "__version__", "?"),
            "seed": int(seed), "episodes": int(episodes), "episode_steps": int(episode_steps),
            "steps": int(episodes) * int(episode_steps), "travel_cells": OGBENCH_TRAVEL_CELLS,
            "action_noise_std": OGBENCH_ACTION_NOISE, "recipe_version": OGBENCH_RECIPE_VERSION,
            "segments": "timeouts", "observation_dim": 2,
            "coordinates": "d4rl frame: cell (i, j) at x=i, y=j; ogbench (x, y) -> ((y + 4) / 4, (x + 4) / 4)",
            "frame": "diffnorm",
            "generator": "diffnorm.envs.ogbench_maze.generate_ogbench_stitch",
            "stitch_check_ogbench_tasks_passed": bool(checks["ogbench_tasks"]["passed"]),
            "stitch_check_diffnorm_tasks_passed": bool(checks["diffnorm_tasks"]["passed"]),
            "stitch_checks_json": json.dumps(checks)}


def ogbench_stitch_path(maze: str, episodes: int, episode_steps: int, seed: int, data_dir: str | Path = "data"
                        ) -> Path:
    name = OGBENCH_ENVS.get(maze, maze).removesuffix("-v0")
    return Path(data_dir) / f"{name}-{OGBENCH_RECIPE_VERSION}-e{episodes}x{episode_steps}-seed{seed}.hdf5"


def ensure_ogbench_stitch_dataset(maze: str, episodes: int = OGBENCH_STITCH_EPISODES,
                                  episode_steps: int = OGBENCH_STITCH_EPISODE_STEPS, seed: int = 0,
                                  data_dir: str | Path = "data", progress: bool = True) -> Path:
    """Path of the OGBench-recipe stitch file, generating and caching it on first use (a cached file with
    other metadata raises). The stitch checks are recorded, not enforced: it is OGBench's recipe."""
    path = ogbench_stitch_path(maze, episodes, episode_steps, seed, data_dir)
    if path.exists():
        found = read_attrs(path)
        expected = {"maze": maze, "seed": int(seed), "episodes": int(episodes), "episode_steps": int(episode_steps),
                    "recipe_version": OGBENCH_RECIPE_VERSION}
        wrong = {k: found.get(k) for k in expected if found.get(k) != expected[k]}
        if wrong:
            raise ConfigError(f"{path}: cached OGBench dataset has {wrong}, expected "
                              f"{ {k: expected[k] for k in wrong} }; delete it to regenerate")
        return path
    data = generate_ogbench_stitch(maze, episodes, episode_steps, seed=seed, progress=progress)
    attrs = ogbench_stitch_attrs(maze, episodes, episode_steps, seed, ogbench_stitch_checks(maze, data))
    return write_d4rl_hdf5(path, data, attrs, observation_dim=None)


def kinematic_action(target_xy: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """The action (D4RL frame) that moves OGBench's point from ``xy`` to ``target_xy`` in one step, clipped
    to [-1, 1]: what a plan follower needs instead of maze2d's PD controller."""
    return np.clip((np.asarray(target_xy, dtype=np.float64) - np.asarray(xy, dtype=np.float64)) / OGBENCH_STEP,
                   -1.0, 1.0)


def evaluate_ogbench(policy: Policy, maze: str, episodes_per_task: int = 1, seed: int = 0,
                     task_ids: list[int] | None = None, keep_paths: bool = False, max_steps: int | None = None
                     ) -> dict[str, Any]:
    """Success of ``policy`` on OGBench's fixed tasks of ``maze``, scored by the env's ``info["success"]``.

    All episodes (``episodes_per_task`` per task, tasks 1..5 by default, task-major) step in lockstep, one
    env each. ``policy`` sees every episode's position and goal at once ([N, 2] each, D4RL frame, rows in
    a fixed order, so a plan follower can keep per-episode state) and returns their actions; the actions
    of episodes that have ended are discarded. An episode stops when the env ends it: goal reached, or its
    time limit (OGBench's 1000 steps; ``max_steps`` shortens it, e.g. for tests). Start and goal noise
    come from OGBench's own draws, seeded by ``seed``.
    """
    require(int(episodes_per_task) >= 1, f"episodes_per_task={episodes_per_task} must be positive")
    require(max_steps is None or int(max_steps) >= 1, f"max_steps={max_steps} must be null or positive")
    limit = {} if max_steps is None else {"max_episode_steps": int(max_steps)}
    frame = OGBenchFrame()
    probe = make_ogbench_env(maze)
    num_tasks, infos = probe.unwrapped.num_tasks, probe.unwrapped.task_infos
    probe.close()
    task_ids = list(range(1, num_tasks + 1)) if task_ids is None else [int(t) for t in task_ids]
    require(all(1 <= t <= num_tasks for t in task_ids), f"task_ids={task_ids} must lie in [1, {num_tasks}]")
    runs = [t for t in task_ids for _ in range(int(episodes_per_task))]
    envs = [make_ogbench_env(maze, **limit) for _ in runs]
    xy, goal = np.zeros((len(runs), 2)), np.zeros((len(runs), 2))
    with _numpy_global_seed(int(seed)):
        for k, (env, task_id) in enumerate(zip(envs, runs)):
            env.action_space.seed(int(seed) + k)
            ob, info = env.reset(seed=int(seed) + k, options={"task_id": task_id})
            xy[k], goal[k] = frame.point_to_d4rl(ob), frame.point_to_d4rl(info["goal"])
        active = np.ones(len(runs), dtype=bool)
        success, steps = np.zeros(len(runs), dtype=bool), np.zeros(len(runs), dtype=np.int64)
        paths = [[xy[k].copy()] for k in range(len(runs))] if keep_paths else []
        while active.any():
            actions = np.asarray(policy(xy.copy(), goal.copy()), dtype=np.float64)
            require(actions.shape == (len(runs), 2), f"the policy returned {actions.shape}, expected "
                    f"[{len(runs)}, 2]")
            index = np.flatnonzero(active)
            for k, action in zip(index, frame.action_from_d4rl(actions[index])):
                ob, _, terminated, truncated, info = envs[k].step(action)
                xy[k] = frame.point_to_d4rl(ob)
                steps[k] += 1
                if keep_paths:
                    paths[k].append(xy[k].copy())
                if terminated or truncated:
                    active[k] = False
                    success[k] = bool(info["success"])
    for env in envs:
        env.close()
    per_task = []
    for task_id in task_ids:
        mine = np.array([r == task_id for r in runs])
        info = infos[task_id - 1]
        start_cell, goal_cell = tuple(info["init_ij"]), tuple(info["goal_ij"])
        per_task.append({"task_id": task_id, "task_name": info["task_name"], "start_cell": list(start_cell),
                         "goal_cell": list(goal_cell),
                         "bfs_distance": int(bfs_distances(maze, start_cell)[goal_cell]),
                         "success_rate": float(success[mine].mean()), "successes": success[mine].tolist(),
                         "steps": steps[mine].tolist()})
    result = {"env": OGBENCH_ENVS[maze], "maze": maze, "episodes": len(runs), "seed": int(seed), "task_ids": runs,
              "goals": goal.tolist(),
              "success_rate": float(success.mean()), "tasks": per_task}
    if keep_paths:
        result["paths"] = [np.asarray(p) for p in paths]
    return result


def oracle_policy(maze: str, speed: float = 1.0) -> Policy:
    """A noiseless BFS oracle in the D4RL frame (unit vector toward the next cell centre of a shortest path
    to the goal's cell, scaled by ``speed``): the reference policy the adapter is tested with."""
    spec = maze_spec(maze)
    cache: dict[tuple[int, int], np.ndarray] = {}

    def act(xy: np.ndarray, goal_xy: np.ndarray) -> np.ndarray:
        out = np.zeros_like(np.asarray(xy, dtype=np.float64))
        for k, (p, g) in enumerate(zip(np.asarray(xy, dtype=np.float64), np.asarray(goal_xy, dtype=np.float64))):
            here, there = tuple(int(v) for v in xy_to_cell(p)), tuple(int(v) for v in xy_to_cell(g))
            if there not in cache:
                cache[there] = bfs_distances(maze, there)
            dist = cache[there]
            target = g
            if here != there and spec.layout[here] == 0:
                options = [(here[0] + di, here[1] + dj) for di, dj in ((-1, 0), (0, -1), (1, 0), (0, 1))]
                nxt = min((c for c in options if dist[c] >= 0), key=lambda c: dist[c])
                target = np.asarray(nxt, dtype=np.float64)
            direction = target - p
            out[k] = speed * direction / (np.linalg.norm(direction) + 1e-6)
        return out

    return act
