"""OGBench pointmaze adapter: frame, layouts, tasks, stitch-recipe data, loading for training, evaluation with
OGBench's own success check. Skipped when the optional ``ogbench`` package is absent (except the test of the
error that absence gives)."""

import sys

import numpy as np
import pytest

from diffnorm.data.d4rl_format import load_d4rl_hdf5, read_attrs
from diffnorm.data.ogbench_stitch import ensure_ogbench_stitch_dataset, generate_ogbench_stitch
from diffnorm.data.sequence import SequenceDataset
from diffnorm.data.stitch import stitch_episode_stats
from diffnorm.envs.maze2d import in_wall, maze_spec
from diffnorm.envs.ogbench_maze import (
    OGBENCH_STEP,
    OGBenchFrame,
    import_ogbench,
    make_ogbench_env,
    ogbench_tasks,
)
from diffnorm.experiments.common import ConfigError
from diffnorm.planning.kinematic import evaluate_ogbench, kinematic_action, oracle_policy

MEDIUM = "maze2d-medium"
EPISODES, STEPS = 24, 201


@pytest.fixture(scope="module")
def ogbench():
    return pytest.importorskip("ogbench")


@pytest.fixture(scope="module")
def ogb_file(ogbench, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("ogbench")
    path = ensure_ogbench_stitch_dataset(MEDIUM, EPISODES, STEPS, seed=0, data_dir=data_dir, progress=False)
    return path, load_d4rl_hdf5(path, observation_dim=None)


def test_missing_package_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ogbench", None)  # what `import ogbench` sees when it is not installed
    monkeypatch.setitem(sys.modules, "ogbench.locomaze", None)
    with pytest.raises(ConfigError, match=r"pip install 'diffnorm\[ogbench\]'"):
        import_ogbench()


@pytest.mark.parametrize("maze", [MEDIUM, "maze2d-large"])
def test_envs_share_maze2d_layouts_and_the_frame_maps_cell_centres(ogbench, maze):
    env = make_ogbench_env(maze)
    frame, u = OGBenchFrame(), env.unwrapped
    for cell in maze_spec(maze).free_cells:
        xy = frame.point_to_d4rl(np.asarray(u.ij_to_xy(cell)))
        np.testing.assert_allclose(xy, cell)
        np.testing.assert_allclose(frame.point_from_d4rl(xy), u.ij_to_xy(cell))
        assert u.xy_to_ij(frame.point_from_d4rl(np.asarray(cell) + 0.45)) == cell  # cells are 4 units wide
    env.close()
    with pytest.raises(ConfigError, match="no OGBench pointmaze for 'maze2d-umaze'"):
        make_ogbench_env("maze2d-umaze")


def test_tasks_are_ogbenchs_in_the_d4rl_frame(ogbench):
    tasks = [(tuple(s.astype(int)), tuple(g.astype(int))) for s, g in ogbench_tasks(MEDIUM)]
    assert tasks == [((1, 1), (6, 6)), ((6, 1), (1, 6)), ((5, 3), (4, 2)), ((6, 5), (6, 1)), ((2, 6), (1, 1))]


def test_recipe_data(ogb_file):
    path, data = ogb_file
    n = EPISODES * STEPS
    assert data["observations"].shape == (n, 2) and data["actions"].shape == (n, 2)
    assert np.flatnonzero(data["timeouts"]).tolist() == [STEPS * (e + 1) - 1 for e in range(EPISODES)]
    assert not in_wall(MEDIUM, data["observations"]).any()
    assert -1.0 <= data["actions"].min() and data["actions"].max() <= 1.0
    stats = stitch_episode_stats(data, MEDIUM)
    assert stats["goal_distance_counts"] == {4: EPISODES}  # every medium cell has a cell 4 BFS steps away
    assert stats["episodes_reaching_goal"] >= EPISODES - 2
    # kinematic point: inside an episode, away from walls, a step moves exactly OGBENCH_STEP x action
    within = ~data["timeouts"][:-1]
    moved = np.diff(data["observations"], axis=0)[within]
    expected = OGBENCH_STEP * data["actions"][:-1][within]
    free = np.linalg.norm(moved - expected, axis=-1) < 1e-4
    assert free.mean() > 0.9
    # rewards are OGBench's success: within 1.0 of its units (0.25 cells) of the goal after the step
    after = np.roll(data["observations"], -1, axis=0)
    near = np.linalg.norm(after - data["infos/goal"], axis=-1) <= 0.25 + 1e-5
    agree = (data["rewards"] > 0) == near
    assert agree[:-1][within].mean() > 0.999
    attrs = read_attrs(path)
    assert attrs["segments"] == "timeouts" and attrs["observation_dim"] == 2
    assert attrs["stitch_check_diffnorm_tasks_passed"] is True


def test_same_seed_same_data(ogbench, ogb_file):
    _, data = ogb_file
    again = generate_ogbench_stitch(MEDIUM, 3, STEPS, seed=0, progress=False)
    np.testing.assert_array_equal(again["observations"], data["observations"][:3 * STEPS])
    other = generate_ogbench_stitch(MEDIUM, 3, STEPS, seed=1, progress=False)
    assert not np.array_equal(other["observations"], again["observations"])


def test_loading_for_training_keeps_two_dimensional_observations(ogb_file):
    path, data = ogb_file
    windows = SequenceDataset(data, horizon=192, eval_goal_xy=None, cut_at_timeouts=True)
    assert windows.observation_dim == 2 and windows.transition_dim == 4
    assert len(windows) == EPISODES * (STEPS - 192 + 1)
    assert windows[0]["conditions"][0].shape == (2,)
    with pytest.raises(ConfigError, match="observation dimension 2, expected 4"):
        load_d4rl_hdf5(path)  # the maze2d default stays strict


def test_kinematic_action_reaches_its_target_in_one_step(ogbench):
    env = make_ogbench_env(MEDIUM)
    frame = OGBenchFrame()
    ob, _ = env.reset(seed=0, options={"task_id": 1})
    xy = frame.point_to_d4rl(ob)
    target = xy + np.array([0.03, -0.02])
    ob, *_ = env.step(frame.action_from_d4rl(kinematic_action(target, xy)))
    np.testing.assert_allclose(frame.point_to_d4rl(ob), target, atol=1e-6)
    env.close()


def test_evaluation_uses_ogbench_success(ogbench):
    result = evaluate_ogbench(oracle_policy(MEDIUM), MEDIUM, episodes_per_task=1, seed=0, keep_paths=True)
    assert result["success_rate"] == 1.0 and [t["task_id"] for t in result["tasks"]] == [1, 2, 3, 4, 5]
    assert all(t["steps"][0] < 1000 for t in result["tasks"])  # ended at the goal, not at the time limit
    assert [t["bfs_distance"] for t in result["tasks"]] == [10, 10, 6, 10, 8]
    assert len(result["paths"][0]) == result["tasks"][0]["steps"][0] + 1
    still = evaluate_ogbench(lambda xy, goal, active: np.zeros_like(xy), MEDIUM, seed=0, task_ids=[1, 3])
    assert still["success_rate"] == 0.0 and all(t["steps"] == [1000] for t in still["tasks"])
    with pytest.raises(ConfigError, match=r"returned \(1, 3\)"):
        evaluate_ogbench(lambda xy, goal, active: np.zeros((1, 3)), MEDIUM, task_ids=[1])
