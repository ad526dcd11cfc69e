"""Learning-curve job: ``learning_curve(cfg, out)`` scores every snapshot of one or more training runs.

Each snapshot (``train.snapshot_every``) is evaluated with the Diffuser's protocol (``plan_maze``'s
``evaluate_planner``: one plan at t = 0, the published controller, all episodes in one batch), so a
curve shows normalized score and success against optimizer steps and against training seconds.
Evaluations are cached next to the snapshot (``snapshots/eval/``), keyed by everything that decides
them, so a curve extended by a longer training only evaluates the new snapshots.

Time-to-score is the training seconds of the first snapshot whose mean score reaches the Diffuser's
reported mean (Janner et al. 2022, Table 1) for the run's maze and task mode.

Writes results.json (per run: points, time-to-score, final point, optionally the final snapshot's
Multi2D score) and one ``curve_<maze>.png`` per maze; with ``summary=<path>`` it also updates the
machine-readable summary ``{maze: {norm: {...}}}`` (``summary_entry``) with each run's final point.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from diffnorm.envs.maze2d import maze_spec
from diffnorm.experiments.common import (
    atomic_write_bytes,
    json_bytes,
    require,
    resolve_device,
    resolve_path,
    write_results,
)
from diffnorm.planning.rollout import evaluate_planner
from diffnorm.plotting.curves import learning_curves
from diffnorm.training.checkpoint import CONFIG, list_snapshots, load_checkpoint

log = logging.getLogger(__name__)

# What a cached evaluation keeps of plan_maze's metrics (the per-episode records stay out of the curve).
POINT_KEYS = ("score_mean", "score_sem", "success_rate", "success_rate_final", "plan_in_wall_fraction",
              "plan_goal_jump_mean", "episodes", "sampler", "num_steps", "rollout_seconds")


def _evaluate(path: Path, mode: str, episodes: int, seed: int, sampler: str | None, num_steps: int | None,
              device: torch.device) -> dict[str, Any]:
    """One snapshot's point, from the cache beside it when the same evaluation was run before."""
    key = f"{path.stem}_{mode}_n{episodes}_seed{seed}_{sampler or 'default'}x{num_steps or 'all'}.json"
    cache = path.parent / "eval" / key
    if cache.is_file():
        return json.loads(cache.read_text())
    loaded = load_checkpoint(path, device)
    m = evaluate_planner(loaded, episodes=episodes, mode=mode, seed=seed, sampler=sampler,
                         num_steps=num_steps).metrics
    point = {"step": loaded.step, "train_seconds": loaded.train_seconds, "mode": mode, "seed": seed,
             **{k: m[k] for k in POINT_KEYS}}
    atomic_write_bytes(cache, (json.dumps(point, indent=2) + "\n").encode())
    return point


