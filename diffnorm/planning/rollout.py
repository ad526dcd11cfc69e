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
from diffnorm.errors import ConfigError, require
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
    plans: list[np.ndarray] = field(default_factory=list)  # the plans in force after each planning round [N, H, 4]
    plan_steps: list[int] = field(default_factory=list)  # the env step each round was planned at
    replanned: list[np.ndarray] = field(default_factory=list)  # [N] bool per round: who got a new plan then
    tracking: np.ndarray | None = None  # [N, T]: ||state.xy - steered-at plan state.xy||, NaN past a plan's end
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


@dataclass(frozen=True)
class Protocol:
    """When a rollout plans: at t = 0 always, then every ``replan_every`` steps and/or whenever an episode
    is farther than ``replan_off_plan`` (maze units) from where its plan puts it now. Neither: the
    Diffuser's published open loop. Named ``open_loop``, ``replan_<k>``, ``off_plan_<d>`` or
    ``replan_<k>+off_plan_<d>`` (``Protocol.parse`` reads the names back)."""

    replan_every: int | None = None
    replan_off_plan: float | None = None

    def __post_init__(self) -> None:
        require(self.replan_every is None or int(self.replan_every) >= 1,
                f"replan_every={self.replan_every} must be null or >= 1")
        require(self.replan_off_plan is None or float(self.replan_off_plan) > 0,
                f"replan_off_plan={self.replan_off_plan} must be null or a positive distance")

    @property
    def name(self) -> str:
        parts = ([f"replan_{self.replan_every}"] if self.replan_every is not None else []) + (
            [f"off_plan_{float(self.replan_off_plan):g}"] if self.replan_off_plan is not None else [])
        return "+".join(parts) or "open_loop"

    @classmethod
    def parse(cls, name: str) -> Protocol:
        """``Protocol`` from its name; ConfigError naming the forms for anything else."""
        every = off = None
        try:
            for part in ([] if name == "open_loop" else str(name).split("+")):
                kind, _, value = part.rpartition("_")
                if kind == "replan" and every is None:
                    every = int(value)
                elif kind == "off_plan" and off is None:
                    off = float(value)
                else:
                    raise ValueError(part)
        except ValueError:
            raise ConfigError(f"protocol {name!r} is not one of open_loop, replan_<k>, off_plan_<d>, "
                              "replan_<k>+off_plan_<d> (k steps, d maze units)") from None
        if (every is not None and every < 1) or (off is not None and not off > 0):
            raise ConfigError(f"protocol {name!r}: replan_<k> needs k >= 1 steps and off_plan_<d> a distance d > 0")
        return cls(every, off)

    def due(self, age: np.ndarray, xy: np.ndarray, plans: np.ndarray) -> np.ndarray:
        """Which episodes plan again now ([N] bool), ``age`` [N] steps into their plans in force ``plans``
        [N, H, >= 2] (positions first), at positions ``xy`` [N, 2]: those ``replan_every`` steps into
        theirs, and those farther than ``replan_off_plan`` from where it puts them now, once
        ``OFF_PLAN_COOLDOWN`` steps into it. The first plan (t = 0) is the caller's."""
        due = np.zeros(len(age), dtype=bool)
        if self.replan_every is not None:
            due |= age >= int(self.replan_every)
        if self.replan_off_plan is not None:
            expected = plans[np.arange(len(age)), np.minimum(age, plans.shape[1] - 1), :2]
            off = np.linalg.norm(xy - expected, axis=-1) > float(self.replan_off_plan)
            due |= off & (age >= OFF_PLAN_COOLDOWN)
        return due


# An episode that was just given a plan is not judged off it for this many steps: the controller needs a
# few steps to pull the agent onto a new plan, and replanning every step would cost a planner call per step.
OFF_PLAN_COOLDOWN = 8


def run_episodes(planner: Planner, env_name: str, resets: list[tuple[int, dict[str, Any]]],
                 replan_every: int | None = None, max_steps: int | None = None, progress: bool = False,
                 replan_off_plan: float | None = None) -> Rollouts:
    """Roll out ``planner`` + the published controller in one env per reset, all in lockstep.

    ``replan_every=None`` is the published open loop (one plan at t = 0); ``k`` plans again from the
    current state every k steps, the goal unchanged. ``replan_off_plan=d`` (maze units) plans again for
    an episode whose position is farther than d from where its plan says it should be now (at most once
    per ``OFF_PLAN_COOLDOWN`` steps): an agent that a plan has left behind, e.g. caught on a wall corner
    the plan cut, gets a plan from where it is; one that follows its plan keeps it. ``max_steps=None``
    is the env's episode length.
    """
    protocol = Protocol(replan_every, replan_off_plan)
    envs = [make_env(env_name) for _ in resets]
    steps = int(max_steps) if max_steps is not None else int(envs[0].spec.max_episode_steps)
    require(steps >= 1, f"max_steps={max_steps} must be positive")
    n = len(envs)
    states = np.zeros((n, steps + 1, 4))
    rewards = np.zeros((n, steps))
    tracking = np.full((n, steps), np.nan)
    for k, (env, (env_seed, options)) in enumerate(zip(envs, resets)):
        states[k, 0], _ = env.reset(seed=env_seed, options=options)
    goals = np.stack([np.asarray(env.get_wrapper_attr("goal"), dtype=np.float64) for env in envs])
    out = Rollouts(states=states, rewards=rewards, goals=goals, tracking=tracking)
    plan_seconds = sim_seconds = 0.0
    plans: np.ndarray | None = None
    plan_start = np.zeros(n, dtype=int)  # the step each episode's plan in force was made at
    for t in tqdm(range(steps), desc=f"{n} episodes of {env_name}", disable=not progress, leave=False):
        due = np.ones(n, dtype=bool) if plans is None else protocol.due(t - plan_start, states[:, t, :2], plans)
        if due.any():
            # Only the episodes that need a plan are planned for (one batched call): an open loop or a
            # fixed interval plans for all of them at once, off-plan replanning for a few.
            tic = time.perf_counter()
            new = np.asarray(planner(states[due, t].copy(), goals[due].copy()), dtype=np.float64)
            plan_seconds += time.perf_counter() - tic
            require(new.ndim == 3 and new.shape[0] == int(due.sum()) and new.shape[2] == 4,
                    f"the planner returned {new.shape}, expected [{int(due.sum())}, horizon, 4]")
            if plans is None:
                plans = new
            else:  # a new array each round, so the rounds kept in out.plans stay as they were
                plans = plans.copy()
                plans[due] = new
            plan_start[due] = t
            out.plans.append(plans)
            out.plan_steps.append(t)
            out.replanned.append(due)
        index = t - plan_start
        target = plan_target(plans, index)
        actions = controller_action(target, states[:, t])
        tic = time.perf_counter()
        for k, env in enumerate(envs):
            states[k, t + 1], rewards[k, t], _, _, _ = env.step(actions[k])
        sim_seconds += time.perf_counter() - tic
        covered = index + 1 < plans.shape[1]  # the plan still says where the agent should be after this step
        tracking[covered, t] = np.linalg.norm(states[covered, t + 1, :2] - target[covered, :2], axis=-1)
    for env in envs:
        env.close()
    out.seconds = {"planning": plan_seconds, "simulation": sim_seconds}
    return out


