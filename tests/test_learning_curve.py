"""The learning-curve job end to end on a tiny run: every snapshot scored, cached, time-to-score."""

from __future__ import annotations

import json

import pytest

from conftest import load_results
from diffnorm.experiments.learning_curve import first_at_or_above


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from conftest import run_script

    root = tmp_path_factory.mktemp("curve")
    run = root / "run"
    proc = run_script("train_diffuser", "experiment=tiny", f"data_dir={root / 'data'}", "train.steps=4",
                      "train.snapshot_every=2", "norm=none", run_dir=run)
    assert proc.returncode == 0, proc.stderr
    return run


def test_curve_job_scores_every_snapshot(script, tiny_run, tmp_path):
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"maze2d-large": {"group": {"kept": True}}}))
    proc = script("learning_curve", f"runs=[{tiny_run}]", "episodes=2", "final_multi_episodes=2",
                  f"summary={summary}", run_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    res = load_results(tmp_path)
    (record,) = res["runs"]
    assert [p["step"] for p in record["points"]] == [2, 4]
    assert all(p["episodes"] == 2 and p["train_seconds"] > 0 for p in record["points"])
    assert record["published"] == {"mode": "single", "mean": 113.9, "sem": 3.1}
    assert record["final"]["step"] == 4 and record["final_multi"]["mode"] == "multi"
    assert record["final_multi"]["published"] == [128.9, 1.8]
    reached = first_at_or_above(record["points"], 113.9)
    assert record["time_to_published_s"] == (reached["train_seconds"] if reached else None)
    assert (tmp_path / "curve_maze2d-umaze.png").stat().st_size > 0
    written = json.loads(summary.read_text())
    assert written["maze2d-large"] == {"group": {"kept": True}}, "other mazes are kept"
    entry = written["maze2d-umaze"]["none"]
    assert set(entry) == {"steps", "train_seconds", "episodes", "score_mean", "score_sem", "success",
                          "multi_score_mean", "time_to_published_s", "preset"}
    assert entry["steps"] == 4 and entry["episodes"] == 2 and entry["preset"] == "tiny"
    assert entry["score_mean"] == record["final"]["score_mean"]
    assert entry["multi_score_mean"] == record["final_multi"]["score_mean"]
    cached = sorted(p.name for p in (tiny_run / "snapshots" / "eval").glob("*.json"))
    assert "step_0000002_single_n2_seed0_defaultxall.json" in cached

    # A second curve over the same run reads the cached evaluations: identical points.
    again = tmp_path / "again"
    proc = script("learning_curve", f"runs=[{tiny_run}]", "episodes=2", "steps=[4]", run_dir=again)
    assert proc.returncode == 0, proc.stderr
    assert load_results(again)["runs"][0]["points"] == [record["points"][1]]


def test_first_at_or_above_takes_the_earliest_step():
    points = [{"step": 3, "score_mean": 120.0}, {"step": 1, "score_mean": 90.0}, {"step": 2, "score_mean": 115.0}]
    assert first_at_or_above(points, 113.9)["step"] == 2
    assert first_at_or_above(points, 130.0) is None


@pytest.mark.parametrize("overrides,message", [
    ([], "runs=[<train_diffuser run dir>, ...] is required"),
    (["runs=[/nonexistent/run]"], "/nonexistent/run is not a train_diffuser run directory"),
    (["runs=[RUN]", "steps=[3]"], "has no snapshots at steps [3]"),
    (["runs=[RUN]", "mode=both"], "mode"),
])
def test_bad_input_is_one_line(script, tiny_run, tmp_path, overrides, message):
    proc = script("learning_curve", *[o.replace("RUN", str(tiny_run)) for o in overrides], run_dir=tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and message in line
