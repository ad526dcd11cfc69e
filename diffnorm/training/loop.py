"""The Diffuser training loop: Adam on the x0 L2 loss, gradient accumulation, EMA, checkpoints, resume.

Reproducibility is by construction rather than by saved RNG streams: the data order is a per-epoch
permutation seeded by (seed, epoch) and the diffusion steps and noise of optimizer step k come from a
generator seeded by (seed, k). A run resumed from the checkpoint at step k therefore sees exactly the
batches and noise the uninterrupted run saw, and on CPU ends with bit-identical weights.

Stopping: SIGINT (Ctrl-C) finishes the current step, writes a checkpoint and raises
TrainingInterrupted; a NaN or infinite loss raises TrainingDiverged at the next log or checkpoint
boundary, before anything is saved, so the checkpoint on disk is always one from finite losses.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from diffnorm.devices import bf16_supported
from diffnorm.diffusion.gaussian import GaussianDiffusion
from diffnorm.errors import TrainingDiverged, TrainingInterrupted, require
from diffnorm.io import atomic_write_bytes
from diffnorm.progress import bar as progress_bar
from diffnorm.training.checkpoint import (
    CHECKPOINT,
    load_training_state,
    save_snapshot,
    save_training_state,
    training_seconds,
)
from diffnorm.training.distributed import dist_info, mean_across_ranks, wrap_ddp
from diffnorm.training.ema import EMA
from diffnorm.training.step import LR_SCHEDULES, GradientStep, learning_rate, make_optimizer

log = logging.getLogger(__name__)

METRICS = "metrics.csv"
METRIC_FIELDS = ("step", "loss", "lr", "elapsed_s", "steps_per_s")


def _seeded(*keys: int) -> torch.Generator:
    """A CPU generator whose seed mixes ``keys`` (SeedSequence keeps nearby keys' streams independent)."""
    seed = int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


def step_generator(seed: int, step: int) -> torch.Generator:
    """Randomness (diffusion steps, noise) of optimizer step ``step``: a function of (seed, step) only."""
    return _seeded(seed, 1, step)


class EpochOrder:
    """Epoch-wise shuffling as a pure function of (seed, sample position): position p is item
    permutation_{p // n}[p % n], each epoch's permutation drawn from a generator seeded by (seed, epoch)."""

    def __init__(self, n: int, seed: int):
        require(n > 0, "the dataset has no training windows")
        self.n, self.seed = n, seed
        self._cache: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            if len(self._cache) > 2:
                self._cache.pop(min(self._cache))
            self._cache[epoch] = torch.randperm(self.n, generator=_seeded(self.seed, 0, epoch))
        return self._cache[epoch]

    def indices(self, start: int, count: int) -> list[int]:
        return [int(self._perm(p // self.n)[p % self.n]) for p in range(start, start + count)]


def _read_metrics(path: Path, upto: int) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["step"]) <= upto]


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    # Atomic, like the checkpoints: a kill mid-write must not leave a torn row for the resume to parse.
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())


def _tensorboard(out: Path, start: int) -> Any:
    """A TensorBoard writer into ``out/tensorboard`` for a run starting at step ``start`` (0 when fresh):
    events an earlier start logged after it are purged (TensorBoard drops steps >= ``purge_step``), as
    ``metrics.csv`` drops those rows. The ``tensorboard`` extra is checked with the config."""
    from torch.utils.tensorboard import SummaryWriter  # an optional extra

    return SummaryWriter(str(out / "tensorboard"), purge_step=start + 1)


@contextlib.contextmanager
def _sigint_flag() -> Iterator[dict[str, Any]]:
    """While active, the first SIGINT or SIGTERM only sets ``flag["stop"]`` to the signal's name (the loop
    then checkpoints and stops); it also restores the previous handlers, so a second signal acts at once
    as usual. SIGTERM too: a ``kill``, a cluster's preemption or a study stopping its workers then leaves
    a checkpoint of the step the run reached."""
    flag: dict[str, Any] = {"stop": False}
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield flag
        return
    watched = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in watched}

    def handler(signum: int, frame: Any) -> None:
        flag["stop"] = signal.Signals(signum).name
        for sig in watched:
            signal.signal(sig, previous[sig])
        log.warning("%s: stopping after this step with a checkpoint (again to abort at once)", flag["stop"])

    for sig in watched:
        signal.signal(sig, handler)
    try:
        yield flag
    finally:
        for sig in watched:
            signal.signal(sig, previous[sig])


def _agree(unchecked: list[torch.Tensor], stop: bool, world_size: int) -> tuple[torch.Tensor, bool]:
    """The unchecked per-step losses and the Ctrl-C flag, summed over ranks under DDP (a NaN on any
    rank is a NaN everywhere; one rank's SIGINT stops all), as they are without a process group."""
    losses = torch.stack(unchecked) if unchecked else torch.zeros(0)
    if world_size == 1:
        return losses, stop
    import torch.distributed as dist  # only under DDP

    both = torch.cat([losses.float(), torch.tensor([float(stop)], device=losses.device)])
    dist.all_reduce(both, op=dist.ReduceOp.SUM)
    return both[:-1], bool(both[-1] > 0)


