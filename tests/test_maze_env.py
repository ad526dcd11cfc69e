"""maze2d env in D4RL conventions: specs, coordinates, walls, BFS, reset options, rewards, dynamics parity."""

import numpy as np
import pytest

from diffnorm.data.generate import PointMassSim
from diffnorm.envs.maze2d import (
    CentredFrame,
    bfs_distances,
    build_point_maze,
    centred_frame,
    in_wall,
    make_env,
    maze_names,
    maze_spec,
    normalized_score,
)
from diffnorm.experiments.common import ConfigError

NAMES = ["maze2d-umaze", "maze2d-medium", "maze2d-large"]
D4RL = {  # REFERENCE.md: episode steps, eval goal cell, ref min/max, dataset steps
    "maze2d-umaze": (300, (1, 1), 23.85, 161.86, 1_000_000),
    "maze2d-medium": (600, (6, 6), 13.13, 277.39, 2_000_000),
    "maze2d-large": (800, (7, 9), 6.7, 273.99, 4_000_000),
}


def test_names_and_unknown_name():
    assert maze_names() == NAMES
    with pytest.raises(ConfigError, match=r"unknown maze 'maze2d-huge'; choose one of \['maze2d-umaze'"):
        maze_spec("maze2d-huge")
    with pytest.raises(ConfigError, match="unknown maze"):
        make_env("umaze")


@pytest.mark.parametrize("name", NAMES)
def test_spec_matches_d4rl_and_gymnasium_robotics(name):
    from gymnasium_robotics.envs.maze import maps

    spec = maze_spec(name)
    steps, goal, lo, hi, size = D4RL[name]
    assert (spec.max_episode_steps, spec.eval_goal_cell, spec.ref_min_score, spec.ref_max_score,
            spec.dataset_steps) == (steps, goal, lo, hi, size)
    upstream = {"maze2d-umaze": maps.U_MAZE, "maze2d-medium": maps.MEDIUM_MAZE, "maze2d-large": maps.LARGE_MAZE}
    np.testing.assert_array_equal(spec.layout, np.array(upstream[name]))
    assert spec.layout[goal] == 0 and goal in spec.free_cells
    assert len(spec.free_cells) == int((spec.layout == 0).sum())


def test_normalized_score():
    assert normalized_score("maze2d-umaze", 161.86) == pytest.approx(100.0)
    assert normalized_score("maze2d-large", 6.7) == pytest.approx(0.0)
    np.testing.assert_allclose(normalized_score("maze2d-medium", np.array([13.13, 277.39])), [0.0, 100.0])


@pytest.mark.parametrize("name", NAMES)
def test_frame_maps_cell_centres_and_round_trips(name):
    point_maze = build_point_maze(name)
    frame = centred_frame(name)
    for cell in [(0, 0), *maze_spec(name).free_cells[:5], (2, 3)]:
        centred = point_maze.maze.cell_rowcol_to_xy(np.array(cell))
        np.testing.assert_allclose(frame.point_to_d4rl(centred), cell, atol=1e-12)
    rng = np.random.default_rng(0)
    p, v = rng.normal(size=(10, 2)), rng.normal(size=(10, 2))
    np.testing.assert_allclose(frame.point_from_d4rl(frame.point_to_d4rl(p)), p, atol=1e-12)
    np.testing.assert_allclose(frame.vector_from_d4rl(frame.vector_to_d4rl(v)), v, atol=1e-12)
    # the map is a proper rotation: lengths kept, the scalar versions agree with the array ones
    np.testing.assert_allclose(np.linalg.norm(frame.vector_to_d4rl(v), axis=-1), np.linalg.norm(v, axis=-1))
    np.testing.assert_allclose(frame.state_to_d4rl_scalars(*p[0], *v[0]), frame.state_to_d4rl(p[0], v[0]))
    np.testing.assert_allclose(CentredFrame.vector_from_d4rl_scalars(*v[0]), frame.vector_from_d4rl(v[0]))


def test_in_wall_uses_unit_squares_on_wall_cells():
    xy = np.array([[1.0, 1.0], [2.0, 1.0], [1.45, 1.0], [1.55, 1.0], [3.0, 3.0], [-5.0, 1.0], [2.0, 3.0]])
    np.testing.assert_array_equal(in_wall("maze2d-umaze", xy), [False, True, False, True, False, True, False])
    assert in_wall("maze2d-umaze", np.zeros((3, 4, 2))).shape == (3, 4)


