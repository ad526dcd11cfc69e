"""The norm-reach gatherer on a tiny study with a windowed-norm arm: the summary's contract, the spans of
the statistics, the leak of probed planners, the figure."""

from __future__ import annotations

import json

import pytest
from conftest import load_results

# The tiny study of the stitching answer's tests: a two-level U-Net reaching 33 / 32 steps, 96-step plans.
from test_stitching_answer import PROBE, TRAIN

from diffnorm.experiments.common import compose_job
from diffnorm.experiments.leak_probe import leak_probe
from diffnorm.experiments.stitching import stitching_study

pytestmark = pytest.mark.usefixtures("single_thread")

CONTRACT = {"model", "norm", "window", "seeds", "receptive_field", "beyond_rf_mass", "connected_mean", "connected_ci95",
            "success_mean", "success_ci95", "diff_connected_vs_none", "diff_connected_vs_none_ci95"}


def test_norm_reach_contract_spans_and_leak(tmp_path, script):
    listing = "[" + ",".join(f"'{v}'" for v in TRAIN) + "]"
    arms = "arms={local_group_w5: ['norm=local_group','norm.window=5','norm.groups=2']}"
    study = tmp_path / "study"
    stitching_study(compose_job("stitching_study", [
        f"train_overrides={listing}", "norms=[group,none]", arms, "seeds=[0,1]", "workers=1", "episodes_per_task=1",
        "max_steps=10", "stitch.episodes=40", f"data_dir={tmp_path / 'data'}", "protocols=[open_loop]"]), study)
    runs = ",".join(str(study / "runs" / arm / "seed0") for arm in ("group", "none", "local_group_w5"))
    leak_probe(compose_job("leak_probe", [f"checkpoints=[{runs}]", *PROBE]), tmp_path / "leak")
    measured = load_results(tmp_path / "leak")["models"]
    assert measured["local_group (window=5, groups=2)"]["receptive_field_with_norms"][0] > 33
    assert measured["group (groups=8)"]["receptive_field_with_norms"] is None

    summary = tmp_path / "norm_reach.json"
    run = tmp_path / "answer"
    proc = script("norm_reach", f"studies={{tiny: {study}}}", f"leak_probes={{tiny: [{tmp_path / 'leak'}]}}",
                  f"summary={summary}", run_dir=run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = json.loads(summary.read_text())["tiny"]
    assert set(written) == {"group", "none", "local_group_w5"}
    assert all(set(entry) == CONTRACT for entry in written.values())
    w5, none = written["local_group_w5"], written["none"]
    assert (w5["norm"], w5["window"], w5["seeds"], w5["receptive_field"]) == ("local_group", 5, 2, [33, 32])
    assert none["window"] is None and none["diff_connected_vs_none"] == 0.0 and none["beyond_rf_mass"] == 0.0
    assert written["group"]["beyond_rf_mass"] > 0  # one probed planner each
    results = load_results(run)
    arms = results["benchmarks"]["tiny"]
    assert [arms[a]["statistic_span"] for a in ("none", "local_group_w5", "group")] == [0, 5, 191]
    # Level 0 (96 steps, 8 channels in 2 groups): 5 x 4 values; level 1 (48 steps, 16 channels): 5 x 8.
    assert [96, 5, 5, 20] in arms["local_group_w5"]["statistic_levels"]
    assert [48, 5, 10, 40] in arms["local_group_w5"]["statistic_levels"]
    assert arms["none"]["pooled_values_min"] == 0 and arms["group"]["leak_seeds"] == 1
    assert len(arms["group"]["final_loss_per_seed"]) == 2 and "connected_vs_group" in arms["none"]
    assert (run / "span_response.png").stat().st_size > 0
