"""maze2d data jobs: generate (and check) a D4RL-recipe or stitch dataset; score the waypoint controller.

Each job writes results.json and its figure into the run directory and prints a short summary.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from omegaconf import DictConfig

from diffnorm.data.d4rl_format import load_d4rl_hdf5, read_attrs, write_d4rl_hdf5
from diffnorm.data.generate import (
    controller_returns,
    dataset_attrs,
    dataset_checks,
    dataset_path,
    ensure_dataset,
    generate_maze2d,
)
from diffnorm.data.ogbench_stitch import (
    ensure_ogbench_stitch_dataset,
    generate_ogbench_stitch,
    ogbench_stitch_attrs,
    ogbench_stitch_checks,
    ogbench_stitch_path,
)
from diffnorm.data.stitch import (
    NEAR_CELLS,
    build_stitch_dataset,
    ensure_stitch_dataset,
    episode_ranges,
    stitch_check,
    stitch_dataset_path,
    stitch_episode_stats,
    stitch_tasks,
)
from diffnorm.envs.maze2d import in_wall, maze_spec
from diffnorm.envs.ogbench_maze import OGBENCH_ENVS, ogbench_tasks
from diffnorm.experiments.common import ConfigError, require, resolve_path, write_results
from diffnorm.plotting.maze import dataset_coverage, draw_maze, plot_trajectory, stitch_coverage


def make_maze_dataset(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Generate ``cfg.env.name``'s dataset into ``cfg.data_dir`` (reusing a matching cached file unless
    ``cfg.force``), then load it back and run the acceptance checks on what was written.

    ``cfg.dataset`` picks the recipe: ``d4rl`` (one D4RL stream, below), ``stitch`` (``make_stitch_dataset``)
    or ``ogbench`` (``make_ogbench_dataset``)."""
    kind = cfg.dataset
    if kind == "stitch":
        return make_stitch_dataset(cfg, out)
    if kind == "ogbench":
        return make_ogbench_dataset(cfg, out)
    name = cfg.env.name
    maze_spec(name)  # unknown maze -> ConfigError before anything else
    steps, seed = cfg.steps, cfg.seed
    path = dataset_path(name, steps, seed, resolve_path(cfg.data_dir))
    timing: dict[str, Any] = {"generated": bool(cfg.force or not path.exists())}
    if timing["generated"]:
        start = time.perf_counter()
        data = generate_maze2d(name, steps, seed, progress=cfg.progress)
        generated = time.perf_counter()
        write_d4rl_hdf5(path, data, dataset_attrs(name, steps, seed))
        timing.update(generate_seconds=generated - start, write_seconds=time.perf_counter() - generated,
                      steps_per_second=steps / (generated - start))
    else:
        ensure_dataset(name, steps, seed, resolve_path(cfg.data_dir))  # validates the cached file's metadata
    data = load_d4rl_hdf5(path)
    checks = dataset_checks(name, data)
    dataset_coverage(name, data["observations"][:, :2], out / "coverage.png")
    results = {"env": name, "steps": steps, "seed": seed, "path": str(path.resolve()),
               "file_mb": path.stat().st_size / 2**20, **timing, "checks": checks}
    write_results(out, results)
    if timing["generated"]:
        print(f"{name}: {steps:,} steps in {timing['generate_seconds']:.1f} s "
              f"({timing['steps_per_second']:,.0f} steps/s), written in {timing['write_seconds']:.1f} s")
    else:
        print(f"{name}: reused cached {path}")
    print(f"free cells visited {checks['free_cells_visited']}/{checks['free_cells']}; positions in walls "
          f"{checks['positions_in_wall']}; actions in [{checks['action_min']:.3f}, {checks['action_max']:.3f}]; "
          f"goals reached {checks['goals_reached']}/{checks['goal_segments']} "
          f"({checks['goals_reached_fraction']:.1%}); timeouts == goal changes: "
          f"{checks['timeouts_match_goal_changes']}; mean segment {checks['segment_length_mean']:.1f} steps")
    print(path)
    return results


def _file_checks(name: str, data: dict[str, np.ndarray]) -> dict[str, Any]:
    """Maze-independent sanity numbers of a file made of separate episodes."""
    xy = data["observations"][:, :2].astype(np.float64)
    return {"steps": len(xy), "positions_in_wall": int(in_wall(name, xy).sum()),
            "action_min": float(data["actions"].min()), "action_max": float(data["actions"].max()),
            "xy_min": xy.min(axis=0).tolist(), "xy_max": xy.max(axis=0).tolist()}