def _check_finite(losses: torch.Tensor, done: int, saved: int | None, out: Path, lr: float) -> None:
    """Raise TrainingDiverged if a loss of the steps in ``losses`` (ending at step ``done``) is NaN or
    infinite. Called only where the loop synchronizes anyway (log and checkpoint steps)."""
    if not len(losses):
        return
    finite = torch.isfinite(losses)
    if bool(finite.all()):
        return
    first = int((~finite).nonzero()[0, 0])
    step = done - len(losses) + first + 1
    kept = (f"the last good checkpoint, step {saved}, is kept in {out / CHECKPOINT}" if saved is not None
            else "no checkpoint had been written yet")
    raise TrainingDiverged(f"loss is {float(losses[first])} at step {step} (train.lr={lr}); training stopped and "
                           f"{kept}; lower train.lr or check the data")


def _precision_and_compile(cfg: DictConfig, device: torch.device, model: nn.Module
                           ) -> tuple[contextlib.AbstractContextManager, nn.Module]:
    """bf16 autocast where the device computes in bf16 natively (else ignored with a log line), and
    torch.compile on any device. On a CPU, compiling takes about 1.5 minutes before the first step and
    then a step runs faster than eager (``scripts/bench.py``): worth it for long runs, not quick ones."""
    autocast: contextlib.AbstractContextManager = contextlib.nullcontext()
    denoiser = model
    if cfg.bf16:
        if bf16_supported(device):
            autocast = torch.autocast(device.type, dtype=torch.bfloat16)
        else:
            log.warning("train.bf16=true ignored: %s has no native bf16 support", device)
    if cfg.compile:
        # Shard threads would each enter the compiled module at once; dynamo is not built for that.
        require(int(cfg.get("shards", 1)) == 1, f"train.compile=true needs train.shards=1 (got {cfg.shards})")
        log.info("train.compile=true: the first steps compile the network for %s", device)
        denoiser = torch.compile(model)
    return autocast, denoiser


def check_train_settings(cfg: DictConfig) -> None:
    for key in ("steps", "batch_size", "grad_accumulation", "ema_every", "checkpoint_every", "log_every"):
        require(int(cfg[key]) >= 1, f"train.{key}={cfg[key]} must be positive")
    require(cfg.lr > 0, f"train.lr={cfg.lr} must be positive")
    for key in ("sample_every", "snapshot_every", "warmup_steps", "decay_steps"):
        require(int(cfg.get(key, 0)) >= 0, f"train.{key}={cfg.get(key)} must be >= 0 (0 = never)")
    require(cfg.get("lr_schedule", "constant") in LR_SCHEDULES,
            f"train.lr_schedule={cfg.get('lr_schedule')!r} is unknown; choose one of {list(LR_SCHEDULES)}")
    require(cfg.get("lr_schedule") != "wsd" or int(cfg.get("decay_steps", 0)) >= 1,
            f"train.lr_schedule=wsd needs train.decay_steps >= 1, got {cfg.get('decay_steps', 0)}")


def schedule_of(cfg: DictConfig) -> dict[str, Any]:
    """``learning_rate``'s schedule keywords from train settings (runs saved before a key have its default)."""
    return {"schedule": str(cfg.get("lr_schedule", "constant")), "warmup_steps": int(cfg.get("warmup_steps", 0)),
            "decay_steps": int(cfg.get("decay_steps", 0))}


