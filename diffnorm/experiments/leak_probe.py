"""Leak probe: does the Diffuser's norm carry information beyond its U-Net's receptive field?

One job, ``leak_probe(cfg, out)``, measures trained planners (checkpoints of ``train_diffuser``, or quick
models it trains itself, one per norm) three independent ways and side by side:

1. the receptive field (left, right) of one forward pass and, per maze horizon, which plan indices see
   both the start and the goal;
2. influence maps |d out_i / d in_j| on noisy dataset windows at several diffusion steps and the share
   of their mass beyond the receptive field;
3. probe localization (Definition 2.3) at every probe site, counting localized indices whose reach
   excludes both ends of the plan;
4. condition leakage: the output change far from a changed goal (start) condition in one forward pass,
   and over the whole sampling chain.

For a network without a time-pooling norm, (2) and the one-pass part of (4) are exactly zero and (3)
finds nothing beyond the receptive field; everything non-zero there is the side channel. The
measurements themselves live in ``diffnorm.analysis.leak``; this module loads or trains the models,
runs them and writes results.json, arrays.npz and the figures.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from diffnorm.analysis.influence import sees_both_ends, site_receptive_fields
from diffnorm.analysis.leak import (
    dataset_windows,
    measure_influence,
    measure_leakage,
    measure_probes,
)
from diffnorm.analysis.receptive_field import receptive_field
from diffnorm.experiments.common import (
    ConfigError,
    compose_training,
    require,
    resolve_path,
    seed_everything,
    write_results,
)
from diffnorm.experiments.diffuser import load_training_data, train_or_reuse
from diffnorm.plotting import leak as plots
from diffnorm.probing.hooks import record_activations
from diffnorm.progress import bar as progress_bar
from diffnorm.training.build import build_diffusion
from diffnorm.training.checkpoint import LoadedDiffuser, load_checkpoint

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ----------------------------------------------------------------------------------------------- models

def _train_quick(cfg: DictConfig, out: Path) -> list[Path]:
    """Train one model per ``cfg.norms`` with ``cfg.train_overrides`` (``experiment=quick`` by default);
    a run directory that already holds the run these overrides train is reused (``train_or_reuse``)."""
    runs = []
    overrides = [[*cfg.train_overrides, f"norm={n}"] for n in cfg.norms]
    for o in overrides:  # fail on a bad site or horizon before any training, and warn before it too
        train_cfg = compose_training(o)
        model = build_diffusion(train_cfg).model
        _check_sites(model, cfg.probe.sites)
        if cfg.horizon is not None:
            _check_horizon(model, cfg.horizon)
    _warn_if_beyond_rf_empty(int(cfg.horizon if cfg.horizon is not None else train_cfg.env.horizon),
                             *receptive_field(model))
    for norm, o in zip(cfg.norms, overrides):
        run = out / "train" / str(norm)
        _, reused = train_or_reuse(o, run)
        log.info("%s model %s %s", norm, "reused from" if reused else "trained into", run)
        runs.append(run)
    return runs


def _checkpoint_paths(cfg: DictConfig) -> list[Path]:
    paths = ([cfg.checkpoint] if cfg.checkpoint is not None else []) + list(cfg.checkpoints or [])
    return [resolve_path(str(p)) for p in paths]


def _label(loaded: LoadedDiffuser, taken: set[str]) -> str:
    norm = OmegaConf.to_container(loaded.cfg.norm, resolve=True)
    extras = ", ".join(f"{k}={v}" for k, v in norm.items() if k != "name")
    base = f"{norm['name']} ({extras})" if extras else norm["name"]
    label, n = base, 2
    while label in taken:
        label = f"{base} #{n}"
        n += 1
    return label


def _check_sites(model: torch.nn.Module, sites: Any) -> list[str]:
    """``all`` or a list of module names; unknown names raise ConfigError listing the valid sites."""
    if isinstance(sites, str):
        require(sites == "all", f"probe.sites={sites!r}; give 'all' or a list of site names")
        return list(model.probe_sites())
    names = [str(s) for s in sites]
    require(len(names) > 0, "probe.sites is empty")
    with record_activations(model, names):  # raises on unknown names, listing model.probe_sites()
        pass
    return names


def _check_horizon(model: torch.nn.Module, horizon: int) -> None:
    multiple = int(getattr(model, "length_multiple", 1))
    require(horizon >= multiple and horizon % multiple == 0,
            f"horizon={horizon} must be a positive multiple of {multiple} (the U-Net's length multiple)")


def _warn_if_beyond_rf_empty(horizon: int, left: int, right: int) -> bool:
    """Whether no output index has an input beyond its receptive field at this horizon (warned if so)."""
    # Output i and input j are beyond the receptive field when j - i < -left or > right; at a horizon
    # H no pair is when H - 1 <= min(left, right), and every beyond-RF number would be a zero by construction.
    empty = horizon - 1 <= min(left, right)
    if empty:
        log.warning("at H=%d every plan index sees every other in one pass (receptive field %d/%d): the beyond-RF "
                    "set is empty, so beyond-RF numbers are zero by construction; measure at a longer plan "
                    "with horizon=<H> (the U-Net is fully convolutional; 384 for the published network)",
                    horizon, left, right)
    return empty


def _evaluate_at(loaded: LoadedDiffuser, horizon: int) -> None:
    """Measure at another plan length than the one trained: the U-Net is fully convolutional, so a
    net trained on short windows (umaze, H = 128 < its receptive field) can be run on windows long
    enough to have indices beyond the receptive field; data windows of that length are cut anew."""
    _check_horizon(loaded.diffusion.model, horizon)
    OmegaConf.update(loaded.cfg, "env.horizon", horizon)
    loaded.diffusion.horizon = horizon


def _dataset(loaded: LoadedDiffuser) -> Any:
    """The dataset the checkpoint was trained on, cut into its horizon and scaled with its scaler."""
    cfg = loaded.cfg.copy()
    OmegaConf.update(cfg, "train.progress", False, force_add=True)
    return load_training_data(cfg, loaded.scaler)[0]


# ------------------------------------------------------------------------------------------------ the job

def analyse(loaded: LoadedDiffuser, cfg: DictConfig, sites: list[str], dtype: torch.dtype,
            tick: Callable[[str], None] = lambda name: None) -> dict[str, Any]:
    """All measurements for one trained model; ``tick(name)`` is called after each of the three."""
    diffusion = loaded.diffusion.to(dtype).eval()
    model = diffusion.model
    length = loaded.cfg.env.horizon
    seed = cfg.seed
    start, start_cpu = time.perf_counter(), time.process_time()
    left, right = receptive_field(model)  # conv-only: the yardstick every beyond-RF number is measured against
    try:  # beside it, the reach a windowed norm really gives (None where a norm pools the whole plan)
        with_norms: list[int] | None = list(receptive_field(model, with_norms=True))
    except ValueError:
        with_norms = None
    reaches = site_receptive_fields(model, sites, left=left, right=right)
    n_windows = max(cfg.influence.n_windows, cfg.leakage.n_windows)
    dataset = _dataset(loaded)
    x0, conditions = dataset_windows(dataset, n_windows, seed, dtype)
    timings: dict[str, float] = {}

    @contextlib.contextmanager
    def timed(name: str) -> Iterator[None]:
        # Wall and CPU seconds: on cores shared with other jobs the wall time says little on its own.
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        timings[f"{name}_s"] = round(time.perf_counter() - wall, 2)
        timings[f"{name}_cpu_s"] = round(time.process_time() - cpu, 2)
        tick(name)

    n_inf, n_leak = cfg.influence.n_windows, cfg.leakage.n_windows
    with timed("influence"):
        influence = measure_influence(diffusion, x0[:n_inf], {k: v[:n_inf] for k, v in conditions.items()},
                                      left, right, cfg.influence, seed)
    with timed("probes"):
        probes = measure_probes(diffusion, dataset, sites, reaches, left, right, cfg.probe, seed, dtype)
    with timed("leakage"):
        leakage = measure_leakage(diffusion, x0[:n_leak], {k: v[:n_leak] for k, v in conditions.items()},
                                  left, right, cfg.leakage, seed, dtype)
    timings["total_s"] = round(time.perf_counter() - start, 2)
    timings["total_cpu_s"] = round(time.process_time() - start_cpu, 2)
    log.info("%s: beyond-RF influence %.3g, localized beyond RF %d, one-pass goal leak %.3g (%s)",
             loaded.cfg.norm.name, influence["beyond_rf_fraction"], probes["localized_beyond_rf"],
             leakage.get("goal", {}).get("one_pass_max_beyond_rf", float("nan")), timings)
    return {"checkpoint": loaded.path, "step": loaded.step, "env": loaded.cfg.env.name, "horizon": length,
            "trained_horizon": int(getattr(model, "horizon", length)),
            "n_diffusion_steps": diffusion.n_diffusion_steps,
            "norm": OmegaConf.to_container(loaded.cfg.norm, resolve=True), "seed": int(loaded.cfg.seed),
            "receptive_field": [left, right], "receptive_field_with_norms": with_norms,
            "influence": influence, "probes": probes, "leakage": leakage, "timings": timings}


def _summary(measured: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "beyond_rf_influence_fraction": measured["influence"]["beyond_rf_fraction"],
        "beyond_rf_influence_fraction_per_t": {p["t"]: p["beyond_rf_fraction"]
                                               for p in measured["influence"]["per_step"]},
        "localized_beyond_rf": measured["probes"]["localized_beyond_rf"],
        "sites_localizing_beyond_rf": measured["probes"]["sites_localizing_beyond_rf"],
        "localized_beyond_own_rf": measured["probes"]["localized_beyond_own_rf"],
    }
    for name, leak in measured["leakage"].items():
        row[f"{name}_one_pass_max_beyond_rf"] = leak["one_pass_max_beyond_rf"]
        row[f"{name}_one_pass_mean_beyond_rf"] = leak["one_pass_mean_beyond_rf"]
        row[f"{name}_one_pass_ratio_beyond_to_within"] = float(np.mean([p["ratio_beyond_to_within"]
                                                                        for p in leak["one_pass"]]))
        row[f"{name}_chain_mean_beyond_rf"] = leak["chain"]["mean_beyond_rf"]
        row[f"{name}_chain_ratio_beyond_to_within"] = leak["chain"]["ratio_beyond_to_within"]
    return row


def _jsonable_measure(measured: dict[str, Any]) -> dict[str, Any]:
    """results.json keeps the numbers and localized index lists; per-index curves go to arrays.npz."""
    out = dict(measured)
    out["influence"] = {k: v for k, v in measured["influence"].items()
                        if k not in ("map", "rows", "offsets", "profile")}
    out["influence"]["per_step"] = [{k: v for k, v in p.items() if k != "profile"}
                                    for p in measured["influence"]["per_step"]]
    out["probes"] = {k: v for k, v in measured["probes"].items() if k != "masks"}
    out["leakage"] = {}
    for name, leak in measured["leakage"].items():
        out["leakage"][name] = {**leak, "one_pass": [{k: v for k, v in p.items() if k != "delta"}
                                                     for p in leak["one_pass"]],
                                "chain": {k: v for k, v in leak["chain"].items() if k != "plan_delta"}}
    return out


def _arrays(measured: dict[str, Any]) -> dict[str, np.ndarray]:
    """Everything the figures are drawn from, keyed ``<label>/<name>``."""
    arrays = {}
    for label, m in measured.items():
        inf = m["influence"]
        arrays.update({f"{label}/influence_map": inf["map"], f"{label}/influence_rows": inf["rows"],
                       f"{label}/influence_offsets": inf["offsets"], f"{label}/influence_profile": inf["profile"],
                       f"{label}/probe_localized": np.concatenate(m["probes"]["masks"])})
        for name, leak in m["leakage"].items():
            arrays[f"{label}/{name}_one_pass_delta"] = np.stack([p["delta"] for p in leak["one_pass"]])
            arrays[f"{label}/{name}_chain_plan_delta"] = leak["chain"]["plan_delta"]
    return arrays


def leak_probe(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Load (or train) every model, measure each, compare them; write results.json, arrays.npz, PNGs."""
    start, start_cpu = time.perf_counter(), time.process_time()
    out.mkdir(parents=True, exist_ok=True)
    dtype = DTYPES[cfg.dtype]
    torch.set_num_threads(cfg.num_threads)
    seed_everything(cfg.seed)
    paths = _checkpoint_paths(cfg)
    loaded = [load_checkpoint(p, "cpu") for p in paths] if paths else None  # bad paths fail first
    train_s = 0.0
    if loaded is None:
        t0, cpu0 = time.perf_counter(), time.process_time()
        loaded = [load_checkpoint(run, "cpu") for run in _train_quick(cfg, out)]
        train_s = time.perf_counter() - t0
        start_cpu += time.process_time() - cpu0  # the probe run's CPU time excludes training
    if cfg.horizon is not None:
        for m in loaded:
            _evaluate_at(m, cfg.horizon)
    horizons = {int(m.cfg.env.horizon) for m in loaded}
    require(len(horizons) == 1, f"the checkpoints plan different horizons {sorted(horizons)}; compare "
            "models of one maze per run")
    sites = _check_sites(loaded[0].diffusion.model, cfg.probe.sites)
    for m in loaded[1:]:
        _check_sites(m.diffusion.model, sites)

    probe_start, probe_cpu = time.perf_counter(), time.process_time()
    measured: dict[str, dict[str, Any]] = {}
    with progress_bar(total=3 * len(loaded), desc="leak probe") as bar:
        for m in loaded:
            label = _label(m, set(measured))
            bar.set_postfix_str(f"{label}: influence, probes, leakage")
            measured[label] = analyse(m, cfg, sites, dtype, tick=lambda name: bar.update(1))
    left, right = next(iter(measured.values()))["receptive_field"]
    for label, m in measured.items():
        if m["receptive_field"] != [left, right]:
            raise ConfigError(f"{label} has receptive field {m['receptive_field']}, the first model "
                              f"{[left, right]}; compare one architecture per run")
    horizon = horizons.pop()
    beyond_empty = _warn_if_beyond_rf_empty(horizon, left, right)
    figures = {
        "influence_heatmaps": plots.influence_heatmaps(measured, left, right, out / "influence_heatmaps.png"),
        "influence_profiles": plots.influence_profiles(measured, left, right, out / "influence_profiles.png"),
        "probe_localization": plots.probe_localization(measured, sites, left, right, horizon,
                                                      out / "probe_localization.png"),
        "condition_leakage": plots.condition_leakage(measured, left, right, out / "condition_leakage.png"),
        "chain_leakage": plots.chain_spread(measured, out / "chain_leakage.png"),
    }
    probe_s = time.perf_counter() - probe_start
    probe_cpu_s = time.process_time() - probe_cpu
    np.savez_compressed(out / "arrays.npz", **_arrays(measured))
    results = {
        "settings": OmegaConf.to_container(cfg, resolve=True),
        "receptive_field": {"left": left, "right": right,
                            # the measured plan length always among them (OGBench's is none of maze2d's)
                            "sees_both_ends": [sees_both_ends(left, right, h)
                                               for h in sorted({*map(int, cfg.horizons), horizon})]},
        "horizon": horizon, "beyond_rf_set_empty": beyond_empty,
        "comparison": {label: _summary(m) for label, m in measured.items()},
        "models": {label: _jsonable_measure(m) for label, m in measured.items()},
        "figures": figures,
        "wall_time_s": {"training": round(train_s, 1), "probe_run": round(probe_s, 1),
                        "total": round(time.perf_counter() - start, 1)},
        # One torch thread: CPU seconds are what the run takes on one idle core.
        "cpu_time_s": {"probe_run": round(probe_cpu_s, 1), "total_excluding_training":
                       round(time.process_time() - start_cpu, 1)},
    }
    write_results(out, results)
    if beyond_empty:
        print(f"warning: at H={horizon} no plan index lies beyond the receptive field ({left}/{right}); the "
              "beyond-RF numbers below are zero by construction: use horizon=<longer plan>, e.g. horizon=384")
    print(f"receptive field: left {left}, right {right}")
    for h in results["receptive_field"]["sees_both_ends"]:
        print(f"  H={h['horizon']}: {h['count']} indices see both start and goal"
              + (f" ({h['first']}..{h['last']})" if h["count"] else ""))
    for label, row in results["comparison"].items():
        print(f"{label:>18}: beyond-RF influence {row['beyond_rf_influence_fraction']:.3g}, localized beyond RF "
              f"{row['localized_beyond_rf']}, goal leak one pass {row.get('goal_one_pass_max_beyond_rf', 0):.3g}"
              f" / chain {row.get('goal_chain_mean_beyond_rf', 0):.3g}")
    print(f"probe run {probe_s:.0f} s wall, {probe_cpu_s:.0f} s CPU (training {train_s:.0f} s)")
    return results
