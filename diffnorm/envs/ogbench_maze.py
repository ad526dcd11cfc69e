"""OGBench's pointmaze (Park et al. 2024) as the external stitching benchmark: thin adapters only.

OGBench's ``ogbench`` wheel (optional extra ``diffnorm[ogbench]``) ships the environments, the BFS oracle
and the 5 evaluation tasks per maze, but not its data scripts. Here:

- its data recipe (``pointmaze-{medium,large}-stitch-v0``) is rebuilt in ``diffnorm.data.ogbench_stitch``;
- the env (``make_ogbench_env``, its layout checked against maze2d's) and its fixed tasks; the evaluator
  that runs a policy on them, the plan follower and the BFS oracle are in ``diffnorm.planning.kinematic``.

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
from collections.abc import Iterator
from typing import Any

import numpy as np

from diffnorm.envs.frames import OGBenchFrame
from diffnorm.envs.maze2d import maze_spec
from diffnorm.errors import ConfigError, require

OGBENCH_ENVS = {"maze2d-medium": "pointmaze-medium-v0", "maze2d-large": "pointmaze-large-v0"}
OGBENCH_STEP = 0.2 / 4.0  # cells moved per unit of action per step: PointEnv adds 0.2 * action, cells are 4 wide


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
