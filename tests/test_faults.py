"""Issue 8, reliability: every fault injected here is listed with what the user sees in
docs/results/faults.md. Sections: config validation, data faults (with hypothesis property tests of
the readers and the window sampler), interruptions (SIGKILL mid-save, SIGINT, NaN loss), determinism
and provenance, multirun robustness."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffnorm.config import JOBS, job_function, validate_config
from diffnorm.data.d4rl_format import D4RL_LAYOUT, load_d4rl_hdf5, write_d4rl_hdf5
from diffnorm.data.sequence import SequenceDataset, episode_bounds
from diffnorm.experiments.common import (
    ConfigError,
    TrainingDiverged,
    compose_job,
    package_versions,
    run_job,
    write_results,
)
from diffnorm.probing.stats import welch_difference
from diffnorm.training.checkpoint import CHECKPOINT, load_checkpoint
from diffnorm.training.loop import EpochOrder

ROOT = Path(__file__).resolve().parents[1]
TINY = ["experiment=tiny", "train.grad_accumulation=1", "device=cpu"]
PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("faults_data")


def train_cfg(data_dir, *overrides):
    return compose_job("train_diffuser", [*TINY, f"data_dir={data_dir}", *overrides])


def script(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg", HYDRA_FULL_ERROR="0")
    return subprocess.run([sys.executable, str(ROOT / "scripts" / f"{name}.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


# ------------------------------------------------------------------------------ 1. config validation

def test_every_shipped_config_and_group_choice_fits_its_schema():
    """Keeps the schema and the YAML files in step: a key added to one and not the other fails here."""
    for name in JOBS:
        validate_config(name, compose_job(name, []))
        assert callable(job_function(name)), f"config.JOBS names no function for {name}"
    for norm in sorted(p.stem for p in (ROOT / "configs" / "norm").glob("*.yaml")):
        validate_config("train_diffuser", compose_job("train_diffuser", [f"norm={norm}"]))
        validate_config("localization", compose_job("localization", [f"norm={norm}"]))
    for env in sorted(p.stem for p in (ROOT / "configs" / "env").glob("*.yaml")):
        for experiment in ([], ["experiment=quick"]):
            validate_config("train_diffuser", compose_job("train_diffuser", [f"env={env}", *experiment]))
        validate_config("make_maze_dataset", compose_job("make_maze_dataset", [f"env={env}"]))
    scripts = {re.search(r'config_name="(\w+)"', p.read_text()) for p in (ROOT / "scripts").glob("*.py")}
    names = {m.group(1) for m in scripts if m}
    assert not names - set(JOBS), f"scripts without a job in diffnorm/config.py's JOBS: {sorted(names - set(JOBS))}"
    assert not set(JOBS) - names, f"jobs without a script: {sorted(set(JOBS) - names)}"


@pytest.mark.parametrize("job,overrides,message", [
    ("train_diffuser", ["train.steps=abc"], "config key train.steps: value 'abc' of type 'str' could not be converted to Integer"),
    ("train_diffuser", ["seed=1.5"], "config key seed: value '1.5' of type 'float' could not be converted to Integer"),
    ("train_diffuser", ["+train.stpes=5"], "unknown config key train.stpes"),
    ("train_diffuser", ["~train.lr"], "config key train.lr cannot be deleted: the job needs it"),
    ("train_diffuser", ["+norm.momentum=0.1"], "norm.momentum is not a setting of norm 'group' (its settings: ['groups', 'eps'])"),
    ("train_diffuser", ["norm.groups=2.5"], "norm.groups=2.5 has type float, expected int"),
    ("train_diffuser", ["env.horizon=130"], "env.horizon=130 must be a positive multiple of 4 (the U-Net halves it 2 times"),
    ("train_diffuser", ["env.horizon=512"], "env.horizon=512 is longer than an episode of maze2d-umaze (env.max_episode_steps=300)"),
    ("train_diffuser", ["env.name=maze2d-tiny"], "env.name='maze2d-tiny' is not a known maze"),
    ("train_diffuser", ["norm.groups=3"], "norm=group with {'groups': 3} cannot normalize 32 channels"),
    ("train_diffuser", ["model.dim=8", "norm.groups=16"], "cannot normalize 8 channels"),
    ("train_diffuser", ["norm=batch", "train.batch_size=1"], "norm=batch with train.batch_size=1: batch statistics"),
    ("train_diffuser", ["diffusion.sampler=euler"], "diffusion.sampler='euler' is not one of ['ddpm', 'ddim', 'dpm']"),
    ("train_diffuser", ["diffusion.num_steps=100"], "diffusion.num_steps=100 exceeds env.n_diffusion_steps=64"),
    ("train_diffuser", ["train.ema_decay=1.5"], "train.ema_decay=1.5 must lie in [0, 1)"),
    ("train_diffuser", ["train.lr_schedule=wsd"],
     "train.lr_schedule=wsd needs 1 <= train.decay_steps <= train.steps - train.warmup_steps = 2000000, got 0"),
    ("train_diffuser", ["train.decay_steps=100"], "train.decay_steps=100 is used only by train.lr_schedule=wsd (the schedule is constant)"),
    ("train_diffuser", ["data_dir=${nowhere}"], "config key data_dir: Interpolation key 'nowhere' not found"),
    ("localization", ["norm=group", "norm.groups=5"], "cannot normalize 32 channels"),
    ("plan_maze", ["mode=both"], "mode='both' is not one of ['single', 'multi']"),
    ("plan_maze", ["episodes=many"], "config key episodes: value 'many'"),
    ("leak_probe", ["+probe.layers=3"], "unknown config key probe.layers"),
    ("stitching_study", ["seeds=[0,x]"], "config key seeds[1]: value 'x'"),
    ("study", ["workers=two"], "config key workers: value 'two'"),
    ("make_maze_dataset", ["force=maybe"], "config key force: value 'maybe' is not a valid bool"),
    ("controller_baseline", ["+episode=3"], "unknown config key episode"),
    ("packnorm_overlap", ["overlaps=4"], "config key overlaps"),
])
def test_bad_config_is_one_line_naming_the_key(job, overrides, message):
    with pytest.raises(ConfigError) as err:
        validate_config(job, compose_job(job, overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name,overrides,expected", [
    ("train_diffuser", ["norm=batch", "train.batch_size=1"], "error: norm=batch with train.batch_size=1:"),
    ("make_maze_dataset", ["+stitch.travel=3"], "error: unknown config key stitch.travel"),
])
def test_scripts_refuse_bad_config_before_any_work(tmp_path, name, overrides, expected):
    run = tmp_path / "run"
    proc = script(name, *overrides, f"hydra.run.dir={run}")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(expected), proc.stderr
    assert not run.exists(), "a refused config leaves no run directory behind"


def test_bugs_keep_their_stack_trace(tmp_path, monkeypatch):
    def localization(cfg, out):  # a job with a valid config that fails by a bug, not by bad input
        raise ZeroDivisionError("a bug")

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ZeroDivisionError):
        run_job(localization, compose_job("localization", []))


# ------------------------------------------------------------------------------------ 2. data faults

def arrays(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = {k: rng.normal(size=(n, *shape)).astype(np.float32) for k, shape in D4RL_LAYOUT.items()}
    data["terminals"] = np.zeros(n, bool)
    data["timeouts"] = rng.random(n) < 0.1
    return data


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    return write_d4rl_hdf5(tmp_path_factory.mktemp("h5") / "good.hdf5", arrays(300), attrs={"seed": 0})


@PROPERTY
@given(n=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_written_files_read_back_exactly(tmp_path, n, seed):
    data = arrays(n, seed)
    loaded = load_d4rl_hdf5(write_d4rl_hdf5(tmp_path / "x.hdf5", data))
    for key in D4RL_LAYOUT:
        np.testing.assert_array_equal(loaded[key], data[key], err_msg=key)


@PROPERTY
@given(key=st.sampled_from([k for k in D4RL_LAYOUT if k not in ("terminals", "timeouts")]),
       value=st.sampled_from([np.nan, np.inf, -np.inf]), data=st.data())
def test_a_non_finite_value_is_named_by_file_key_and_index(tmp_path, key, value, data):
    arrs = arrays(30)
    row = data.draw(st.integers(0, 29))
    arrs[key].reshape(30, -1)[row, 0] = value
    path = tmp_path / "bad.hdf5"
    with h5py.File(path, "w") as f:  # written raw: write_d4rl_hdf5 refuses such data
        for k, a in arrs.items():
            f[k] = a
    index = f"index ({row}, 0)" if arrs[key].ndim == 2 else f"index {row}"
    with pytest.raises(ConfigError) as err:
        load_d4rl_hdf5(path)
    assert str(err.value) == f"{path}: {key!r} has a non-finite value ({value}) at {index}"


@PROPERTY
@given(fraction=st.floats(0.0, 0.999))
def test_any_truncation_is_a_clear_error(tmp_path, good_file, fraction):
    raw = good_file.read_bytes()
    path = tmp_path / "cut.hdf5"
    path.write_bytes(raw[:int(len(raw) * fraction)])
    with pytest.raises(ConfigError, match="truncated or corrupt") as err:
        load_d4rl_hdf5(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.floats(0.0, 0.999), flip=st.integers(1, 255))
def test_a_corrupted_byte_gives_a_clear_error_or_valid_data(tmp_path, good_file, position, flip):
    """Never a raw h5py exception: checksums (fletcher32 on data, v1.8 object headers) catch most
    damage; the rest (a few bytes of slack or of the datatype) reads back as still-valid data."""
    raw = bytearray(good_file.read_bytes())
    raw[int(len(raw) * position)] ^= flip
    path = tmp_path / "flip.hdf5"
    path.write_bytes(bytes(raw))
    try:
        load_d4rl_hdf5(path)
    except ConfigError as err:
        assert str(path) in str(err) and "\n" not in str(err)


@pytest.mark.parametrize("fault,message", [
    ("flag 0.5", "'timeouts' has 0.5 at index 7, expected a boolean (0 or 1)"),
    ("flag nan", "'terminals' has nan at index 3, expected a boolean (0 or 1)"),
    ("string rewards", "'rewards' has dtype |S3, expected real numbers"),
    ("group", "'infos/goal' is an HDF5 group, expected a dataset of shape [N, 2]"),
    ("empty", "'observations' is empty"),
    ("rows", "'actions' has 29 steps but 'observations' has 30"),
])
def test_malformed_files_name_file_key_and_index(tmp_path, fault, message):
    arrs: dict = arrays(30)
    if fault == "flag 0.5":
        arrs["timeouts"] = np.zeros(30)
        arrs["timeouts"][7] = 0.5
    elif fault == "flag nan":
        arrs["terminals"] = np.zeros(30)
        arrs["terminals"][3] = np.nan
    elif fault == "string rewards":
        arrs["rewards"] = np.array([b"abc"] * 30)
    elif fault == "empty":
        arrs = {k: v[:0] for k, v in arrs.items()}
    elif fault == "rows":
        arrs["actions"] = arrs["actions"][:29]
    path = tmp_path / "bad.hdf5"
    with h5py.File(path, "w") as f:
        for k, a in arrs.items():
            if fault == "group" and k == "infos/goal":
                f.create_group(k)
            else:
                f[k] = a
    with pytest.raises(ConfigError) as err:
        load_d4rl_hdf5(path)
    assert str(err.value) == f"{path}: {message}" or (message in str(err.value) and str(path) in str(err.value))


def stream(flags: list[bool], seed: int = 0) -> dict[str, np.ndarray]:
    n = len(flags)
    rng = np.random.default_rng(seed)
    return {"observations": rng.normal(size=(n, 4)), "actions": rng.normal(size=(n, 2)),
            "terminals": np.zeros(n, bool), "timeouts": np.asarray(flags, bool)}


@PROPERTY
@given(flags=st.lists(st.booleans(), min_size=1, max_size=120), horizon=st.integers(2, 24))
def test_windows_lie_inside_one_episode_and_cover_every_start(flags, horizon):
    data = stream(flags)
    bounds = episode_bounds(data, None, cut_at_timeouts=True)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(flags)
    assert all(s < e for s, e in bounds) and all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    expected = [s for lo, hi in bounds for s in range(lo, hi - horizon + 1)]
    if not expected:
        with pytest.raises(ConfigError, match="longer than every episode"):
            SequenceDataset(data, horizon, None, cut_at_timeouts=True)
        return
    ds = SequenceDataset(data, horizon, None, cut_at_timeouts=True)
    assert ds.starts.tolist() == expected
    scaled = ds.scaler.normalize_observations(data["observations"])
    for i in range(len(ds)):
        item, start = ds[i], expected[i]
        assert item["trajectory"].shape == (horizon, 6)
        np.testing.assert_allclose(item["conditions"][0], scaled[start], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(item["conditions"][horizon - 1], scaled[start + horizon - 1], rtol=1e-5, atol=1e-6)


@PROPERTY
@given(n=st.integers(5, 60), row=st.integers(0, 4), key=st.sampled_from(["observations", "actions"]))
def test_sampler_names_a_non_finite_row(n, row, key):
    data = stream([False] * n)
    data[key][row, 1] = np.nan
    with pytest.raises(ConfigError, match=rf"'{key}' has a non-finite value \(nan\) at index \({row}, 1\)"):
        SequenceDataset(data, 4, None, cut_at_timeouts=True)


def test_sampler_refuses_empty_data():
    with pytest.raises(ConfigError, match="'observations' has shape \\(0, 4\\).*no steps"):
        SequenceDataset(stream([]), 4, None)


@PROPERTY
@given(n=st.integers(1, 30), seed=st.integers(0, 100), start=st.integers(0, 90), count=st.integers(0, 60))
def test_epoch_order_is_a_permutation_per_epoch_and_any_split_agrees(n, seed, start, count):
    order = EpochOrder(n, seed)
    for epoch in range(3):
        assert sorted(order.indices(epoch * n, n)) == list(range(n))
    whole = EpochOrder(n, seed).indices(0, start + count)
    assert order.indices(start, count) == whole[start:]


# ------------------------------------------------------------------------------------ 3. interruptions

# Runs a script with os.fsync slowed on the 2nd checkpoint: its temporary file is written, not yet
# renamed, when the marker appears; the test SIGKILLs the process there.
PAUSE_IN_SAVE = r"""
import os, runpy, sys, time
from pathlib import Path
marker = Path(sys.argv.pop(1))
real_fsync, seen = os.fsync, []
def fsync(fd):
    name = os.readlink(f"/proc/self/fd/{fd}")
    if name.endswith("checkpoint.safetensors.tmp"):
        seen.append(name)
        if len(seen) == 2:
            marker.write_text(name)
            time.sleep(600)
    real_fsync(fd)
