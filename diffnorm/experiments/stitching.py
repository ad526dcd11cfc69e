"""Stitching study: ``stitching_study(cfg, out)`` trains one Diffuser per arm x seed on a maze's
stitch dataset (or, ``train_data=full``, the ceiling control: its whole-path dataset) and evaluates each
on the maze's stitch tasks under one or more planning protocols (``planning.rollout.Protocol``).

With an OGBench env (``env=ogbench_pointmaze_medium``: an env config with an ``ogbench`` block) the data
is OGBench's pointmaze stitch recipe in its own env, and the tasks and the success check are OGBench's
(``planning.stitch.evaluate_on_ogbench_tasks``); everything else is shared.

Stitch data holds only short episodes (<= 4 BFS steps) and no episode comes near both ends of a task, so a
plan that reaches the goal must be composed from pieces of several episodes: the temporal compositionality
that a limited receptive field is meant to give and that GroupNorm's leakage might hurt. Seeds are the
unit of replication: each norm's per-seed numbers are compared with the baseline norm's by Welch's test
(``probing.stats.summarize``). results.json records the plan horizon and the network's receptive field,
and whether some plan index lies beyond it (the only place a norm's side channel could matter).

An arm is a norm of ``norms`` (its trainings override ``norm=<name>``) or an entry of ``arms`` (its own
overrides: a windowed norm, another network); everything below that says norm means arm.

Run directory: ``runs/<arm>/seed<k>/`` (a train_diffuser run + ``stitch_eval[_<protocol>].json`` +
``stitch_rollouts[_<protocol>].npz``), ``plans_<norm>.png``, ``success[_<protocol>].png``,
``success_per_task.png``, ``plan_quality.png`` and ``results.json``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from diffnorm.analysis.influence import sees_both_ends
from diffnorm.analysis.receptive_field import receptive_field
from diffnorm.config import study_arms
from diffnorm.data.d4rl_format import read_attrs
from diffnorm.data.ogbench_stitch import ensure_ogbench_stitch_dataset
from diffnorm.data.stitch import ensure_stitch_dataset
from diffnorm.envs.ogbench_maze import ogbench_maze_of
from diffnorm.errors import ConfigError
from diffnorm.experiments.common import compose_job, compose_training, require, resolve_path, write_results
from diffnorm.experiments.diffuser import env_option_of, train_or_reuse
from diffnorm.experiments.parallel import map_trials
from diffnorm.planning.rollout import Protocol
from diffnorm.planning.stitch import evaluate_on_ogbench_tasks, evaluate_on_tasks, ogbench_references
from diffnorm.plotting.planning import episode_grid
from diffnorm.plotting.stitching import norm_bars, task_bars
from diffnorm.probing.stats import summarize, summarize_tasks
from diffnorm.training.build import build_model

log = logging.getLogger(__name__)

# Metrics that are fractions: their intervals are kept inside [0, 1].
RATES = {"success_rate", "success_rate_final", "plan_in_wall_fraction", "plan_connected"}

# Per-seed numbers compared across norms: (key in each run's metrics, what it measures).
METRICS = (("success_rate", "success rate (goal reached at any step)"),
           ("success_rate_final", "success rate (at the last step)"),
           ("score_mean", "D4RL-normalized score"),
           ("plan_in_wall_fraction", "planned states inside walls"),
           ("plan_connected", "t = 0 plans reaching the goal through neighbouring free cells"),
           ("plan_to_bfs_ratio", "plan cell moves (Manhattan, to the goal cell) / BFS distance"),
           ("plans_per_episode", "plans made per episode (1: the t = 0 plan only; more: replanned)"))


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
        log.info("%s: reusing its %s evaluation", out, settings["protocol"])
        return json.loads(eval_file.read_text()), True
    # Side-by-side workers log into one file: each line names its run.
    log.info("%s: evaluating with protocol %s (%d episodes per task)", out, settings["protocol"],
             settings["episodes_per_task"])
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

    A training is reused or continued by ``train_or_reuse``'s rule, and each evaluation is reused when it
    was made with the same settings. Returns the main protocol's metrics with the others under
    ``extra_protocols`` (by name)."""

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
            labels, replans_xy=replans, title=f"{title}, {n}, seed {seed}: t = 0 plan"
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

    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.choices["env"])
    return env_option_of(cfg.env)


