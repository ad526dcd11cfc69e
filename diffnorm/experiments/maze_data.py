"""maze2d data jobs: generate (and check) a D4RL-recipe dataset; score the waypoint controller.

Each job writes results.json and its figure into the run directory and prints a short summary.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from omegaconf import DictConfig

from diffnorm.data.d4rl_format import load_d4rl_hdf5, write_d4rl_hdf5
from diffnorm.data.generate import (controller_returns, dataset_attrs, dataset_checks, dataset_path,
                                    ensure_dataset, generate_maze2d)
from diffnorm.envs.maze2d import maze_spec
from diffnorm.experiments.common import require, write_results
from diffnorm.plotting.maze import dataset_coverage, draw_maze, plot_trajectory


def make_maze_dataset(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Generate ``cfg.env.name``'s dataset into ``cfg.data_dir`` (reusing a matching cached file unless
    ``cfg.force``), then load it back and run the acceptance checks on what was written."""
    name = str(cfg.env.name)
    maze_spec(name)  # unknown maze -> ConfigError before anything else
    require(cfg.steps is not None and int(cfg.steps) > 0, f"steps={cfg.steps} must be a positive integer")
    steps, seed = int(cfg.steps), int(cfg.seed)
    path = dataset_path(name, steps, seed, cfg.data_dir)
    timing: dict[str, Any] = {"generated": bool(cfg.force or not path.exists())}
    if timing["generated"]:
        start = time.perf_counter()
        data = generate_maze2d(name, steps, seed, progress=bool(cfg.progress))
        generated = time.perf_counter()
        write_d4rl_hdf5(path, data, dataset_attrs(name, steps, seed))
        timing.update(generate_seconds=generated - start, write_seconds=time.perf_counter() - generated,
                      steps_per_second=steps / (generated - start))
    else:
        ensure_dataset(name, steps, seed, cfg.data_dir)  # validates the cached file's metadata
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


def controller_baseline(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """D4RL-normalized score of the waypoint controller in ``make_env``, per maze, planning every episode
    and (``cfg.d4rl_persistent``) keeping one controller across episodes as D4RL's reference script does."""
    require(int(cfg.episodes) > 0, f"episodes={cfg.episodes} must be positive")
    variants = {"replan_each_episode": True}
    if cfg.d4rl_persistent:
        variants["d4rl_persistent_controller"] = False
    results: dict[str, Any] = {"episodes": int(cfg.episodes), "seed": int(cfg.seed), "mazes": {}}
    fig, axes = plt.subplots(1, len(cfg.mazes), figsize=(4.5 * len(cfg.mazes), 4.5), squeeze=False)
    for ax, name in zip(axes[0], cfg.mazes):
        maze_spec(str(name))
        results["mazes"][name] = {}
        for label, replan in variants.items():
            r = controller_returns(str(name), int(cfg.episodes), int(cfg.seed), replan_each_episode=replan,
                                   keep_paths=int(cfg.plot_paths) if replan else 0)
            paths = r.pop("paths")
            results["mazes"][name][label] = r
            print(f"{name:>14} {label:>27}: normalized score {r['score_mean']:6.1f} ± {r['score_sem']:.1f} "
                  f"(return {r['return_mean']:.1f}; {r['episodes_reaching_goal']}/{r['episodes']} reach the goal)")
            if paths:
                draw_maze(ax, str(name))
                for path in paths:
                    plot_trajectory(ax, path, s=2)
                ax.set_title(f"{name}: {len(paths)} controller episodes\nscore {r['score_mean']:.1f} "
                             f"(replanning each episode)")
    fig.tight_layout()
    fig.savefig(out / "controller_paths.png", dpi=110)
    plt.close(fig)
    write_results(out, results)
    return results