def test_bfs_distances():
    d = bfs_distances("maze2d-umaze", (1, 1))
    assert d[1, 1] == 0 and d[3, 1] == 6 and d[2, 3] == 3 and d[2, 2] == -1
    large = bfs_distances("maze2d-large", (7, 9))
    spec = maze_spec("maze2d-large")
    assert all(large[c] > 0 for c in spec.free_cells if c != (7, 9))  # every free cell reachable
    with pytest.raises(ConfigError, match="not a free cell"):
        bfs_distances("maze2d-umaze", (2, 2))


@pytest.mark.parametrize("name", NAMES)
def test_env_conventions(name):
    env = make_env(name)
    spec = maze_spec(name)
    assert env.spec.max_episode_steps == spec.max_episode_steps
    np.testing.assert_array_equal(env.get_wrapper_attr("goal"), spec.eval_goal_xy)
    obs, _ = env.reset(seed=3)
    assert obs.shape == (4,) and not in_wall(name, obs[:2])
    cell = np.round(obs[:2])
    assert tuple(int(c) for c in cell) in spec.free_cells and np.all(np.abs(obs[:2] - cell) <= 0.1 + 1e-9)
    truncated, t = False, 0
    while not truncated:
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        assert not terminated and not in_wall(name, obs[:2])
        t += 1
    assert t == spec.max_episode_steps


def test_reset_options_and_sparse_reward():
    env = make_env("maze2d-umaze")
    obs, info = env.reset(seed=0, options={"start_xy": (3.0, 2.6), "start_vel": (0.0, 0.0), "goal_xy": (3.0, 3.0)})
    np.testing.assert_array_equal(obs, [3.0, 2.6, 0.0, 0.0])
    np.testing.assert_array_equal(env.get_wrapper_attr("goal"), [3.0, 3.0])
    assert info["success"]  # 0.4 <= 0.5: D4RL's radius, not gymnasium-robotics' 0.45
    obs, reward, *_ = env.step(np.zeros(2))
    assert reward == 1.0
    obs, _ = env.reset(options={"start_xy": (1.0, 1.0)})  # goal goes back to the eval goal
    np.testing.assert_array_equal(env.get_wrapper_attr("goal"), [1.0, 1.0])


def test_walls_stop_the_point_where_the_layout_says():
    env = make_env("maze2d-umaze")
    env.reset(seed=0, options={"start_xy": (3.0, 1.0), "start_vel": (0.0, 0.0)})
    for _ in range(100):  # push toward -x: wall block (2, 1) spans x in [1.5, 2.5]; the ball has radius 0.1
        obs, *_ = env.step(np.array([-1.0, 0.0]))
    assert obs[0] == pytest.approx(2.6, abs=0.01) and obs[1] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("options,named", [
    ({"start_xy": (2.0, 1.0)}, "inside a wall"),
    ({"goal_xy": (0.0, 0.0)}, "inside a wall"),
    ({"start": (1.0, 1.0)}, "unknown reset option"),
    ({"start_xy": (1.0,)}, "two finite numbers"),
])
def test_bad_reset_options(options, named):
    with pytest.raises(ConfigError, match=named):
        make_env("maze2d-umaze").reset(seed=0, options=options)


@pytest.mark.parametrize("name", ["maze2d-umaze", "maze2d-large"])
def test_fast_sim_matches_env_exactly(name):
    """The generator's direct mj_step loop and the gymnasium env give bit-identical trajectories."""
    env = make_env(name).unwrapped
    sim = PointMassSim(name)
    start = np.array(maze_spec(name).free_cells[2], dtype=float)
    obs, _ = env.reset(seed=0, options={"start_xy": start, "start_vel": (0.3, -0.2)})
    np.testing.assert_array_equal(sim.reset(obs[:2], obs[2:]), obs)
    rng = np.random.default_rng(0)
    for t in range(400):  # out-of-range actions and wall contacts included
        action = rng.uniform(-1.5, 1.5, size=2) + (0.6 if t < 200 else -0.6)
        np.testing.assert_array_equal(sim.step(*action), env.step(action)[0], err_msg=f"step {t}")