os.fsync = fsync
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.exists(), proc.communicate()[1][-3000:]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see which file is synced")
def test_sigkill_while_saving_keeps_the_last_checkpoint_and_resumes(tmp_path, data_dir):
    from diffnorm.experiments.diffuser import train_diffuser

    run, marker = tmp_path / "run", tmp_path / "saving"
    run_args = ["train.steps=12", "train.checkpoint_every=3", "train.log_every=3"]
    args = [sys.executable, "-c", PAUSE_IN_SAVE, str(marker), str(ROOT / "scripts" / "train_diffuser.py"), *TINY,
            f"data_dir={data_dir}", *run_args, f"hydra.run.dir={run}"]
    proc = subprocess.Popen(args, cwd=ROOT, env=dict(os.environ, MPLBACKEND="Agg"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_for(marker, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert (run / (CHECKPOINT + ".tmp")).exists(), "killed while the new checkpoint was being written"
    loaded = load_checkpoint(run / CHECKPOINT)
    assert loaded.step == 3, "the previous checkpoint is intact"
    res = train_diffuser(train_cfg(data_dir, *run_args, "train.resume=true"), run)
    assert res["resumed_from"] == 3 and res["steps"] == 12 and load_checkpoint(run).step == 12
    assert not (run / (CHECKPOINT + ".tmp")).exists()


@pytest.mark.parametrize("overrides,expected", [
    (["norm=grup"], "error: norm=grup is not an option of the config group 'norm'; choose one of ['batch', "
                    "'channel', 'group', 'instance', 'layer', 'local_group', 'none']"),
    (["env=maze2d_mediu"], "error: env=maze2d_mediu is not an option of the config group 'env'; choose one of "
                           "['maze2d_large', 'maze2d_medium', 'maze2d_umaze', 'ogbench_pointmaze_medium']"),
    (["experiment=fast"], "error: experiment=fast is not an option of the config group 'experiment'"),
    (["train.stepz=5"], "error: unknown config key train.stepz; did you mean train.steps?"),
    (["train.lrr=0.1"], "error: unknown config key train.lrr; did you mean train.lr?"),
])
def test_hydra_composition_errors_are_one_line_and_exit_2(tmp_path, overrides, expected):
    run = tmp_path / "run"
    proc = script("train_diffuser", *overrides, f"hydra.run.dir={run}")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(expected), proc.stderr
    assert not run.exists()


def test_an_existing_key_that_cannot_take_the_value_is_not_called_unknown():
    from diffnorm.experiments.common import composition_error

    assert composition_error("stitching_study", ["stitch={foo: 1}"]) == (
        "config key stitch cannot be set to that value: Key 'foo' not in 'StitchStudyDataSchema'")
    # Mappings given on the command line compose (their defaults are null, not a closed {}).
    assert composition_error("learning_curve", ["labels={a: b}"]) is None
    assert composition_error("stitching_answer", ["studies={maze2d-umaze-stitch: a/b}", "leak_probes={x: y}"]) is None


def test_unquoted_list_overrides_name_the_quoting(tmp_path):
    proc = script("stitching_study", "train_overrides=[a=1,b=2]", f"hydra.run.dir={tmp_path / 'run'}")
    (line,) = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and line.startswith("error: cannot parse the override") and "quote list items" in line


@pytest.mark.parametrize("job", ["stitching_study", "leak_probe", "study"])
def test_a_bad_train_override_names_train_overrides(job, tmp_path):
    proc = script(job, 'train_overrides=["train.lr=abc"]', f"hydra.run.dir={tmp_path / 'run'}")
    (line,) = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and line.startswith("error: train_overrides: config key train.lr"), line
    assert not (tmp_path / "run" / "results.json").exists()


def test_plan_maze_on_a_dataset_file_says_it_is_not_a_run(tmp_path):
    data = tmp_path / "maze2d-umaze.hdf5"
    write_d4rl_hdf5(data, {k: np.zeros((4, *s), dtype=np.float32) for k, s in D4RL_LAYOUT.items()})
    proc = script("plan_maze", f"checkpoint={data}", f"hydra.run.dir={tmp_path / 'run'}")
    (line,) = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and line == (f"error: checkpoint {data} is not a training run directory or a "
                                             ".safetensors weights file (ema.safetensors, checkpoint.safetensors "
                                             "or snapshots/step_*.safetensors)")


def test_ctrl_c_in_dataset_generation_is_one_line_and_exit_130(tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, str(ROOT / "scripts" / "make_maze_dataset.py"), "steps=5000000", "force=true",
            f"data_dir={tmp_path / 'data'}", f"hydra.run.dir={run}"]
    proc = subprocess.Popen(args, cwd=ROOT, env=dict(os.environ, MPLBACKEND="Agg"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_for(run / "make_maze_dataset.log", proc)
    time.sleep(3)  # inside the generation loop
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("interrupted: Ctrl-C") and "Traceback" not in err


def test_a_constant_run_resumes_into_a_wsd_decay_but_not_into_another_past(tmp_path, data_dir):
    """Warmup-stable-decay's point: a constant-rate checkpoint branches into a decay and ends with the
    weights of a run trained with that schedule from the start; a resume that would change a learning rate
    already taken is refused."""
    from safetensors.torch import load_file

    from diffnorm.experiments.diffuser import train_diffuser

    common = ["train.checkpoint_every=2", "train.log_every=1"]
    wsd = ["train.steps=6", "train.lr_schedule=wsd", "train.decay_steps=2"]
    train_diffuser(train_cfg(data_dir, *wsd, *common), tmp_path / "straight")
    train_diffuser(train_cfg(data_dir, "train.steps=4", *common), tmp_path / "branch")
    res = train_diffuser(train_cfg(data_dir, *wsd, "train.resume=true", *common), tmp_path / "branch")
    assert res["resumed_from"] == 4
    straight, branch = (load_file(str(tmp_path / d / CHECKPOINT)) for d in ("straight", "branch"))
    assert straight.keys() == branch.keys() and all(torch.equal(straight[k], branch[k]) for k in straight)
    rates = [float(r.split(",")[2]) for r in (tmp_path / "branch" / "metrics.csv").read_text().splitlines()[1:]]
    assert rates == pytest.approx([2e-4, 2e-4, 2e-4, 2e-4, 2e-4 * 2 / 3, 2e-4 / 3])  # stable, then 2 decay steps
    with pytest.raises(ConfigError, match=r"its step 5 \(as metrics.csv counts\) took 0.0001333, they give 0.0002"):
        train_diffuser(train_cfg(data_dir, "train.steps=8", "train.lr_schedule=wsd", "train.decay_steps=2",
                                 "train.resume=true", *common), tmp_path / "branch")
    # A resume names only what it gives: the saved schedule (wsd) is the one its decay_steps belong to.
    res = train_diffuser(train_cfg(data_dir, "train.steps=6", "train.decay_steps=2", "train.resume=true", *common),
                         tmp_path / "straight")
    assert res["resumed_from"] == 6 and res["steps"] == 6


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_writes_a_final_checkpoint_and_exits_cleanly(tmp_path, data_dir, sig, code):
    """Ctrl-C, or a kill / a cluster's preemption (SIGTERM): a checkpoint of the step reached, one line."""
    from diffnorm.experiments.diffuser import train_diffuser

    run = tmp_path / "run"
    run_args = ["train.steps=100000", "train.checkpoint_every=5", "train.log_every=5"]
    args = [sys.executable, str(ROOT / "scripts" / "train_diffuser.py"), *TINY, f"data_dir={data_dir}",
            *run_args, f"hydra.run.dir={run}"]
    proc = subprocess.Popen(args, cwd=ROOT, env=dict(os.environ, MPLBACKEND="Agg"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_for(run / CHECKPOINT, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    last = err.strip().splitlines()[-1]
    assert proc.returncode == code and last.startswith(f"interrupted: {sig.name} at step "), err[-3000:]
    assert "Traceback" not in err
    step = int(last.split("at step ")[1].split()[0])
    assert load_checkpoint(run).step == step
    res = train_diffuser(train_cfg(data_dir, "train.steps=" + str(step + 2), "train.checkpoint_every=5",
                                   "train.log_every=5", "train.resume=true"), run)
    assert res["resumed_from"] == step and load_checkpoint(run).step == step + 2


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, data_dir, monkeypatch, capsys):
    from diffnorm.diffusion.gaussian import GaussianDiffusion
    from diffnorm.experiments.diffuser import train_diffuser

    real_loss, calls = GaussianDiffusion.loss, []

    def loss_turning_nan(self, *args, **kwargs):  # the 6th optimizer step and every later one diverge
        calls.append(1)
        loss = real_loss(self, *args, **kwargs)
        return loss * float("nan") if len(calls) >= 6 else loss

    monkeypatch.setattr(GaussianDiffusion, "loss", loss_turning_nan)
    cfg = train_cfg(data_dir, "train.steps=10", "train.checkpoint_every=2", "train.log_every=5")
    with pytest.raises(TrainingDiverged) as err:
        train_diffuser(cfg, tmp_path / "direct")
    assert str(err.value).startswith("loss is nan at step 6 (train.lr=0.0002); training stopped and the last good "
                                     f"checkpoint, step 4, is kept in {tmp_path / 'direct' / CHECKPOINT}")
    loaded = load_checkpoint(tmp_path / "direct")
    assert loaded.step == 4 and all(torch.isfinite(p).all() for p in loaded.diffusion.parameters())
    rows = (tmp_path / "direct" / "metrics.csv").read_text().strip().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["5"], "the NaN interval is not logged"

    calls.clear()
    monkeypatch.chdir(tmp_path)  # run_job's run directory outside Hydra
    with pytest.raises(SystemExit) as stop:
        run_job(train_diffuser, cfg)
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 3 and len(lines) == 1 and lines[0].startswith("error: loss is nan at step 6")


def test_results_json_is_replaced_atomically(tmp_path, monkeypatch):
    write_results(tmp_path, {"a": 1})

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_results(tmp_path, {"a": 2})
    assert json.loads((tmp_path / "results.json").read_text())["a"] == 1


def test_results_json_is_strict_json(tmp_path):
    undefined = welch_difference([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])  # two constant samples: p is nan
    assert math.isnan(undefined["p_value"])
    write_results(tmp_path, {"diff": undefined, "inf": np.float32("inf"), "values": np.array([0.5, np.nan]),
                             "losses": torch.tensor([float("-inf"), 2.0])})

    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    record = json.loads((tmp_path / "results.json").read_text(), parse_constant=reject)
    assert record["diff"] == {"difference": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": None}
    assert record["inf"] is None and record["values"] == [0.5, None] and record["losses"] == [None, 2.0]


def test_learning_curve_summary_is_strict_sorted_json(tmp_path):
    from diffnorm.experiments.learning_curve import update_summary

    def record(env, norm, sem):
        final = {"step": 10, "train_seconds": 1.5, "episodes": 1, "score_mean": 50.0, "score_sem": sem,
                 "success_rate": 1.0}
        return {"env": env, "norm": norm, "final": final, "final_multi": None, "time_to_published_s": None,
                "preset": "cpu_umaze"}

    path = tmp_path / "summary.json"
    update_summary(path, [record("maze2d-umaze", "none", float("nan"))], None)  # one episode: sem undefined
    update_summary(path, [record("maze2d-medium", "group", 2.0)], "cpu_medium")

    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    text = path.read_text()
    summary = json.loads(text, parse_constant=reject)
    assert list(summary) == ["maze2d-medium", "maze2d-umaze"] and text.index('"episodes"') < text.index('"preset"')
    assert summary["maze2d-umaze"]["none"]["score_sem"] is None
    assert summary["maze2d-medium"]["group"] == {
        "steps": 10, "train_seconds": 1.5, "episodes": 1, "score_mean": 50.0, "score_sem": 2.0, "success": 1.0,
        "multi_score_mean": None, "time_to_published_s": None, "preset": "cpu_medium"}


# -------------------------------------------------------------------------- 4. determinism, provenance

def test_same_seed_same_dataset_file(tmp_path):
    from diffnorm.data.generate import ensure_dataset

    a, b = (ensure_dataset("maze2d-umaze", 2000, 3, data_dir=str(tmp_path / d), progress=False) for d in "ab")
    da, db = load_d4rl_hdf5(a), load_d4rl_hdf5(b)
    for key in da:
        np.testing.assert_array_equal(da[key], db[key], err_msg=key)


def test_same_seed_same_training_curve_and_rollout_scores(tmp_path, data_dir, monkeypatch):
    from diffnorm.experiments.diffuser import train_diffuser
    from diffnorm.experiments.planning import plan_maze

    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        runs[name] = train_diffuser(train_cfg(data_dir, "train.steps=6", "train.log_every=1", f"seed={seed}"),
                                    tmp_path / name)
    assert runs["a"]["loss_curve"] == runs["b"]["loss_curve"]
    assert runs["a"]["loss_curve"] != runs["c"]["loss_curve"]
    wa, wb = load_checkpoint(tmp_path / "a").diffusion.state_dict(), load_checkpoint(tmp_path / "b").diffusion.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    plans = []
    for name in ("p1", "p2"):
        cfg = compose_job("plan_maze", [f"checkpoint={tmp_path / 'a'}", "episodes=2", "max_steps=20", "sampler=ddim",
                                        "num_steps=2", "plot_episodes=1", "progress=false", "seed=4"])
        plans.append(plan_maze(cfg, tmp_path / name))
    assert plans[0]["scores"] == plans[1]["scores"]
    with np.load(tmp_path / "p1" / "rollouts.npz") as one, np.load(tmp_path / "p2" / "rollouts.npz") as two:
        np.testing.assert_array_equal(one["states"], two["states"])

    # every results.json records the versions; seeds come from the job's config
    saved = json.loads((tmp_path / "a" / "results.json").read_text())["provenance"]
    assert saved["seeds"] == {"seed": 0, "data_seed": 0}
    assert saved["versions"]["torch"] == metadata.version("torch") == package_versions()["torch"]
    assert set(saved["versions"]) >= {"python", "diffnorm", "numpy", "diffusers", "gymnasium-robotics", "mujoco"}
    monkeypatch.chdir(tmp_path / "p1")
    run_job(plan_maze, cfg)
    assert json.loads((tmp_path / "p1" / "results.json").read_text())["provenance"]["seeds"] == {"seed": 4}


# --------------------------------------------------------------------------------------- 5. multirun

def test_one_failed_job_in_a_sweep_does_not_lose_the_others(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    proc = script("train_diffuser", "-m", "norm.groups=3,4", *TINY, f"data_dir={data_dir}", "train.steps=2",
                  f"hydra.sweep.dir={sweep}")
    assert proc.returncode != 0, "the sweep reports its failure"
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors[0].startswith("error: norm=group with {'groups': 3} cannot normalize 8 channels"), proc.stderr
    failed = json.loads((sweep / "0" / "error.json").read_text())
    assert failed["status"] == "failed" and failed["user_error"] and "groups': 3" in failed["error"]
    assert failed["provenance"]["seeds"] == {"seed": 0, "data_seed": 0}
    assert not (sweep / "0" / "results.json").exists()
    done = json.loads((sweep / "1" / "results.json").read_text())
    assert done["steps"] == 2 and done["norm"] == {"name": "group", "groups": 4}
