"""Planning job: ``plan_maze(cfg, out)`` scores a trained Diffuser by planning rollouts in its maze.

Writes into the run directory: results.json (score mean ± standard error, success rates, plan-in-wall
fraction, per-episode records), episodes.png (plan and rollout per episode), overview.png (all plans,
all rollouts) and rollouts.npz (states, rewards, goals, the t = 0 plans).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from diffnorm.experiments.common import require, resolve_device, resolve_path, write_results
from diffnorm.planning.rollout import Evaluation, evaluate_planner
from diffnorm.plotting.planning import episode_grid, overview
from diffnorm.training.checkpoint import load_checkpoint

log = logging.getLogger(__name__)


def _figures(out: Path, evaluation: Evaluation, title: str, plot_episodes: int) -> dict[str, Path]:
    r, m = evaluation.rollouts, evaluation.metrics
    env = m["env"]
    first = r.plans[0][..., :2]
    # Later rounds' new plans; an episode that kept its plan in a round is NaN there (not drawn).
    replans = (np.where(np.stack(r.replanned[1:])[..., None, None], np.stack(r.plans[1:])[..., :2], np.nan)
               if len(r.plans) > 1 else None)
    labels = [f"ep {k}: score {e['score']:.0f}, {'reached' if e['success'] else 'missed'}"
              for k, e in enumerate(m["per_episode"])]
    files = {"overview_png": overview(out / "overview.png", env, first, r.states[..., :2], r.goals, title=title)}
    if plot_episodes > 0:
        files["episodes_png"] = episode_grid(out / "episodes.png", env, first, r.states[..., :2], r.goals, labels,
                                             replans_xy=replans, title=title, max_panels=plot_episodes)
    return files


def plan_maze(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Load ``cfg.checkpoint`` and run ``cfg.episodes`` planning episodes of ``cfg.mode``; see plan_maze.yaml."""
    start = time.perf_counter()
    require(cfg.checkpoint is not None, "checkpoint=<train_diffuser run dir or .safetensors file> is required")
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    loaded = load_checkpoint(resolve_path(cfg.checkpoint), device)
    norm = OmegaConf.to_container(loaded.cfg.norm, resolve=True)
    log.info("checkpoint %s (step %d, norm=%s) on %s", loaded.path, loaded.step, norm["name"], device)
    evaluation = evaluate_planner(loaded, episodes=cfg.episodes, mode=cfg.mode, seed=cfg.seed,
                                  replan_every=cfg.replan_every, sampler=cfg.sampler, num_steps=cfg.num_steps,
                                  max_steps=cfg.max_steps, progress=cfg.progress, replan_off_plan=cfg.replan_off_plan)
    m = evaluation.metrics
    title = (f"{m['env']} {m['mode']}-task, norm={norm['name']}, {m['sampler']} x{m['num_steps']}: "
             f"score {m['score_mean']:.1f} ± {m['score_sem']:.1f}")
    files = _figures(out, evaluation, title, cfg.plot_episodes)
    r = evaluation.rollouts
    files["rollouts_npz"] = out / "rollouts.npz"
    np.savez_compressed(files["rollouts_npz"], states=r.states.astype(np.float32), rewards=r.rewards.astype(np.int8),
                        goals=r.goals, first_plans=r.plans[0].astype(np.float32), plan_steps=np.asarray(r.plan_steps))
    results = {
        "checkpoint": {"path": loaded.path.resolve(), "step": loaded.step, "norm": norm,
                       "model": OmegaConf.to_container(loaded.cfg.model, resolve=True)},
        "device": str(device), "torch_threads": torch.get_num_threads(), **m,
        "wall_time_s": round(time.perf_counter() - start, 2), "files": files,
    }
    write_results(out, results)
    print(f"{m['env']} {m['mode']}-task, norm={norm['name']}, {m['episodes']} episodes: normalized score "
          f"{m['score_mean']:.1f} ± {m['score_sem']:.1f} (s.e.); success {m['success_rate']:.0%} (any step), "
          f"{m['success_rate_final']:.0%} (last step); planned states in walls {m['plan_in_wall_fraction']:.1%}; "
          f"{results['wall_time_s']:.1f} s")
    return results
