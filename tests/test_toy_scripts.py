"""Every toy script end to end in a subprocess with tiny settings, and its bad-input errors."""

import json
import re

import numpy as np
import pytest
from conftest import ROOT, load_results

from diffnorm.experiments import toy
from diffnorm.experiments.common import compose_job
from diffnorm.experiments.toy_summary import (
    CLAIMS,
    channel_is_leak_free,
    fig1_none_edges,
    fig1b_depth,
    fig3_overlap,
    fig4_groups_trend,
    fig56_batch_minibatch,
    fig56_batch_population,
    sec32_uninformative_inputs,
)
from diffnorm.probing.stats import localization_distance

TINY = ["steps=30", "seeds=[0]", "n_test=60", "workers=1", "length=24", "depth=2", "kernel_size=3", "hidden=8"]


def test_localization_script(script, tmp_path):
    proc = script("localization", *TINY, "norm=group", "norm.groups=2", "probe.steps=20", "probe.n_train=16",
                  "probe.n_test=60", run_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(tmp_path)
    res = load_results(tmp_path)
    assert res["receptive_field"] == 2
    assert set(res["norms"]) == {"none", "group (groups=2)"}
    assert (tmp_path / "fig1a_predictions.png").stat().st_size > 0
    assert (tmp_path / "fig1b_probes.png").stat().st_size > 0


def test_groupnorm_groups_script(script, tmp_path):
    proc = script("groupnorm_groups", *TINY, "groups=[1,2]", "lrs=[1e-3]", run_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert set(load_results(tmp_path)["groups"]) == {"1", "2"}
    assert (tmp_path / "fig4_groups.png").exists()


def test_batchnorm_stats_script(script, tmp_path):
    proc = script("batchnorm_stats", *TINY, "effective_batch=4", "batch_sizes=[1,2]", run_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    modes = load_results(tmp_path)["modes"]
    assert set(modes) == {"no norm"} | {f"BatchNorm batch {b}, {m} stats" for b in (1, 2) for m in ("minibatch", "population")}
    assert (tmp_path / "fig5_batchnorm_predictions.png").exists()
    assert (tmp_path / "fig6_batchnorm_localized.png").exists()


def test_packnorm_script(script, tmp_path):
    proc = script("packnorm_overlap", "steps=20", "seeds=[0]", "n_test=16", "workers=1", "length=16", "depth=2",
                  "kernel_size=3", "hidden=4", "overlaps=[0,8]", run_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    res = load_results(tmp_path)
    assert set(res["mean_test_mse"]) == {"0", "8"}
    assert (tmp_path / "fig3_packnorm_overlap.png").exists()


def test_localization_norms_script(script, tmp_path):
    proc = script("localization_norms", *TINY, "batch_size=4", "norm_batch=2", "norms=[none,batch,channel]",
                  run_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    res = load_results(tmp_path)
    assert list(res["norms"]) == ["none", "batch (b = 2), minibatch statistics", "batch (b = 2), population statistics",
                                  "channel"]
    assert res["settings"]["norm_batch"] == 2 and res["interior_size"] == 20
    assert (tmp_path / "norms_localization.png").stat().st_size > 0


def test_uninformative_inputs_script(script, tmp_path):
    proc = script("uninformative_inputs", *TINY, "input_kinds=[{kind: gaussian},{kind: periodic, period: 3}]",
                  run_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    res = load_results(tmp_path)
    assert list(res["inputs"]) == ["gaussian", "periodic, period 3"]
    periodic = res["inputs"]["periodic, period 3"]
    assert periodic["inputs"] == {"kind": "periodic", "levels": 2, "period": 3}
    assert periodic["localized_interior_vs_repeats"]["per_seed"] == [0]  # repeats are indistinguishable
    assert (tmp_path / "uninformative_inputs.png").stat().st_size > 0


@pytest.mark.parametrize("job,override,message", [
    ("uninformative_inputs", "input_kinds=[{kind: gaussian},{kind: noisy}]", "input_kinds[1].kind='noisy' is not one of"),
    ("uninformative_inputs", "input_kinds=[{kind: periodic, perod: 3}]", "perod"),
    ("localization_norms", "norms=[none,grup]", "norms entry 'grup'"),
    ("localization_norms", "norm_batch=3", "norm_batch=3 must be a positive divisor"),
    ("localization_norms", "hidden=12", "norms entry 'group': norm=group with {'groups': 8} cannot normalize 12"),
])
def test_bad_toy_settings_fail_with_one_line(script, tmp_path, job, override, message):
    proc = script(job, *TINY, override, run_dir=tmp_path)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and message in last


def test_toy_summary_judges_every_claim_from_the_runs(script, tmp_path):
    tiny = [o for o in TINY if not o.startswith("seeds")] + ["seeds=[0,1]"]
    jobs = {"localization": ["probe.steps=20", "probe.n_train=16", "probe.n_test=60"],
            "groupnorm_groups": ["groups=[1,2]", "lrs=[1e-3]", "n_test_more=100"],
            "batchnorm_stats": ["effective_batch=4", "batch_sizes=[1,2]"],
            "localization_norms": ["batch_size=4", "norms=[none,channel]"],
            "uninformative_inputs": ["input_kinds=[{kind: gaussian},{kind: constant}]"]}
    runs = []
    for job, extra in jobs.items():
        getattr(toy, job)(compose_job(job, [*tiny, *extra]), tmp_path / job)
        runs.append(f"runs.{job}={tmp_path / job}")
    toy.packnorm_overlap(compose_job("packnorm_overlap", ["steps=20", "seeds=[0,1]", "n_test=16", "workers=1",
                                                          "length=16", "depth=2", "kernel_size=3", "hidden=4",
                                                          "overlaps=[0,8]"]), tmp_path / "packnorm_overlap")
    runs.append(f"runs.packnorm_overlap={tmp_path / 'packnorm_overlap'}")
    proc = script("toy_summary", *runs, f"summary={tmp_path / 'summary.json'}", run_dir=tmp_path / "summary")
    assert proc.returncode == 0, proc.stderr
    claims = json.loads((tmp_path / "summary.json").read_text())
    assert list(claims) == ["fig1_none_edges", "fig1_norm_all", "fig1b_depth", "fig3_overlap", "fig4_groups_trend",
                            "fig56_batch_minibatch", "fig56_batch_population", "sec32_uninformative_inputs",
                            "channel_is_leak_free"] == list(CLAIMS)
    for claim in claims.values():
        assert set(claim) == {"paper", "ours", "matches", "seeds"}
        assert claim["seeds"] == 2 and isinstance(claim["matches"], bool) and claim["ours"]
    assert re.search(r"MSE at overlap 0 \[\d", claims["fig3_overlap"]["ours"])  # the JSON keys were found


def test_toy_summary_names_a_missing_run(script, tmp_path):
    proc = script("toy_summary", f"runs.localization={tmp_path / 'nowhere'}", run_dir=tmp_path / "summary")
    assert proc.returncode == 2
    assert "runs.localization=" in proc.stderr.strip().splitlines()[-1]
    old = ROOT / "docs" / "results" / "toy" / "localization_idle"  # a Fig. 1 run from before probe masks were kept
    runs = [f"runs.{job}={old}" for job in dict.fromkeys(job for job, _ in CLAIMS.values())]
    proc = script("toy_summary", *runs, run_dir=tmp_path / "summary")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: runs.localization={old}: the localization run has no 'probe_localized': "
        "rerun scripts/localization.py with this version")


def _fig1(none_masks: list[list[bool]], r: int = 2) -> dict:
    length = len(none_masks[0])
    inner = slice(r, length - r)
    masks = [np.array(m) for m in none_masks]
    return {"receptive_field": r, "settings": {"length": length},
            "norms": {"none": {"localization_distance": [localization_distance(m) for m in masks],
                               "localized_total": [int(m.sum()) for m in masks],
                               "localized_interior": [int(m[inner].sum()) for m in masks],
                               "interior_size": inner.stop - inner.start}}}


def _json(value):
    """Results as a later job reads them: through JSON, so integer keys come back as strings."""
    return json.loads(json.dumps(value))


def test_fig3_rule_reads_the_overlaps_as_json_gives_them():
    def fig3(firsts, at_zero=(1.0, 0.99)):
        return _json({"settings": {"length": 32}, "constant_prediction_loss": 1.0,
                      "test_mse": {0: list(at_zero), 16: [0.2, 0.3]}, "mean_test_mse": {0: 1.0, 16: 0.25},
                      "first_overlap_below_half_per_seed": {0: firsts[0], 1: firsts[1]}})
    assert fig3_overlap(fig3([16, 12]))["matches"]
    assert not fig3_overlap(fig3([16, 28]))["matches"]      # far from half the length
    assert not fig3_overlap(fig3([16, None]))["matches"]    # never fell below half
    assert not fig3_overlap(fig3([16, 16], at_zero=(0.5, 0.6)))["matches"]  # solvable without overlap


def test_batchnorm_rules_need_minibatch_localization_and_its_loss_back():
    def fig56(mini, population, mini_loss=(0.002, 0.003), pop_loss=(0.06, 0.05)):
        row = lambda n, loss: {"localized_interior": list(n), "test_loss": list(loss), "interior_size": 16}
        return _json({"settings": {"batch_sizes": [1, 2]}, "modes": {
            "no norm": row([0, 0], [0.02, 0.02]),
            "BatchNorm batch 1, minibatch stats": row(mini, mini_loss),
            "BatchNorm batch 1, population stats": row(population, pop_loss),
            "BatchNorm batch 2, minibatch stats": row([0, 0], [0.02, 0.02])}})
    assert fig56_batch_minibatch(fig56([16, 12], [0, 0]))["matches"]
    assert fig56_batch_population(fig56([16, 12], [0, 0]))["matches"]
    assert not fig56_batch_minibatch(fig56([16, 0], [0, 0]))["matches"]
    assert not fig56_batch_population(fig56([0, 0], [0, 0]))["matches"]  # nothing to lose
    assert not fig56_batch_population(fig56([16, 12], [3, 0]))["matches"]
    assert not fig56_batch_population(fig56([16, 12], [0, 0], pop_loss=(0.001, 0.05)))["matches"]


def test_uninformative_rule_separates_unique_from_repeated_windows():
    def run(gaussian, quantized, repeats):
        def row(kind, n, **extra):
            return {"inputs": {"kind": kind}, "localized_interior": {"per_seed": n}, **extra}
        return _json({"norm": "instance", "interior_size": 32, "inputs": {
            "gaussian": row("gaussian", gaussian), "quantized, 2 levels": row("quantized", quantized),
            "periodic, period 4": row("periodic", [8, 8], localized_interior_vs_repeats={"per_seed": repeats}),
            "constant": row("constant", [0, 0])}})
    assert sec32_uninformative_inputs(run([32, 32], [30, 32], [0, 0]))["matches"]
    assert not sec32_uninformative_inputs(run([32, 32], [0, 32], [0, 0]))["matches"]
    assert not sec32_uninformative_inputs(run([32, 32], [30, 32], [0, 2]))["matches"]


def test_probe_depth_rule():
    length, step, layers = 20, 1, 3

    def masks(reach_per_layer, extra=None):
        grid = np.zeros((layers, length), bool)
        for layer, reach in enumerate(reach_per_layer):
            grid[layer, :reach] = grid[layer, length - reach:] = True
        if extra is not None:
            grid[extra] = True
        return grid.tolist()
    full = np.ones((layers, length), bool).tolist()

    def fig1(none):
        return _json({"settings": {"length": length, "kernel_size": 2 * step + 1, "probe": {"steps": 1}},
                      "norms": {"none": {"probe_localized": [none, none]}, "instance": {"probe_localized": [full, full]}}})
    assert fig1b_depth(fig1(masks([1, 2, 3])))["matches"]
    assert not fig1b_depth(fig1(masks([1, 1, 1])))["matches"]            # never travels inward
    assert not fig1b_depth(fig1(masks([1, 2, 3], extra=(0, slice(5, 10)))))["matches"]  # far beyond layer 0's reach


def test_claim_rules_follow_the_numbers():
    edges = [True, True, False, False, False, False, True, True]
    assert fig1_none_edges(_fig1([edges, edges]))["matches"]
    leaky = edges[:4] + [True] + edges[5:]
    assert not fig1_none_edges(_fig1([edges, leaky]))["matches"]

    def spread(values):
        return {"per_seed": values, "mean": sum(values) / len(values)}

    def norms(channel_interior):
        row = lambda n: {"localized_interior": spread(n), "localization_distance": spread([16] * len(n)),
                         "test_loss": spread([0.04] * len(n))}
        return {"receptive_field": 16, "interior_size": 32, "norms": {"none": row([0, 0]), "channel": row(channel_interior)}}
    assert channel_is_leak_free(norms([0, 0]))["matches"]
    assert not channel_is_leak_free(norms([0, 3]))["matches"]

    def fig4(rho, p):
        entry = {"localized_interior": spread([0, 1]), "localization_distance": spread([16, 16])}
        return {"groups": {"1": entry, "32": entry}, "interior_size": 32, "settings": {},
                "trend": {"spearman_rho": rho, "p_value": p, "n": 4}}
    assert fig4_groups_trend(fig4(0.8, 0.01))["matches"]
    assert not fig4_groups_trend(fig4(0.8, 0.2))["matches"]
    assert not fig4_groups_trend(fig4(-0.8, 0.01))["matches"]


@pytest.mark.parametrize("override,named", [
    ("kernel_size=4", "kernel_size=4"),
    ("length=4", "length=4"),
    ("depth=0", "depth=0"),
    ("hidden=-1", "hidden=-1"),
    ("steps=0", "steps=0"),
])
def test_bad_settings_fail_with_one_line(script, tmp_path, override, named):
    proc = script("localization", *TINY, override, run_dir=tmp_path)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and named in lines[-1]


def test_unknown_norm_fails(script, tmp_path):
    proc = script("localization", *TINY, "norm=grup", run_dir=tmp_path)
    assert proc.returncode != 0
    assert "grup" in proc.stderr and "instance" in proc.stderr
