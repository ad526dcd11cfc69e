"""Planners on fixed stitch tasks: ``evaluate_on_tasks`` (diffnorm's maze2d stitch tasks, the published
controller) and ``evaluate_on_ogbench_tasks`` (OGBench's 5 tasks, its success check, the kinematic
``PlanFollower``), both returning per-episode and per-task records with the plan-path measure
``plan_path_stats``; ``ogbench_references`` gives the floor and the oracle on the same episodes.

Stitch data holds only short episodes and no episode comes near both ends of a task, so a plan that
reaches the goal must be composed from pieces of several episodes. Inpainting pins a plan's last state to
the goal, so "the plan ends at the goal" says nothing; ``plan_path_stats`` asks whether the plan gets
there through neighbouring free cells.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from diffnorm.data.stitch import stitch_task_cells, stitch_tasks
from diffnorm.devices import resolve_device
from diffnorm.envs.maze2d import in_wall, make_env, maze_spec, xy_to_cell
from diffnorm.planning.kinematic import (
    PlanFollower,
    evaluate_ogbench,
    evaluate_ogbench_planner,
    oracle_policy,
    plans_followed,
    plans_in_wall_fraction,
)
from diffnorm.planning.planner import GoalOnlyPlanner
from diffnorm.planning.rollout import Protocol, evaluate_planner
from diffnorm.training.checkpoint import load_checkpoint


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
    ``success_rate`` is reported; OGBench has no D4RL score. The plan-path measures use the t = 0 plan;
    planned states in walls pool every plan made for an episode while it ran."""
    replan_every = protocol.replan_every
    loaded = load_checkpoint(run, resolve_device(device))
    tic = time.perf_counter()
    ev = evaluate_ogbench_planner(loaded, maze, episodes_per_task=episodes_per_task, seed=seed,
                                  replan_every=replan_every, max_steps=max_steps,
                                  replan_off_plan=protocol.replan_off_plan)
    seconds = time.perf_counter() - tic
    res = ev.result
    steps = np.array([n for t in res["tasks"] for n in t["steps"]])
    success = np.array([v for t in res["tasks"] for v in t["successes"]])
    followed = plans_followed(ev.plan_steps, ev.replanned, steps)
    walls = plans_in_wall_fraction(maze, ev.plans, followed)
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
        "plan_rounds": len(ev.plans),
        # plans an episode followed: those made for it before it ended (an episode ends at its goal)
        "plans_per_episode": float(followed.sum(axis=0).mean()),
        "planning_seconds": round(ev.planning_seconds, 3),
        "rollout_seconds": round(seconds, 3), "per_task": per_task, "per_episode": per_episode,
    }
    # Paths end at different steps (at the goal): pad each with its last position; plans made after an
    # episode ended are NaN, so figures draw only the plans it followed.
    length = max(len(p) for p in res["paths"])
    states = np.stack([np.concatenate([p, np.repeat(p[-1:], length - len(p), axis=0)]) for p in res["paths"]])
    replans = np.stack(ev.plans).astype(np.float32)
    replans[~followed] = np.nan
    arrays = {"plans_xy": first.astype(np.float32), "replans_xy": replans, "states_xy": states.astype(np.float32),
              "goals": np.asarray(res["goals"]), "success": success}
    return metrics, arrays


def ogbench_references(maze: str, episodes_per_task: int, seed: int, max_steps: int | None,
                       protocol: Protocol) -> dict[str, Any]:

    """Per-task success of two policies on the same OGBench episodes as the planners: the floor
    (``GoalOnlyPlanner`` followed kinematically: straight at the goal, sliding along walls) and the
    ceiling (OGBench's BFS oracle). A task the floor solves does not need a planner, let alone stitching."""
    policies = {"goal_only": PlanFollower(GoalOnlyPlanner(), protocol.replan_every, protocol.replan_off_plan),
                "bfs_oracle": oracle_policy(maze)}
    out = {}
    for name, policy in policies.items():
        res = evaluate_ogbench(policy, maze, episodes_per_task=episodes_per_task, seed=seed, max_steps=max_steps)
        out[name] = {"success_rate": res["success_rate"],
                     "per_task": [{"task_id": t["task_id"], "success_rate": t["success_rate"],
                                   "steps_mean": float(np.mean(t["steps"]))} for t in res["tasks"]]}
    return out
