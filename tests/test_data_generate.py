"""D4RL-recipe generator: acceptance checks on a ~50k-step umaze file, determinism, env replay, caching,
the controller, and the make_maze_dataset script."""

import numpy as np
import pytest
from conftest import load_results

from diffnorm.data.d4rl_format import D4RL_LAYOUT, load_d4rl_hdf5, read_attrs
from diffnorm.data.generate import (
    RECIPE_VERSION,
    WaypointController,
    controller_returns,
    dataset_checks,
    dataset_path,
    ensure_dataset,
    generate_maze2d,
)
from diffnorm.data.sequence import SequenceDataset
from diffnorm.envs.maze2d import make_env, maze_spec
from diffnorm.experiments.common import ConfigError

UMAZE = "maze2d-umaze"
N_SMALL = 50_000


@pytest.fixture(scope="session")
def umaze_file(tmp_path_factory):
    """The one generated file the data tests share: generated, written and read back through the cache."""
    path = ensure_dataset(UMAZE, N_SMALL, seed=0, data_dir=tmp_path_factory.mktemp("data"), progress=False)
    return path, load_d4rl_hdf5(path)


def test_file_layout_and_metadata(umaze_file):
    path, data = umaze_file
    assert set(data) == set(D4RL_LAYOUT) and len(data["observations"]) == N_SMALL
    attrs = read_attrs(path)
    assert (attrs["maze"], attrs["seed"], attrs["steps"], attrs["recipe_version"]) == (UMAZE, 0, N_SMALL,
                                                                                          RECIPE_VERSION)
    np.testing.assert_array_equal(data["infos/qpos"], data["observations"][:, :2])
    np.testing.assert_array_equal(data["infos/qvel"], data["observations"][:, 2:])
    assert not data["terminals"].any()


def test_acceptance_checks(umaze_file):
    _, data = umaze_file
    c = dataset_checks(UMAZE, data)
    assert c["free_cells_visited"] == c["free_cells"] == 7 and c["unvisited_free_cells"] == []
    assert c["positions_in_wall"] == 0
    assert -1.0 <= c["action_min"] and c["action_max"] <= 1.0
    assert c["action_min"] == -1.0 and c["action_max"] == 1.0  # the N(0, 0.5) noise saturates sometimes
    assert c["goal_segments"] > 300 and c["goals_reached_fraction"] >= 0.95
    assert c["goals_reached"] + c["segments_at_time_limit"] == c["goal_segments"]
    assert c["timeouts_match_goal_changes"]
    assert c["segment_length_max"] <= maze_spec(UMAZE).max_episode_steps + 1


def test_rewards_are_sparse_relabelling_at_the_eval_goal(umaze_file):
    _, data = umaze_file
    near = np.linalg.norm(data["observations"][:, :2] - np.array([1.0, 1.0]), axis=-1) <= 0.5
    np.testing.assert_array_equal(data["rewards"], near.astype(np.float32))
    assert 0.01 < data["rewards"].mean() < 0.5


def test_stream_gives_diffuser_windows(umaze_file):
    _, data = umaze_file
    ds = SequenceDataset(data, horizon=128, eval_goal_xy=maze_spec(UMAZE).eval_goal_xy)
    assert len(ds) > 10_000
    assert ds[0]["trajectory"].shape == (128, 6)


def test_same_seed_same_arrays_other_seed_differs():
    a = generate_maze2d(UMAZE, 3000, seed=5, progress=False)
    b = generate_maze2d(UMAZE, 3000, seed=5, progress=False)
    c = generate_maze2d(UMAZE, 3000, seed=6, progress=False)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert not np.array_equal(a["observations"], c["observations"])
    # a longer stream with the same seed starts with the shorter one (noise drawn in fixed blocks)
    d = generate_maze2d(UMAZE, 4000, seed=5, progress=False)
    np.testing.assert_array_equal(d["observations"][:3000], a["observations"])


