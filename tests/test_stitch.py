"""Stitch datasets on maze2d: tasks, the travel rule, the stitch check (passes on generated data, catches a
planted whole-path episode), the file and its cache, what training sees, and the script."""

import json
import re

import numpy as np
import pytest
from conftest import load_results
from omegaconf import OmegaConf

from diffnorm.data.d4rl_format import load_d4rl_hdf5, read_attrs, write_d4rl_hdf5
from diffnorm.data.generate import WaypointController
from diffnorm.data.sequence import SequenceDataset
from diffnorm.data.stitch import (
    STITCH_RECIPE_VERSION,
    ensure_stitch_dataset,
    generate_stitch,
    stitch_check,
    stitch_episode_stats,
    stitch_task_cells,
    stitch_tasks,
    stitch_travel_cells,
)
from diffnorm.envs.maze2d import bfs_distances, in_wall, maze_spec
from diffnorm.experiments.common import ConfigError, compose_job
from diffnorm.experiments.diffuser import load_training_data
from diffnorm.experiments.maze_data import make_maze_dataset

MAZES = {"maze2d-umaze": 128, "maze2d-medium": 256, "maze2d-large": 384}  # name -> episode steps (= horizon)
EPISODES = 80


@pytest.fixture(scope="session")
def stitch_data():
    """A small stitch dataset per maze, generated once for the session (about 4 s on 2 shared cores)."""
    return {name: generate_stitch(name, steps, EPISODES, seed=0, progress=False) for name, steps in MAZES.items()}


def test_umaze_is_too_small_for_8_step_tasks_so_its_longest_pairs_are_used():
    free = maze_spec("maze2d-umaze").free_cells
    assert max(int(bfs_distances("maze2d-umaze", c).max()) for c in free) == 6
    assert stitch_task_cells("maze2d-umaze") == [((1, 1), (3, 1), 6), ((3, 1), (1, 1), 6)]
    assert stitch_travel_cells("maze2d-umaze") == 3  # 6 - 3: an episode cannot span both ends' neighbourhoods


@pytest.mark.parametrize("name", ["maze2d-medium", "maze2d-large"])
def test_tasks_are_deterministic_far_apart_and_spread(name):
    cells = stitch_task_cells(name)
    assert cells == stitch_task_cells(name) and len(cells) == 5
    assert all(d >= 8 and d == bfs_distances(name, s)[g] for s, g, d in cells)
    assert len({c for s, g, _ in cells for c in (s, g)}) == 10  # no endpoint shared, no task reversed
    tasks = stitch_tasks(name)
    for (s, g, _), (sxy, gxy) in zip(cells, tasks):
        np.testing.assert_array_equal(sxy, s)
        np.testing.assert_array_equal(gxy, g)
    assert stitch_travel_cells(name) == 4  # OGBench's


@pytest.mark.parametrize("name", list(MAZES))
def test_generated_episodes_travel_the_recipe_distance_and_pass_the_check(stitch_data, name):
    data = stitch_data[name]
    steps = MAZES[name]
    assert len(data["observations"]) == EPISODES * steps
    assert np.flatnonzero(data["timeouts"]).tolist() == [steps * (e + 1) - 1 for e in range(EPISODES)]
    assert not data["terminals"].any() and not in_wall(name, data["observations"][:, :2]).any()
    assert -1.0 <= data["actions"].min() and data["actions"].max() <= 1.0
    travel = stitch_travel_cells(name)
    stats = stitch_episode_stats(data, name)
    assert stats["goal_distance_counts"] == {travel: EPISODES}
    assert stats["span_counts"] == {travel: EPISODES}  # no episode strays beyond its goal's distance
    assert stats["episodes_reaching_goal"] == EPISODES
    np.testing.assert_array_equal(data["rewards"], np.linalg.norm(data["observations"][:, :2] - data["infos/goal"],
                                                                  axis=-1) <= 0.5)
    check = stitch_check(data, stitch_tasks(name), name)
    assert check["passed"] and check["violations"] == 0 and check["episodes"] == EPISODES
    for task in check["tasks"]:
        assert task["closest_approach_cells"] > 1
        assert task["episodes_near_start"] > 0 and task["episodes_near_goal"] > 0  # the check had work to do


