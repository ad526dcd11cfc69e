"""D4RL hdf5 reading (files written directly with h5py, as D4RL's are), validation errors, atomic writes,
and the Minari reader on datasets created locally."""

import importlib.util
import json

import h5py
import numpy as np
import pytest

from diffnorm.data import d4rl_format
from diffnorm.data.d4rl_format import D4RL_LAYOUT, load_d4rl_hdf5, load_minari, write_d4rl_hdf5
from diffnorm.envs.maze2d import centred_frame, make_env
from diffnorm.experiments.common import ConfigError


def _arrays(n: int = 50, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = {k: rng.normal(size=(n, *shape)).astype(np.float32) for k, shape in D4RL_LAYOUT.items()}
    data["terminals"] = np.zeros(n, dtype=bool)
    data["timeouts"] = rng.uniform(size=n) < 0.1
    return data


def _write_like_d4rl(path, data, skip=(), extra_metadata=True):
    """What D4RL's generation script does: h5py create_dataset per key, gzip, plus metadata/* keys."""
    with h5py.File(path, "w") as f:
        for key, arr in data.items():
            if key not in skip:
                f.create_dataset(key, data=arr, compression="gzip")
        if extra_metadata:
            f["metadata/algorithm"] = "waypoint controller"
    return path


def test_reads_a_file_written_directly_with_h5py(tmp_path):
    data = _arrays()
    loaded = load_d4rl_hdf5(_write_like_d4rl(tmp_path / "maze2d-umaze-sparse-v1.hdf5", data))
    assert set(loaded) == set(D4RL_LAYOUT)
    for key in data:
        np.testing.assert_array_equal(loaded[key], data[key], err_msg=key)
    assert loaded["observations"].dtype == np.float32 and loaded["timeouts"].dtype == bool


def test_write_read_round_trip_with_attrs(tmp_path):
    data = _arrays(seed=1)
    path = write_d4rl_hdf5(tmp_path / "sub" / "x.hdf5", data, {"maze": "maze2d-umaze", "seed": 3})
    for key, arr in load_d4rl_hdf5(path).items():
        np.testing.assert_array_equal(arr, data[key])
    assert d4rl_format.read_attrs(path) == {"maze": "maze2d-umaze", "seed": 3}
    assert [p.name for p in path.parent.iterdir()] == ["x.hdf5"]  # no temporary file left


def _bad(kind: str, tmp_path):
    data = _arrays()
    path = tmp_path / "bad.hdf5"
    if kind == "missing key":
        _write_like_d4rl(path, data, skip=("timeouts",))
    elif kind == "length mismatch":
        data["actions"] = data["actions"][:-3]
        _write_like_d4rl(path, data)
    elif kind == "nan":
        data["observations"][17, 2] = np.nan
        _write_like_d4rl(path, data)
    elif kind == "inf":
        data["rewards"][4] = np.inf
        _write_like_d4rl(path, data)
    elif kind == "obs dim":
        data["observations"] = data["observations"][:, :3]
        _write_like_d4rl(path, data)
    elif kind == "truncated":
        _write_like_d4rl(path, _arrays(n=5000))
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "not hdf5":
        path.write_text("observations,actions\n1,2\n")
    return path


@pytest.mark.parametrize("kind,named", [
    ("missing key", "missing key 'timeouts'"),
    ("length mismatch", "'actions' has 47 steps but 'observations' has 50"),
    ("nan", r"'observations' has a non-finite value \(nan\) at index \(17, 2\)"),
    ("inf", r"'rewards' has a non-finite value \(inf\) at index 4"),
    ("obs dim", r"observation dimension 3, expected 4"),
    ("truncated", "truncated or corrupt"),
    ("not hdf5", "not a readable HDF5 file"),
])
def test_bad_files_give_one_line_errors(kind, named, tmp_path):
    path = _bad(kind, tmp_path)
    with pytest.raises(ConfigError, match=named) as err:
        load_d4rl_hdf5(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found: .*nope.hdf5"):
        load_d4rl_hdf5(tmp_path / "nope.hdf5")


def test_write_refuses_bad_data_and_leaves_nothing(tmp_path, monkeypatch):
    data = _arrays()
    data["infos/goal"][3, 0] = np.nan
    with pytest.raises(ConfigError, match="'infos/goal' has a non-finite value"):
        write_d4rl_hdf5(tmp_path / "x.hdf5", data)
    with pytest.raises(ConfigError, match="attribute 'cfg'"):
        write_d4rl_hdf5(tmp_path / "x.hdf5", _arrays(), {"cfg": {"a": 1}})
    # a failure half-way through writing leaves neither the file nor its temporary
    original = h5py.Group.create_dataset
    calls = []

    def failing(self, name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(OSError, match="disk full"):
        write_d4rl_hdf5(tmp_path / "x.hdf5", _arrays())
    assert list(tmp_path.iterdir()) == []


def test_overwrite_is_atomic(tmp_path):
    path = write_d4rl_hdf5(tmp_path / "x.hdf5", _arrays(seed=1))
    write_d4rl_hdf5(path, _arrays(seed=2))
    np.testing.assert_array_equal(load_d4rl_hdf5(path)["actions"], _arrays(seed=2)["actions"])


# ---- Minari -------------------------------------------------------------------------------------------

def _record(env, episodes: int, steps: int, seed: int):
    """Roll random actions, returning what a D4RL-layout reader should produce from the recording."""
    rng = np.random.default_rng(seed)
    rows = {k: [] for k in ("observations", "actions", "rewards", "timeouts", "goal")}
    for episode in range(episodes):
        obs, info = env.reset(seed=seed + episode)
        for t in range(steps):
            action = rng.uniform(-1, 1, size=2).astype(np.float32)
            rows["observations"].append(obs)
            rows["goal"].append(info["goal"] if "goal" in info else obs["desired_goal"])
            obs, reward, _, _, info = env.step(action)
            rows["actions"].append(action)
            rows["rewards"].append(reward)
            rows["timeouts"].append(t == steps - 1)
    return rows


@pytest.fixture
def minari_home(tmp_path, monkeypatch):
    pytest.importorskip("minari")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"


def _needs_jax():
    if importlib.util.find_spec("jax") is None:
        pytest.skip("minari.DataCollector needs jax (pip install 'minari[create]')")


def test_minari_datacollector_dataset_loads_to_the_same_arrays(minari_home):
    _needs_jax()
    import minari

    env = minari.DataCollector(make_env("maze2d-umaze", max_episode_steps=40), record_infos=True)
    rows = _record(env, episodes=3, steps=40, seed=0)
    env.create_dataset(dataset_id="diffnorm/umaze-test-v0", algorithm_name="random", description="test")
    data = load_minari("diffnorm/umaze-test-v0")
    np.testing.assert_allclose(data["observations"], np.array(rows["observations"]), atol=1e-6)
    np.testing.assert_array_equal(data["actions"], np.array(rows["actions"]))
    np.testing.assert_array_equal(data["rewards"], np.array(rows["rewards"], dtype=np.float32))
    np.testing.assert_array_equal(data["timeouts"], np.array(rows["timeouts"]))
    np.testing.assert_array_equal(data["infos/goal"], np.array(rows["goal"], dtype=np.float32))
    np.testing.assert_array_equal(data["infos/qpos"], data["observations"][:, :2])
    assert not data["terminals"].any()


def test_minari_pointmaze_dataset_is_converted_to_d4rl_coordinates(minari_home):
    """A gymnasium-robotics PointMaze recording (dict observations, centred frame), as Minari's
    D4RL/pointmaze datasets are, loads in D4RL coordinates when its maze is named."""
    _needs_jax()
    import gymnasium as gym
    import minari

    from diffnorm.envs.maze2d import build_point_maze

    env = minari.DataCollector(gym.wrappers.TimeLimit(build_point_maze("maze2d-umaze"), 30), record_infos=False)
    rows = _record(env, episodes=2, steps=30, seed=1)
    env.create_dataset(dataset_id="diffnorm/pointmaze-test-v0", algorithm_name="random", description="test")
    data = load_minari("diffnorm/pointmaze-test-v0", maze="maze2d-umaze")
    frame = centred_frame("maze2d-umaze")
    obs = np.array([o["observation"] for o in rows["observations"]])
    np.testing.assert_allclose(data["observations"], frame.state_to_d4rl(obs[:, :2], obs[:, 2:]), atol=1e-6)
    np.testing.assert_allclose(data["actions"], frame.vector_to_d4rl(np.array(rows["actions"])), atol=1e-7)
    np.testing.assert_allclose(data["infos/goal"], frame.point_to_d4rl(np.array(rows["goal"])), atol=1e-6)
    assert ((data["observations"][:, :2] > 0.4) & (data["observations"][:, :2] < 3.6)).all()  # inside umaze


def test_minari_dataset_from_buffers_without_jax(minari_home):
    """The same reader on a dataset made with minari.create_dataset_from_buffers (no jax needed)."""
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    rng = np.random.default_rng(0)
    buffers, expected = [], []
    for episode in range(2):
        n = 10 + episode
        obs = rng.normal(size=(n + 1, 4)).astype(np.float32)
        goal = np.tile(np.array([1.0, 1.0], dtype=np.float32), (n + 1, 1))
        buffers.append(EpisodeBuffer(id=episode, observations=obs, actions=rng.uniform(-1, 1, (n, 2)).astype(np.float32),
                                     rewards=rng.uniform(size=n), terminations=np.zeros(n, bool),
                                     truncations=np.arange(n) == n - 1, infos={"goal": goal}))
        expected.append(obs[:n])
    env = make_env("maze2d-umaze")
    minari.create_dataset_from_buffers("diffnorm/buffers-test-v0", buffers, env=env, algorithm_name="random",
                                      description="test", author="diffnorm", author_email="-", code_permalink="-")
    data = load_minari("diffnorm/buffers-test-v0")
    np.testing.assert_array_equal(data["observations"], np.concatenate(expected))
    assert len(data["actions"]) == 21 and data["timeouts"].sum() == 2


def test_minari_errors(minari_home):
    with pytest.raises(FileNotFoundError, match="not found locally"):
        load_minari("diffnorm/absent-v0")


# ---- coordinate frames of data this package did not write ----

@pytest.fixture(scope="module")
def umaze_stream():
    from diffnorm.data.generate import generate_maze2d

    return generate_maze2d("maze2d-umaze", 50_000, seed=0, progress=False)  # valid motion, package frame


def _as_raw_d4rl(data):
    """The same motion as D4RL's own files record it: positions 0.2 lower on both axes (body at (1.2, 1.2),
    walls at (i + 1, j + 1)); velocities and actions unchanged."""
    raw = {k: v.copy() for k, v in data.items()}
    for key in ("infos/goal", "infos/qpos"):
        raw[key] = data[key] - 0.2
    raw["observations"][:, :2] = data["observations"][:, :2] - 0.2
    return raw


def test_a_raw_d4rl_file_loads_in_the_package_frame(tmp_path, umaze_stream):
    from diffnorm.data.d4rl_format import load_dataset
    from diffnorm.data.generate import dataset_checks
    from diffnorm.envs.maze2d import in_wall, xy_to_cell

    raw = _as_raw_d4rl(umaze_stream)
    path = _write_like_d4rl(tmp_path / "maze2d-umaze-v1.hdf5", raw)  # h5py directly, no frame attribute

    as_is = load_d4rl_hdf5(path)  # read without a frame: the fault users met
    cells = xy_to_cell(umaze_stream["observations"][:, :2])
    assert in_wall("maze2d-umaze", as_is["observations"][:, :2].astype(np.float64)).mean() > 0.005
    assert (xy_to_cell(as_is["observations"][:, :2]) != cells).any(axis=1).mean() > 0.1

    data, info = load_dataset(path, maze="maze2d-umaze")
    assert info["frame"] == "d4rl" and "no frame attribute" in info["frame_source"]
    xy = data["observations"][:, :2].astype(np.float64)
    assert int(in_wall("maze2d-umaze", xy).sum()) == 0
    np.testing.assert_array_equal(xy_to_cell(xy), cells)
    np.testing.assert_allclose(data["observations"], umaze_stream["observations"], atol=1e-6)
    np.testing.assert_allclose(data["infos/goal"], umaze_stream["infos/goal"], atol=1e-6)
    np.testing.assert_array_equal(data["actions"], umaze_stream["actions"])
    checks = dataset_checks("maze2d-umaze", data)
    assert checks["positions_in_wall"] == 0 and checks["free_cells_visited"] == checks["free_cells"]


def test_frames_are_resolved_declared_attribute_generator_then_d4rl(tmp_path, umaze_stream):
    from diffnorm.data.d4rl_format import load_dataset, resolve_frame

    assert resolve_frame({}) == ("d4rl", "no frame attribute: a D4RL file")
    assert resolve_frame({"generator": "diffnorm.data.generate"})[0] == "diffnorm"  # files cached before the attribute
    assert resolve_frame({"frame": "centred", "generator": "diffnorm.x"})[0] == "centred"
    assert resolve_frame({"frame": "d4rl"}, declared="diffnorm") == ("diffnorm", "declared (dataset_frame)")
    with pytest.raises(ConfigError, match="unknown coordinate frame 'utm'"):
        resolve_frame({}, declared="utm")
    ours = write_d4rl_hdf5(tmp_path / "ours.hdf5", umaze_stream, {"frame": "diffnorm"})
    data, info = load_dataset(ours)
    assert info["frame"] == "diffnorm"
    np.testing.assert_array_equal(data["observations"], umaze_stream["observations"])
    with pytest.raises(ConfigError, match="centred frame needs its maze"):
        load_dataset(ours, frame="centred")


def test_generated_files_record_their_frame(tmp_path):
    from diffnorm.data.generate import ensure_dataset

    path = ensure_dataset("maze2d-umaze", 2000, seed=0, data_dir=tmp_path, progress=False)
    assert d4rl_format.read_attrs(path)["frame"] == "diffnorm"


def test_training_on_a_raw_d4rl_file_records_its_frame(script, tmp_path, umaze_stream):
    """train_diffuser on a D4RL-frame file: converted on load and recorded in results.json; declaring the
    frame overrides the guess."""
    from conftest import load_results

    path = _write_like_d4rl(tmp_path / "maze2d-umaze-v1.hdf5", _as_raw_d4rl(umaze_stream))
    run = tmp_path / "run"
    proc = script("train_diffuser", "experiment=tiny", f"dataset={path}", "train.steps=1", run_dir=run)
    assert proc.returncode == 0, proc.stderr
    source = load_results(run)["dataset"]
    assert source["frame"] == "d4rl" and source["path"] == str(path)
    scaler = json.loads((run / "scaler.json").read_text())
    assert min(scaler["observations"]["mins"][:2]) > 0.5, "positions were shifted into the package frame"
    declared = tmp_path / "declared"
    proc = script("train_diffuser", "experiment=tiny", f"dataset={path}", "dataset_frame=diffnorm", "train.steps=1",
                  run_dir=declared)
    assert proc.returncode == 0, proc.stderr
    assert load_results(declared)["dataset"]["frame_source"] == "declared (dataset_frame)"
    proc = script("train_diffuser", "experiment=tiny", f"dataset={path}", "dataset_frame=utm", run_dir=tmp_path / "bad")
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: dataset_frame='utm' is not one of")
