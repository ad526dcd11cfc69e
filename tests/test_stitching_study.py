"""The stitching study end to end on tiny settings, its plan-path measure, and its one-line input errors."""

import json
import re

import numpy as np
import pytest
from conftest import load_results

from diffnorm.experiments.common import ConfigError, compose_job
from diffnorm.experiments.stitching import stitching_study
from diffnorm.planning.stitch import plan_path_stats

TRAIN = ["experiment=tiny", "train.grad_accumulation=1", "train.steps=2",
         "train.checkpoint_every=2"]


def _tiny(tmp_path, *extra: str) -> list[str]:
    listing = "[" + ",".join(f"'{v}'" for v in TRAIN) + "]"
    return [f"train_overrides={listing}", "norms=[group,none]", "seeds=[0,1]", "workers=1", "episodes_per_task=1",
            "max_steps=10", "stitch.episodes=40", f"data_dir={tmp_path / 'data'}", *extra]


def test_stitching_study_writes_results_cis_and_figures(script, tmp_path):
    run = tmp_path / "run"
    proc = script("stitching_study", *_tiny(tmp_path, "protocols=[open_loop,replan_4]"), run_dir=run)
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
    for name in ("plans_group.png", "plans_none.png", "success.png", "plan_quality.png", "success_replan_4.png", "success_open_loop.png"):
        assert (run / name).stat().st_size > 0
    # Three levels of kernel 5 reach 147 / 144 steps (the published network's field at any width): a 32-step
    # plan is seen whole by every index.
    assert res["horizon"] == 32 and res["receptive_field"] == [147, 144] and not res["beyond_rf"]
    assert res["sees_both_ends"]["count"] == 32 and res["train_data"] == "stitch"
    assert res["protocol"] == "off_plan_1" and res["replan_off_plan"] == 1.0  # maze2d's default
    # More protocols on the same planners, summarized like the main one.
    assert set(res["protocols"]) == {"open_loop", "replan_4"}
    replan = res["protocols"]["replan_4"]
    assert replan["protocol"] == "replan_4" and set(replan["summary"]) == {"group", "none"}
    assert replan["runs"]["none"]["1"]["episodes"] == 2 and "difference" in replan["comparison_vs_baseline"]["group"]["success_rate"]
    assert replan["runs"]["none"]["1"]["plans_per_episode"] == 3  # t = 0, 4, 8 of 10 steps
    assert res["protocols"]["open_loop"]["runs"]["none"]["1"]["plans_per_episode"] == 1
    assert (run / "runs" / "none" / "seed1" / "stitch_eval_replan_4.json").is_file()
    # Same run directory again: the finished trainings are reused, only the evaluation runs.
    proc = script("stitching_study", *_tiny(tmp_path, "protocols=[open_loop,replan_4]"), run_dir=run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = [r for by in load_results(run)["runs"].values() for r in by.values()]
    assert all(r["training"]["reused"] and r["evaluation_reused"] for r in again)


def test_side_by_side_trainings_get_one_thread_each_and_are_reused_alone(tmp_path):
    """workers=2 gives each training one thread whatever its preset asks (two two-thread trainings on two
    cores stall each other); the thread count is not part of the run, so workers=1 later reuses them."""
    two_threads = ["train.num_threads=2"]
    listing = "[" + ",".join(f"'{v}'" for v in TRAIN + two_threads) + "]"
    args = [a.replace("workers=1", "workers=2") if a.startswith("workers=") else a for a in _tiny(tmp_path)]
    args = [f"train_overrides={listing}" if a.startswith("train_overrides=") else a for a in args]
    stitching_study(compose_job("stitching_study", args), tmp_path / "run")
    for run in (tmp_path / "run" / "runs").glob("*/seed*"):
        assert json.loads((run / "results.json").read_text())["torch_threads"] == 1, run
    alone = [a.replace("workers=2", "workers=1") for a in args]
    res = stitching_study(compose_job("stitching_study", alone), tmp_path / "run")
    assert all(r["training"]["reused"] for by in res["runs"].values() for r in by.values())


def test_ceiling_control_trains_on_whole_paths(tmp_path):
    """train_data=full: the same tasks, planners trained on the env's D4RL-recipe data, cached in data_dir."""
    listing = "[" + ",".join(f"'{v}'" for v in TRAIN + ["env.dataset_steps=3000"]) + "]"
    cfg = compose_job("stitching_study", _tiny(tmp_path, "train_data=full", "norms=[none,channel]",
                                                f"train_overrides={listing}"))
    res = stitching_study(cfg, tmp_path / "run")
    assert res["train_data"] == "full" and set(res["runs"]) == {"none", "channel"}
    trained = load_results(tmp_path / "run" / "runs" / "none" / "seed0")
    assert "stitch" not in trained["dataset"]["path"] and trained["dataset"]["path"].startswith(str(tmp_path / "data"))
    assert res["runs"]["none"]["0"]["per_task"][0]["bfs_distance"] == 6


def test_unknown_norm_is_one_line_error(script, tmp_path):
    proc = script("stitching_study", *_tiny(tmp_path), "norms=[group,grup]", run_dir=tmp_path / "run")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown norm(s) ['grup']"), proc.stderr
    assert not (tmp_path / "data").exists()  # refused before any data work


@pytest.mark.parametrize(("override", "message"), [
    ("seeds=[]", "at least two seeds"), ("seeds=[0,0]", "distinct integers"), ("norms=[group]", "at least two planners"),
    ("baseline=channel", "baseline=channel must be one of"), ("stitch.episode_steps=16", "shorter than the training"),
    ("train_data=whole", "train_data='whole' is not one of ['stitch', 'full']"), ("protocols=[replan_0]", "protocols=['replan_0']: protocol 'replan_0': replan_<k> needs k >= 1"),
    ("protocols=[often]", "is not one of open_loop"), ("protocols=[open_loop,open_loop]", "repeat each other")])
def test_bad_input_raises_config_error(tmp_path, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):  # at composition or when the job starts
        stitching_study(compose_job("stitching_study", _tiny(tmp_path, override)), tmp_path / "run")
    assert not (tmp_path / "data").exists()


def test_arms_beside_norms_train_their_own_networks_and_norms(tmp_path):
    """An arm is any list of training overrides: a windowed norm and Eq-Net beside a plain norm, each in
    runs/<arm>/seed<k>, with its network, norm and receptive fields (conv-only; with norms where finite)."""
    arms = "arms={w3: ['norm=local_group','norm.window=3','norm.groups=2'], eq: ['model=eqnet','norm=channel']}"
    res = stitching_study(compose_job("stitching_study", _tiny(tmp_path, "norms=[none]", arms)), tmp_path / "run")
    assert res["norms"] == ["none", "w3", "eq"] and set(res["runs"]) == {"none", "w3", "eq"}
    assert set(res["comparison_vs_baseline"]) == {"w3", "eq"}
    info = res["arms"]
    assert info["none"]["overrides"] == ["norm=none"] and info["none"]["receptive_field_with_norms"] == [147, 144]
    assert info["w3"]["norm"] == {"name": "local_group", "window": 3, "groups": 2}
    # Every norm of the 3-level U-Net adds one step each side at its own resolution: far more than the convs.
    assert info["w3"]["receptive_field"] == [147, 144] and info["w3"]["receptive_field_with_norms"][0] > 147
    assert info["eq"]["model"] == "eqnet" and info["eq"]["receptive_field"] == [61, 61]
    trained = load_results(tmp_path / "run" / "runs" / "eq" / "seed1")
    assert trained["norm"]["name"] == "channel"
    assert (tmp_path / "run" / "plans_w3.png").stat().st_size > 0


@pytest.mark.parametrize(("override", "message"), [
    ("arms={w4: ['norm=local_group','norm.window=4']}", "arms: w4=['norm=local_group', 'norm.window=4']: "
     "norm=local_group: norm.window=4 must be an odd positive number"),
    ("arms={none: ['norm=group']}", "arms.none: an arm's name"),
    ("arms={x: ['seed=3']}", "arms.x: seed= is set by the study"),
    ("arms=['norm=group']", "must map each arm's name"),
    ("train_overrides=['norm=grup']", "train_overrides: norm= is set by the study"),
    ("train_overrides=['norm.groups=4']", "train_overrides: norm.groups= is set by the study")])
def test_bad_arms_are_refused_before_any_work(tmp_path, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        stitching_study(compose_job("stitching_study", _tiny(tmp_path, override)), tmp_path / "run")
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["env.ogbench.replan_every=16", "train_overrides=['env.ogbench.replan_every=16']"])
def test_ogbench_refuses_the_retired_replan_every(tmp_path, where):
    cfg = compose_job("stitching_study", _tiny(tmp_path, "env=ogbench_pointmaze_medium", where))
    with pytest.raises(ConfigError, match=re.escape("env.ogbench.replan_every=16 is no longer read")):
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
    from diffnorm.probing.stats import seed_interval

    wide = seed_interval([0.0, 0.0, 1.0], rate=True)
    assert wide["ci_low"] == 0.0 and wide["ci_high"] == 1.0 and wide["mean"] == pytest.approx(1 / 3)
    unbounded = seed_interval([0.0, 0.0, 1.0])
    assert unbounded["ci_low"] < 0 < 1 < unbounded["ci_high"]
