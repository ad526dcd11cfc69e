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

from diffnorm.analysis.receptive_field import receptive_field
from diffnorm.experiments.common import require, write_results
from diffnorm.experiments.parallel import map_trials
from diffnorm.models.norms import norm_factory
from diffnorm.plotting import toy as plots
from diffnorm.probing.hooks import record_activations
from diffnorm.probing.probes import localize_sites
from diffnorm.probing.stats import localization_distance, localized_indices
from diffnorm.toy.localization import LocalizationCNN, predict, ramp_target, sample_inputs, train_localization
from diffnorm.toy.packnorm import TwoStreamCNN, evaluate_packnorm, train_packnorm


def _check_positive(cfg: DictConfig, *keys: str) -> None:
    for key in keys:
        value = OmegaConf.select(cfg, key)
        require(value is not None and value > 0, f"{key}={value} must be positive")


def _check_interior(length: int, radius: int) -> None:
    require(length > 2 * radius,
            f"length={length} must exceed twice the receptive field (2 x {radius}) so an interior exists")


def _norm_label(norm: dict) -> str:
    extras = ", ".join(f"{k}={v}" for k, v in norm.items() if k != "name")
    return f"{norm['name']} ({extras})" if extras else norm["name"]


def _tail_mean(losses: list[float], n: int = 100) -> float:
    return float(np.mean(losses[-n:]))


