"""The stitching answer: ``stitching_answer(cfg, out)`` gathers finished stitching studies (and leak probes
run on the same planners) into one table per benchmark, the figures that show it, and the machine-readable
summary ``{benchmark: {norm: {...}, "horizon", "receptive_field", "beyond_rf"}}``.

Nothing is trained or evaluated here: each benchmark is a ``stitching_study`` run directory, named by the
key it gets in the answer (``maze2d-umaze-stitch``, a control such as ``maze2d-umaze-stitch-ceiling``).
A study evaluated with more protocols (``protocols``) adds one entry per protocol, keyed
``<key>-<protocol>`` (e.g. ``maze2d-umaze-stitch-open_loop``). A leak probe of the study's planners (``leak_probe.py checkpoints=[<study>/runs/...]``),
or several probes of different planners of it (a norm or seeds added later), adds each planner's leak beside its
stitching success and their correlation across planners.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from scipy import stats

from diffnorm.errors import require
from diffnorm.experiments.common import json_bytes, resolve_path, write_results
from diffnorm.io import atomic_write_bytes
from diffnorm.plotting.stitching import answer_bars, leak_scatter

log = logging.getLogger(__name__)

# Leak-probe numbers set beside each planner's success (leak_probe results.json "comparison" keys).
LEAK_KEYS = ("beyond_rf_influence_fraction", "goal_one_pass_max_beyond_rf", "goal_chain_mean_beyond_rf")
# Per-planner stitching outcomes each leak number is correlated with.
OUTCOMES = ("success_rate", "plan_connected")


def read_results(run: Path, job: str) -> dict[str, Any]:
    """A finished run's results.json; ConfigError naming the job when there is none."""
    path = run / "results.json"
    require(path.is_file(), f"{run} is not a finished {job} run directory (no results.json)")
    return json.loads(path.read_text())


def gathered_runs(cfg: DictConfig) -> tuple[Any, Any]:
    """(studies, leak_probes) of a gathering job's config (this one, ``norm_reach``): at least one study,
    and leak probes only under keys that name a study."""
    studies_cfg, leak_cfg = cfg.studies or {}, cfg.leak_probes or {}
    require(len(studies_cfg) > 0, "give studies={<benchmark key>: <stitching_study run dir>, ...}")
    unknown = sorted(set(leak_cfg) - set(studies_cfg))
    require(not unknown, f"leak_probes keys {unknown} name no study; the keys are {sorted(studies_cfg)}")
    return studies_cfg, leak_cfg


def answer_entry(study: dict[str, Any], block: dict[str, Any], baseline: str) -> dict[str, Any]:
    """One benchmark's summary entry from a stitching study's results (``block``: the study itself or one
    of its ``protocols``): per norm seeds, success mean and 95 % t-interval over seeds, connected plans,
    and Welch's difference from ``baseline`` (0 with a zero-width interval for the baseline itself)."""
    summary, comparisons = block["summary"], block["comparison_vs_baseline"]
    require(baseline in summary, f"baseline={baseline} is not among the study's norms {sorted(summary)}")
    entry: dict[str, Any] = {}
    for norm, rows in summary.items():
        success = rows["success_rate"]
        diff = comparisons[norm]["success_rate"] if norm != baseline else {
            "difference": 0.0, "ci_low": 0.0, "ci_high": 0.0}
        entry[norm] = {"seeds": int(success["seeds"]), "episodes_per_task": int(study["settings"]["episodes_per_task"]),
                       "success_mean": success["mean"], "success_ci95": [success["ci_low"], success["ci_high"]],
                       "connected_mean": rows["plan_connected"]["mean"],
                       "diff_vs_none": diff["difference"], "diff_ci95": [diff["ci_low"], diff["ci_high"]]}
    entry["horizon"] = int(study["horizon"])
    entry["receptive_field"] = list(study["receptive_field"])
    entry["beyond_rf"] = bool(study["beyond_rf"])
    return entry


def leak_by_planner(leaks: list[tuple[Path, dict[str, Any]]]) -> dict[tuple[str, int], dict[str, float]]:
    """(norm, seed) -> the leak numbers of that planner, from one or more leak-probe results (each with its
    run directory); norm and seed are those the probe recorded (or, for a probe that predates recording the
    seed, the planner's saved config), so the planners may be given in any order and need not exist any more.
    Raises ConfigError for a planner measured by two probes or probes at different horizons."""
    horizons = {str(run): leak["horizon"] for run, leak in leaks}
    require(len(set(horizons.values())) <= 1, f"the leak probes measured different horizons: {horizons}")
    out: dict[tuple[str, int], dict[str, float]] = {}
    for leak_run, leak in leaks:
        for label, model in leak["models"].items():
            path = Path(model["checkpoint"])
            run = path if path.is_dir() else path.parent
            if "seed" in model:
                key = (model["norm"]["name"], int(model["seed"]))
            else:
                require((run / "config.yaml").is_file(), f"{leak_run} predates recording each planner's seed "
                        f"and the planner's run {run} is gone; probe the planners again")
                cfg = OmegaConf.load(run / "config.yaml")
                key = (cfg.norm.name, int(cfg.seed))
            require(key not in out, f"planner {key[0]} seed {key[1]} ({run}) is measured twice; the second time "
                    f"by {leak_run}")
            row = leak["comparison"][label]
            out[key] = {k: float(row[k]) for k in LEAK_KEYS if k in row}
    return out


def correlation(x: list[float], y: list[float], confidence: float = 0.95) -> dict[str, Any]:
    """Pearson's r with its Fisher-z interval (``scipy.stats.pearsonr``); None where it is undefined
    (fewer than 4 pairs, or a constant variable)."""
    n = len(x)
    if n < 4 or np.std(x) == 0 or np.std(y) == 0:
        return {"r": None, "ci95": None, "p_value": None, "n": n}
    test = stats.pearsonr(x, y)
    ci = test.confidence_interval(confidence)
    return {"r": float(test.statistic), "ci95": [float(ci.low), float(ci.high)], "p_value": float(test.pvalue),
            "n": n}


