"""The stitching study end to end on tiny settings, its plan-path measure, and its one-line input errors."""

import json
import re

import numpy as np
import pytest
from conftest import load_results

from diffnorm.experiments.common import ConfigError, compose_job
from diffnorm.experiments.stitching import plan_path_stats, stitching_study

TRAIN = ["experiment=quick", "model.dim=8", "model.dim_mults=[1,2,2]", "env.horizon=32", "env.n_diffusion_steps=8",
         "train.steps=2", "train.batch_size=4", "train.n_samples=2", "train.sample_every=0",
         "train.checkpoint_every=2", "train.progress=false"]


def _tiny(tmp_path, *extra: str) -> list[str]:
    listing = "[" + ",".join(f"'{v}'" for v in TRAIN) + "]"
    return [f"train_overrides={listing}", "norms=[group,none]", "seeds=[0,1]", "workers=1", "episodes_per_task=1",
            "max_steps=10", "stitch.episodes=40", f"data_dir={tmp_path / 'data'}", *extra]


def test_stitching_study_writes_results_cis_and_figures(script, tmp_path):
    run = tmp_path / "run"
    proc = script("stitching_study", *_tiny(tmp_path), run_dir=run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = load_results(run)
    assert res["env"] == "maze2d-umaze" and res["baseline"] == "none"
    assert res["dataset"]["stitch_check_passed"] and len(res["dataset"]["tasks"]) == 2
    assert set(res["runs"]) == {"group", "none"} and set(res["runs"]["group"]) == {"0", "1"}
    one = res["runs"]["group"]["0"]
    assert one["episodes"] == 2 and one["score_mean"] is None and not one["score_applies"]  # 10 steps, not 300
    assert 0 <= one["plan_in_wall_fraction"] <= 1 and one["plan_to_bfs_ratio"] > 0
    assert [t["bfs_distance"] for t in one["per_task"]] == [6, 6]
    for key in ("success_rate", "plan_in_wall_fraction", "plan_connected", "plan_to_bfs_ratio"):
        row = res["summary"]["group"][key]
        assert len(row["per_seed"]) == 2 and row["ci_low"] <= row["mean"] <= row["ci_high"]
        welch = res["comparison_vs_baseline"]["group"][key]
        assert welch["ci_low"] <= welch["difference"] <= welch["ci_high"]
    assert "none" not in res["comparison_vs_baseline"]
    for name in ("plans_group.png", "plans_none.png", "success.png", "plan_quality.png"):
        assert (run / name).stat().st_size > 0
    # Same run directory again: the finished trainings are reused, only the evaluation runs.
    proc = script("stitching_study", *_tiny(tmp_path), run_dir=run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = [r for by in load_results(run)["runs"].values() for r in by.values()]
    assert all(r["training"]["reused"] and r["evaluation_reused"] for r in again)


def test_unknown_norm_is_one_line_error(script, tmp_path):
    proc = script("stitching_study", *_tiny(tmp_path), "norms=[group,grup]", run_dir=tmp_path / "run")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown norm(s) ['grup']"), proc.stderr
    assert not (tmp_path / "data").exists()  # refused before any data work


@pytest.mark.parametrize(("override", "message"), [
    ("seeds=[]", "at least two seeds"), ("seeds=[0,0]", "distinct integers"), ("norms=[group]", "two distinct"),
    ("baseline=channel", "baseline=channel must be one of"), ("stitch.episode_steps=16", "shorter than the training")])
def test_bad_input_raises_config_error(tmp_path, override, message):
    cfg = compose_job("stitching_study", _tiny(tmp_path, override))
    with pytest.raises(ConfigError, match=re.escape(message)):
        stitching_study(cfg, tmp_path / "run")
    assert not (tmp_path / "data").exists()


def test_plan_path_stats_connected_vs_jump():
    # umaze: free cells (1,1)-(1,3), (2,3), (3,1)-(3,3); the U's wall is (2,1)-(2,2). BFS (1,1) -> (3,1) is 6.
    around = np.array([[1, 1], [1, 2], [1, 3], [2, 3], [3, 3], [3, 2], [3, 1]], dtype=float)
    good = plan_path_stats("maze2d-umaze", around, (3, 1), 6)
    assert good["plan_connected"] and good["plan_cell_moves"] == 6 and good["plan_to_bfs_ratio"] == 1.0
    through_wall = plan_path_stats("maze2d-umaze", np.array([[1, 1], [2, 1], [3, 1]], dtype=float), (3, 1), 6)
    assert not through_wall["plan_connected"] and through_wall["plan_to_bfs_ratio"] == pytest.approx(2 / 6)
    pasted = plan_path_stats("maze2d-umaze", np.array([[1, 1], [1, 2], [3, 1]], dtype=float), (3, 1), 6)
    assert not pasted["plan_connected"]  # a jump of two rows onto the inpainted goal
    json.dumps(good)


def test_rate_intervals_stay_inside_zero_one():
    from diffnorm.experiments.stitching import _seed_interval

    wide = _seed_interval([0.0, 0.0, 1.0], rate=True)
    assert wide["ci_low"] == 0.0 and wide["ci_high"] == 1.0 and wide["mean"] == pytest.approx(1 / 3)
    unbounded = _seed_interval([0.0, 0.0, 1.0])
    assert unbounded["ci_low"] < 0 < 1 < unbounded["ci_high"]
