"""Stitching study (issue 6): ``stitching_study(cfg, out)`` trains one Diffuser per norm x seed on a maze's
stitch dataset and evaluates each on the maze's stitch tasks.

Stitch data holds only short episodes (<= 4 BFS steps) and no episode comes near both ends of a task, so a
plan that reaches the goal must be composed from pieces of several episodes: the temporal compositionality
that a limited receptive field is meant to give and that GroupNorm's leakage might hurt. Seeds are the
unit of replication: each norm's per-seed numbers are compared with the baseline norm's by Welch's test.

Run directory: ``runs/<norm>/seed<k>/`` (a train_diffuser run + ``stitch_eval.json`` + ``stitch_rollouts.npz``),
``plans_<norm>.png``, ``success.png``, ``plan_quality.png`` and ``results.json``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from scipy import stats

from diffnorm.data.d4rl_format import read_attrs
from diffnorm.data.generate import ensure_stitch_dataset, stitch_task_cells, stitch_tasks
from diffnorm.envs.maze2d import make_env, maze_spec, xy_to_cell
from diffnorm.experiments.common import compose_job, require, resolve_device, write_results
from diffnorm.experiments.parallel import map_trials
from diffnorm.models.norms import NORM_LAYERS
from diffnorm.planning.rollout import evaluate_planner
from diffnorm.plotting.planning import episode_grid
from diffnorm.plotting.stitching import norm_bars
from diffnorm.probing.stats import welch_difference
from diffnorm.training.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

# Per-seed numbers compared across norms: (key in each run's metrics, what it measures).
METRICS = (("success_rate", "success rate (goal reached at any step)"),
           ("success_rate_final", "success rate (at the last step)"),
           ("score_mean", "D4RL-normalized score"),
           ("plan_in_wall_fraction", "planned states inside walls"),
           ("plan_connected", "t = 0 plans reaching the goal through neighbouring free cells"),
           ("plan_to_bfs_ratio", "plan cell moves (Manhattan, to the goal cell) / BFS distance"))
_REUSE_MARKER = "study_overrides.json"


def plan_path_stats(maze: str, plan_xy: np.ndarray, goal_cell: tuple[int, int], bfs_distance: int) -> dict[str, Any]:
    """How a plan [H, 2] travels in cells until it first enters the goal cell, against the task's BFS distance.

    Inpainting pins the plan's last state to the goal, so "enters the goal cell" alone says nothing; what
    shows stitching is whether the plan gets there *connected*: every change of nearest cell goes to a
    neighbouring cell (4- or diagonal neighbour) and no visited cell is a wall. Moves are counted as their
    Manhattan length, so a shortest path has ratio 1 and a jump over cells still pays for its length.
    """
    layout = maze_spec(maze).layout
    cells = xy_to_cell(plan_xy)
    at_goal = np.flatnonzero((cells[:, 0] == goal_cell[0]) & (cells[:, 1] == goal_cell[1]))
    upto = cells[: int(at_goal[0]) + 1] if at_goal.size else cells
    steps = np.abs(np.diff(upto, axis=0))
    inside = ((upto[:, 0] >= 0) & (upto[:, 0] < layout.shape[0]) & (upto[:, 1] >= 0) & (upto[:, 1] < layout.shape[1]))
    free = inside & (layout[np.clip(upto[:, 0], 0, layout.shape[0] - 1), np.clip(upto[:, 1], 0, layout.shape[1] - 1)] == 0)
    connected = bool(at_goal.size) and bool(np.all(steps.max(axis=1, initial=0) <= 1)) and bool(free.all())
    moves = int(steps.sum())
    return {"plan_connected": connected, "plan_steps_to_goal_cell": int(at_goal[0]) if at_goal.size else None,
            "plan_cell_moves": moves, "bfs_distance": int(bfs_distance), "plan_to_bfs_ratio": moves / bfs_distance}


def _mean_or_none(values: list[Any]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def evaluate_on_tasks(run: Path, maze: str, episodes_per_task: int, seed: int, max_steps: int | None,
                      replan_every: int | None, device: str = "cpu") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Plan every stitch task of ``maze`` ``episodes_per_task`` times with the run's EMA model.

    Returns (metrics, arrays for figures). The D4RL-normalized score is reported only at the env's own
    episode length: its reference returns were measured over that many steps.
    """
    loaded = load_checkpoint(run, resolve_device(device))
    cells = stitch_task_cells(maze)
    tasks = stitch_tasks(maze)
    starts = np.repeat(np.stack([s for s, _ in tasks]), episodes_per_task, axis=0)
    goals = np.repeat(np.stack([g for _, g in tasks]), episodes_per_task, axis=0)
    evaluation = evaluate_planner(loaded, episodes=len(starts), mode="single", seed=seed, starts=starts,
                                  goals=goals, max_steps=max_steps, replan_every=replan_every)
    m, r = evaluation.metrics, evaluation.rollouts
    env = make_env(maze)
    full_length = m["steps"] == int(env.spec.max_episode_steps)
    env.close()
    per_episode = []
    for k, episode in enumerate(m["per_episode"]):
        task = k // episodes_per_task
        path = plan_path_stats(maze, r.plans[0][k, :, :2], cells[task][1], cells[task][2])
        per_episode.append({"task": task, "success": episode["success"], "success_final": episode["success_final"],
                            "score": episode["score"] if full_length else None,
                            "first_step_in_goal": episode["first_step_in_goal"],
                            "plan_in_wall_fraction": episode["plan_in_wall_fraction"], **path})
    per_task = []
    for task, (start_cell, goal_cell, dist) in enumerate(cells):
        rows = [e for e in per_episode if e["task"] == task]
        per_task.append({"start_cell": list(start_cell), "goal_cell": list(goal_cell), "bfs_distance": dist,
                         "episodes": len(rows), "success_rate": float(np.mean([e["success"] for e in rows])),
                         "plan_in_wall_fraction": float(np.mean([e["plan_in_wall_fraction"] for e in rows])),
                         "plan_connected": float(np.mean([e["plan_connected"] for e in rows])),
                         "plan_cell_moves_mean": float(np.mean([e["plan_cell_moves"] for e in rows])),
                         "plan_to_bfs_ratio": float(np.mean([e["plan_to_bfs_ratio"] for e in rows])),
                         "rollout_steps_to_goal": _mean_or_none([e["first_step_in_goal"] for e in rows])})
    metrics = {
        "checkpoint_step": loaded.step, "episodes": m["episodes"], "steps": m["steps"],
        "score_applies": full_length, "success_rate": m["success_rate"], "success_rate_final": m["success_rate_final"],
        "score_mean": m["score_mean"] if full_length else None, "score_sem": m["score_sem"] if full_length else None,
        "plan_in_wall_fraction": m["plan_in_wall_fraction"], "plans_touching_walls": m["plans_touching_walls"],
        "plan_connected": float(np.mean([e["plan_connected"] for e in per_episode])),
        "plan_cell_moves_mean": float(np.mean([e["plan_cell_moves"] for e in per_episode])),
        "plan_to_bfs_ratio": float(np.mean([e["plan_to_bfs_ratio"] for e in per_episode])),
        "plan_goal_jump_mean": m["plan_goal_jump_mean"], "rollout_seconds": m["rollout_seconds"],
        "per_task": per_task, "per_episode": per_episode,
    }
    arrays = {"plans_xy": r.plans[0][..., :2].astype(np.float32), "states_xy": r.states[..., :2].astype(np.float32),
              "goals": r.goals, "success": np.array([e["success"] for e in per_episode])}
    return metrics, arrays


