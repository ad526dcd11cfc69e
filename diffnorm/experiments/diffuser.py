"""Diffuser jobs: ``train_diffuser(cfg, out)`` trains the maze2d Diffuser with the configured norm.

Writes into the run directory: config.yaml, scaler.json, checkpoint.safetensors, ema.safetensors,
metrics.csv, samples/step_*.png (plans sampled with the EMA model), loss.png and results.json.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from diffnorm.config import check_schedule, override_key, validate_config
from diffnorm.data.generate import ensure_dataset
from diffnorm.data.ogbench_stitch import ensure_ogbench_stitch_dataset
from diffnorm.data.scaling import TrajectoryScaler
from diffnorm.data.sequence import SequenceDataset, training_windows
from diffnorm.diffusion.gaussian import GaussianDiffusion
from diffnorm.envs.maze2d import in_wall
from diffnorm.envs.ogbench_maze import ogbench_maze_of
from diffnorm.errors import ConfigError
from diffnorm.experiments.common import (
    compose_job,
    require,
    resolve_device,
    resolve_path,
    seed_everything,
    write_results,
)
from diffnorm.io import atomic_write_bytes
from diffnorm.plotting.diffuser import loss_curve, plan_grid
from diffnorm.training.build import build_diffusion
from diffnorm.training.checkpoint import (
    CHECKPOINT,
    CONFIG,
    EMA_WEIGHTS,
    SCALER,
    SNAPSHOTS,
    checkpoint_step,
    load_scaler,
    write_run_files,
)
from diffnorm.training.distributed import barrier, init_distributed
from diffnorm.training.loop import _seeded, schedule_of, train_diffusion
from diffnorm.training.step import collate, learning_rate

log = logging.getLogger(__name__)

# A plan "joins" its inpainted start and goal when its first and last steps are shorter than this (maze
# units; dataset steps are ~0.03, so 0.2 allows a fast but continuous move and rejects a jump).
JOIN_DISTANCE = 0.2

# What makes two runs the same run: a resume must agree on all of it (train.steps may grow, intervals,
# threads, progress and the GPU-only speed options may change), and on every learning rate it has taken
# (``_rate_difference``): a cosine run cannot be extended, a constant run can be resumed into a wsd decay.
_IDENTITY = ("env", "norm", "model", "diffusion", "seed", "data_seed", "dataset", "train.batch_size",
             "train.grad_accumulation", "train.ema_decay", "train.ema_every", "train.ema_start")


def _identity(cfg: DictConfig) -> dict[str, Any]:
    def present(value: Any) -> Any:  # a key added since with a null default (env.ogbench) = a key a run lacks
        return {k: present(v) for k, v in value.items() if v is not None} if isinstance(value, dict) else value

    identity = {}
    for key in _IDENTITY:
        value = OmegaConf.select(cfg, key)
        identity[key] = present(OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value)
    # How a planner is evaluated is not how it is trained: OGBench runs saved with the follower's old
    # replanning interval in their env config are the same runs as those without it.
    (identity["env"].get("ogbench") or {}).pop("replan_every", None)
    return identity


def _rate_difference(saved: DictConfig, now: DictConfig, taken: int) -> tuple[int, float, float] | None:
    """(step, rate then, rate now) of the first of the ``taken`` steps whose learning rate the config
    ``now`` would change, or None when every step taken so far keeps its rate."""
    before, after = schedule_of(saved.train), schedule_of(now.train)
    if (saved.train.lr, saved.train.steps, before) == (now.train.lr, now.train.steps, after):
        return None
    for step in range(taken):
        was = learning_rate(step, saved.train.lr, saved.train.steps, **before)
        new = learning_rate(step, now.train.lr, now.train.steps, **after)
        if not math.isclose(was, new, rel_tol=1e-12):
            return step, was, new
    return None


def _flat(cfg: DictConfig) -> dict[str, Any]:
    """Every leaf setting of ``cfg`` (resolved) by its dotted key; lists are leaves, and so is ``norm``,
    whose keys depend on the layer chosen (GroupNorm's ``groups`` means nothing to ``none``)."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node and prefix != "norm.":
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def env_option_of(env: DictConfig) -> str:
    """The env config option (``configs/env/<option>.yaml``) a resolved env config came from, by the
    configs' naming rule: maze2d-<maze> is ``maze2d_<maze>``, an OGBench twin ``ogbench_<its id without -v0>``."""
    og = OmegaConf.select(env, "ogbench")
    name = str(env.name) if og is None else "ogbench_" + og.env.removesuffix("-v0")
    return name.replace("-", "_")


def _command_line() -> list[str] | None:
    """The overrides on train_diffuser's command line (``experiment=`` and ``preset=`` left out) when
    this process runs that script; None otherwise (in-process callers, other jobs)."""
    if not HydraConfig.initialized() or HydraConfig.get().job.config_name != "train_diffuser":
        return None
    return [o for o in HydraConfig.get().overrides.task
            if override_key(o) not in ("experiment", "preset") and not o.startswith("hydra")]


def explicit_settings(cfg: DictConfig) -> dict[str, Any]:
    """The settings of a train_diffuser config the caller chose, as {dotted key: value}: those that differ
    from the job's defaults for its maze (overrides, presets) and, from the command line, every key or
    group named there, even at its default value."""
    defaults = _flat(compose_job("train_diffuser", [f"env={env_option_of(cfg.env)}"]))
    named = {override_key(o) for o in _command_line() or []}
    return {k: v for k, v in _flat(cfg).items()
            if k not in defaults or defaults[k] != v or any(k == n or k.startswith(n + ".") for n in named)}


def _apply(base: DictConfig, settings: dict[str, Any]) -> DictConfig:
    merged = base.copy()
    for key, value in settings.items():
        OmegaConf.update(merged, key, value, merge=False, force_add=True)
    return merged


def resume_config(cfg: DictConfig, out: Path) -> DictConfig:
    """The config a ``train.resume=true`` run continues with: the run's saved config.yaml, changed only
    where ``cfg`` was given settings of its own (e.g. ``train.steps`` to extend the run), so
    ``train.resume=true hydra.run.dir=<run>`` alone continues it. ``_check_resume_matches`` then refuses
    changes to what makes the run itself (norm, model, data, optimizer), naming the keys."""
    require((out / CONFIG).is_file(), f"train.resume=true but {out / CONFIG} does not exist")
    given = {k: v for k, v in explicit_settings(cfg).items() if k != "preset"}
    return _apply(saved_config(out), given)


def saved_config(out: Path) -> DictConfig:
    """A run's config.yaml, with the keys added since it was written filled in from what the run used."""
    saved = OmegaConf.load(out / CONFIG)
    if OmegaConf.select(saved, "env.observation_dim") is None:  # saved before env carried the key
        with open_dict(saved):
            saved.env.observation_dim = saved.diffusion.observation_dim
    return saved


def cpu_preset_name(maze: str) -> str:
    """The CPU preset (``configs/experiment/cpu_<maze>.yaml``) of a maze2d maze."""
    return "cpu_" + maze.removeprefix("maze2d-")


def with_device_default(cfg: DictConfig, device: torch.device, announce: bool = True) -> DictConfig:
    """``preset: auto`` (no ``experiment=`` given) on a CPU becomes the maze's CPU preset, with one log
    line (``announce``): from the command line exactly as if ``experiment=cpu_<maze>`` had been named
    there (the preset over the config groups, the keys named over the preset); in-process, the preset
    under the settings of ``cfg`` that differ from the job's defaults. On a GPU the published settings
    stay. Any explicit ``experiment=`` (``published`` included) is kept as it is."""
    if cfg.get("preset", "auto") != "auto":
        return cfg
    if device.type != "cpu":
        if announce:
            log.info("%s: the Diffuser's published settings (train.steps=%d)", device, cfg.train.steps)
        return _apply(cfg, {"preset": "published"})
    preset = cpu_preset_name(cfg.env.name)
    if announce:
        log.warning("CPU: training with experiment=%s, the measured CPU preset of %s (the published 2,000,000 "
                    "steps would take days here); experiment=published forces the paper's settings", preset,
                    cfg.env.name)
    line = _command_line()
    if line is not None:  # exactly as if experiment=<preset> stood on the command line: the preset
        return compose_job("train_diffuser", [*line, f"experiment={preset}"])  # overrides the groups named
    base = compose_job("train_diffuser", [f"env={env_option_of(cfg.env)}", f"experiment={preset}"])
    return _apply(base, explicit_settings(cfg))


def _check_resume_matches(out: Path, cfg: DictConfig) -> TrajectoryScaler:
    """The saved config must describe the same run; return the run's scaler so the data scales alike."""
    for name in (CONFIG, SCALER, CHECKPOINT):
        require((out / name).is_file(), f"train.resume=true but {out / name} does not exist")
    saved_cfg = saved_config(out)
    saved, now = _identity(saved_cfg), _identity(cfg)
    diff = [f"{k}: run {saved.get(k)} vs now {now.get(k)}" for k in sorted(set(saved) | set(now))
            if saved.get(k) != now.get(k)]
    require(not diff, f"train.resume=true in {out}, but the config differs from the run's: {'; '.join(diff)}")
    taken = checkpoint_step(out / CHECKPOINT)
    changed = _rate_difference(saved_cfg, cfg, taken)
    if changed is not None:
        step, was, new = changed
        raise ConfigError(f"train.resume=true in {out}, but the new settings change a learning rate the run has "
                          f"used: its step {step + 1} (as metrics.csv counts) took {was:.4g}, they give {new:.4g}; "
                          f"train.lr, lr_schedule, steps, warmup_steps and decay_steps may change only what "
                          f"steps after {taken} (the checkpoint's) would take")
    return load_scaler(json.loads((out / SCALER).read_text()))


def load_training_data(cfg: DictConfig, scaler: TrajectoryScaler | None = None
                       ) -> tuple[SequenceDataset, dict[str, Any]]:
    """The configured dataset file (given, or generated and cached by the env's recipe) as training
    windows (``data.sequence.training_windows``); and where it came from (path, frame and why)."""
    data_dir = resolve_path(cfg.data_dir)
    if cfg.dataset is not None:
        path = resolve_path(cfg.dataset)
        require(path.is_file(), f"dataset={cfg.dataset} does not exist ({path})")
    elif OmegaConf.select(cfg, "env.ogbench") is not None:  # OGBench's stitch recipe in its own env
        og = cfg.env.ogbench
        path = ensure_ogbench_stitch_dataset(ogbench_maze_of(cfg.env), og.episodes, og.episode_steps,
                                             seed=og.data_seed, data_dir=data_dir,
                                             progress=cfg.train.progress)
    else:
        path = ensure_dataset(cfg.env.name, cfg.env.dataset_steps, cfg.data_seed,
                              data_dir=data_dir, progress=cfg.train.progress)
    frame = cfg.get("dataset_frame", "auto")  # .get: the leak probe reads configs saved before the key existed
    dataset, source = training_windows(path, cfg.env.name, cfg.env.horizon, frame, scaler)
    require(dataset.transition_dim == cfg.diffusion.observation_dim + cfg.diffusion.action_dim,
            f"dataset transitions have {dataset.transition_dim} dims, the model expects "
            f"{cfg.diffusion.observation_dim + cfg.diffusion.action_dim}")
    log.info("dataset %s (%s frame: %s): %d windows of %d steps in %d episodes", path, source["frame"],
             source["frame_source"], len(dataset), dataset.horizon, len(dataset.bounds))
    return dataset, source


def plan_xy(plans: torch.Tensor, scaler: TrajectoryScaler, action_dim: int) -> np.ndarray:
    """Scaled plans [N, H, A + O] -> positions [N, H, 2] in maze (D4RL) coordinates."""
    observations = scaler.unnormalize_observations(plans[..., action_dim:].detach().cpu().double().numpy())
    return observations[..., :2]


class PlanSampler:
    """Samples plans from fixed dataset windows' start/goal states and draws them on the maze."""

    def __init__(self, cfg: DictConfig, dataset: SequenceDataset, out: Path):
        n = min(cfg.train.n_samples, len(dataset))
        picks = torch.randperm(len(dataset), generator=_seeded(cfg.seed, 2))[:n].tolist()
        self.reference, self.conditions = collate([dataset[i] for i in picks], torch.device("cpu"))
        self.cfg, self.scaler, self.out = cfg, dataset.scaler, out
        self.maze = cfg.env.name
        self.action_dim = cfg.diffusion.action_dim
        self.history: list[dict[str, Any]] = []

    def __call__(self, diffusion: GaussianDiffusion, step: int) -> None:
        if not len(self.reference):
            return
        device = next(diffusion.parameters()).device
        plans = diffusion.sample({t: c.to(device) for t, c in self.conditions.items()},
                                 generator=_seeded(int(self.cfg.seed), 3))
        xy = plan_xy(plans, self.scaler, self.action_dim)
        ref = plan_xy(self.reference, self.scaler, self.action_dim)
        path = plan_grid(self.out / "samples" / f"step_{step:07d}.png", self.maze, xy, ref,
                         title=f"{self.maze}, norm={self.cfg.norm.name}, EMA model at step {step}")
        self.history.append({"step": step, "png": path, "plans": _plan_stats(self.maze, xy),
                             "data_windows": _plan_stats(self.maze, ref)})


def _plan_stats(maze: str, xy: np.ndarray) -> dict[str, float]:
    """How plan-like paths [N, H, 2] are: inside walls, and whether they join their inpainted ends
    (a jump from the start or into the goal much larger than a typical step means the condition was
    pasted on rather than planned towards)."""
    steps = np.linalg.norm(np.diff(xy, axis=1), axis=-1)
    joined = (steps[:, 0] < JOIN_DISTANCE) & (steps[:, -1] < JOIN_DISTANCE)
    return {"in_wall_fraction": float(in_wall(maze, xy).mean()), "median_step": float(np.median(steps[:, 1:-1])),
            "start_jump": float(steps[:, 0].mean()), "goal_jump": float(steps[:, -1].mean()),
            "joined_fraction": float(joined.mean())}


def _configure_threads(cfg: DictConfig) -> None:
    if cfg.train.num_threads is not None:
        torch.set_num_threads(cfg.train.num_threads)


def train_diffuser(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Train the Diffuser of ``cfg`` into ``out``; with ``train.resume`` continue the run found there
    (``resume_config``). Without an ``experiment=`` a CPU trains the maze's CPU preset
    (``with_device_default``)."""
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    cfg = resume_config(cfg, out) if cfg.train.resume else with_device_default(cfg, device)
    validate_config("train_diffuser", cfg)
    if cfg.train.resume:
        try:
            check_schedule(OmegaConf.to_container(cfg.train, resolve=True))
        except ConfigError as err:
            raise ConfigError(f"resuming {out} (its saved config.yaml under the given settings): {err}") from None
    _configure_threads(cfg)
    # Under torchrun (WORLD_SIZE > 1): join the process group; rank 0 alone generates data and writes files.
    dist, device = init_distributed(device)
    seed_everything(cfg.seed)
    diffusion = build_diffusion(cfg)  # first, so a bad horizon or norm fails before any data work
    scaler = _check_resume_matches(out, cfg) if cfg.train.resume else None
    if not dist.is_main:
        barrier()  # rank 0 generates (and caches) the dataset first
    dataset, source = load_training_data(cfg, scaler)
    if dist.is_main:
        barrier()
        write_run_files(out, cfg, dataset.scaler)  # on resume: same scaler, config updated (e.g. train.steps)
        if cfg.train.resume and (out / ".hydra" / "config.yaml").is_file():
            # Hydra recorded the command's composition (its defaults: norm=group, ...); the run is this config.
            atomic_write_bytes(out / ".hydra" / "config.yaml", OmegaConf.to_yaml(cfg).encode())
    if dist.is_main and not cfg.train.resume:
        for stale in (out / SNAPSHOTS, out / "samples"):  # a replaced run's, never to be mixed with this one's
            if stale.is_dir():
                shutil.rmtree(stale)
    sampler = PlanSampler(cfg, dataset, out)
    n_params = sum(p.numel() for p in diffusion.parameters())
    log.info("%s with norm=%s: %d parameters, device %s, %d torch threads", cfg.model.name, cfg.norm.name,
             n_params, device, torch.get_num_threads())
    summary, _ = train_diffusion(diffusion, dataset, cfg.train, cfg.seed, out, device, cfg,
                                   on_sample=sampler)
    if not dist.is_main:
        return summary
    loss_png = loss_curve(out / "loss.png", summary["loss_curve"],
                          title=f"{cfg.env.name}, norm={cfg.norm.name}")
    results = {
        "env": cfg.env.name, "preset": cfg.get("preset"), "norm": OmegaConf.to_container(cfg.norm, resolve=True),
        "model": OmegaConf.to_container(cfg.model, resolve=True), "parameters": n_params,
        "device": str(device), "torch_threads": torch.get_num_threads(), "n_windows": len(dataset),
        "world_size": dist.world_size, "shards": int(cfg.train.get("shards", 1)), "dataset": source,
        **summary,
        "samples": sampler.history[-1] if sampler.history else None,
        "samples_over_time": [{"step": h["step"], **h["plans"]} for h in sampler.history],
        "wall_time_s": round(time.perf_counter() - start, 2),
        "files": {"checkpoint": out / "checkpoint.safetensors", "ema": out / "ema.safetensors",
                  "config": out / CONFIG, "scaler": out / SCALER, "metrics": out / "metrics.csv",
                  "loss_png": loss_png},
    }
    write_results(out, results)
    # The norm, seed and run name this line: a study's workers write one log.
    log.info("%s norm=%s seed %d: final loss %.4f after %d steps; %.1f s", out, cfg.norm.name, cfg.seed,
             summary["final_loss"] or float("nan"), summary["steps"], results["wall_time_s"])
    return results


def train_or_reuse(overrides: list[str], out: Path) -> tuple[dict[str, Any], bool]:
    """(results, reused): the training ``overrides`` describe (``train_diffuser``'s config composed from
    them, with the device's preset, ``with_device_default``), in ``out``. The run already there is judged
    by its saved config, not by how it was asked for: a finished run that is this training (the same
    identity, steps and learning rates) is reused; a run that agrees with it so far (the same identity and
    every learning rate its checkpoint has taken, e.g. one a session stopped, or a constant-rate run a
    preset now extends or decays) continues from its checkpoint; anything else trains afresh. The one
    reuse rule of the jobs that train sub-runs, so a study that stopped part-way, or is rerun for new
    evaluations or figures, trains only what is missing, across sessions, and never mixes in a planner
    that a changed preset would train differently. Settings outside a run's identity (threads, progress,
    intervals) may differ."""
    out = Path(out)
    cfg = compose_job("train_diffuser", list(overrides))
    wanted = with_device_default(cfg, resolve_device(cfg.device), announce=False)
    state = _run_state(out, wanted)
    if state is None and (out / CHECKPOINT).is_file():
        log.warning("%s holds another training than the one asked for (other settings, or a preset changed "
                    "since): training afresh there", out)
    if state == "finished":
        log.info("%s: reusing the finished training there", out)
        return json.loads((out / "results.json").read_text()), True
    if state == "resumable":
        log.info("%s: continuing the training found there (same run, checkpoint at step %d)", out,
                 checkpoint_step(out / CHECKPOINT))
        cfg = _apply(wanted, {"train.resume": True})
    results = train_diffuser(cfg, out)
    trained = saved_config(out)
    require(_identity(trained) == _identity(wanted) and _rate_difference(trained, wanted, wanted.train.steps) is None,
            f"{out}: the training there does not match the one asked for (a bug in the reuse rule; train afresh "
            "in another directory)")
    return results, False


def _run_state(out: Path, wanted: DictConfig) -> str | None:
    """"finished" when ``out`` holds the run ``wanted`` trains, "resumable" when its checkpoint is that
    run part-way, None otherwise (no run, another run, or one that went past ``wanted``'s steps)."""
    if not all((out / name).is_file() for name in (CONFIG, SCALER)):
        return None
    # A finished run kept as a planner (EMA weights, config, scaler, results; its optimizer state deleted)
    # is still the finished run; a run part-way needs its full checkpoint to continue.
    state = out / CHECKPOINT if (out / CHECKPOINT).is_file() else out / EMA_WEIGHTS
    if not state.is_file() or (state.name == EMA_WEIGHTS and not (out / "results.json").is_file()):
        return None
    saved = saved_config(out)
    taken = checkpoint_step(state)
    if state.name == EMA_WEIGHTS and taken != wanted.train.steps:
        return None
    if _identity(saved) != _identity(wanted) or _rate_difference(saved, wanted, taken) is not None:
        return None
    if taken == wanted.train.steps and all((out / name).is_file() for name in ("results.json", EMA_WEIGHTS)):
        return "finished"
    return "resumable" if taken <= wanted.train.steps else None
