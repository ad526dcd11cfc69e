"""Planning rollouts in maze2d and their metrics.

Protocol (Janner et al. 2022, ``scripts/plan_maze2d.py`` of the maze2d branch): plan once at t = 0 with one
sample, then follow the plan with ``controller_action`` for the env's full episode (300 / 600 / 800 steps;
D4RL episodes never end early); the return is the number of steps within 0.5 of the goal, scored with
D4RL's normalization. Two task modes:

- ``single``: D4RL's fixed evaluation goal, a random start (free cell + U(-0.1, 0.1), velocity N(0, 0.1));
- ``multi``: the Diffuser's Multi2D, a random start as above and a random goal, drawn like D4RL's
  ``set_target``: a uniformly chosen free cell (it may be the start's) + U(-0.1, 0.1) per coordinate.

Episodes step in lockstep, so every planning round (t = 0, and every ``replan_every`` steps if set) is one
batched call of the planner. Episode i's start and goal depend only on (seed, i): 20 episodes are the
first 20 of 100, and every checkpoint evaluated with one seed faces the same tasks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from diffnorm.data.generate import GOAL_NOISE  # D4RL's set_target: U(-0.1, 0.1) around the chosen cell
from diffnorm.envs.maze2d import GOAL_RADIUS, in_wall, make_env, maze_spec, normalized_score
from diffnorm.errors import require
from diffnorm.planning.controller import controller_action, plan_target
from diffnorm.planning.planner import DiffuserPlanner, Planner
from diffnorm.training.checkpoint import LoadedDiffuser

MODES = ("single", "multi")

SUCCESS_DEFINITIONS = {
    "success_rate": "fraction of episodes within 0.5 of the goal (the reward region) at any step",
    "success_rate_final": "fraction of episodes within 0.5 of the goal at the last step",
}


@dataclass
class Rollouts:
    """What happened in N lockstep episodes of T steps, in maze (D4RL) units."""

    states: np.ndarray  # [N, T + 1, 4]: the reset observation, then one per step
    rewards: np.ndarray  # [N, T]: 1 within GOAL_RADIUS of the goal after the step, else 0
    goals: np.ndarray  # [N, 2]
    plans: list[np.ndarray] = field(default_factory=list)  # one [N, H, 4] per planning round
    plan_steps: list[int] = field(default_factory=list)  # the env step each round was planned at
    seconds: dict[str, float] = field(default_factory=dict)  # planning vs simulation time


def episode_resets(env_name: str, episodes: int, mode: str, seed: int, starts: np.ndarray | None = None,
                   goals: np.ndarray | None = None) -> list[tuple[int, dict[str, Any]]]:
    """(env seed, reset options) per episode: ``mode`` decides what is random; ``starts``/``goals`` [N, 2]
    pin the start positions / goals (e.g. fixed stitching tasks) whatever the mode."""
    require(mode in MODES, f"mode={mode!r} is unknown; choose one of {list(MODES)}")
    require(int(episodes) >= 1, f"episodes={episodes} must be a positive integer")
    free = np.asarray(maze_spec(env_name).free_cells, dtype=np.float64)
    for name, points in (("starts", starts), ("goals", goals)):
        require(points is None or np.shape(points) == (episodes, 2),
                f"{name} must be [episodes={episodes}, 2], got {np.shape(points)}")
    resets = []
    for i in range(int(episodes)):
        env_seed, goal_seed = np.random.SeedSequence([int(seed), i]).generate_state(2)
        options: dict[str, Any] = {}
        if starts is not None:
            options["start_xy"] = np.asarray(starts[i], dtype=np.float64)
        if goals is not None:
            options["goal_xy"] = np.asarray(goals[i], dtype=np.float64)
        elif mode == "multi":
            rng = np.random.default_rng(goal_seed)
            options["goal_xy"] = free[rng.integers(len(free))] + rng.uniform(-GOAL_NOISE, GOAL_NOISE, size=2)
        resets.append((int(env_seed), options))
    return resets


def run_episodes(planner: Planner, env_name: str, resets: list[tuple[int, dict[str, Any]]],
                 replan_every: int | None = None, max_steps: int | None = None, progress: bool = False
                 ) -> Rollouts:
    """Roll out ``planner`` + the published controller in one env per reset, all in lockstep.

    ``replan_every=None`` is the published open loop (one plan at t = 0); ``k`` plans again from the
    current state every k steps, the goal unchanged. ``max_steps=None`` is the env's episode length.
    """
    require(replan_every is None or int(replan_every) >= 1, f"replan_every={replan_every} must be null or >= 1")
    envs = [make_env(env_name) for _ in resets]
    steps = int(max_steps) if max_steps is not None else int(envs[0].spec.max_episode_steps)
    require(steps >= 1, f"max_steps={max_steps} must be positive")
    n = len(envs)
    states = np.zeros((n, steps + 1, 4))
    rewards = np.zeros((n, steps))
    for k, (env, (env_seed, options)) in enumerate(zip(envs, resets)):
        states[k, 0], _ = env.reset(seed=env_seed, options=options)
    goals = np.stack([np.asarray(env.get_wrapper_attr("goal"), dtype=np.float64) for env in envs])
    out = Rollouts(states=states, rewards=rewards, goals=goals)
    plan_seconds = sim_seconds = 0.0
    plans, plan_start = None, 0
    for t in tqdm(range(steps), desc=f"{n} episodes of {env_name}", disable=not progress, leave=False):
        if plans is None or (replan_every is not None and t - plan_start >= int(replan_every)):
            tic = time.perf_counter()
            plans = np.asarray(planner(states[:, t].copy(), goals.copy()), dtype=np.float64)
            plan_seconds += time.perf_counter() - tic
            require(plans.ndim == 3 and plans.shape[0] == n and plans.shape[2] == 4,
                    f"the planner returned {plans.shape}, expected [{n}, horizon, 4]")
            plan_start = t
            out.plans.append(plans)
            out.plan_steps.append(t)
        actions = controller_action(plan_target(plans, t - plan_start), states[:, t])
        tic = time.perf_counter()
        for k, env in enumerate(envs):
            states[k, t + 1], rewards[k, t], _, _, _ = env.step(actions[k])
        sim_seconds += time.perf_counter() - tic
    for env in envs:
        env.close()
    out.seconds = {"planning": plan_seconds, "simulation": sim_seconds}
    return out


def _sem(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0


def tracking_errors(rollouts: Rollouts) -> np.ndarray:
    """||state.xy - planned xy|| at every step the plan in force still covers, per episode [N, steps]."""
    r = rollouts
    ends = [*r.plan_steps[1:], r.rewards.shape[1]]
    errors = []
    for plans, t0, t_end in zip(r.plans, r.plan_steps, ends):
        last = min(t_end, t0 + plans.shape[1] - 1)  # step t follows plan index t - t0 <= H - 1
        if last > t0:
            errors.append(np.linalg.norm(r.states[:, t0 + 1:last + 1, :2] - plans[:, 1:last - t0 + 1, :2], axis=-1))
    return np.concatenate(errors, axis=1) if errors else np.zeros((len(r.goals), 0))


def rollout_metrics(env_name: str, rollouts: Rollouts) -> dict[str, Any]:
    """Scores, success rates, plan quality (walls, goal jump, tracking) and per-episode records."""
    r = rollouts
    returns = r.rewards.sum(axis=1)
    scores = np.asarray(normalized_score(env_name, returns), dtype=np.float64)
    reached = r.rewards > 0
    final = np.linalg.norm(r.states[:, -1, :2] - r.goals, axis=-1) <= GOAL_RADIUS
    first = [int(np.argmax(row)) + 1 if row.any() else None for row in reached]
    all_plans = np.stack(r.plans)  # [rounds, N, H, 4]
    walls = in_wall(env_name, all_plans[..., :2])  # [rounds, N, H]
    step_len = np.linalg.norm(np.diff(all_plans[..., :2], axis=2), axis=-1)  # [rounds, N, H - 1]
    tracking = tracking_errors(r)
    episodes = [{
        "start": r.states[k, 0].tolist(), "goal": r.goals[k].tolist(), "return": float(returns[k]),
        "score": float(scores[k]), "success": bool(reached[k].any()), "success_final": bool(final[k]),
        "first_step_in_goal": first[k], "plan_in_wall_fraction": float(walls[0, k].mean()),
        "tracking_error_mean": float(tracking[k].mean()) if tracking.shape[1] else None,
    } for k in range(len(returns))]
    return {
        "episodes": len(returns), "steps": int(r.rewards.shape[1]),
        "score_mean": float(scores.mean()), "score_sem": _sem(scores), "score_std": float(scores.std()),
        "return_mean": float(returns.mean()), "return_sem": _sem(returns),
        "success_rate": float(reached.any(axis=1).mean()), "success_rate_final": float(final.mean()),
        "success_definitions": SUCCESS_DEFINITIONS,
        "plan_in_wall_fraction": float(walls.mean()),
        "plans_touching_walls": float(walls.any(axis=-1).mean()),
        "plan_rounds": len(r.plans), "plan_steps": list(r.plan_steps), "horizon": int(all_plans.shape[2]),
        # A goal jump much larger than the median step means the goal was pasted onto a plan that went
        # elsewhere (inpainting forces the last state; it does not make the plan arrive there).
        "plan_step_median": float(np.median(step_len)), "plan_goal_jump_mean": float(step_len[..., -1].mean()),
        "tracking_error_mean": float(tracking.mean()) if tracking.size else None,
        "returns": returns.tolist(), "scores": scores.tolist(),
        "seconds": {k: round(v, 3) for k, v in r.seconds.items()},
        "per_episode": episodes,
    }


@dataclass
class Evaluation:
    """``metrics`` (JSON-ready, see ``rollout_metrics``) and the raw ``rollouts`` for figures."""

    metrics: dict[str, Any]
    rollouts: Rollouts


def evaluate_planner(loaded: LoadedDiffuser, env_name: str | None = None, episodes: int = 20, mode: str = "single",
                     seed: int = 0, replan_every: int | None = None, sampler: str | None = None,
                     num_steps: int | None = None, starts: np.ndarray | None = None,
                     goals: np.ndarray | None = None, max_steps: int | None = None,
                     progress: bool = False) -> Evaluation:
    """Score a loaded Diffuser by planning rollouts: ``episodes`` lockstep episodes of ``mode``.

    ``env_name=None`` is the checkpoint's maze (another maze is refused: the scaler and the horizon
    belong to the training maze). ``seed`` fixes the tasks and the sampling noise.
    """
    trained_on = str(loaded.cfg.env.name)
    env_name = trained_on if env_name is None else env_name
    require(env_name == trained_on, f"the checkpoint was trained on {trained_on}, not {env_name}")
    resets = episode_resets(env_name, int(episodes), mode, int(seed), starts, goals)
    planner = DiffuserPlanner(loaded, sampler=sampler, num_steps=num_steps, seed=int(seed))
    start = time.perf_counter()
    rollouts = run_episodes(planner, env_name, resets, replan_every=replan_every, max_steps=max_steps,
                            progress=progress)
    metrics = {"env": env_name, "mode": mode, "seed": int(seed), "replan_every": replan_every,
               "sampler": planner.sampler, "num_steps": planner.num_steps, "planner_calls": planner.calls,
               **rollout_metrics(env_name, rollouts), "rollout_seconds": round(time.perf_counter() - start, 3)}
    return Evaluation(metrics=metrics, rollouts=rollouts)