def localization_trial(norm: dict, seed: int, length: int, depth: int, kernel_size: int, hidden: int,
                       lr: float, batch_size: int, steps: int, accumulation: int, alpha: float,
                       n_test: int, eval_batch_size: int, probe: dict | None) -> dict[str, Any]:
    """Train one Eq. 1 CNN and measure which indices it (and, with ``probe``, each layer) localizes.

    ``norm`` may carry ``eval_stats``: a list of BatchNorm inference-statistics modes to evaluate the
    same trained network under."""
    torch.manual_seed(seed)
    norm = dict(norm)
    eval_modes = norm.pop("eval_stats", None)
    model = LocalizationCNN(depth, kernel_size, hidden, norm_factory(**norm))
    losses = train_localization(model, length, steps, lr, batch_size, accumulation, seed=seed, progress=True,
                                desc=f"{_norm_label(norm)} seed {seed}")
    test_inputs = sample_inputs(n_test, length, seed=10_000 + seed)
    target = ramp_target(length).numpy()

    def measure() -> dict[str, Any]:
        preds = predict(model, test_inputs, eval_batch_size)
        mask = localized_indices(preds, alpha)
        return {"test_loss": float(((preds - target) ** 2).mean()), "pred_mean": preds.mean(0),
                "pred_std": preds.std(0), "localized": mask, "distance": localization_distance(mask)}

    result: dict[str, Any] = {"norm": norm, "seed": seed, "loss_curve": losses[:: max(1, steps // 200)],
                              "final_train_loss": _tail_mean(losses)}
    if eval_modes:
        for mode in eval_modes:
            for module in model.modules():
                if hasattr(module, "inference_stats"):
                    module.inference_stats = mode
            result[mode] = measure()
    else:
        result.update(measure())
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
    return {k: cfg[k] for k in ("length", "depth", "kernel_size", "hidden", "lr", "batch_size", "steps",
                                "accumulation", "alpha", "n_test", "eval_batch_size")}


def _check_toy(cfg: DictConfig) -> int:
    _check_positive(cfg, "length", "depth", "hidden", "steps", "batch_size", "n_test", "accumulation")
    require(cfg.kernel_size >= 1 and cfg.kernel_size % 2 == 1, f"kernel_size={cfg.kernel_size} must be odd and positive")
    radius = cfg.depth * (cfg.kernel_size - 1) // 2
    _check_interior(cfg.length, radius)
    return radius


def _interior(length: int, radius: int) -> slice:
    """Indices farther than the receptive field from both edges: they see no padding."""
    return slice(radius, length - radius)


def localization(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Fig. 1: no norm versus ``cfg.norm`` on the noise -> ramp task, over ``cfg.seeds``."""
    radius = _check_toy(cfg)
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


def groupnorm_groups(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Fig. 4: localization distance versus the number of GroupNorm groups, best over ``cfg.lrs``."""
    _check_toy(cfg)
    for g in cfg.groups:
        require(g >= 1 and cfg.hidden % g == 0, f"groups={g} must be a positive divisor of hidden={cfg.hidden}")
    settings = _trial_settings(cfg)
    jobs = [dict(settings, norm={"name": "group", "groups": g}, seed=s, lr=lr, probe=None)
            for g in cfg.groups for lr in cfg.lrs for s in cfg.seeds]
    trials = map_trials(localization_trial, jobs, cfg.workers, desc="groups x lr x seed")
    by_groups = {}
    for g in cfg.groups:
        per_lr = {lr: [t for t, j in zip(trials, jobs) if j["norm"]["groups"] == g and j["lr"] == lr]
                  for lr in cfg.lrs}
        best_lr = max(per_lr, key=lambda lr: (np.mean([t["distance"] for t in per_lr[lr]]),
                                              -np.mean([t["test_loss"] for t in per_lr[lr]])))
        best = per_lr[best_lr]
        by_groups[g] = {"best_lr": best_lr, "distance": [t["distance"] for t in best],
                        "test_loss": [t["test_loss"] for t in best],
                        "all_lrs": {lr: [t["distance"] for t in ts] for lr, ts in per_lr.items()}}
        print(f"groups {g:>3}: best lr {best_lr:g}, localization distance {by_groups[g]['distance']}, "
              f"test loss {[round(x, 4) for x in by_groups[g]['test_loss']]}")
    results = {"settings": OmegaConf.to_container(cfg), "groups": by_groups}
    write_results(out_dir, results)
    plots.distance_vs_groups(by_groups, cfg.length, out_dir / "fig4_groups.png")
    return results


def batchnorm_stats(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Figs. 5/6: small-batch BatchNorm networks evaluated with minibatch and with population statistics,
    against no norm. Every network sees ``effective_batch`` sequences per Adam step; BatchNorm ones get
    them as ``effective_batch / b`` accumulated minibatches of ``b``, so only the normalization batch
    changes, and minibatch statistics at inference are taken over ``b`` sequences as in training."""
    radius = _check_toy(cfg)
    for b in cfg.batch_sizes:
        require(b >= 1 and cfg.effective_batch % b == 0,
                f"batch_sizes entry {b} must be a positive divisor of effective_batch={cfg.effective_batch}")
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


def packnorm_trial(overlap: int, seed: int, length: int, depth: int, kernel_size: int, hidden: int, lr: float,
                   batch_size: int, steps: int, n_test: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = TwoStreamCNN(depth, kernel_size, hidden)
    losses = train_packnorm(model, length, overlap, steps, lr, batch_size, seed=seed)
    return {"overlap": overlap, "seed": seed, "final_train_loss": _tail_mean(losses),
            "test_mse": evaluate_packnorm(model, length, overlap, n_test, seed=10_000 + seed)}


def packnorm_overlap(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Fig. 3: final MSE of the two-stream PackNorm network versus the overlap of its inputs."""
    _check_positive(cfg, "length", "depth", "hidden", "steps", "batch_size", "n_test")
    require(cfg.kernel_size >= 1 and cfg.kernel_size % 2 == 1, f"kernel_size={cfg.kernel_size} must be odd and positive")
    shrink = cfg.depth * (cfg.kernel_size - 1)
    require(cfg.length > shrink, f"length={cfg.length} must exceed depth*(kernel_size-1)={shrink} (valid convolutions)")
    for o in cfg.overlaps:
        require(0 <= o < cfg.length, f"overlap={o} must lie in [0, length={cfg.length})")
    keys = ("length", "depth", "kernel_size", "hidden", "lr", "batch_size", "steps", "n_test")
    jobs = [dict({k: cfg[k] for k in keys}, overlap=o, seed=s) for o in cfg.overlaps for s in cfg.seeds]
    trials = map_trials(packnorm_trial, jobs, cfg.workers, desc="overlaps")
    constant_loss = 1.0  # predicting 0 for both streams: the best an overlap-blind network can do
    by_overlap = {o: [t["test_mse"] for t in trials if t["overlap"] == o] for o in cfg.overlaps}
    mean = {o: float(np.mean(v)) for o, v in by_overlap.items()}
    below_half = [o for o in cfg.overlaps if mean[o] < 0.5 * constant_loss]
    results = {"settings": OmegaConf.to_container(cfg), "constant_prediction_loss": constant_loss,
               "test_mse": by_overlap, "mean_test_mse": mean,
               "first_overlap_below_half": below_half[0] if below_half else None}
    write_results(out_dir, results)
    plots.mse_vs_overlap(by_overlap, constant_loss, cfg.length, out_dir / "fig3_packnorm_overlap.png")
    for o in cfg.overlaps:
        print(f"overlap {o:>3}: test MSE {mean[o]:.4f} ({mean[o] / constant_loss:.1%} of the constant prediction)")
    print(f"first overlap with MSE below half the constant-prediction loss: {results['first_overlap_below_half']}")
    return results