def first_at_or_above(points: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The first point (by step) whose mean score is >= ``target``, or None."""
    return next((p for p in sorted(points, key=lambda p: p["step"]) if p["score_mean"] >= target), None)


def summary_entry(record: dict[str, Any], preset: str) -> dict[str, Any]:
    """A run's final point as the summary records it (keys are a contract read by other tooling)."""
    final, multi = record["final"], record.get("final_multi")
    return {"steps": int(final["step"]), "train_seconds": final["train_seconds"], "episodes": int(final["episodes"]),
            "score_mean": final["score_mean"], "score_sem": final["score_sem"], "success": final["success_rate"],
            "multi_score_mean": multi["score_mean"] if multi else None,
            "time_to_published_s": record["time_to_published_s"], "preset": preset}


def update_summary(path: Path, records: list[dict[str, Any]], preset: str | None) -> Path:
    """Merge the runs' final points into the summary JSON at ``path`` (other mazes and norms are kept)."""
    summary = json.loads(path.read_text()) if path.is_file() else {}
    for r in records:
        summary.setdefault(r["env"], {})[r["norm"]] = summary_entry(r, preset or r["preset"])
    atomic_write_bytes(path, json_bytes(summary, sort_keys=True))
    return path


def learning_curve(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Evaluate every snapshot of ``cfg.runs``; see learning_curve.yaml."""
    start = time.perf_counter()
    runs = [resolve_path(r) for r in cfg.runs]
    require(bool(runs), "runs=[<train_diffuser run dir>, ...] is required (runs trained with train.snapshot_every=N)")
    torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    wanted = None if cfg.steps is None else set(cfg.steps)
    records = []
    for run in runs:
        require((run / CONFIG).is_file(), f"{run} is not a train_diffuser run directory ({CONFIG} is missing)")
        snapshots = [(s, p) for s, p in list_snapshots(run) if wanted is None or s in wanted]
        require(bool(snapshots), f"{run} has no snapshots{'' if wanted is None else f' at steps {sorted(wanted)}'}"
                f"; train it with train.snapshot_every=N")
        run_cfg = OmegaConf.load(run / CONFIG)
        maze, norm = run_cfg.env.name, run_cfg.norm.name
        published = maze_spec(maze).diffuser_score[cfg.mode]
        points = []
        for step, path in snapshots:
            point = _evaluate(path, cfg.mode, cfg.episodes, cfg.seed, cfg.sampler, cfg.num_steps,
                              device)
            points.append(point)
            log.info("%s %s step %d (%.0f s trained): score %.1f ± %.1f, success %.0f%%", maze, norm, step,
                     point["train_seconds"] or float("nan"), point["score_mean"], point["score_sem"],
                     100 * point["success_rate"])
        reached = first_at_or_above(points, published[0])
        record: dict[str, Any] = {
            "run": run, "env": maze, "norm": norm, "label": str(cfg.labels.get(str(run), norm)) if cfg.labels else norm,
            "preset": str(run_cfg.get("preset", "unrecorded")),
            "model": OmegaConf.to_container(run_cfg.model, resolve=True),
            "train": {k: run_cfg.train[k] for k in ("batch_size", "grad_accumulation", "lr", "ema_decay",
                                                    "ema_every", "num_threads", "shards")
                      if k in run_cfg.train},
            "n_diffusion_steps": run_cfg.env.n_diffusion_steps, "dataset_steps": run_cfg.env.dataset_steps,
            "published": {"mode": cfg.mode, "mean": published[0], "sem": published[1]},
            "points": points, "final": points[-1],
            "steps_to_published": reached["step"] if reached else None,
            "time_to_published_s": reached["train_seconds"] if reached else None,
        }
        if cfg.final_multi_episodes > 0:
            record["final_multi"] = _evaluate(snapshots[-1][1], "multi", cfg.final_multi_episodes,
                                              cfg.seed, cfg.sampler, cfg.num_steps, device)
            record["final_multi"]["published"] = list(maze_spec(maze).diffuser_score["multi"])
        records.append(record)
    figures = {}
    for maze in sorted({r["env"] for r in records}):
        figures[maze] = learning_curves(out / f"curve_{maze}.png", [r for r in records if r["env"] == maze],
                                        title=f"{maze}, {cfg.mode}-task, {cfg.episodes} episodes per point")
    if cfg.summary is not None:
        figures["summary"] = update_summary(resolve_path(cfg.summary), records, cfg.preset)
    results = {"mode": cfg.mode, "episodes": cfg.episodes, "seed": cfg.seed, "runs": records,
               "device": str(device), "torch_threads": torch.get_num_threads(), "files": figures,
               "wall_time_s": round(time.perf_counter() - start, 2)}
    write_results(out, results)
    for r in records:
        f = r["final"]
        ttp = f"{r['time_to_published_s']:.0f} s" if r["time_to_published_s"] is not None else "not reached"
        print(f"{r['env']} norm={r['norm']} ({r['label']}): final step {f['step']}: score {f['score_mean']:.1f} ± "
              f"{f['score_sem']:.1f}, success {f['success_rate']:.0%}; time to the published "
              f"{r['published']['mean']}: {ttp}")
    return results