@pytest.mark.parametrize("name", ["maze2d-umaze", "maze2d-large"])
def test_replaying_actions_in_make_env_reproduces_the_stream(name):
    """The generator's physics is make_env's: the recorded actions replayed in the env give the recorded
    observations. Both are stored as float32, and the rounding of the actions grows through wall contacts
    to ~1e-5 over 1500 steps; the unrounded physics is bit-identical (test_maze_env)."""
    data = generate_maze2d(name, 1500, seed=2, progress=False)
    env = make_env(name).unwrapped  # no TimeLimit: the stream is longer than one episode
    obs, _ = env.reset(options={"start_xy": data["observations"][0, :2], "start_vel": data["observations"][0, 2:]})
    replay = [obs]
    for action in data["actions"][:-1]:
        replay.append(env.step(action)[0])
    np.testing.assert_allclose(np.array(replay), data["observations"], atol=1e-4)


def test_controller_path_is_shortest_and_ties_follow_d4rl_action_order():
    c = WaypointController("maze2d-umaze", np.random.default_rng(0))
    assert c.path((3, 1), (1, 1)) == [(3, 2), (3, 3), (2, 3), (1, 3), (1, 2), (1, 1)]
    assert c.path((1, 1), (1, 1)) == [(1, 1)]
    # open area of medium: (1, 1) -> (2, 2) has two shortest paths; UP (j - 1) before DOWN (j + 1) before
    # LEFT (i - 1) before RIGHT (i + 1) picks j + 1 first
    m = WaypointController("maze2d-medium", np.random.default_rng(0))
    assert m.path((1, 1), (2, 2)) == [(1, 2), (2, 2)]


def test_controller_policy_reaches_the_goal():
    r = controller_returns(UMAZE, episodes=3, seed=0)
    assert r["episodes_reaching_goal"] == 3 and r["score_mean"] > 50


def test_ensure_dataset_reuses_and_refuses_mismatched_cache(umaze_file, tmp_path):
    path, _ = umaze_file
    mtime = path.stat().st_mtime_ns
    assert ensure_dataset(UMAZE, N_SMALL, 0, data_dir=path.parent) == path
    assert path.stat().st_mtime_ns == mtime  # reused, not regenerated
    fake = dataset_path(UMAZE, N_SMALL, 1, tmp_path)
    fake.write_bytes(path.read_bytes())  # a file claiming seed 1 whose metadata says seed 0
    with pytest.raises(ConfigError, match="cached dataset has .*'seed': 0"):
        ensure_dataset(UMAZE, N_SMALL, 1, data_dir=tmp_path)


def test_bad_generator_input():
    with pytest.raises(ConfigError, match="steps=0"):
        generate_maze2d(UMAZE, 0)
    with pytest.raises(ConfigError, match="unknown maze"):
        generate_maze2d("maze2d-open", 10)


def test_make_maze_dataset_script(script, tmp_path):
    run, data_dir = tmp_path / "run", tmp_path / "data"
    proc = script("make_maze_dataset", "steps=2000", f"data_dir={data_dir}", "progress=false", run_dir=run)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(run)
    res = load_results(run)
    assert res["generated"] and res["checks"]["steps"] == 2000 and res["checks"]["positions_in_wall"] == 0
    assert len(load_d4rl_hdf5(res["path"])["observations"]) == 2000
    assert (run / "coverage.png").stat().st_size > 0


def test_make_maze_dataset_script_bad_env(script, tmp_path):
    proc = script("make_maze_dataset", "steps=10", "env.name=maze2d-tiny", f"data_dir={tmp_path}", run_dir=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown maze 'maze2d-tiny'; choose one of")


def test_controller_baseline_script(script, tmp_path):
    proc = script("controller_baseline", "mazes=[maze2d-umaze]", "episodes=2", "plot_paths=1", run_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    res = load_results(tmp_path)["mazes"]["maze2d-umaze"]
    assert set(res) == {"replan_each_episode", "d4rl_persistent_controller"}
    assert res["replan_each_episode"]["episodes_reaching_goal"] == 2
    assert (tmp_path / "controller_paths.png").stat().st_size > 0
