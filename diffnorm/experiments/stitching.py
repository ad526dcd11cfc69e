"""Stitching study: ``stitching_study(cfg, out)`` trains one Diffuser per norm x seed on a maze's
stitch dataset and evaluates each on the maze's stitch tasks.

With an OGBench env (``env=ogbench_pointmaze_medium``: an env config with an ``ogbench`` block) the data
is OGBench's pointmaze stitch recipe in its own env, and the tasks and the success check are OGBench's
(``evaluate_on_ogbench_tasks``: its 5 fixed tasks, ``info["success"]``, plans followed by the kinematic
``PlanFollower``); everything else (per-seed metrics, Welch comparison, figures) is shared.

Stitch data holds only short episodes (<= 4 BFS steps) and no episode comes near both ends of a task, so a
plan that reaches the goal must be composed from pieces of several episodes: the temporal compositionality
that a limited receptive field is meant to give and that GroupNorm's leakage might hurt. Seeds are the
unit of replication: each norm's per-seed numbers are compared with the baseline norm's by Welch's test.

Run directory: ``runs/<norm>/seed<k>/`` (a train_diffuser run + ``stitch_eval.json`` + ``stitch_rollouts.npz``),
``plans_<norm>.png``, ``success.png``, ``success_per_task.png``, ``plan_quality.png`` and ``results.json``.
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

from diffnorm.analysis.influence import sees_both_ends
from diffnorm.analysis.receptive_field import receptive_field
from diffnorm.data.d4rl_format import read_attrs
from diffnorm.data.generate import ensure_stitch_dataset, stitch_task_cells, stitch_tasks
from diffnorm.data.ogbench_stitch import ensure_ogbench_stitch_dataset
from diffnorm.envs.maze2d import in_wall, make_env, maze_spec, xy_to_cell
from diffnorm.envs.ogbench_maze import evaluate_ogbench, ogbench_maze_of, oracle_policy
from diffnorm.experiments.common import compose_job, require, resolve_device, resolve_path, write_results
from diffnorm.experiments.diffuser import env_option_of, train_or_reuse
from diffnorm.experiments.parallel import map_trials
from diffnorm.models.norms import NORM_LAYERS
from diffnorm.planning.kinematic import PlanFollower, evaluate_ogbench_planner, plans_in_wall_fraction
from diffnorm.planning.planner import GoalOnlyPlanner
from diffnorm.planning.rollout import Protocol, evaluate_planner
from diffnorm.plotting.planning import episode_grid
from diffnorm.plotting.stitching import norm_bars, task_bars
from diffnorm.probing.stats import welch_difference
from diffnorm.training.build import build_model
from diffnorm.training.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

# Per-seed numbers compared across norms: (key in each run's metrics, what it measures).
METRICS = (("success_rate", "success rate (goal reached at any step)"),
           ("success_rate_final", "success rate (at the last step)"),
           ("score_mean", "D4RL-normalized score"),
           ("plan_in_wall_fraction", "planned states inside walls"),
           ("plan_connected", "t = 0 plans reaching the goal through neighbouring free cells"),
           ("plan_to_bfs_ratio", "plan cell moves (Manhattan, to the goal cell) / BFS distance"),
           ("plans_per_episode", "plans made per episode (1: the t = 0 plan only; more: replanned)"))


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


def _path_means(rows: list[dict[str, Any]]) -> dict[str, float]:
    """``plan_path_stats`` averaged over episodes (a task's, or a run's)."""
    return {"plan_connected": float(np.mean([e["plan_connected"] for e in rows])),
            "plan_cell_moves_mean": float(np.mean([e["plan_cell_moves"] for e in rows])),
            "plan_to_bfs_ratio": float(np.mean([e["plan_to_bfs_ratio"] for e in rows]))}


def _plan_path_means(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A task's plan measures averaged over its episodes (the same for our mazes and OGBench's)."""
    return {"plan_in_wall_fraction": float(np.mean([e["plan_in_wall_fraction"] for e in rows])),
            **_path_means(rows),
            "rollout_steps_to_goal": _mean_or_none([e["first_step_in_goal"] for e in rows])}