def _path_episode(name: str, start: tuple[int, int], goal: tuple[int, int], steps: int) -> dict[str, np.ndarray]:
    """An episode gliding along the shortest path from ``start`` to ``goal``'s cell centre."""
    cells = np.array([start, *WaypointController(name, np.random.default_rng(0)).path(start, goal)], dtype=float)
    s = np.linspace(0, len(cells) - 1, steps)
    xy = np.stack([np.interp(s, np.arange(len(cells)), cells[:, k]) for k in range(2)], axis=-1)
    timeouts = np.zeros(steps, dtype=bool)
    timeouts[-1] = True
    return {"observations": np.concatenate([xy, np.zeros_like(xy)], axis=1).astype(np.float32),
            "timeouts": timeouts, "terminals": np.zeros(steps, dtype=bool)}


def _append(data: dict[str, np.ndarray], episode: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([data[k], episode[k]]) for k in episode}


def test_check_catches_a_planted_whole_path_episode(stitch_data):
    name = "maze2d-medium"
    data = stitch_data[name]
    tasks = stitch_tasks(name)
    (start, goal, _) = stitch_task_cells(name)[2]
    planted = _append(data, _path_episode(name, start, goal, MAZES[name]))
    check = stitch_check(planted, tasks, name)
    assert not check["passed"] and check["violations"] == 1 and check["violating_episodes"] == [EPISODES]
    assert [t["violations"] for t in check["tasks"]] == [0, 0, 1, 0, 0]
    assert check["tasks"][2]["closest_approach_cells"] == 0


def test_within_one_cell_is_the_boundary(stitch_data):
    """An episode from a task's start to one cell short of its goal counts; two cells short does not."""
    name = "maze2d-large"
    data = stitch_data[name]
    start, goal, _ = stitch_task_cells(name)[0]
    path = WaypointController(name, np.random.default_rng(0)).path(start, goal)
    one_short, two_short = path[-2], path[-3]
    caught = stitch_check(_append(data, _path_episode(name, start, one_short, 300)), stitch_tasks(name), name)
    missed = stitch_check(_append(data, _path_episode(name, start, two_short, 300)), stitch_tasks(name), name)
    assert caught["violating_episodes"] == [EPISODES] and caught["tasks"][0]["closest_approach_cells"] == 1
    assert missed["passed"] and missed["tasks"][0]["closest_approach_cells"] == 2


def test_check_rejects_tasks_off_the_free_cells(stitch_data):
    data = stitch_data["maze2d-umaze"]
    with pytest.raises(ConfigError, match="not in a free cell"):
        stitch_check(data, [(np.array([2.0, 1.0]), np.array([1.0, 1.0]))], "maze2d-umaze")  # (2, 1) is a wall
    with pytest.raises(ConfigError, match="at least one task"):
        stitch_check(data, [], "maze2d-umaze")


def test_same_seed_same_arrays_other_seed_differs():
    a, b = (generate_stitch("maze2d-umaze", 64, 4, seed=3, progress=False) for _ in range(2))
    c = generate_stitch("maze2d-umaze", 64, 4, seed=4, progress=False)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["observations"], c["observations"])


def test_bad_generator_input():
    with pytest.raises(ConfigError, match="episode_steps=1"):
        generate_stitch("maze2d-umaze", 1, 4)
    with pytest.raises(ConfigError, match="episodes=0"):
        generate_stitch("maze2d-umaze", 64, 0)
    with pytest.raises(ConfigError, match="unknown maze"):
        stitch_tasks("maze2d-huge")