def train_diffusion(diffusion: GaussianDiffusion, dataset: Sequence[dict[str, Any]], cfg: DictConfig,
                    seed: int, out: Path, device: torch.device, run_cfg: DictConfig,
                    on_sample: Callable[[GaussianDiffusion, int], None] | None = None
                    ) -> tuple[dict[str, Any], GaussianDiffusion]:
    """Train ``diffusion`` on ``dataset`` with the settings ``cfg`` (= run_cfg.train).

    Returns a JSON-able summary and the EMA model (eval mode), the one to plan with.
    With ``cfg.resume`` the state at ``out/checkpoint.safetensors`` is restored first. ``on_sample`` is
    called with the EMA model (eval mode) every ``cfg.sample_every`` steps and at the end. Under DDP
    (a process group of N ranks) each rank computes 1/N of every batch and only rank 0 writes files or
    calls ``on_sample``; ``cfg.shards`` > 1 splits each CPU batch across threads (``training.step``).
    """
    check_train_settings(cfg)
    total, accum, batch = cfg.steps, cfg.grad_accumulation, cfg.batch_size
    diffusion.to(device).train()
    optimizer = make_optimizer(diffusion.parameters(), cfg.lr, device)
    info = dist_info()
    ema = EMA(diffusion, decay=cfg.ema_decay, every=cfg.ema_every, start=cfg.ema_start)
    start, before = 0, 0.0  # step and training seconds this start continues from
    if not cfg.resume and (out / CHECKPOINT).exists():
        log.warning("train.resume=false: starting afresh and overwriting %s", out / CHECKPOINT)
    if cfg.resume:
        start = load_training_state(out, run_cfg, diffusion.model, ema.average.model, optimizer)
        before = training_seconds(out / CHECKPOINT) or 0.0
        require(start <= total, f"the checkpoint in {out} is at step {start}, beyond train.steps={total}")
        log.info("resumed from %s at step %d (%.1f s trained before)", out / CHECKPOINT, start, before)
    snapshot_every = int(cfg.get("snapshot_every", 0))
    metrics_path = out / METRICS
    rows: list[dict[str, Any]] = _read_metrics(metrics_path, start) if cfg.resume else []
    if info.is_main:
        _write_metrics(metrics_path, rows)  # drops rows logged after the checkpoint a resumed run restarts from
    autocast, denoiser = _precision_and_compile(cfg, device, wrap_ddp(diffusion.model, device))
    grads = GradientStep(diffusion, accum, device, denoiser, autocast, shards=int(cfg.get("shards", 1)), dist=info)
    events = _tensorboard(out, start) if info.is_main and cfg.get("tensorboard") else None
    order = EpochOrder(len(dataset), seed)
    window: list[torch.Tensor] = []  # per-step losses, left on the device until logged (no sync per step)
    unchecked: list[torch.Tensor] = []  # losses not yet checked for NaN/inf (since the last log or checkpoint)
    saved = start if cfg.resume else None  # step of the checkpoint on disk
    t0 = time.perf_counter()
    last_log = (start, before)  # (step, training seconds) of the previous log row: each row's rate is its window's

    def seconds() -> float:  # training seconds over every start of this run
        return before + time.perf_counter() - t0
    label = f"train {OmegaConf.select(run_cfg, 'norm.name', default='')} seed {seed}".replace("  ", " ")
    bar = progress_bar(total=total, initial=start, desc=label, disable=not cfg.progress)
    with _sigint_flag() as sigint, contextlib.closing(grads), events or contextlib.nullcontext():
        schedule = schedule_of(cfg)
        for step in range(start, total):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, cfg.lr, total, **schedule)
            gen = step_generator(seed, step)
            step_loss = torch.zeros((), device=device)
            for micro in range(accum):
                first = (step * accum + micro) * batch
                step_loss += grads(dataset, order.indices(first, batch), gen, sync=micro == accum - 1)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ema.update(diffusion, step)
            done = step + 1
            window.append(step_loss)
            unchecked.append(step_loss)
            bar.update(1)

            log_now = done % cfg.log_every == 0 or done == total
            save_now = done % cfg.checkpoint_every == 0 or done == total
            # Under DDP every rank must take the same branch: a Ctrl-C is acted on only at a log or
            # checkpoint step, where all ranks agree on it (and on NaN losses) in one all-reduce.
            stop = bool(sigint["stop"]) and info.world_size == 1
            if log_now or save_now or stop:  # these steps synchronize anyway; a NaN stops before saving
                losses, stop = _agree(unchecked, bool(sigint["stop"]), info.world_size)
                _check_finite(losses, done, saved, out, cfg.lr)
                unchecked = []
                save_now = save_now or stop
            if log_now:
                elapsed = seconds()
                rows.append({"step": done, "loss": float(mean_across_ranks(torch.stack(window).mean())),
                             "lr": optimizer.param_groups[0]["lr"], "elapsed_s": round(elapsed, 3),
                             "steps_per_s": round((done - last_log[0]) / max(elapsed - last_log[1], 1e-9), 4)})
                window, last_log = [], (done, elapsed)
                if info.is_main:
                    _write_metrics(metrics_path, rows)
                if events is not None:
                    for key in ("loss", "lr", "steps_per_s"):
                        events.add_scalar(f"train/{key}", rows[-1][key], done)
                    events.flush()
                bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}")
            if save_now:
                path = (save_training_state(out, run_cfg, diffusion.model, ema.average.model, optimizer, done,
                                            train_seconds=seconds())
                        if info.is_main else out / CHECKPOINT)
                saved = done
            if info.is_main and snapshot_every and (done % snapshot_every == 0 or done == total):
                save_snapshot(out, run_cfg, ema.average.model, done, seconds())
            if stop and done < total:
                bar.close()
                stopped = TrainingInterrupted(f"{sigint['stop'] or 'SIGINT'} at step {done} of {total}: checkpoint "
                                              f"written to {path}; continue with train.resume=true "
                                              f"hydra.run.dir={out}")
                stopped.exit_code = 143 if sigint["stop"] == "SIGTERM" else 130  # 128 + the signal
                raise stopped
            if on_sample is not None and info.is_main and ((cfg.sample_every and done % cfg.sample_every == 0) or done == total):
                on_sample(ema.average, done)
    bar.close()
    if start == total and on_sample is not None and info.is_main:
        on_sample(ema.average, total)

    return {"steps": total, "resumed_from": start if cfg.resume else None,
            "final_loss": float(rows[-1]["loss"]) if rows else None,  # mean over the last log interval
            "loss_curve": [(int(r["step"]), float(r["loss"])) for r in rows],
            "train_wall_s": round(time.perf_counter() - t0, 2), "train_seconds_total": round(seconds(), 2)}, ema.average