def run_trial(overrides: list[str], run: str, maze: str, episodes_per_task: int, eval_seed: int,
              max_steps: int | None, replan_every: int | None, device: str) -> dict[str, Any]:
    """Train (or reuse) one planner and evaluate it on the stitch tasks; top-level for worker processes.

    A run is reused when it finished (results.json and weights present) with the same overrides."""
    from diffnorm.experiments.diffuser import train_diffuser

    out = Path(run)
    marker = out / _REUSE_MARKER
    finished = (out / "results.json").is_file() and (out / "ema.safetensors").is_file()
    reused = finished and marker.is_file() and json.loads(marker.read_text()) == overrides
    if reused:
        training = json.loads((out / "results.json").read_text())
    else:
        out.mkdir(parents=True, exist_ok=True)
        marker.unlink(missing_ok=True)
        training = train_diffuser(compose_job("train_diffuser", overrides), out)
        marker.write_text(json.dumps(overrides))
    metrics, arrays = evaluate_on_tasks(out, maze, episodes_per_task, eval_seed, max_steps, replan_every, device)
    np.savez_compressed(out / "stitch_rollouts.npz", **arrays)
    (out / "stitch_eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return {"training": {"reused": reused, **{k: training.get(k) for k in ("final_loss", "steps", "wall_time_s",
                                                                         "parameters", "n_windows")}},
            **metrics}