def _sem(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0


def rollout_metrics(env_name: str, rollouts: Rollouts) -> dict[str, Any]:
    """Scores, success rates, plan quality (walls, goal jump, tracking) and per-episode records."""
    r = rollouts
    returns = r.rewards.sum(axis=1)
    scores = np.asarray(normalized_score(env_name, returns), dtype=np.float64)
    reached = r.rewards > 0
    final = np.linalg.norm(r.states[:, -1, :2] - r.goals, axis=-1) <= GOAL_RADIUS
    first = [int(np.argmax(row)) + 1 if row.any() else None for row in reached]
    all_plans = np.stack(r.plans)  # [rounds, N, H, 4]
    new = np.stack(r.replanned)  # [rounds, N]: each plan counted once, in the round it was made
    walls = in_wall(env_name, all_plans[..., :2])  # [rounds, N, H]
    step_len = np.linalg.norm(np.diff(all_plans[..., :2], axis=2), axis=-1)  # [rounds, N, H - 1]
    tracking = r.tracking
    tracked = ~np.isnan(tracking)
    episodes = [{
        "start": r.states[k, 0].tolist(), "goal": r.goals[k].tolist(), "return": float(returns[k]),
        "score": float(scores[k]), "success": bool(reached[k].any()), "success_final": bool(final[k]),
        "first_step_in_goal": first[k], "plan_in_wall_fraction": float(walls[0, k].mean()),
        "tracking_error_mean": float(tracking[k, tracked[k]].mean()) if tracked[k].any() else None,
        "plans_made": int(new[:, k].sum()),
    } for k in range(len(returns))]
    return {
        "episodes": len(returns), "steps": int(r.rewards.shape[1]),
        "score_mean": float(scores.mean()), "score_sem": _sem(scores), "score_std": float(scores.std()),
        "return_mean": float(returns.mean()), "return_sem": _sem(returns),
        "success_rate": float(reached.any(axis=1).mean()), "success_rate_final": float(final.mean()),
        "success_definitions": SUCCESS_DEFINITIONS,
        "plan_in_wall_fraction": float(walls[new].mean()),
        "plans_touching_walls": float(walls.any(axis=-1)[new].mean()),
        "plan_rounds": len(r.plans), "plan_steps": list(r.plan_steps), "horizon": int(all_plans.shape[2]),
        "plans_per_episode": float(new.sum(axis=0).mean()),
        # A goal jump much larger than the median step means the goal was pasted onto a plan that went
        # elsewhere (inpainting forces the last state; it does not make the plan arrive there).
        "plan_step_median": float(np.median(step_len[new])), "plan_goal_jump_mean": float(step_len[..., -1][new].mean()),
        "tracking_error_mean": float(tracking[tracked].mean()) if tracked.any() else None,
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
                     progress: bool = False, replan_off_plan: float | None = None) -> Evaluation:
    """Score a loaded Diffuser by planning rollouts: ``episodes`` lockstep episodes of ``mode``.

    ``env_name=None`` is the checkpoint's maze (another maze is refused: the scaler and the horizon
    belong to the training maze). ``seed`` fixes the tasks and the sampling noise.
    """
    trained_on = loaded.cfg.env.name
    env_name = trained_on if env_name is None else env_name
    require(env_name == trained_on, f"the checkpoint was trained on {trained_on}, not {env_name}")
    resets = episode_resets(env_name, int(episodes), mode, int(seed), starts, goals)
    planner = DiffuserPlanner(loaded, sampler=sampler, num_steps=num_steps, seed=int(seed))
    start = time.perf_counter()
    rollouts = run_episodes(planner, env_name, resets, replan_every=replan_every, max_steps=max_steps,
                            progress=progress, replan_off_plan=replan_off_plan)
    metrics = {"env": env_name, "mode": mode, "seed": int(seed), "replan_every": replan_every,
               "replan_off_plan": replan_off_plan,
               "sampler": planner.sampler, "num_steps": planner.num_steps, "planner_calls": planner.calls,
               **rollout_metrics(env_name, rollouts), "rollout_seconds": round(time.perf_counter() - start, 3)}
    return Evaluation(metrics=metrics, rollouts=rollouts)