def evaluate_on_tasks(run: Path, maze: str, episodes_per_task: int, seed: int, max_steps: int | None,
                      protocol: Protocol, device: str = "cpu") -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Plan every stitch task of ``maze`` ``episodes_per_task`` times with the run's EMA model, planning as
    ``protocol`` says.

    Returns (metrics, arrays for figures). The D4RL-normalized score is reported only at the env's own
    episode length: its reference returns were measured over that many steps.
    """
    loaded = load_checkpoint(run, resolve_device(device))
    cells = stitch_task_cells(maze)
    tasks = stitch_tasks(maze)
    starts = np.repeat(np.stack([s for s, _ in tasks]), episodes_per_task, axis=0)
    goals = np.repeat(np.stack([g for _, g in tasks]), episodes_per_task, axis=0)
    evaluation = evaluate_planner(loaded, episodes=len(starts), mode="single", seed=seed, starts=starts,
                                  goals=goals, max_steps=max_steps, replan_every=protocol.replan_every,
                                  replan_off_plan=protocol.replan_off_plan)
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
                         **_plan_path_means(rows)})
    metrics = {
        "checkpoint_step": loaded.step, "episodes": m["episodes"], "steps": m["steps"],
        "score_applies": full_length, "success_rate": m["success_rate"], "success_rate_final": m["success_rate_final"],
        "score_mean": m["score_mean"] if full_length else None, "score_sem": m["score_sem"] if full_length else None,
        "protocol": protocol.name, "plans_per_episode": m["plans_per_episode"],
        "plan_in_wall_fraction": m["plan_in_wall_fraction"], "plans_touching_walls": m["plans_touching_walls"],
        **_path_means(per_episode),
        "plan_goal_jump_mean": m["plan_goal_jump_mean"], "rollout_seconds": m["rollout_seconds"],
        "per_task": per_task, "per_episode": per_episode,
    }
    # Every round's new plans (NaN for the episodes that kept theirs), for the figures' grey later plans.
    replans = np.where(np.stack(r.replanned)[..., None, None], np.stack(r.plans)[..., :2], np.nan)
    arrays = {"plans_xy": r.plans[0][..., :2].astype(np.float32), "replans_xy": replans.astype(np.float32),
              "states_xy": r.states[..., :2].astype(np.float32),
              "goals": r.goals, "success": np.array([e["success"] for e in per_episode])}
    return metrics, arrays


def evaluate_on_ogbench_tasks(run: Path, maze: str, episodes_per_task: int, seed: int, max_steps: int | None,
                              protocol: Protocol, device: str = "cpu"
                              ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Run OGBench's fixed tasks of ``maze`` ``episodes_per_task`` times each with the run's EMA model,
    scored by OGBench's own ``info["success"]``; (metrics, arrays) shaped as ``evaluate_on_tasks``'s.

    An episode ends at the goal, so success at any step and at the last step coincide and only
    ``success_rate`` is reported; OGBench has no D4RL score. The plan measures use the t = 0 plan."""
    require(protocol.replan_off_plan is None, f"protocol {protocol.name}: OGBench's kinematic follower replans "
            "only every k steps (open_loop or replan_<k>)")
    replan_every = protocol.replan_every
    loaded = load_checkpoint(run, resolve_device(device))
    tic = time.perf_counter()
    ev = evaluate_ogbench_planner(loaded, maze, episodes_per_task=episodes_per_task, seed=seed,
                                  replan_every=replan_every, max_steps=max_steps)
    seconds = time.perf_counter() - tic
    res = ev.result
    steps = np.array([n for t in res["tasks"] for n in t["steps"]])
    success = np.array([v for t in res["tasks"] for v in t["successes"]])
    walls = plans_in_wall_fraction(maze, ev.plans, ev.plan_steps, steps)
    first = ev.plans[0]
    step_len = np.linalg.norm(np.diff(first, axis=1), axis=-1)
    per_episode = []
    for k in range(len(steps)):
        task = k // episodes_per_task
        row = res["tasks"][task]
        path = plan_path_stats(maze, first[k], tuple(row["goal_cell"]), row["bfs_distance"])
        per_episode.append({"task": task, "task_id": row["task_id"], "success": bool(success[k]), "steps": int(steps[k]),
                            "first_step_in_goal": int(steps[k]) if success[k] else None,
                            "plan_in_wall_fraction": float(walls[k]), **path})
    per_task = []
    for task, row in enumerate(res["tasks"]):
        rows = [e for e in per_episode if e["task"] == task]
        per_task.append({"task_id": row["task_id"], "task_name": row["task_name"], "start_cell": row["start_cell"],
                         "goal_cell": row["goal_cell"], "bfs_distance": row["bfs_distance"], "episodes": len(rows),
                         "success_rate": row["success_rate"],
                         **_plan_path_means(rows)})
    metrics = {
        "checkpoint_step": loaded.step, "benchmark": res["env"], "episodes": len(steps), "steps": int(steps.max()),
        "protocol": protocol.name, "replan_every": replan_every, "score_applies": False, "success_rate": res["success_rate"],
        "success_rate_final": None, "score_mean": None, "score_sem": None,
        "plan_in_wall_fraction": float(walls.mean()),
        "plans_touching_walls": float(in_wall(maze, first).any(axis=-1).mean()),
        **_path_means(per_episode),
        "plan_goal_jump_mean": float(step_len[:, -1].mean()), "plan_step_median": float(np.median(step_len)),
        "plan_rounds": len(ev.plans), "planning_seconds": round(ev.planning_seconds, 3),
        "rollout_seconds": round(seconds, 3), "per_task": per_task, "per_episode": per_episode,
    }
    # Paths end at different steps (at the goal): pad each with its last position; plans made after an
    # episode ended are NaN, so figures draw only the plans it followed.
    length = max(len(p) for p in res["paths"])
    states = np.stack([np.concatenate([p, np.repeat(p[-1:], length - len(p), axis=0)]) for p in res["paths"]])
    replans = np.stack(ev.plans).astype(np.float32)
    for r, t in enumerate(ev.plan_steps):
        replans[r, steps <= t] = np.nan
    arrays = {"plans_xy": first.astype(np.float32), "replans_xy": replans, "states_xy": states.astype(np.float32),
              "goals": np.asarray(res["goals"]), "success": success}
    return metrics, arrays