def _leak_rows(study: dict[str, Any], by_planner: dict[tuple[str, int], dict[str, float]]) -> dict[str, Any]:
    """Per planner: stitching outcomes and leak; their correlations across all planners and within each
    norm (``correlation[outcome][leak key][scope]``)."""
    rows = []
    for norm, seeds in study["runs"].items():
        for seed, run in seeds.items():
            key = (norm, int(seed))
            if key in by_planner:
                rows.append({"norm": norm, "seed": int(seed), "success_rate": run["success_rate"],
                             "plan_connected": run["plan_connected"], **by_planner[key]})
    require(bool(rows), "the leak probe measured none of the study's planners (give it checkpoints=[<study>/runs/<norm>/seed<k>, ...])")
    result: dict[str, Any] = {"planners": rows, "correlation": {}}
    for outcome in OUTCOMES:
        result["correlation"][outcome] = {}
        for key in LEAK_KEYS:
            kept = [r for r in rows if key in r]
            result["correlation"][outcome][key] = {
                "all_planners": correlation([r[key] for r in kept], [r[outcome] for r in kept]),
                **{f"norm={n}": correlation([r[key] for r in kept if r["norm"] == n],
                                            [r[outcome] for r in kept if r["norm"] == n])
                   for n in sorted({r["norm"] for r in kept})}}
    return result


def update_summary(path: Path, entries: dict[str, Any]) -> Path:
    """Merge ``entries`` into the summary file at ``path`` (other benchmarks' entries are kept)."""
    summary = json.loads(path.read_text()) if path.is_file() else {}
    summary.update(entries)
    atomic_write_bytes(path, json_bytes(dict(sorted(summary.items()))))
    return path


def stitching_answer(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Studies (+ leak probes) -> entries, correlations, figures, results.json, the merged summary."""
    start = time.perf_counter()
    studies_cfg, leak_cfg = gathered_runs(cfg)
    baseline = cfg.baseline
    out.mkdir(parents=True, exist_ok=True)
    entries: dict[str, Any] = {}
    summaries: dict[str, Any] = {}  # each entry's per-seed values, for the figure
    studies: dict[str, Any] = {}
    leaks: dict[str, Any] = {}
    for key, run in studies_cfg.items():
        run_dir = resolve_path(str(run))
        study = read_results(run_dir, "stitching_study")
        require("receptive_field" in study, f"{run_dir}: the study predates receptive-field recording; rerun it "
                "with the same hydra.run.dir (finished trainings are reused)")
        studies[key] = {"run": str(run_dir), "env": study["env"], "benchmark": study["benchmark"],
                        "train_data": study.get("train_data", "stitch"), "protocol": study.get("protocol"),
                        "train_overrides": study["settings"]["train_overrides"],
                        "seeds": study["seeds"], "sees_both_ends": study["sees_both_ends"]}
        for name, block in [(key, study)] + [(f"{key}-{protocol}", b)
                                             for protocol, b in (study.get("protocols") or {}).items()]:
            entries[name] = answer_entry(study, block, baseline)
            summaries[name] = block["summary"]
        if key in leak_cfg:
            given = leak_cfg[key]
            leak_dirs = [resolve_path(str(d)) for d in ([given] if isinstance(given, str) else given)]
            require(bool(leak_dirs), f"leak_probes.{key} is empty; give a leak_probe run directory or a list of them")
            probes = [(d, read_results(d, "leak_probe")) for d in leak_dirs]
            leaks[key] = {"runs": [str(d) for d in leak_dirs], "horizon": probes[0][1]["horizon"],
                          **_leak_rows(study, leak_by_planner(probes))}
    figures = {"success_png": answer_bars(out / "success.png", entries, summaries, baseline)}
    if leaks:
        for outcome in OUTCOMES:
            figures[f"leak_vs_{outcome}_png"] = leak_scatter(out / f"leak_vs_{outcome}.png", leaks, LEAK_KEYS[0],
                                                             outcome)
    if cfg.summary is not None:
        figures["summary"] = update_summary(resolve_path(cfg.summary), entries)
    results = {"settings": OmegaConf.to_container(cfg, resolve=True), "answer": entries, "studies": studies,
               "leak": leaks, "figures": figures, "wall_time_s": round(time.perf_counter() - start, 2)}
    write_results(out, results)
    for key, entry in entries.items():
        reach = "beyond the RF" if entry["beyond_rf"] else "within the RF"
        print(f"{key} (H={entry['horizon']}, RF {entry['receptive_field'][0]}/{entry['receptive_field'][1]}, {reach}):")
        for norm, row in entry.items():
            if isinstance(row, dict):
                print(f"  {norm:>8}: success {row['success_mean']:.0%} [{row['success_ci95'][0]:.0%}, "
                      f"{row['success_ci95'][1]:.0%}] over {row['seeds']} seeds; vs {baseline} "
                      f"{row['diff_vs_none']:+.0%} [{row['diff_ci95'][0]:+.0%}, {row['diff_ci95'][1]:+.0%}]; "
                      f"connected {row['connected_mean']:.0%}")
    for key, leak in leaks.items():
        for outcome in OUTCOMES:
            c = leak["correlation"][outcome][LEAK_KEYS[0]]["all_planners"]
            text = "undefined" if c["r"] is None else f"r = {c['r']:+.2f} [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]"
            print(f"{key}: beyond-RF influence vs {outcome} over {c['n']} planners: {text}")
    return results