def _validate(cfg: DictConfig) -> tuple[list[str], list[int]]:
    norms = [str(n) for n in cfg.norms]
    seeds = list(cfg.seeds)
    unknown = [n for n in norms if n not in NORM_LAYERS]
    require(not unknown, f"unknown norm(s) {unknown} in norms={norms}; choose from {sorted(NORM_LAYERS)}")
    require(len(norms) >= 2 and len(set(norms)) == len(norms), f"norms={norms} needs at least two distinct norms")
    require(str(cfg.baseline) in norms, f"baseline={cfg.baseline} must be one of norms={norms}")
    require(all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) and len(set(seeds)) == len(seeds),
            f"seeds={seeds} must be distinct integers")
    require(len(seeds) >= 2, f"seeds={seeds}: the comparison across seeds needs at least two seeds")
    require(int(cfg.episodes_per_task) >= 1, f"episodes_per_task={cfg.episodes_per_task} must be positive")
    require(int(cfg.workers) >= 1, f"workers={cfg.workers} must be positive")
    return norms, [int(s) for s in seeds]


def _seed_interval(values: list[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean over seeds with a Student-t interval (the per-norm error bar); None when too few values."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "seeds": 0}
    mean = float(x.mean())
    if len(x) < 2 or x.std() == 0:
        return {"mean": mean, "ci_low": mean, "ci_high": mean, "seeds": len(x)}
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "seeds": len(x)}


def summarize(runs: dict[str, dict[int, dict[str, Any]]], baseline: str) -> tuple[dict, dict]:
    """(per norm and metric: seed values, mean and 95% t-interval; per non-baseline norm and metric: the
    Welch difference from the baseline across seeds). Metrics that are None for a seed leave it out."""
    summary = {n: {key: {"per_seed": [by_seed[s][key] for s in by_seed],
                         **_seed_interval([by_seed[s][key] for s in by_seed if by_seed[s][key] is not None])}
                   for key, _ in METRICS} for n, by_seed in runs.items()}
    comparisons: dict[str, dict[str, Any]] = {}
    for n in runs:
        if n == baseline:
            continue
        comparisons[n] = {}
        for key, _ in METRICS:
            a = [v for v in summary[n][key]["per_seed"] if v is not None]
            b = [v for v in summary[baseline][key]["per_seed"] if v is not None]
            comparisons[n][key] = (welch_difference(a, b) if len(a) >= 2 and len(b) >= 2 else
                                   {"difference": None, "ci_low": None, "ci_high": None, "p_value": None,
                                    "note": "fewer than two seeds with a value on one side"})
    return summary, comparisons


def _figures(out: Path, maze: str, norms: list[str], seed: int, runs_dir: Path, summary: dict, baseline: str,
             plot_tasks: int, episodes_per_task: int) -> dict[str, Path]:
    files: dict[str, Path] = {}
    tasks = stitch_task_cells(maze)
    picks = [t * episodes_per_task for t in range(min(plot_tasks, len(tasks)))]
    for n in norms:
        arrays = np.load(runs_dir / n / f"seed{seed}" / "stitch_rollouts.npz")
        labels = [f"task {k // episodes_per_task}: {tasks[k // episodes_per_task][0]}->"
                  f"{tasks[k // episodes_per_task][1]} (BFS {tasks[k // episodes_per_task][2]}), "
                  f"{'reached' if arrays['success'][k] else 'missed'}" for k in picks]
        files[f"plans_{n}_png"] = episode_grid(
            out / f"plans_{n}.png", maze, arrays["plans_xy"][picks], arrays["states_xy"][picks], arrays["goals"][picks],
            labels, title=f"{maze} stitch tasks, norm={n}, seed {seed}: t = 0 plan and rollout",
            max_panels=len(picks), columns=min(len(picks), 3))
    files["success_png"] = norm_bars(out / "success.png", summary, [("success_rate", "success rate")], baseline,
                                     title=f"{maze} stitch tasks: success per norm (mean over seeds, 95% CI)")
    files["plan_quality_png"] = norm_bars(
        out / "plan_quality.png", summary,
        [("plan_in_wall_fraction", "planned states in walls"), ("plan_connected", "plans connected to the goal"),
         ("plan_to_bfs_ratio", "plan cell moves / BFS")], baseline,
        title=f"{maze} stitch tasks: plan quality per norm (mean over seeds, 95% CI)")
    return files


def stitching_study(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Stitch data -> norm x seed trainings (side by side) -> stitch-task rollouts -> comparison; see
    configs/stitching_study.yaml."""
    from hydra.utils import to_absolute_path

    start = time.perf_counter()
    norms, seeds = _validate(cfg)
    out.mkdir(parents=True, exist_ok=True)
    env_override = [f"env={cfg.env}"]
    train_overrides = [str(o) for o in cfg.train_overrides]
    probe = compose_job("train_diffuser", env_override + train_overrides + [f"norm={norms[0]}"])
    maze, horizon = str(probe.env.name), int(probe.env.horizon)
    episode_steps = horizon if cfg.stitch.episode_steps is None else int(cfg.stitch.episode_steps)
    require(episode_steps >= horizon, f"stitch.episode_steps={episode_steps} is shorter than the training horizon "
            f"{horizon}: no episode would give a training window")

    tic = time.perf_counter()
    data_path = ensure_stitch_dataset(maze, episode_steps, int(cfg.stitch.episodes), seed=int(cfg.stitch.seed),
                                      data_dir=to_absolute_path(str(cfg.data_dir)), progress=False).resolve()
    attrs = read_attrs(data_path)
    check = json.loads(attrs["stitch_check_json"])
    timings = {"data": round(time.perf_counter() - tic, 1)}
    log.info("stitch dataset %s (check passed: %s)", data_path, attrs["stitch_check_passed"])

    runs_dir = out / "runs"
    grid = [(n, s) for n in norms for s in seeds]
    max_steps = None if cfg.max_steps is None else int(cfg.max_steps)
    replan = None if cfg.replan_every is None else int(cfg.replan_every)
    jobs = [{"overrides": env_override + train_overrides + [f"norm={n}", f"seed={s}", f"dataset={data_path}"],
             "run": str(runs_dir / n / f"seed{s}"), "maze": maze, "episodes_per_task": int(cfg.episodes_per_task),
             "eval_seed": int(cfg.eval_seed), "max_steps": max_steps, "replan_every": replan,
             "device": str(cfg.device)} for n, s in grid]
    tic = time.perf_counter()
    trials = map_trials(run_trial, jobs, int(cfg.workers), "train + evaluate")
    timings["train_and_evaluate"] = round(time.perf_counter() - tic, 1)
    runs: dict[str, dict[int, dict[str, Any]]] = {n: {} for n in norms}
    for (n, s), trial in zip(grid, trials):
        runs[n][s] = trial

    baseline = str(cfg.baseline)
    summary, comparisons = summarize(runs, baseline)
    figures = _figures(out, maze, norms, seeds[0], runs_dir, summary, baseline, int(cfg.plot_tasks),
                       int(cfg.episodes_per_task))
    timings["total"] = round(time.perf_counter() - start, 1)
    results = {
        "settings": OmegaConf.to_container(cfg, resolve=True), "env": maze, "horizon": horizon,
        "norms": norms, "seeds": seeds, "baseline": baseline, "torch_threads": torch.get_num_threads(),
        "metric_definitions": dict(METRICS),
        "dataset": {"path": data_path, "episodes": int(attrs["episodes"]), "episode_steps": int(attrs["episode_steps"]),
                    "travel_cells": int(attrs["travel_cells"]), "stitch_check_passed": bool(attrs["stitch_check_passed"]),
                    "tasks": [{k: t[k] for k in ("start_cell", "goal_cell", "bfs_distance", "violations",
                                                 "closest_approach_cells")} for t in check["tasks"]]},
        "runs": {n: {str(s): {k: v for k, v in r.items() if k != "per_episode"} for s, r in by.items()}
                 for n, by in runs.items()},
        "summary": summary,
        "comparison_vs_baseline": comparisons,
        "figures": figures,
        "wall_time_s": timings,
    }
    write_results(out, results)
    for n in norms:
        sr = summary[n]["success_rate"]
        line = f"{maze} stitch, norm={n}: success {sr['mean']:.0%} [95% CI {sr['ci_low']:.0%}, {sr['ci_high']:.0%}] over {len(seeds)} seeds"
        if n in comparisons:
            d = comparisons[n]["success_rate"]
            line += f"; vs {baseline}: {d['difference']:+.0%} [Welch {d['ci_low']:+.0%}, {d['ci_high']:+.0%}]"
        print(line)
    return results