def _stitch_data(cfg: DictConfig, probe: DictConfig, data_dir: str) -> tuple[Path, dict[str, Any]]:
    """The study's stitch file (generated and cached on first use) and its description for results.json:
    diffnorm's stitch recipe in maze2d, or OGBench's in its own env when the env config has ``ogbench``."""
    maze, horizon = probe.env.name, probe.env.horizon
    og = OmegaConf.select(probe, "env.ogbench")
    default_steps = horizon if og is None else og.episode_steps
    episode_steps = default_steps if cfg.stitch.episode_steps is None else cfg.stitch.episode_steps
    require(episode_steps >= horizon, f"stitch.episode_steps={episode_steps} is shorter than the training horizon "
            f"{horizon}: no episode would give a training window")
    if og is None:
        path = ensure_stitch_dataset(maze, episode_steps, cfg.stitch.episodes, seed=cfg.stitch.seed,
                                     data_dir=data_dir, progress=False).resolve()
        attrs = read_attrs(path)
        check, passed = json.loads(attrs["stitch_check_json"]), bool(attrs["stitch_check_passed"])
    else:
        path = ensure_ogbench_stitch_dataset(ogbench_maze_of(probe.env), cfg.stitch.episodes, episode_steps,
                                             seed=cfg.stitch.seed, data_dir=data_dir, progress=False).resolve()
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


def arm_description(overrides: list[str], cfg: DictConfig) -> dict[str, Any]:
    """What one arm trains (network, norm, parameters) and its receptive field: conv-only (norms stripped,
    the yardstick of the leak question) and, where every norm has a finite reach, with norms included."""
    model = build_model(cfg)
    try:
        with_norms = list(receptive_field(model, with_norms=True))
    except ValueError:  # a norm pools over the whole sequence
        with_norms = None
    return {"overrides": list(overrides), "model": str(cfg.model.name),
            "norm": OmegaConf.to_container(cfg.norm, resolve=True),
            "parameters": sum(p.numel() for p in model.parameters()),
            "receptive_field": list(receptive_field(model)), "receptive_field_with_norms": with_norms}


