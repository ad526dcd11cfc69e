"""The stitching answer on a tiny study whose plans are longer than the receptive field: the summary's
contract (keys and types), the protocol entries, the leak of each planner beside its success, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import load_results

from diffnorm.experiments.common import ConfigError, compose_job
from diffnorm.experiments.leak_probe import leak_probe
from diffnorm.experiments.stitching import stitching_study
from diffnorm.experiments.stitching_answer import correlation, stitching_answer

pytestmark = pytest.mark.usefixtures("single_thread")

# A two-level U-Net with kernel 3 reaches 33 / 32 steps: on a 96-step plan no index sees both ends.
TRAIN = ["experiment=quick", "model.dim=8", "model.dim_mults=[1,2]", "model.kernel_size=3", "env.horizon=96",
         "env.n_diffusion_steps=8", "train.steps=2", "train.batch_size=4", "train.n_samples=2",
         "train.sample_every=0", "train.checkpoint_every=2", "train.progress=false"]
PROBE = ["horizons=[96]", "influence.n_windows=1", "influence.row_stride=7", "influence.t_fractions=[1.0]",
         "leakage.n_windows=2", "leakage.t_fractions=[1.0]", "leakage.chain_samples=1", "probe.n_train=16",
         "probe.n_test=32", "probe.steps=20", "probe.sites=[final_block]"]
CONTRACT = {"seeds", "episodes_per_task", "success_mean", "success_ci95", "connected_mean", "diff_vs_none", "diff_ci95"}


@pytest.fixture(scope="module")
def study_and_leak(tmp_path_factory):
    root = tmp_path_factory.mktemp("answer")
    listing = "[" + ",".join(f"'{v}'" for v in TRAIN) + "]"
    cfg = compose_job("stitching_study", [f"train_overrides={listing}", "norms=[group,none]", "seeds=[0,1,2,3]",
                                          "workers=1", "episodes_per_task=1", "max_steps=10", "stitch.episodes=40",
                                          f"data_dir={root / 'data'}", "protocols=[replan_4]"])
    study = root / "study"
    stitching_study(cfg, study)
    # Two probes of different planners (as when a norm is probed after the others): the answer merges them.
    leaks = []
    for norm in ("none", "group"):
        runs = ",".join(str(study / "runs" / norm / f"seed{s}") for s in range(4))
        leaks.append(root / f"leak_{norm}")
        leak_probe(compose_job("leak_probe", [f"checkpoints=[{runs}]", *PROBE]), leaks[-1])
    return root, study, leaks


def test_answer_summary_contract_and_leak(study_and_leak, script):
    root, study, (leak_none, leak_group) = study_and_leak
    summary = root / "answer.json"
    summary.write_text(json.dumps({"some-other-benchmark": {"horizon": 1}}))  # kept by the merge
    run = root / "answer_run"
    proc = script("stitching_answer", f"studies={{tiny-stitch: {study}}}", f"leak_probes={{tiny-stitch: [{leak_none},{leak_group}]}}",
                  f"summary={summary}", run_dir=run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = json.loads(summary.read_text())
    assert set(written) == {"some-other-benchmark", "tiny-stitch", "tiny-stitch-replan_4"}
    entry = written["tiny-stitch"]
    assert set(entry) == {"group", "none", "horizon", "receptive_field", "beyond_rf"}
    assert entry["horizon"] == 96 and entry["receptive_field"] == [33, 32] and entry["beyond_rf"] is True
    study_res = load_results(study)
    for norm in ("group", "none"):
        row = entry[norm]
        assert set(row) == CONTRACT and row["seeds"] == 4 and row["episodes_per_task"] == 1
        per_seed = study_res["summary"][norm]["success_rate"]["per_seed"]
        assert row["success_mean"] == pytest.approx(np.mean(per_seed))
        assert row["success_ci95"][0] <= row["success_mean"] <= row["success_ci95"][1]
    assert entry["none"]["diff_vs_none"] == 0.0 and entry["none"]["diff_ci95"] == [0.0, 0.0]
    welch = study_res["comparison_vs_baseline"]["group"]["success_rate"]
    assert entry["group"]["diff_vs_none"] == welch["difference"] and entry["group"]["diff_ci95"] == [welch["ci_low"], welch["ci_high"]]
    replan = written["tiny-stitch-replan_4"]["none"]
    assert replan["success_mean"] == pytest.approx(study_res["protocols"]["replan_4"]["summary"]["none"]["success_rate"]["mean"])

    res = load_results(run)
    planners = res["leak"]["tiny-stitch"]["planners"]
    assert sorted((p["norm"], p["seed"]) for p in planners) == [(n, s) for n in ("group", "none") for s in range(4)]
    # none cannot move anything beyond its receptive field; group's statistics can.
    assert all(p["beyond_rf_influence_fraction"] == 0.0 for p in planners if p["norm"] == "none")
    assert all(p["beyond_rf_influence_fraction"] > 0.0 for p in planners if p["norm"] == "group")
    for outcome in ("success_rate", "plan_connected"):
        corr = res["leak"]["tiny-stitch"]["correlation"][outcome]["beyond_rf_influence_fraction"]
        assert corr["all_planners"]["n"] == 8 and corr["norm=none"]["r"] is None  # constant leak: undefined
    for name in ("success.png", "leak_vs_success_rate.png", "leak_vs_plan_connected.png"):
        assert (run / name).stat().st_size > 10_000


def test_correlation_matches_its_definition():
    x, y = [0.0, 1.0, 2.0, 3.0, 4.0], [0.1, 0.9, 2.2, 2.8, 4.1]
    c = correlation(x, y)
    assert c["r"] == pytest.approx(np.corrcoef(x, y)[0, 1]) and c["ci95"][0] < c["r"] < c["ci95"][1] <= 1
    assert correlation(x[:3], y[:3])["r"] is None and correlation(x, [1.0] * 5)["r"] is None


def test_bad_input(study_and_leak, tmp_path):
    _, study, (leak, _) = study_and_leak
    with pytest.raises(ConfigError, match="name no study"):
        stitching_answer(compose_job("stitching_answer", [f"studies={{a: {study}}}", f"leak_probes={{b: {leak}}}"]),
                         tmp_path / "x")
    with pytest.raises(ConfigError, match="none seed 0 .* is measured twice"):
        stitching_answer(compose_job("stitching_answer", [f"studies={{a: {study}}}", f"leak_probes={{a: [{leak},{leak}]}}"]),
                         tmp_path / "w")
    with pytest.raises(ConfigError, match="leak_probes.a is empty"):
        stitching_answer(compose_job("stitching_answer", [f"studies={{a: {study}}}", "leak_probes={a: []}"]),
                         tmp_path / "v")
    with pytest.raises(ConfigError, match="not a finished stitching_study run directory"):
        stitching_answer(compose_job("stitching_answer", [f"studies={{a: {tmp_path}}}"]), tmp_path / "y")
    with pytest.raises(ConfigError, match="give studies="):
        stitching_answer(compose_job("stitching_answer", []), tmp_path / "z")


def test_one_probe_directory(study_and_leak, tmp_path):
    _, study, (leak_none, _) = study_and_leak
    res = stitching_answer(compose_job("stitching_answer", [f"studies={{a: {study}}}", f"leak_probes={{a: {leak_none}}}"]),
                           tmp_path / "one")
    assert res["leak"]["a"]["runs"] == [str(leak_none)]
    assert sorted((p["norm"], p["seed"]) for p in res["leak"]["a"]["planners"]) == [("none", s) for s in range(4)]


def test_answer_from_saved_results_after_the_planners_are_gone(study_and_leak, tmp_path):
    """The answer needs only the studies' and probes' results.json: each probe records its planners'
    norm and seed. A probe from before the seed was recorded needs the planners' saved configs."""
    _, study, (leak_none, _) = study_and_leak
    saved_study, saved_leak, old_leak = tmp_path / "study", tmp_path / "leak", tmp_path / "old_leak"
    for d in (saved_study, saved_leak, old_leak):
        d.mkdir()
    (saved_study / "results.json").write_text((study / "results.json").read_text())
    leak = load_results(leak_none)
    for model in leak["models"].values():  # as on another machine: the planners' runs do not exist there
        model["checkpoint"] = str(tmp_path / "gone" / Path(model["checkpoint"]).relative_to(study))
    (saved_leak / "results.json").write_text(json.dumps(leak))
    res = stitching_answer(compose_job("stitching_answer", [f"studies={{a: {saved_study}}}",
                                                            f"leak_probes={{a: {saved_leak}}}"]), tmp_path / "ok")
    assert sorted((p["norm"], p["seed"]) for p in res["leak"]["a"]["planners"]) == [("none", s) for s in range(4)]
    for model in leak["models"].values():
        del model["seed"]
    (old_leak / "results.json").write_text(json.dumps(leak))
    with pytest.raises(ConfigError, match="predates recording each planner's seed"):
        stitching_answer(compose_job("stitching_answer", [f"studies={{a: {saved_study}}}",
                                                          f"leak_probes={{a: {old_leak}}}"]), tmp_path / "old")