def _episode_paths(data: dict[str, np.ndarray], count: int) -> list[np.ndarray]:
    return [data["observations"][s:e, :2] for s, e in episode_ranges(data)[:count]]


def _print_check(label: str, check: dict[str, Any]) -> None:
    verdict = "PASSED" if check["passed"] else f"FAILED ({check['violations']} episodes)"
    closest = [t["closest_approach_cells"] for t in check["tasks"]]
    print(f"stitch check vs {label}: {verdict}; task BFS distances {[t['bfs_distance'] for t in check['tasks']]}, "
          f"closest approach per task (cells, must be > {NEAR_CELLS}) {closest}")


def make_stitch_dataset(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Stitch dataset of ``cfg.env.name`` (``diffnorm.data.stitch.generate_stitch``): generate, run the
    stitch check, write the file only if it passes (else exit with the check in results.json), then load
    it back and check what was written."""
    name = cfg.env.name
    maze_spec(name)
    s = cfg.stitch
    episodes, episode_steps, seed = s.episodes, s.episode_steps, cfg.seed
    travel = s.travel_cells
    path = stitch_dataset_path(name, episodes, episode_steps, seed, cfg.data_dir, travel)
    timing: dict[str, Any] = {"generated": bool(cfg.force or not path.exists())}
    if timing["generated"]:
        start = time.perf_counter()
        data, attrs, check = build_stitch_dataset(name, episode_steps, episodes, travel, seed, cfg.progress)
        generated = time.perf_counter()
        timing.update(generate_and_check_seconds=generated - start,
                      steps_per_second=episodes * episode_steps / (generated - start))
        if not check["passed"]:
            write_results(out, {"env": name, "dataset": "stitch", "stitch_check": check, **timing})
            raise ConfigError(f"{name}: stitch check failed: {check['violations']} episode(s) come within "
                              f"{NEAR_CELLS} cell of both ends of a task; nothing written (see {out / 'results.json'})")
        write_d4rl_hdf5(path, data, attrs)
        timing["write_seconds"] = time.perf_counter() - generated
    else:
        ensure_stitch_dataset(name, episode_steps, episodes, travel, seed, resolve_path(cfg.data_dir))  # validates metadata
    attrs = read_attrs(path)
    data = load_d4rl_hdf5(path)
    tasks = stitch_tasks(name)
    check = stitch_check(data, tasks, name)  # on what was read back, not on what was generated
    stats = stitch_episode_stats(data, name)
    stitch_coverage(name, data["observations"][:, :2], tasks, out / "coverage.png",
                    _episode_paths(data, cfg.plot_episodes),
                    title=f"{name} stitch data\n{episodes:,} episodes x {episode_steps} steps; the tasks")
    results = {"env": name, "dataset": "stitch", "episodes": episodes, "episode_steps": episode_steps,
               "travel_cells": int(attrs["travel_cells"]), "seed": seed, "path": str(path.resolve()),
               "file_mb": path.stat().st_size / 2**20, **timing,
               "tasks": [[a.tolist(), b.tolist()] for a, b in tasks], "stitch_check": check,
               "episode_stats": stats, "checks": _file_checks(name, data)}
    write_results(out, results)
    if timing["generated"]:
        print(f"{name} stitch: {episodes:,} episodes x {episode_steps} steps (travel {attrs['travel_cells']} cells) "
              f"in {timing['generate_and_check_seconds']:.1f} s ({timing['steps_per_second']:,.0f} steps/s)")
    else:
        print(f"{name} stitch: reused cached {path}")
    _print_check(f"{len(tasks)} diffnorm tasks", check)
    print(f"episodes reaching their goal {stats['episodes_reaching_goal']}/{stats['episodes']}; goal distances "
          f"{stats['goal_distance_counts']}; positions in walls {results['checks']['positions_in_wall']}")
    print(path)
    return results


def make_ogbench_dataset(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """OGBench-recipe stitch data in OGBench's own pointmaze (``diffnorm.envs.ogbench_maze``), for
    ``env=maze2d_medium|maze2d_large``; the stitch checks against OGBench's and diffnorm's tasks are
    recorded, not enforced."""
    name = cfg.env.name
    require(name in OGBENCH_ENVS, f"dataset=ogbench needs env=maze2d_medium or maze2d_large (OGBench's pointmazes), "
            f"got {name}")
    o = cfg.ogbench
    episodes, episode_steps, seed = o.episodes, o.episode_steps, cfg.seed
    path = ogbench_stitch_path(name, episodes, episode_steps, seed, resolve_path(cfg.data_dir))
    timing: dict[str, Any] = {"generated": bool(cfg.force or not path.exists())}
    if timing["generated"]:
        start = time.perf_counter()
        data = generate_ogbench_stitch(name, episodes, episode_steps, seed=seed, progress=cfg.progress)
        generated = time.perf_counter()
        write_d4rl_hdf5(path, data, ogbench_stitch_attrs(name, episodes, episode_steps, seed,
                                                         ogbench_stitch_checks(name, data)), observation_dim=None)
        timing.update(generate_seconds=generated - start, write_seconds=time.perf_counter() - generated,
                      steps_per_second=episodes * episode_steps / (generated - start))
    else:
        ensure_ogbench_stitch_dataset(name, episodes, episode_steps, seed, resolve_path(cfg.data_dir))
    data = load_d4rl_hdf5(path, observation_dim=None)
    checks = ogbench_stitch_checks(name, data)
    stats = stitch_episode_stats(data, name)
    stitch_coverage(name, data["observations"], ogbench_tasks(name), out / "coverage.png",
                    _episode_paths(data, cfg.plot_episodes),
                    title=f"{OGBENCH_ENVS[name]} stitch recipe\n{episodes:,} x {episode_steps} steps; OGBench's tasks")
    results = {"env": name, "dataset": "ogbench", "ogbench_env": OGBENCH_ENVS[name], "episodes": episodes,
               "episode_steps": episode_steps, "seed": seed, "path": str(path.resolve()),
               "file_mb": path.stat().st_size / 2**20, **timing, "stitch_checks": checks, "episode_stats": stats,
               "checks": _file_checks(name, data)}
    write_results(out, results)
    if timing["generated"]:
        print(f"{OGBENCH_ENVS[name]} stitch: {episodes:,} episodes x {episode_steps} steps in "
              f"{timing['generate_seconds']:.1f} s ({timing['steps_per_second']:,.0f} steps/s)")
    else:
        print(f"{OGBENCH_ENVS[name]} stitch: reused cached {path}")
    _print_check("OGBench's 5 tasks", checks["ogbench_tasks"])
    _print_check("diffnorm's stitch tasks", checks["diffnorm_tasks"])
    print(path)
    return results


def controller_baseline(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """D4RL-normalized score of the waypoint controller in ``make_env``, per maze, planning every episode
    and (``cfg.d4rl_persistent``) keeping one controller across episodes as D4RL's reference script does."""
    variants = {"replan_each_episode": True}
    if cfg.d4rl_persistent:
        variants["d4rl_persistent_controller"] = False
    results: dict[str, Any] = {"episodes": cfg.episodes, "seed": cfg.seed, "mazes": {}}
    fig, axes = plt.subplots(1, len(cfg.mazes), figsize=(4.5 * len(cfg.mazes), 4.5), squeeze=False)
    for ax, name in zip(axes[0], cfg.mazes):
        maze_spec(name)
        results["mazes"][name] = {}
        for label, replan in variants.items():
            r = controller_returns(name, cfg.episodes, cfg.seed, replan_each_episode=replan,
                                   keep_paths=cfg.plot_paths if replan else 0)
            paths = r.pop("paths")
            results["mazes"][name][label] = r
            print(f"{name:>14} {label:>27}: normalized score {r['score_mean']:6.1f} ± {r['score_sem']:.1f} "
                  f"(return {r['return_mean']:.1f}; {r['episodes_reaching_goal']}/{r['episodes']} reach the goal)")
            if paths:
                draw_maze(ax, name)
                for path in paths:
                    plot_trajectory(ax, path, s=2)
                ax.set_title(f"{name}: {len(paths)} controller episodes\nscore {r['score_mean']:.1f} "
                             f"(replanning each episode)")
    fig.tight_layout()
    fig.savefig(out / "controller_paths.png", dpi=110)
    plt.close(fig)
    write_results(out, results)
    return results