def stitching_study(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Stitch data -> norm x seed trainings (side by side) -> stitch-task rollouts -> comparison; see
    configs/stitching_study.yaml."""
    start = time.perf_counter()
    arms, seeds = study_arms(OmegaConf.to_container(cfg, resolve=True)), list(cfg.seeds)
    norms = list(arms)  # every arm is compared like a norm; the name is kept for readers of results.json
    env_override = [f"env={env_option(cfg)}"]
    train_overrides = [str(o) for o in cfg.train_overrides]
    # Every arm's training is composed (and so checked) before any data work or run directory; an error
    # names what the user wrote: train_overrides, or the arm.
    compose_training(env_override + train_overrides)
    composed = {}
    for a in norms:
        try:
            composed[a] = compose_job("train_diffuser", env_override + train_overrides + arms[a])
        except ConfigError as err:
            raise ConfigError(f"{'norms' if a in cfg.norms else 'arms'}: {a}={arms[a]}: {err}") from None
    probe = composed[norms[0]]
    maze, horizon = probe.env.name, probe.env.horizon
    require(len({c.env.horizon for c in composed.values()}) == 1,
            f"the arms train at different horizons {({a: c.env.horizon for a, c in composed.items()})}: "
            "their stitch tasks would differ")
    out.mkdir(parents=True, exist_ok=True)
    og = OmegaConf.select(probe, "env.ogbench")
    require(og is None or og.controller == "kinematic",
            f"env.ogbench.controller={None if og is None else og.controller}: OGBench's point is kinematic, "
            "so plans are followed by the kinematic PlanFollower ('kinematic')")
    for given in (cfg, probe):  # the study's own env, or one from train_overrides
        retired = OmegaConf.select(given, "env.ogbench.replan_every")
        require(retired is None, f"env.ogbench.replan_every={retired} is no longer read: the planning protocol is "
                "the study's protocol= (e.g. protocol=replan_32)")
    benchmark = "maze2d" if og is None else "ogbench"
    title = f"{maze} stitch tasks" if og is None else f"OGBench {og.env} tasks"
    train_data = cfg.train_data
    # null: replan an episode its plan has left behind, on both benchmarks. maze2d's ceiling needs it (an
    # open-loop plan that cuts a corner strands the agent on the wall); on OGBench a plan through a wall
    # pins the kinematic point the same way, and replanning every k steps makes it chase new plans' starts.
    try:
        protocol = Protocol.parse(cfg.protocol) if cfg.protocol is not None else Protocol(replan_off_plan=1.0)
    except ConfigError as err:
        raise ConfigError(f"protocol={cfg.protocol}: {err}") from None
    try:
        extra = [Protocol.parse(str(name)) for name in cfg.protocols]
    except ConfigError as err:
        raise ConfigError(f"protocols={list(cfg.protocols)}: {err}") from None
    require(len({p.name for p in extra}) == len(extra), f"protocols={list(cfg.protocols)} repeat each other")
    extra = [p for p in extra if p != protocol]  # the main protocol is evaluated anyway
    names = [protocol.name] + [p.name for p in extra]
    arm_info = {a: arm_description(arms[a], c) for a, c in composed.items()}
    left, right = arm_info[norms[0]]["receptive_field"]
    reach = {"receptive_field": [left, right], "beyond_rf": horizon - 1 > min(left, right),
             "sees_both_ends": sees_both_ends(left, right, horizon)}

    tic = time.perf_counter()
    data_dir = resolve_path(cfg.data_dir)
    data_path, data_info = _stitch_data(cfg, probe, data_dir)
    timings = {"data": round(time.perf_counter() - tic, 1)}
    # A maze2d file that fails its check is refused when made, so only OGBench's own recipe can fail here.
    log.info("stitch dataset %s (%s recipe; stitch check %s)", data_path, data_info["recipe"],
             "passed" if data_info["stitch_check_passed"] else "failed: recorded, not enforced")

    runs_dir = out / "runs"
    grid = [(n, s) for n in norms for s in seeds]
    max_steps = cfg.max_steps
    # The ceiling control trains on the env's own dataset (train_diffuser's default), where whole paths exist.
    dataset = [f"dataset={data_path}"] if train_data == "stitch" else [f"data_dir={data_dir}"]
    # Side by side, each training gets one thread, whatever its preset asks for: two trainings of two
    # OpenMP threads each on two cores wait on each other and run several times slower than one at a time.
    # (Threads are not part of a run: train_or_reuse still finds the runs a one-worker study made.)
    threads = ["train.num_threads=1"] if cfg.workers > 1 and len(grid) > 1 else []
    jobs = [{"overrides": env_override + train_overrides + arms[n] + [f"seed={s}"] + dataset + threads,
             "run": str(runs_dir / n / f"seed{s}"), "maze": maze, "episodes_per_task": cfg.episodes_per_task,
             "eval_seed": cfg.eval_seed, "max_steps": max_steps, "protocol": protocol.name,
             "device": cfg.device, "benchmark": benchmark, "extra_protocols": tuple(names[1:])} for n, s in grid]
    tic = time.perf_counter()
    trials = map_trials(run_trial, jobs, cfg.workers, "train + evaluate")
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
        references = ogbench_references(maze, cfg.episodes_per_task, cfg.eval_seed, max_steps, protocol)
        timings["references"] = round(time.perf_counter() - tic, 1)

    baseline = cfg.baseline
    summary, comparisons = summarize(runs, baseline, [k for k, _ in METRICS], RATES)
    task_summary = summarize_tasks(runs, baseline)
    figures = _figures(out, title, maze, norms, seeds[0], runs_dir, summary, task_summary, baseline,
                       cfg.plot_tasks, cfg.episodes_per_task, references)
    protocols = {}
    for name, runs_p in by_protocol.items():
        p_summary, p_comparisons = summarize(runs_p, baseline, [k for k, _ in METRICS], RATES)
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
        "ogbench_env": None if og is None else og.env, "horizon": horizon, **reach,
        "train_data": train_data, "protocol": protocol.name, "replan_every": protocol.replan_every,
        "replan_off_plan": protocol.replan_off_plan,
        "norms": norms, "arms": arm_info, "seeds": seeds, "baseline": baseline,
        "torch_threads": torch.get_num_threads(),
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
        line = f"{title}, {n}: success {sr['mean']:.0%} [95% CI {sr['ci_low']:.0%}, {sr['ci_high']:.0%}] over {len(seeds)} seeds"
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