def _evaluate_cached(out: Path, suffix: str, settings: dict[str, Any], trained_reused: bool, maze: str,
                     device: str) -> tuple[dict[str, Any], bool]:
    """One protocol's evaluation of the run in ``out`` (files ``stitch_eval{suffix}.json``,
    ``stitch_rollouts{suffix}.npz``), reused when the training was and its settings match: a rerun for
    figures or a new protocol costs seconds, not the minutes of planning rollouts."""
    marker = out / f"stitch_eval_settings{suffix}.json"
    eval_file, arrays_file = out / f"stitch_eval{suffix}.json", out / f"stitch_rollouts{suffix}.npz"
    reused = bool(trained_reused and marker.is_file() and json.loads(marker.read_text()) == settings
                  and eval_file.is_file() and arrays_file.is_file())
    if reused:
        return json.loads(eval_file.read_text()), True
    marker.unlink(missing_ok=True)
    evaluate = evaluate_on_ogbench_tasks if settings["benchmark"] == "ogbench" else evaluate_on_tasks
    metrics, arrays = evaluate(out, maze, settings["episodes_per_task"], settings["eval_seed"], settings["max_steps"],
                               Protocol.parse(settings["protocol"]), device)
    np.savez_compressed(arrays_file, **arrays)
    eval_file.write_text(json.dumps(metrics, indent=2) + "\n")
    marker.write_text(json.dumps(settings))
    return metrics, False


def run_trial(overrides: list[str], run: str, maze: str, episodes_per_task: int, eval_seed: int,
              max_steps: int | None, protocol: str, device: str, benchmark: str = "maze2d",
              extra_protocols: tuple[str, ...] = ()) -> dict[str, Any]:
    """Train (or reuse) one planner and evaluate it on the stitch tasks (``benchmark``: maze2d = ours,
    ogbench = OGBench's) with the study's ``protocol`` and each of ``extra_protocols`` (``Protocol`` names);
    top-level for worker processes.

    A run is reused when it finished (results.json and weights present) with the same overrides, and each
    evaluation when it was made with the same settings. Returns the main protocol's metrics with the
    others under ``extra_protocols`` (by name)."""

    out = Path(run)
    training, reused = train_or_reuse(overrides, out)

    def settings(name: str) -> dict[str, Any]:
        return {"benchmark": benchmark, "episodes_per_task": episodes_per_task, "eval_seed": eval_seed,
                "max_steps": max_steps, "protocol": name}

    metrics, eval_reused = _evaluate_cached(out, "", settings(protocol), reused, maze, device)
    extra = {}
    for name in extra_protocols:
        extra[name], _ = _evaluate_cached(out, f"_{name}", settings(name), reused, maze, device)
    kept = ("final_loss", "steps", "wall_time_s", "parameters", "n_windows")
    return {"evaluation_reused": eval_reused, "training": {"reused": reused, **{k: training.get(k) for k in kept}},
            **metrics, "extra_protocols": extra}


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


