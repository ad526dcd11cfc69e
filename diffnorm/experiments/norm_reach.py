"""Why GroupNorm planners do not stitch: ``norm_reach(cfg, out)`` sets stitching against the span of one
normalization statistic, from finished stitching studies whose arms vary that span alone (``none``: no
statistic, ``channel``: one step, ``local_group`` with growing windows, ``group``: the whole plan), with
Eq-Net (Clark & Shkurti 2025) beside the U-Net, and the leak probes of the same planners.

Nothing is trained here. Per benchmark (a ``stitching_study`` run directory) and arm: the network, norm
and window; the conv-only receptive field (the leak question's yardstick) and the one with windowed norms;
what one statistic pools at each level (``analysis.receptive_field.statistic_spans``); connected first
plans, success (main protocol and open loop), plan length / BFS, planned states in walls and the goal
jump, each as the mean over seeds with a 95 % t-interval and Welch's difference from ``none`` and from
``group``; the final training loss; and, where a leak probe measured the arm's planners, the beyond-RF
influence mass and the one-pass and chain goal leakage (means over the probed planners).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from diffnorm.analysis.receptive_field import statistic_spans
from diffnorm.errors import require
from diffnorm.experiments.common import compose_training, resolve_path, write_results
from diffnorm.experiments.diffuser import env_option_of
from diffnorm.experiments.stitching_answer import gathered_runs, read_results, update_summary
from diffnorm.plotting.stitching import span_response
from diffnorm.probing.stats import seed_interval, welch_difference
from diffnorm.training.build import build_model

log = logging.getLogger(__name__)

# Leak-probe numbers per planner (its results.json "comparison" keys) and the names they get here.
LEAK = {"beyond_rf_influence_fraction": "beyond_rf_mass", "goal_one_pass_max_beyond_rf": "goal_one_pass_max_beyond_rf",
        "goal_chain_mean_beyond_rf": "goal_chain_mean_beyond_rf"}


def statistic_span(norm: dict[str, Any], horizon: int) -> int:
    """The figure's x value: the centred window, in full-resolution steps, one statistic pools; 0 for
    ``none``, 1 for ``channel``, the window for ``local_group``, and for a norm that pools the whole plan
    2 H - 1, the smallest centred window that covers the whole plan from every index (a ``local_group``
    window that large is ``group`` exactly, so larger ones are capped there)."""
    name = norm["name"]
    if name == "none":
        return 0
    if name == "channel":
        return 1
    if name == "local_group":
        return min(int(norm["window"]), 2 * horizon - 1)
    return 2 * horizon - 1


def _interval(values: list[float], rate: bool) -> dict[str, Any]:
    kept = [v for v in values if v is not None]
    return {"per_seed": values, **seed_interval(kept, rate=rate)}


def _difference(a: list[float], b: list[float]) -> dict[str, Any]:
    d = welch_difference(a, b)
    return {"difference": d["difference"], "ci95": [d["ci_low"], d["ci_high"]], "p_value": d["p_value"]}


def _leak_by_run(leak_dirs: list[Path]) -> dict[str, dict[str, float]]:
    """Planner run directory -> its leak numbers, from leak-probe results (each model records its checkpoint)."""
    out: dict[str, dict[str, float]] = {}
    for leak_dir in leak_dirs:
        leak = read_results(leak_dir, "leak_probe")
        for label, model in leak["models"].items():
            path = Path(model["checkpoint"])
            run = str(path if path.is_dir() else path.parent)
            require(run not in out, f"planner {run} is measured twice; the second time by {leak_dir}")
            out[run] = {name: float(leak["comparison"][label][key]) for key, name in LEAK.items()
                        if key in leak["comparison"][label]}
    return out


def arm_entries(study: dict[str, Any], run_dir: Path, leaks: dict[str, dict[str, float]]) -> dict[str, Any]:
    """One benchmark's arms (contract keys of ``norm_reach.json`` and more), from a study's results.json."""
    horizon = int(study["horizon"])
    arms = study.get("arms") or {n: {"overrides": [f"norm={n}"]} for n in study["norms"]}
    main, open_loop = study["runs"], (study.get("protocols") or {}).get("open_loop", {}).get("runs", {})
    anchors = {a: [float(r["plan_connected"]) for r in main[a].values()] for a in ("none", "group") if a in main}
    anchors_success = {a: [float(r["success_rate"]) for r in main[a].values()] for a in anchors}
    entries: dict[str, Any] = {}
    for arm, info in arms.items():
        cfg = compose_training([f"env={_env_option(study)}", *study["settings"]["train_overrides"], *info["overrides"]])
        model = build_model(cfg)
        norm = OmegaConf.to_container(cfg.norm, resolve=True)
        levels = statistic_spans(model, horizon)
        runs = main[arm]
        connected = [float(r["plan_connected"]) for r in runs.values()]
        success = [float(r["success_rate"]) for r in runs.values()]
        entry: dict[str, Any] = {
            "model": str(cfg.model.name), "norm": norm["name"],
            "window": int(norm["window"]) if norm["name"] == "local_group" else None,
            "groups": norm.get("groups"), "seeds": len(runs), "seed_ids": [int(s) for s in runs],
            "receptive_field": list(info.get("receptive_field") or study["receptive_field"]),
            "receptive_field_with_norms": info.get("receptive_field_with_norms"),
            "statistic_span": statistic_span(norm, horizon),
            "statistic_levels": sorted({(r["steps"], r["window"], r["span"], r["pooled_values"]) for r in levels}),
            "pooled_values_min": min((r["pooled_values"] for r in levels), default=0),
            "final_loss_per_seed": [r["training"]["final_loss"] for r in runs.values()],
            "connected": _interval(connected, rate=True), "success": _interval(success, rate=True),
            "open_loop_success": _interval([float(r["success_rate"]) for r in open_loop.get(arm, {}).values()],
                                           rate=True),
            "plan_to_bfs_ratio": _interval([r["plan_to_bfs_ratio"] for r in runs.values()], rate=False),
            "plan_in_wall_fraction": _interval([r["plan_in_wall_fraction"] for r in runs.values()], rate=True),
            "goal_jump": _interval([r["plan_goal_jump_mean"] for r in runs.values()], rate=False),
        }
        entry["connected_mean"], entry["success_mean"] = entry["connected"]["mean"], entry["success"]["mean"]
        entry["connected_ci95"] = [entry["connected"]["ci_low"], entry["connected"]["ci_high"]]
        entry["success_ci95"] = [entry["success"]["ci_low"], entry["success"]["ci_high"]]
        entry["final_loss_mean"] = float(np.mean(entry["final_loss_per_seed"]))
        for anchor, values in anchors.items():
            entry[f"connected_vs_{anchor}"] = _difference(connected, values)
            entry[f"success_vs_{anchor}"] = _difference(success, anchors_success[anchor])
        vs_none = entry.get("connected_vs_none")
        entry["diff_connected_vs_none"] = None if vs_none is None else vs_none["difference"]
        entry["diff_connected_vs_none_ci95"] = None if vs_none is None else vs_none["ci95"]
        measured = [leaks[str(run_dir / "runs" / arm / f"seed{s}")] for s in runs
                    if str(run_dir / "runs" / arm / f"seed{s}") in leaks]
        entry["leak_seeds"] = len(measured)
        for name in LEAK.values():
            values = [m[name] for m in measured if name in m]
            entry[name] = float(np.mean(values)) if values else None
            entry[f"{name}_per_seed"] = values
        entries[arm] = entry
    return entries


def _env_option(study: dict[str, Any]) -> str:
    return env_option_of(OmegaConf.create(study["settings"]["env"]))


def norm_reach(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Studies (+ leak probes) -> per-arm entries, the dose-response figure, results.json, the summary."""
    start = time.perf_counter()
    studies_cfg, leak_cfg = gathered_runs(cfg)
    out.mkdir(parents=True, exist_ok=True)
    benchmarks: dict[str, Any] = {}
    studies: dict[str, Any] = {}
    for key, run in studies_cfg.items():
        run_dir = resolve_path(str(run))
        study = read_results(run_dir, "stitching_study")
        given = leak_cfg.get(key) or []
        leak_dirs = [resolve_path(str(d)) for d in ([given] if isinstance(given, str) else given)]
        benchmarks[key] = arm_entries(study, run_dir, _leak_by_run(leak_dirs))
        studies[key] = {"run": str(run_dir), "env": study["env"], "horizon": study["horizon"],
                        "protocol": study["protocol"], "train_overrides": study["settings"]["train_overrides"],
                        "leak_probes": [str(d) for d in leak_dirs]}
    contract = ("model", "norm", "window", "seeds", "receptive_field", "beyond_rf_mass", "connected_mean",
                "connected_ci95", "success_mean", "success_ci95", "diff_connected_vs_none",
                "diff_connected_vs_none_ci95")
    summary = {key: {arm: {k: e[k] for k in contract} for arm, e in arms.items()} for key, arms in benchmarks.items()}
    figures = {"span_response_png": span_response(out / "span_response.png", benchmarks,
                                                  {k: s["horizon"] for k, s in studies.items()})}
    if cfg.summary is not None:
        figures["summary"] = update_summary(resolve_path(cfg.summary), summary)
    results = {"settings": OmegaConf.to_container(cfg, resolve=True), "benchmarks": benchmarks, "studies": studies,
               "summary": summary, "figures": figures, "wall_time_s": round(time.perf_counter() - start, 2)}
    write_results(out, results)
    for key, arms in benchmarks.items():
        print(f"{key} (H = {studies[key]['horizon']}):")
        for arm, e in arms.items():
            leak = "not probed" if e["beyond_rf_mass"] is None else f"{e['beyond_rf_mass']:.1%} beyond the RF"
            diff = e["diff_connected_vs_none"]
            print(f"  {arm:>18}: span {e['statistic_span']:>3}, connected {e['connected_mean']:.0%} "
                  f"[{e['connected_ci95'][0]:.0%}, {e['connected_ci95'][1]:.0%}]"
                  + ("" if diff is None else f" ({diff:+.0%} vs none)")
                  + f", success {e['success_mean']:.0%}, {e['seeds']} seeds, loss {e['final_loss_mean']:.3f}, {leak}")
    return results
