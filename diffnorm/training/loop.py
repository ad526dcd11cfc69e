"""The Diffuser training loop: Adam on the x0 L2 loss, gradient accumulation, EMA, checkpoints, resume.

Reproducibility is by construction rather than by saved RNG streams: the data order is a per-epoch
permutation seeded by (seed, epoch) and the diffusion steps and noise of optimizer step k come from a
generator seeded by (seed, k). A run resumed from the checkpoint at step k therefore sees exactly the
batches and noise the uninterrupted run saw, and on CPU ends with bit-identical weights.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from tqdm.auto import tqdm

from diffnorm.diffusion.gaussian import GaussianDiffusion
from diffnorm.experiments.common import require
from diffnorm.training.checkpoint import CHECKPOINT, load_training_state, save_training_state
from diffnorm.training.ema import EMA

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


def collate(items: Sequence[dict[str, Any]], device: torch.device
            ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Dataset items {"trajectory": [H, D], "conditions": {t: [obs_dim]}} -> x0 [B, H, D], {t: [B, obs_dim]}."""
    x0 = torch.stack([torch.as_tensor(it["trajectory"], dtype=torch.float32) for it in items]).to(device)
    conditions = {int(t): torch.stack([torch.as_tensor(it["conditions"][t], dtype=torch.float32) for it in items])
                  .to(device) for t in items[0]["conditions"]}
    return x0, conditions


def _read_metrics(path: Path, upto: int) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["step"]) <= upto]


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _precision_and_compile(cfg: DictConfig, device: torch.device, model: nn.Module
                           ) -> tuple[contextlib.AbstractContextManager, nn.Module]:
    """bf16 autocast and torch.compile are GPU options; on CPU they are switched off with a log line."""
    autocast: contextlib.AbstractContextManager = contextlib.nullcontext()
    denoiser = model
    if cfg.bf16:
        if device.type == "cuda":
            autocast = torch.autocast("cuda", dtype=torch.bfloat16)
        else:
            log.warning("train.bf16=true ignored: bf16 autocast is only used on CUDA (device is %s)", device)
    if cfg.compile:
        if device.type == "cuda":
            denoiser = torch.compile(model)
        else:
            log.warning("train.compile=true ignored: torch.compile is only used on CUDA (device is %s)", device)
    return autocast, denoiser


def check_train_settings(cfg: DictConfig) -> None:
    for key in ("steps", "batch_size", "grad_accumulation", "ema_every", "checkpoint_every", "log_every"):
        require(int(cfg[key]) >= 1, f"train.{key}={cfg[key]} must be positive")
    require(float(cfg.lr) > 0, f"train.lr={cfg.lr} must be positive")
    require(int(cfg.sample_every) >= 0, f"train.sample_every={cfg.sample_every} must be >= 0 (0 = never)")


def train_diffusion(diffusion: GaussianDiffusion, dataset: Sequence[dict[str, Any]], cfg: DictConfig,
                    seed: int, out: Path, device: torch.device, run_cfg: DictConfig,
                    on_sample: Callable[[GaussianDiffusion, int], None] | None = None
                    ) -> tuple[dict[str, Any], GaussianDiffusion]:
    """Train ``diffusion`` on ``dataset`` with the settings ``cfg`` (= run_cfg.train).

    Returns a JSON-able summary and the EMA model (eval mode), the one to plan with.
    With ``cfg.resume`` the state at ``out/checkpoint.safetensors`` is restored first. ``on_sample`` is
    called with the EMA model (eval mode) every ``cfg.sample_every`` steps and at the end.
    """
    check_train_settings(cfg)
    total, accum, batch = int(cfg.steps), int(cfg.grad_accumulation), int(cfg.batch_size)
    diffusion.to(device).train()
    optimizer = torch.optim.Adam(diffusion.parameters(), lr=float(cfg.lr))
    ema = EMA(diffusion, decay=float(cfg.ema_decay), every=int(cfg.ema_every), start=int(cfg.ema_start))
    start = 0
    if not cfg.resume and (out / CHECKPOINT).exists():
        log.warning("train.resume=false: starting afresh and overwriting %s", out / CHECKPOINT)
    if cfg.resume:
        start = load_training_state(out, run_cfg, diffusion.model, ema.average.model, optimizer)
        require(start <= total, f"the checkpoint in {out} is at step {start}, beyond train.steps={total}")
        log.info("resumed from %s at step %d", out / CHECKPOINT, start)
    metrics_path = out / METRICS
    rows: list[dict[str, Any]] = _read_metrics(metrics_path, start) if cfg.resume else []
    _write_metrics(metrics_path, rows)  # drops rows logged after the checkpoint a resumed run restarts from
    autocast, denoiser = _precision_and_compile(cfg, device, diffusion.model)
    order = EpochOrder(len(dataset), seed)
    window: list[torch.Tensor] = []  # per-step losses, left on the device until logged (no sync per step)
    t0, started = time.perf_counter(), start
    bar = tqdm(total=total, initial=start, desc="train", disable=not cfg.progress, dynamic_ncols=True)

    for step in range(start, total):
        gen = step_generator(seed, step)
        step_loss = torch.zeros((), device=device)
        for micro in range(accum):
            first = (step * accum + micro) * batch
            x0, conditions = collate([dataset[i] for i in order.indices(first, batch)], device)
            with autocast:
                loss = diffusion.loss(x0, conditions, generator=gen, denoiser=denoiser) / accum
            loss.backward()
            step_loss += loss.detach()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(diffusion, step)
        done = step + 1
        window.append(step_loss)
        bar.update(1)

        if done % int(cfg.log_every) == 0 or done == total:
            elapsed = time.perf_counter() - t0
            rows.append({"step": done, "loss": float(torch.stack(window).mean()), "lr": optimizer.param_groups[0]["lr"],
                         "elapsed_s": round(elapsed, 3), "steps_per_s": round((done - started) / elapsed, 4)})
            window = []
            _write_metrics(metrics_path, rows)
            bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}")
        if done % int(cfg.checkpoint_every) == 0 or done == total:
            save_training_state(out, run_cfg, diffusion.model, ema.average.model, optimizer, done)
        if on_sample is not None and ((cfg.sample_every and done % int(cfg.sample_every) == 0) or done == total):
            on_sample(ema.average, done)
    bar.close()
    if start == total and on_sample is not None:
        on_sample(ema.average, total)

    return {"steps": total, "resumed_from": start if cfg.resume else None,
            "final_loss": float(rows[-1]["loss"]) if rows else None,  # mean over the last log interval
            "loss_curve": [(int(r["step"]), float(r["loss"])) for r in rows],
            "train_wall_s": round(time.perf_counter() - t0, 2)}, ema.average

