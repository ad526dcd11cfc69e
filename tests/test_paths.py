"""Relative paths resolve against the directory the user launched from, with and without Hydra's
``hydra.job.chdir=true`` (which moves the process into the run directory before the job starts)."""

from __future__ import annotations

import pytest

from conftest import load_results, run_script

SMALL_PROBE = ["horizons=[32,64]", "influence.n_windows=1", "influence.row_stride=3", "leakage.n_windows=2",
               "leakage.chain_samples=2", "probe.n_train=16", "probe.n_test=48", "probe.steps=20",
               "probe.batch_size=64", "influence.t_fractions=[1.0]", "leakage.t_fractions=[1.0]",
               "probe.sites=[mid1]"]
STITCH_TRAIN = "train_overrides=['experiment=tiny','train.steps=2','train.checkpoint_every=2']"


# The chdir=true pass repeats every job in a moved working directory: 45 s, outside CI (pytest -m slow).
@pytest.mark.parametrize("chdir", ["false", pytest.param("true", marks=pytest.mark.slow)])
def test_every_job_resolves_relative_paths_from_the_launch_directory(tmp_path, chdir):
    launch = tmp_path / "launch"
    launch.mkdir()

    def job(script, *overrides, run):
        proc = run_script(script, *overrides, f"hydra.job.chdir={chdir}", f"hydra.run.dir=runs/{run}", cwd=launch)
        assert proc.returncode == 0, f"{script}: {proc.stderr[-2000:]}"
        assert (launch / "runs" / run / "results.json").is_file(), "the run directory is relative to the launch"
        return load_results(launch / "runs" / run)

    data = job("make_maze_dataset", "data_dir=rel_data", "steps=3000", "progress=false", run="data")
    file = launch / "rel_data" / (data["path"].rsplit("/", 1)[-1])
    assert file.is_file() and data["path"] == str(file)

    train = job("train_diffuser", "experiment=tiny", f"dataset=rel_data/{file.name}", "data_dir=rel_cache",
                "train.steps=2", "train.snapshot_every=2", run="train")
    assert train["dataset"]["path"] == str(file)

    plan = job("plan_maze", "checkpoint=runs/train", "episodes=1", "max_steps=5", "progress=false", run="plan")
    assert plan["checkpoint"]["path"] == str(launch / "runs" / "train" / "ema.safetensors")

    curve = job("learning_curve", "runs=[runs/train]", "episodes=1", run="curve")
    assert curve["runs"][0]["run"] == str(launch / "runs" / "train")

    leak = job("leak_probe", "checkpoints=[runs/train]", *SMALL_PROBE, run="leak")
    (model,) = leak["models"].values()
    assert model["checkpoint"] == str(launch / "runs" / "train" / "ema.safetensors")

    stitch = job("stitching_study", STITCH_TRAIN, "norms=[group,none]", "seeds=[0,1]", "workers=1",
                 "episodes_per_task=1", "max_steps=5", "stitch.episodes=40", "data_dir=rel_stitch", run="stitch")
    assert stitch["dataset"]["path"].startswith(str(launch / "rel_stitch"))
