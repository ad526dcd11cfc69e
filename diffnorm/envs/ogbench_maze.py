"""OGBench's pointmaze (Park et al. 2024) as the external stitching benchmark: thin adapters only.

OGBench's ``ogbench`` wheel (optional extra ``diffnorm[ogbench]``) ships the environments, the BFS oracle
and the 5 evaluation tasks per maze, but not its data scripts. Here:

- its data recipe (``pointmaze-{medium,large}-stitch-v0``) is rebuilt in ``diffnorm.data.ogbench_stitch``;
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
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from diffnorm.envs.frames import OGBenchFrame
from diffnorm.envs.maze2d import bfs_distances, maze_spec, xy_to_cell
from diffnorm.errors import ConfigError, require

OGBENCH_ENVS = {"maze2d-medium": "pointmaze-medium-v0", "maze2d-large": "pointmaze-large-v0"}
OGBENCH_STEP = 0.2 / 4.0  # cells moved per unit of action per step: PointEnv adds 0.2 * action, cells are 4 wide

# policy(xy [N, 2], goal_xy [N, 2]) -> actions [N, 2], all in the D4RL frame
Policy = Callable[[np.ndarray, np.ndarray], np.ndarray]


def import_ogbench():
    """The ``ogbench`` package, or a ConfigError saying how to install it."""
    try:
        import ogbench.locomaze  # registers the pointmaze envs with gymnasium
    except ImportError as err:
        raise ConfigError("OGBench support needs the optional 'ogbench' package: pip install 'diffnorm[ogbench]' "
                          f"({err})") from None
    import ogbench  # an optional extra

    return ogbench


def make_ogbench_env(maze: str, **kwargs):
    """``gymnasium.make`` of OGBench's twin of ``maze`` (maze2d-medium | maze2d-large); kwargs go to OGBench
    (``terminate_at_goal``, ``max_episode_steps``, ...). Raises if its layout differs from maze2d's."""
    require(maze in OGBENCH_ENVS, f"no OGBench pointmaze for {maze!r}; choose one of {list(OGBENCH_ENVS)}")
    import_ogbench()
    import gymnasium  # with OGBench, which registers its envs on import

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
def numpy_global_seed(seed: int) -> Iterator[None]:
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
    with numpy_global_seed(int(seed)):
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
