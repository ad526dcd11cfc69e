"""The paper's toy experiments (Secs. 2-3, Apps. C-E), one function per job.

Each job trains small CNNs on the noise -> ramp task (or the two-stream task), measures localization with
Definition 2.3, writes results.json and figures into the run directory, and returns the results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from scipy.stats import spearmanr

from diffnorm.analysis.receptive_field import receptive_field
from diffnorm.errors import ConfigError
from diffnorm.experiments.common import compose_job, require, write_results
from diffnorm.experiments.parallel import map_trials
from diffnorm.models.norms import norm_factory
from diffnorm.plotting import toy as plots
from diffnorm.probing.hooks import record_activations
from diffnorm.probing.probes import localize_sites
from diffnorm.probing.stats import localization_distance, localized_indices
from diffnorm.toy.localization import (
    LocalizationCNN,
    predict,
    ramp_target,
    sample_inputs,
    train_localization,
)
from diffnorm.toy.packnorm import TwoStreamCNN, evaluate_packnorm, train_packnorm


def _norm_label(norm: dict) -> str:
    extras = ", ".join(f"{k}={v}" for k, v in norm.items() if k != "name")
    return f"{norm['name']} ({extras})" if extras else norm["name"]


def _tail_mean(losses: list[float], n: int = 100) -> float:
    return float(np.mean(losses[-n:]))


def localization_trial(norm: dict, seed: int, length: int, depth: int, kernel_size: int, hidden: int,
                       lr: float, batch_size: int, steps: int, accumulation: int, alpha: float,
                       n_test: int, eval_batch_size: int, probe: dict | None, inputs: dict | None = None,
                       n_test_more: int | None = None) -> dict[str, Any]:
    """Train one Eq. 1 CNN and measure which indices it (and, with ``probe``, each layer) localizes.

    ``norm`` may carry ``eval_stats``: a list of BatchNorm inference-statistics modes to evaluate the
    same trained network under. ``inputs`` are ``draw_inputs`` settings for training and test.
    ``n_test_more`` repeats the measurement of the same network with that many test predictions
    (under ``"more_tests"``): Welch's test gains power where neighbouring means differ little."""
    torch.manual_seed(seed)
    norm = dict(norm)
    eval_modes = norm.pop("eval_stats", None)
    model = LocalizationCNN(depth, kernel_size, hidden, norm_factory(**norm))
    losses = train_localization(model, length, steps, lr, batch_size, accumulation, seed=seed, progress=True,
                                desc=f"{_norm_label(norm)} seed {seed}", inputs=inputs)
    target = ramp_target(length).numpy()
    test_inputs = {n: sample_inputs(n, length, seed=10_000 + seed, inputs=inputs) for n in (n_test, n_test_more) if n}

    def measure(n: int) -> dict[str, Any]:
        preds = predict(model, test_inputs[n], eval_batch_size)
        mask = localized_indices(preds, alpha)
        measured = {"test_loss": float(((preds - target) ** 2).mean()), "pred_mean": preds.mean(0),
                    "pred_std": preds.std(0), "localized": mask, "distance": localization_distance(mask)}
        if inputs and inputs.get("kind") == "periodic":
            # Indices one period apart see the same window: localizing one means telling those apart.
            measured["localized_vs_repeats"] = localized_indices(preds, alpha, period=inputs["period"])
        return measured

    result: dict[str, Any] = {"norm": norm, "seed": seed, "lr": lr, "inputs": inputs,
                              "loss_curve": losses[:: max(1, steps // 200)], "final_train_loss": _tail_mean(losses)}
    if eval_modes:
        for mode in eval_modes:
            for module in model.modules():
                if hasattr(module, "inference_stats"):
                    module.inference_stats = mode
            result[mode] = measure(n_test)
    else:
        result.update(measure(n_test))
        if n_test_more:
            result["more_tests"] = measure(n_test_more)
    if probe:
        result["probe_localized"] = probe_localization(model, length, alpha, seed=seed, **probe)
    return result


def probe_localization(model: LocalizationCNN, length: int, alpha: float, seed: int, n_train: int, n_test: int,
                       steps: int, hidden: int, batch_size: int, lr: float) -> np.ndarray:
    """bool [sites, T]: which indices a probe on each hidden layer localizes (Fig. 1b)."""
    sites = model.probe_sites()
    model.eval()

    def activations(seed_offset: int, n: int) -> list[torch.Tensor]:
        with torch.no_grad(), record_activations(model, sites) as acts:
            model(sample_inputs(n, length, seed=seed_offset + seed))
        return [acts[s] for s in sites]

    masks = localize_sites(activations(20_000, n_train), activations(30_000, n_test), ramp_target, alpha,
                           steps=steps, hidden=hidden, batch_size=batch_size, lr=lr, seed=seed)
    return np.stack(masks)


def _trial_settings(cfg: DictConfig) -> dict[str, Any]:
    settings = {k: cfg[k] for k in ("length", "depth", "kernel_size", "hidden", "lr", "batch_size", "steps",
                                    "accumulation", "alpha", "n_test", "eval_batch_size")}
    return dict(settings, inputs=OmegaConf.to_container(cfg.inputs))


def _radius(cfg: DictConfig) -> int:
    """r(L) of the toy CNN: depth layers of odd kernels (the job's config check guarantees both)."""
    return cfg.depth * (cfg.kernel_size - 1) // 2


def _interior(length: int, radius: int) -> slice:
    """Indices farther than the receptive field from both edges: they see no padding."""
    return slice(radius, length - radius)


def localization(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Fig. 1: no norm versus ``cfg.norm`` on the noise -> ramp task, over ``cfg.seeds``."""
    radius = _radius(cfg)
    norms = [{"name": "none"}] + ([] if cfg.norm.name == "none" else [OmegaConf.to_container(cfg.norm)])
    built = LocalizationCNN(cfg.depth, cfg.kernel_size, cfg.hidden, norm_factory(**norms[-1]))
    measured = receptive_field(built)
    require(measured == (radius, radius), f"receptive field {measured} differs from r(L) = {radius}")
    jobs = [dict(norm=n, seed=s, probe=OmegaConf.to_container(cfg.probe), **_trial_settings(cfg))
            for n in norms for s in cfg.seeds]
    trials = map_trials(localization_trial, jobs, cfg.workers, desc="localization")
    inner = _interior(cfg.length, radius)
    summary = {}
    for norm in norms:
        mine = [t for t in trials if t["norm"] == norm]
        summary[_norm_label(norm)] = {
            "final_train_loss": [t["final_train_loss"] for t in mine],
            "test_loss": [t["test_loss"] for t in mine],
            "localization_distance": [t["distance"] for t in mine],
            "localized_total": [int(t["localized"].sum()) for t in mine],
            "localized_interior": [int(t["localized"][inner].sum()) for t in mine],
            "interior_size": inner.stop - inner.start,
            "localized_mask": [t["localized"] for t in mine],
            "probe_localized": [t["probe_localized"] for t in mine] if cfg.probe else None,
        }
    results = {"settings": OmegaConf.to_container(cfg), "receptive_field": radius, "norms": summary}
    write_results(out_dir, results)
    first = {_norm_label(n): next(t for t in trials if t["norm"] == n) for n in norms}
    plots.localization_predictions(first, radius, out_dir / "fig1a_predictions.png")
    plots.probe_heatmaps({k: t["probe_localized"] for k, t in first.items()}, radius, out_dir / "fig1b_probes.png")
    for label, s in summary.items():
        print(f"{label:>24}: distance {s['localization_distance']}, interior localized "
              f"{s['localized_interior']} of {s['interior_size']}, test loss "
              f"{[round(x, 4) for x in s['test_loss']]}")
    return results


def _spread(values: list[float]) -> dict[str, Any]:
    """Mean and range over seeds."""
    return {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values)),
            "per_seed": list(values)}


def _outcome(trials: list[dict], inner: slice, key: str | None = None) -> dict[str, Any]:
    """Localization distance, interior indices localized and test MSE of ``trials`` (one per seed), each
    as mean and range; ``key`` picks a nested measurement (an inference mode, ``more_tests``)."""
    ms = [t[key] if key else t for t in trials]
    return {"localization_distance": _spread([m["distance"] for m in ms]),
            "localized_interior": _spread([int(m["localized"][inner].sum()) for m in ms]),
            "test_loss": _spread([m["test_loss"] for m in ms]),
            "seeds": [t["seed"] for t in trials]}


def groupnorm_groups(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Fig. 4: localization versus the number of GroupNorm groups over ``cfg.seeds``, for each of ``cfg.lrs``.

    Per number of groups, the learning rate with the lowest mean final *training* loss is reported
    (chosen without looking at the test), with the paper's localization distance, the number of
    interior indices localized (which can rise while the distance, needing every index up to it, stays
    at the receptive field) and the test MSE; ``n_test_more`` re-tests the same networks with more
    predictions. The trend is Spearman's rank correlation of interior indices with groups over seeds."""
    radius = _radius(cfg)
    settings = _trial_settings(cfg)
    jobs = [dict(settings, norm={"name": "group", "groups": g}, seed=s, lr=lr, probe=None, n_test_more=cfg.n_test_more)
            for g in cfg.groups for lr in cfg.lrs for s in cfg.seeds]
    trials = map_trials(localization_trial, jobs, cfg.workers, desc="groups x lr x seed")
    inner = _interior(cfg.length, radius)
    by_groups = {}
    for g in cfg.groups:
        per_lr = {lr: [t for t in trials if t["norm"]["groups"] == g and t["lr"] == lr] for lr in cfg.lrs}
        best_lr = min(per_lr, key=lambda lr: np.mean([t["final_train_loss"] for t in per_lr[lr]]))
        entry = {"best_lr": best_lr, **_outcome(per_lr[best_lr], inner),
                 "all_lrs": {lr: _outcome(ts, inner) for lr, ts in per_lr.items()}}
        if cfg.n_test_more:
            entry["more_tests"] = _outcome(per_lr[best_lr], inner, "more_tests")
        by_groups[g] = entry
        print(f"groups {g:>3}: lr {best_lr:g}, distance {entry['localization_distance']['per_seed']}, interior "
              f"localized {entry['localized_interior']['per_seed']} of {inner.stop - inner.start}"
              + (f" ({entry['more_tests']['localized_interior']['per_seed']} with n_test={cfg.n_test_more})"
                 if cfg.n_test_more else "")
              + f", test loss {[round(x, 4) for x in entry['test_loss']['per_seed']]}")
    pairs = [(g, n) for g in cfg.groups for n in by_groups[g]["localized_interior"]["per_seed"]]
    trend = {}
    if len({g for g, _ in pairs}) > 1 and len({n for _, n in pairs}) > 1:
        rho, p_value = spearmanr([g for g, _ in pairs], [n for _, n in pairs])
        trend = {"spearman_rho": float(rho), "p_value": float(p_value), "n": len(pairs)}
        print(f"interior localized vs groups: Spearman rho {rho:.2f} (p = {p_value:.2g}, {len(pairs)} networks)")
    results = {"settings": OmegaConf.to_container(cfg), "receptive_field": radius,
               "interior_size": inner.stop - inner.start, "groups": by_groups, "trend": trend}
    write_results(out_dir, results)
    plots.localization_vs_groups(by_groups, cfg.hidden, inner.stop - inner.start, cfg.n_test, cfg.n_test_more,
                                 out_dir / "fig4_groups.png")
    return results


def batchnorm_stats(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Figs. 5/6: small-batch BatchNorm networks evaluated with minibatch and with population statistics,
    against no norm. Every network sees ``effective_batch`` sequences per Adam step; BatchNorm ones get
    them as ``effective_batch / b`` accumulated minibatches of ``b``, so only the normalization batch
    changes, and minibatch statistics at inference are taken over ``b`` sequences as in training."""
    radius = _radius(cfg)
    settings = _trial_settings(cfg)
    jobs = [dict(settings, norm={"name": "none"}, seed=s, batch_size=cfg.effective_batch, accumulation=1,
                 eval_batch_size=cfg.eval_batch_size, probe=None) for s in cfg.seeds]
    jobs += [dict(settings, norm={"name": "batch", "momentum": cfg.momentum, "eval_stats": ["minibatch", "population"]},
                  seed=s, batch_size=b, accumulation=cfg.effective_batch // b, eval_batch_size=b, probe=None)
             for b in cfg.batch_sizes for s in cfg.seeds]
    trials = map_trials(localization_trial, jobs, cfg.workers, desc="batchnorm")
    inner = _interior(cfg.length, radius)
    measured = {"no norm": [t for t, j in zip(trials, jobs) if j["norm"]["name"] == "none"]}
    for b in cfg.batch_sizes:
        mine = [t for t, j in zip(trials, jobs) if j["norm"]["name"] == "batch" and j["batch_size"] == b]
        for mode in ("minibatch", "population"):
            measured[f"BatchNorm batch {b}, {mode} stats"] = [t[mode] for t in mine]
    summary = {}
    for label, ms in measured.items():
        summary[label] = {"test_loss": [m["test_loss"] for m in ms],
                          "localization_distance": [m["distance"] for m in ms],
                          "localized_interior": [int(m["localized"][inner].sum()) for m in ms],
                          "interior_size": inner.stop - inner.start}
        print(f"{label:>36}: distance {summary[label]['localization_distance']}, interior localized "
              f"{summary[label]['localized_interior']} of {inner.stop - inner.start}, test loss "
              f"{[round(x, 4) for x in summary[label]['test_loss']]}")
    results = {"settings": OmegaConf.to_container(cfg), "receptive_field": radius, "modes": summary}
    write_results(out_dir, results)
    smallest = min(cfg.batch_sizes)
    shown = {k: v[0] for k, v in measured.items() if k == "no norm" or f"batch {smallest}," in k}
    plots.localization_predictions(shown, radius, out_dir / "fig5_batchnorm_predictions.png")
    plots.localized_masks({k: v[0]["localized"] for k, v in measured.items()}, radius,
                          out_dir / "fig6_batchnorm_localized.png")
    return results


def localization_norms(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Every registry norm in ``cfg.norms`` (settings from ``configs/norm/``) on the Fig. 1 task over
    ``cfg.seeds``. BatchNorm normalizes over ``cfg.norm_batch`` sequences with gradient accumulation up to
    ``cfg.batch_size`` and is measured with minibatch and with population statistics."""
    radius = _radius(cfg)
    settings = _trial_settings(cfg)
    jobs = []
    for name in cfg.norms:
        try:  # the norm's settings from configs/norm/, checked as the localization job checks its own
            composed = compose_job("localization", [f"norm={name}", f"hidden={cfg.hidden}"])
        except ConfigError as err:
            raise ConfigError(f"norms entry {name!r}: {err}") from None
        norm = OmegaConf.to_container(composed.norm)
        if name == "batch":  # the same gradient batch, batch_size x accumulation, normalized b at a time
            extra = {"norm": {**norm, "eval_stats": ["minibatch", "population"]}, "batch_size": cfg.norm_batch,
                     "accumulation": cfg.accumulation * cfg.batch_size // cfg.norm_batch,
                     "eval_batch_size": cfg.norm_batch}
        else:
            extra = {"norm": norm}
        jobs += [dict(settings, seed=s, probe=None, **extra) for s in cfg.seeds]
    trials = map_trials(localization_trial, jobs, cfg.workers, desc="norms x seed")
    inner = _interior(cfg.length, radius)
    table, masks = {}, {}
    for name in cfg.norms:
        mine = [t for t, j in zip(trials, jobs) if j["norm"]["name"] == name]
        for mode in (("minibatch", "population") if name == "batch" else (None,)):
            label = f"batch (b = {cfg.norm_batch}), {mode} statistics" if mode else _norm_label(mine[0]["norm"])
            table[label] = _outcome(mine, inner, mode)
            masks[label] = [(t[mode] if mode else t)["localized"] for t in mine]
    results = {"settings": OmegaConf.to_container(cfg), "receptive_field": radius,
               "interior_size": inner.stop - inner.start, "norms": table,
               "localized_mask": {k: v[0] for k, v in masks.items()}}
    write_results(out_dir, results)
    _print_table(table, inner)
    plots.outcome_bars(table, inner.stop - inner.start, "norm", "Every registry norm on noise inputs",
                       out_dir / "norms_localization.png")
    plots.localized_masks({k: v[0] for k, v in masks.items()}, radius, out_dir / "norms_localized_seed0.png")
    return results


def uninformative_inputs(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Sec. 3.2: the Fig. 1 network with ``cfg.norm`` trained and tested on each of ``cfg.input_kinds``
    (``draw_inputs`` settings), over ``cfg.seeds``: fewer unique windows, less to communicate with."""
    radius = _radius(cfg)
    kinds = [OmegaConf.to_container(k) for k in cfg.input_kinds]
    norm = OmegaConf.to_container(cfg.norm)
    jobs = [dict(_trial_settings(cfg), norm=norm, inputs=kind, seed=s, probe=None) for kind in kinds for s in cfg.seeds]
    trials = map_trials(localization_trial, jobs, cfg.workers, desc="inputs x seed")
    inner = _interior(cfg.length, radius)
    table, masks = {}, {}
    for kind in kinds:
        label = {"quantized": f"quantized, {kind['levels']} levels", "periodic": f"periodic, period {kind['period']}"
                 }.get(kind["kind"], kind["kind"])
        mine = [t for t in trials if t["inputs"] == kind]
        table[label] = {**_outcome(mine, inner), "inputs": kind}
        if kind["kind"] == "periodic":
            table[label]["localized_interior_vs_repeats"] = _spread(
                [int(t["localized_vs_repeats"][inner].sum()) for t in mine])
        masks[label] = mine[0]["localized"]
    results = {"settings": OmegaConf.to_container(cfg), "norm": _norm_label(norm), "receptive_field": radius,
               "interior_size": inner.stop - inner.start, "inputs": table, "localized_mask": masks}
    write_results(out_dir, results)
    _print_table(table, inner)
    plots.outcome_bars(table, inner.stop - inner.start, "training and test inputs",
                       f"{_norm_label(norm)} on inputs of decreasing information", out_dir / "uninformative_inputs.png")
    plots.localized_masks(masks, radius, out_dir / "uninformative_inputs_localized_seed0.png")
    return results


def _print_table(table: dict[str, dict[str, Any]], inner: slice) -> None:
    for label, row in table.items():
        print(f"{label:>32}: distance {row['localization_distance']['per_seed']}, interior localized "
              f"{row['localized_interior']['per_seed']} of {inner.stop - inner.start}, test loss "
              f"{[round(x, 4) for x in row['test_loss']['per_seed']]}")


def packnorm_trial(overlap: int, seed: int, length: int, depth: int, kernel_size: int, hidden: int, lr: float,
                   batch_size: int, steps: int, n_test: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = TwoStreamCNN(depth, kernel_size, hidden)
    losses = train_packnorm(model, length, overlap, steps, lr, batch_size, seed=seed)
    return {"overlap": overlap, "seed": seed, "final_train_loss": _tail_mean(losses),
            "test_mse": evaluate_packnorm(model, length, overlap, n_test, seed=10_000 + seed)}


def packnorm_overlap(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Fig. 3: final MSE of the two-stream PackNorm network versus the overlap of its inputs."""
    keys = ("length", "depth", "kernel_size", "hidden", "lr", "batch_size", "steps", "n_test")
    jobs = [dict({k: cfg[k] for k in keys}, overlap=o, seed=s) for o in cfg.overlaps for s in cfg.seeds]
    trials = map_trials(packnorm_trial, jobs, cfg.workers, desc="overlaps")
    constant_loss = 1.0  # predicting 0 for both streams: the best an overlap-blind network can do
    by_overlap = {o: [t["test_mse"] for t in trials if t["overlap"] == o] for o in cfg.overlaps}
    mean = {o: float(np.mean(v)) for o, v in by_overlap.items()}

    def first_below_half(mse: dict[int, float]) -> int | None:
        return next((o for o in cfg.overlaps if mse[o] < 0.5 * constant_loss), None)

    per_seed = {s: first_below_half({t["overlap"]: t["test_mse"] for t in trials if t["seed"] == s})
                for s in cfg.seeds}
    results = {"settings": OmegaConf.to_container(cfg), "constant_prediction_loss": constant_loss,
               "test_mse": by_overlap, "mean_test_mse": mean,
               "first_overlap_below_half": first_below_half(mean),
               "first_overlap_below_half_per_seed": per_seed}
    write_results(out_dir, results)
    plots.mse_vs_overlap(by_overlap, constant_loss, cfg.length, out_dir / "fig3_packnorm_overlap.png")
    for o in cfg.overlaps:
        print(f"overlap {o:>3}: test MSE {mean[o]:.4f} ({mean[o] / constant_loss:.1%} of the constant prediction)")
    print(f"first overlap with MSE below half the constant-prediction loss: {results['first_overlap_below_half']} "
          f"(mean over seeds); per seed {per_seed}")
    return results