# Metrics that are fractions: their intervals are kept inside [0, 1].
RATES = {"success_rate", "success_rate_final", "plan_in_wall_fraction", "plan_connected"}


def _seed_interval(values: list[float], confidence: float = 0.95, rate: bool = False) -> dict[str, Any]:
    """Mean over seeds with a Student-t interval (the per-norm error bar); None when too few values. For a
    ``rate`` the interval is clipped to [0, 1], the only values a fraction can take."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "seeds": 0}
    mean = float(x.mean())
    if len(x) < 2 or x.std() == 0:
        return {"mean": mean, "ci_low": mean, "ci_high": mean, "seeds": len(x)}
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    low, high = mean - half, mean + half
    if rate:
        low, high = max(low, 0.0), min(high, 1.0)
    return {"mean": mean, "ci_low": low, "ci_high": high, "seeds": len(x)}


def summarize_tasks(runs: dict[str, dict[int, dict[str, Any]]], baseline: str) -> list[dict[str, Any]]:
    """Per task (rows of each run's ``per_task``, same order for every run): its cells and BFS distance,
    per norm the success rate's seed values, mean and 95% t-interval, and per non-baseline norm the Welch
    difference from the baseline across seeds."""
    first = next(iter(next(iter(runs.values())).values()))["per_task"]
    rows = []
    for k, task in enumerate(first):
        row = {"task_index": k, **{key: task[key] for key in ("task_id", "task_name", "start_cell", "goal_cell",
                                                              "bfs_distance") if key in task}}
        row["success_rate"] = {n: {"per_seed": [by[s]["per_task"][k]["success_rate"] for s in by],
                                   **_seed_interval([by[s]["per_task"][k]["success_rate"] for s in by], rate=True)}
                               for n, by in runs.items()}
        row["comparison_vs_baseline"] = {
            n: welch_difference(row["success_rate"][n]["per_seed"], row["success_rate"][baseline]["per_seed"])
            for n in runs if n != baseline}
        rows.append(row)
    return rows


def summarize(runs: dict[str, dict[int, dict[str, Any]]], baseline: str) -> tuple[dict, dict]:
    """(per norm and metric: seed values, mean and 95% t-interval; per non-baseline norm and metric: the
    Welch difference from the baseline across seeds). Metrics that are None for a seed leave it out."""
    summary = {n: {key: {"per_seed": [by_seed[s][key] for s in by_seed],
                         **_seed_interval([by_seed[s][key] for s in by_seed if by_seed[s][key] is not None],
                                          rate=key in RATES)}
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


def _task_label(task: dict[str, Any]) -> str:
    name = f"task {task['task_id'] if 'task_id' in task else task['task_index']}"
    return f"{name}: {tuple(task['start_cell'])}->{tuple(task['goal_cell'])} (BFS {task['bfs_distance']})"


def _figures(out: Path, title: str, maze: str, norms: list[str], seed: int, runs_dir: Path, summary: dict,
             task_summary: list[dict[str, Any]], baseline: str, plot_tasks: int, episodes_per_task: int,
             references: dict[str, Any] | None = None) -> dict[str, Path]:
    files: dict[str, Path] = {}
    picks = [t * episodes_per_task for t in range(min(plot_tasks, len(task_summary)))]
    for n in norms:
        arrays = np.load(runs_dir / n / f"seed{seed}" / "stitch_rollouts.npz")
        labels = [f"{_task_label(task_summary[k // episodes_per_task])}, "
                  f"{'reached' if arrays['success'][k] else 'missed'}" for k in picks]
        replans = arrays["replans_xy"][1:, picks] if "replans_xy" in arrays.files else None
        files[f"plans_{n}_png"] = episode_grid(
            out / f"plans_{n}.png", maze, arrays["plans_xy"][picks], arrays["states_xy"][picks], arrays["goals"][picks],
            labels, replans_xy=replans, title=f"{title}, norm={n}, seed {seed}: t = 0 plan"
            f"{', later plans (grey)' if replans is not None else ''} and rollout",
            max_panels=len(picks), columns=min(len(picks), 3))
    scored = any(row["score_mean"]["mean"] is not None for row in summary.values())
    files["success_png"] = norm_bars(out / "success.png", summary, [("success_rate", "success rate")]
                                     + ([("score_mean", "D4RL-normalized score")] if scored else []), baseline,
                                     title=f"{title}: success per norm (mean over seeds, 95% CI)")
    files["success_per_task_png"] = task_bars(
        out / "success_per_task.png", [_task_label(t) for t in task_summary],
        [t["success_rate"] for t in task_summary], baseline,
        title=f"{title}: success per task and norm (mean over seeds, 95% CI)",
        references={name: [t["success_rate"] for t in ref["per_task"]] for name, ref in (references or {}).items()})
    files["plan_quality_png"] = norm_bars(
        out / "plan_quality.png", summary,
        [("plan_in_wall_fraction", "planned states in walls"), ("plan_connected", "plans connected to the goal"),
         ("plan_to_bfs_ratio", "plan cell moves / BFS"), ("plans_per_episode", "plans per episode")], baseline,
        title=f"{title}: plan quality per norm (mean over seeds, 95% CI)")
    return files


def env_option(cfg: DictConfig) -> str:
    """The study's env config option (``env=<option>``), which every training is composed with.

    Inside a Hydra run it is Hydra's recorded choice. A config composed outside one (tests, workers) does
    not record it; there the configs' naming rule gives it back: maze2d-<maze> is ``maze2d_<maze>``, an
    OGBench twin ``ogbench_<its id without -v0>``."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.choices["env"])
    return env_option_of(cfg.env)


def ogbench_references(maze: str, episodes_per_task: int, seed: int, max_steps: int | None,
                       replan_every: int | None) -> dict[str, Any]:

    """Per-task success of two policies on the same OGBench episodes as the planners: the floor
    (``GoalOnlyPlanner`` followed kinematically: straight at the goal, sliding along walls) and the
    ceiling (OGBench's BFS oracle). A task the floor solves does not need a planner, let alone stitching."""
    policies = {"goal_only": PlanFollower(GoalOnlyPlanner(), replan_every), "bfs_oracle": oracle_policy(maze)}
    out = {}
    for name, policy in policies.items():
        res = evaluate_ogbench(policy, maze, episodes_per_task=episodes_per_task, seed=seed, max_steps=max_steps)
        out[name] = {"success_rate": res["success_rate"],
                     "per_task": [{"task_id": t["task_id"], "success_rate": t["success_rate"],
                                   "steps_mean": float(np.mean(t["steps"]))} for t in res["tasks"]]}
    return out


def _stitch_data(cfg: DictConfig, probe: DictConfig, data_dir: str) -> tuple[Path, dict[str, Any]]:
    """The study's stitch file (generated and cached on first use) and its description for results.json:
    diffnorm's stitch recipe in maze2d, or OGBench's in its own env when the env config has ``ogbench``."""
    maze, horizon = str(probe.env.name), int(probe.env.horizon)
    og = OmegaConf.select(probe, "env.ogbench")
    default_steps = horizon if og is None else int(og.episode_steps)
    episode_steps = default_steps if cfg.stitch.episode_steps is None else int(cfg.stitch.episode_steps)
    require(episode_steps >= horizon, f"stitch.episode_steps={episode_steps} is shorter than the training horizon "
            f"{horizon}: no episode would give a training window")
    if og is None:
        path = ensure_stitch_dataset(maze, episode_steps, int(cfg.stitch.episodes), seed=int(cfg.stitch.seed),
                                     data_dir=data_dir, progress=False).resolve()
        attrs = read_attrs(path)
        check, passed = json.loads(attrs["stitch_check_json"]), bool(attrs["stitch_check_passed"])
    else:
        path = ensure_ogbench_stitch_dataset(ogbench_maze_of(probe.env), int(cfg.stitch.episodes), episode_steps,
                                             seed=int(cfg.stitch.seed), data_dir=data_dir, progress=False).resolve()
        attrs = read_attrs(path)
        # Recorded, not enforced: it is OGBench's recipe, and its medium task 3 is short enough to be covered.
        check = json.loads(attrs["stitch_checks_json"])["ogbench_tasks"]
        passed = bool(attrs["stitch_check_ogbench_tasks_passed"])
    info = {"path": path, "recipe": "ogbench" if og is not None else "diffnorm", "episodes": int(attrs["episodes"]),
            "episode_steps": int(attrs["episode_steps"]), "travel_cells": int(attrs["travel_cells"]),
            "stitch_check_passed": passed,
            "tasks": [{k: t[k] for k in ("start_cell", "goal_cell", "bfs_distance", "violations",
                                         "closest_approach_cells")} for t in check["tasks"]]}
    return path, info


def stitching_study(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Stitch data -> norm x seed trainings (side by side) -> stitch-task rollouts -> comparison; see
    configs/stitching_study.yaml."""
    start = time.perf_counter()
    norms, seeds = _validate(cfg)
    out.mkdir(parents=True, exist_ok=True)
    env_override = [f"env={env_option(cfg)}"]
    train_overrides = [str(o) for o in cfg.train_overrides]
    probe = compose_job("train_diffuser", env_override + train_overrides + [f"norm={norms[0]}"])
    maze, horizon = str(probe.env.name), int(probe.env.horizon)
    og = OmegaConf.select(probe, "env.ogbench")
    require(og is None or str(og.controller) == "kinematic",
            f"env.ogbench.controller={None if og is None else og.controller}: OGBench's point is kinematic, "
            "so plans are followed by the kinematic PlanFollower ('kinematic')")
    benchmark = "maze2d" if og is None else "ogbench"
    title = f"{maze} stitch tasks" if og is None else f"OGBench {og.env} tasks"
    train_data = str(cfg.train_data)
    require(train_data in ("stitch", "full"), f"train_data={train_data}: choose stitch (the study) or full "
            "(the ceiling control: the env's whole-path dataset, the same tasks)")
    # null: maze2d replans an episode its plan has left behind (the ceiling needs it: an open-loop plan
    # that cuts a corner strands the agent on the wall); OGBench's follower replans as its env config says.
    if cfg.protocol is not None:
        protocol = Protocol.parse(str(cfg.protocol))
    else:
        protocol = Protocol(replan_off_plan=1.0) if og is None else Protocol(
            None if og.replan_every is None else int(og.replan_every))
    extra = [Protocol.parse(str(name)) for name in cfg.protocols]
    names = [protocol.name] + [p.name for p in extra]
    require(len(set(names)) == len(names), f"protocols={list(cfg.protocols)} repeat each other or the main "
            f"protocol {protocol.name}")
    if og is not None:
        off = [p.name for p in [protocol, *extra] if p.replan_off_plan is not None]
        require(not off, f"protocol(s) {off}: OGBench's kinematic follower replans only every k steps "
                "(open_loop or replan_<k>)")
    left, right = receptive_field(build_model(probe))
    reach = {"receptive_field": [left, right], "beyond_rf": horizon - 1 > min(left, right),
             "sees_both_ends": sees_both_ends(left, right, horizon)}

    tic = time.perf_counter()
    data_dir = resolve_path(str(cfg.data_dir))
    data_path, data_info = _stitch_data(cfg, probe, data_dir)
    timings = {"data": round(time.perf_counter() - tic, 1)}
    log.info("stitch dataset %s (check passed: %s)", data_path, data_info["stitch_check_passed"])

    runs_dir = out / "runs"
    grid = [(n, s) for n in norms for s in seeds]
    max_steps = None if cfg.max_steps is None else int(cfg.max_steps)
    # The ceiling control trains on the env's own dataset (train_diffuser's default), where whole paths exist.
    dataset = [f"dataset={data_path}"] if train_data == "stitch" else [f"data_dir={data_dir}"]
    jobs = [{"overrides": env_override + train_overrides + [f"norm={n}", f"seed={s}"] + dataset,
             "run": str(runs_dir / n / f"seed{s}"), "maze": maze, "episodes_per_task": int(cfg.episodes_per_task),
             "eval_seed": int(cfg.eval_seed), "max_steps": max_steps, "protocol": protocol.name,
             "device": str(cfg.device), "benchmark": benchmark, "extra_protocols": tuple(names[1:])} for n, s in grid]
    tic = time.perf_counter()
    trials = map_trials(run_trial, jobs, int(cfg.workers), "train + evaluate")
    timings["train_and_evaluate"] = round(time.perf_counter() - tic, 1)
    runs: dict[str, dict[int, dict[str, Any]]] = {n: {} for n in norms}
    by_protocol: dict[str, dict[str, dict[int, dict[str, Any]]]] = {name: {n: {} for n in norms}
                                                                     for name in names[1:]}
    for (n, s), trial in zip(grid, trials):
        for name, metrics in trial.pop("extra_protocols").items():
            by_protocol[name][n][s] = metrics
        runs[n][s] = trial

    references = None
    if og is not None:
        tic = time.perf_counter()
        references = ogbench_references(maze, int(cfg.episodes_per_task), int(cfg.eval_seed), max_steps,
                                        protocol.replan_every)
        timings["references"] = round(time.perf_counter() - tic, 1)

    baseline = str(cfg.baseline)
    summary, comparisons = summarize(runs, baseline)
    task_summary = summarize_tasks(runs, baseline)
    figures = _figures(out, title, maze, norms, seeds[0], runs_dir, summary, task_summary, baseline,
                       int(cfg.plot_tasks), int(cfg.episodes_per_task), references)
    protocols = {}
    for name, runs_p in by_protocol.items():
        p_summary, p_comparisons = summarize(runs_p, baseline)
        protocols[name] = {"protocol": name, "summary": p_summary, "comparison_vs_baseline": p_comparisons,
                           "per_task": summarize_tasks(runs_p, baseline),
                           "runs": {n: {str(s): {key: v for key, v in r.items() if key != "per_episode"}
                                        for s, r in by.items()} for n, by in runs_p.items()}}
        figures[f"success_{name}_png"] = norm_bars(
            out / f"success_{name}.png", p_summary, [("success_rate", "success rate")], baseline,
            title=f"{title}, protocol {name}: success per norm (mean over seeds, 95% CI)")
    timings["total"] = round(time.perf_counter() - start, 1)
    results = {
        "settings": OmegaConf.to_container(cfg, resolve=True), "env": maze, "benchmark": benchmark,
        "ogbench_env": None if og is None else str(og.env), "horizon": horizon, **reach,
        "train_data": train_data, "protocol": protocol.name, "replan_every": protocol.replan_every,
        "replan_off_plan": protocol.replan_off_plan,
        "norms": norms, "seeds": seeds, "baseline": baseline, "torch_threads": torch.get_num_threads(),
        "metric_definitions": dict(METRICS),
        "dataset": data_info,
        "runs": {n: {str(s): {k: v for k, v in r.items() if k != "per_episode"} for s, r in by.items()}
                 for n, by in runs.items()},
        "summary": summary,
        "comparison_vs_baseline": comparisons,
        "per_task": task_summary,
        "references": references,
        "protocols": protocols,
        "figures": figures,
        "wall_time_s": timings,
    }
    write_results(out, results)
    for n in norms:
        sr = summary[n]["success_rate"]
        line = f"{title}, norm={n}: success {sr['mean']:.0%} [95% CI {sr['ci_low']:.0%}, {sr['ci_high']:.0%}] over {len(seeds)} seeds"
        if n in comparisons:
            d = comparisons[n]["success_rate"]
            line += f"; vs {baseline}: {d['difference']:+.0%} [Welch {d['ci_low']:+.0%}, {d['ci_high']:+.0%}]"
        line += "; per task " + ", ".join(f"{t.get('task_id', k)}: {t['success_rate'][n]['mean']:.0%}"
                                          for k, t in enumerate(task_summary))
        print(line)
    for name, p in protocols.items():
        sr = p["summary"]
        print(f"{title}, {name}: " + ", ".join(f"{n} {sr[n]['success_rate']['mean']:.0%}" for n in norms))
    print(f"horizon {horizon}, receptive field {left}/{right}: "
          + ("some plan indices lie beyond it" if reach["beyond_rf"] else "every index sees the whole plan"))
    for name, ref in (references or {}).items():
        print(f"{title}, reference {name}: success {ref['success_rate']:.0%}; per task "
              + ", ".join(f"{t['task_id']}: {t['success_rate']:.0%}" for t in ref["per_task"]))
    return results
