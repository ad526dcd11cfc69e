"""OGBench's ``pointmaze-{medium,large}-stitch-v0`` data recipe (Park et al. 2024), rebuilt in OGBench's own
env, since its wheel ships the envs but not its data scripts.

``generate_ogbench_stitch``: 5000 episodes, each from a uniformly drawn free cell toward a uniformly drawn
cell at BFS distance exactly 4 (the start cell itself when none is that far), steered by the oracle's unit
vector toward its BFS subgoal plus N(0, 0.5) noise, clipped to [-1, 1]; ``max_episode_steps=201``, so 201
rows per episode, which OGBench's loader turns into 200 transitions. OGBench's 10 % validation episodes are
not generated. Everything is written in diffnorm's D4RL frame (``envs.frames.OGBenchFrame`` converts), with
observations [N, 2] (positions only: the point is kinematic).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from diffnorm.data.d4rl_format import read_attrs, write_d4rl_hdf5
from diffnorm.data.stitch import stitch_check, stitch_tasks
from diffnorm.envs.frames import OGBenchFrame
from diffnorm.envs.maze2d import bfs_distances, maze_spec
from diffnorm.envs.ogbench_maze import (
    OGBENCH_ENVS,
    import_ogbench,
    make_ogbench_env,
    numpy_global_seed,
    ogbench_tasks,
)
from diffnorm.errors import ConfigError, require

OGBENCH_STITCH_EPISODES = 5000
OGBENCH_STITCH_EPISODE_STEPS = 201  # the published max_episode_steps; 200 transitions per episode
OGBENCH_TRAVEL_CELLS = 4
OGBENCH_ACTION_NOISE = 0.5
OGBENCH_RECIPE_VERSION = "ogbench-stitch-1"


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
    with numpy_global_seed(int(seed)):
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
            "generator": "diffnorm.data.ogbench_stitch.generate_ogbench_stitch",
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
