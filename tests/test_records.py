"""Nothing misrecorded, nothing removed that the user made: refused commands leave a run directory's records
as they were, a resume records the run it continues, a job deletes only what it created, and path settings
and sub-job overrides are refused in one line before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["experiment=tiny", "train.grad_accumulation=1", "device=cpu"]


def _records(run: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted((run / ".hydra").iterdir())}


def test_a_refused_resume_rewrites_nothing_and_a_resume_records_the_run(tmp_path, script):
    run, data = tmp_path / "run", f"data_dir={tmp_path / 'data'}"
    assert script("train_diffuser", *TINY, data, "norm=none", run_dir=run).returncode == 0
    before = _records(run)
    refused = script("train_diffuser", "train.resume=true", "norm=group", data, run_dir=run)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "norm: run {'name': 'none'} vs now {'name': 'group'" in refused.stderr
    assert _records(run) == before  # Hydra rewrote them at start; the refusal put them back
    resumed = script("train_diffuser", "train.resume=true", "train.steps=6", data, run_dir=run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    recorded = (run / ".hydra" / "config.yaml").read_text()
    assert "name: none" in recorded and "steps: 6" in recorded  # the run, not the command's defaults


@pytest.mark.parametrize("mine", [[], ["notes.txt"]])
def test_a_directory_the_user_made_is_never_removed_or_written(tmp_path, script, mine):
    run = tmp_path / "mine"
    run.mkdir()
    for name in mine:
        (run / name).write_text("the user's\n")
    proc = script("train_diffuser", "train.resume=true", run_dir=run, cwd=tmp_path)
    assert proc.returncode == 2 and "config.yaml does not exist" in proc.stderr
    assert run.is_dir() and sorted(p.name for p in run.iterdir()) == mine


@pytest.mark.parametrize("job", ["train_diffuser", "stitching_study", "make_maze_dataset"])
def test_a_data_dir_that_is_a_file_is_refused_before_any_work(tmp_path, script, job):
    (tmp_path / "afile").write_text("")
    proc = script(job, "data_dir=afile", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip() == "error: data_dir=afile is a file; give a directory (it is made if missing)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # no run directory, no data


@pytest.mark.parametrize(("job", "overrides", "message"), [
    ("stitching_study", ["train_overrides=['norm=grup']"], "error: train_overrides: norm= is set by the study"),
    ("stitching_study", ["protocols=[replan_0]"], "error: protocols=['replan_0']: protocol 'replan_0': replan_<k>"),
    ("leak_probe", ["checkpoint=a", "checkpoints=[b]"], "error: give checkpoint=<one run> or checkpoints=[<runs>], "
     "not both"),
    ("plan_maze", ["checkpoint=nowhere"], "error: checkpoint=nowhere does not exist")])
def test_sub_job_settings_are_refused_by_the_key_the_user_wrote(tmp_path, script, job, overrides, message):
    proc = script(job, *overrides, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr
    assert not any(tmp_path.iterdir())  # no outputs/ tree left behind