@pytest.fixture(scope="session")
def stitch_file(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("stitch")
    return ensure_stitch_dataset("maze2d-umaze", 128, episodes=60, seed=0, data_dir=data_dir, progress=False), data_dir


def test_file_records_recipe_tasks_and_check(stitch_file):
    path, data_dir = stitch_file
    attrs = read_attrs(path)
    assert attrs["recipe_version"] == STITCH_RECIPE_VERSION and attrs["segments"] == "timeouts"
    assert (attrs["episodes"], attrs["episode_steps"], attrs["travel_cells"]) == (60, 128, 3)
    assert json.loads(attrs["tasks_json"]) == [[[1.0, 1.0], [3.0, 1.0]], [[3.0, 1.0], [1.0, 1.0]]]
    assert attrs["stitch_check_passed"] is True and json.loads(attrs["stitch_check_json"])["violations"] == 0
    assert ensure_stitch_dataset("maze2d-umaze", 128, episodes=60, seed=0, data_dir=data_dir) == path  # cached


def test_cache_with_other_metadata_is_refused(stitch_file, tmp_path):
    path, _ = stitch_file
    (tmp_path / path.name.replace("seed0", "seed1")).write_bytes(path.read_bytes())
    with pytest.raises(ConfigError, match="cached stitch dataset has {'seed': 0}, expected {'seed': 1}"):
        ensure_stitch_dataset("maze2d-umaze", 128, episodes=60, seed=1, data_dir=tmp_path)


def test_a_failing_check_writes_nothing(tmp_path):
    with pytest.raises(ConfigError, match="stitch check failed"):
        ensure_stitch_dataset("maze2d-medium", 256, episodes=40, travel_cells=8, data_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_training_cuts_stitch_files_at_episode_ends_only(stitch_file):
    path, _ = stitch_file
    data = load_d4rl_hdf5(path)
    windows = SequenceDataset(data, horizon=128, eval_goal_xy=None, cut_at_timeouts=True)
    assert len(windows.bounds) == 60 and len(windows) == 60  # one window per episode, none across a reset
    cfg = compose_job("train_diffuser", ["env=maze2d_umaze", f"dataset={path}", "experiment=quick"])
    trained_on, source = load_training_data(cfg)
    assert source["frame"] == "diffnorm"
    assert trained_on.bounds == windows.bounds and len(trained_on) == 60
    # the D4RL-stream reading (cut where the agent leaves the umaze goal) would mix episodes
    assert len(SequenceDataset(data, horizon=128, eval_goal_xy=maze_spec("maze2d-umaze").eval_goal_xy).bounds) != 60
    assert OmegaConf.select(cfg, "dataset") == str(path)


def test_make_maze_dataset_stitch_script(script, tmp_path):
    run = script("make_maze_dataset", "dataset=stitch", "env=maze2d_umaze", "stitch.episodes=40", "progress=false",
                 f"data_dir={tmp_path / 'data'}", "plot_episodes=5", run_dir=tmp_path / "run")
    assert run.returncode == 0, run.stderr
    results = load_results(tmp_path / "run")
    assert results["dataset"] == "stitch" and results["stitch_check"]["passed"]
    assert results["episode_stats"]["episodes"] == 40 and results["checks"]["positions_in_wall"] == 0
    assert (tmp_path / "run" / "coverage.png").stat().st_size > 10_000
    assert "stitch check vs 2 diffnorm tasks: PASSED" in run.stdout


def test_make_maze_dataset_unknown_recipe(tmp_path):
    with pytest.raises(ConfigError, match=re.escape("dataset='stich' is not one of ['d4rl', 'stitch', 'ogbench']")):
        make_maze_dataset(compose_job("make_maze_dataset", ["dataset=stich"]), tmp_path)


def test_reader_takes_the_observation_width_from_the_file_only_when_asked(stitch_data, tmp_path):
    """OGBench-style files hold positions only; maze2d's reader stays strict unless told otherwise."""
    data = {k: v[:500] for k, v in stitch_data["maze2d-umaze"].items()}
    data["observations"] = data["observations"][:, :2]
    path = write_d4rl_hdf5(tmp_path / "xy.hdf5", data, observation_dim=None)
    assert load_d4rl_hdf5(path, observation_dim=None)["observations"].shape == (500, 2)
    with pytest.raises(ConfigError, match="observation dimension 2, expected 4"):
        load_d4rl_hdf5(path)
    with pytest.raises(ConfigError, match="observation dimension 1, expected at least 2"):
        write_d4rl_hdf5(tmp_path / "x.hdf5", {**data, "observations": data["observations"][:, :1]},
                        observation_dim=None)
