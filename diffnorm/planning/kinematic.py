"""Following Diffuser plans with OGBench's kinematic point, and scoring them on OGBench's fixed tasks.

maze2d's PD controller (``controller.py``) steers a point with momentum; OGBench's point has none: an
action moves it by ``OGBENCH_STEP`` cells per unit (clipped), and it observes only [x, y]. So the follower
steers straight at the next planned position (``kinematic_action``), and replans from where the point is
every ``replan_every`` steps: OGBench's tasks take 90–400 steps, more than a 192-step plan covers when the
goal is far, so the open loop of the maze2d protocol would rarely arrive.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffnorm.envs.maze2d import in_wall
from diffnorm.envs.ogbench_maze import evaluate_ogbench, kinematic_action
from diffnorm.errors import require
from diffnorm.planning.planner import DiffuserPlanner, Planner
from diffnorm.training.checkpoint import LoadedDiffuser


@dataclass
class PlanFollower:
    """A ``policy(xy [N, 2], goal [N, 2]) -> actions [N, 2]`` (D4RL frame) that plans with ``planner`` at
    its first call and every ``replan_every`` calls after (``None``: never again), and in between steers
    at plan step k + 1 when k steps into the plan; past the plan's end it holds its last position.

    Rows are episodes in a fixed order (``evaluate_ogbench`` keeps them so). Every plan made is kept in
    ``plans`` ([N, H, 2] positions) with the step it was made at in ``plan_steps``, for metrics and figures.
    """

    planner: Planner
    replan_every: int | None = None
    plans: list[np.ndarray] = field(default_factory=list)
    plan_steps: list[int] = field(default_factory=list)
    seconds: float = 0.0
    _step: int = 0

    def __post_init__(self) -> None:
        require(self.replan_every is None or int(self.replan_every) >= 1,
                f"replan_every={self.replan_every} must be null or >= 1")

    def __call__(self, xy: np.ndarray, goal_xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, dtype=np.float64)
        due = not self.plans or (self.replan_every is not None and self._step - self.plan_steps[-1] >= int(self.replan_every))
        if due:
            tic = time.perf_counter()
            plans = np.asarray(self.planner(xy.copy(), np.asarray(goal_xy, dtype=np.float64).copy()), dtype=np.float64)
            self.seconds += time.perf_counter() - tic
            require(plans.ndim == 3 and plans.shape[0] == len(xy) and plans.shape[2] >= 2,
                    f"the planner returned {plans.shape}, expected [{len(xy)}, horizon, >= 2]")
            self.plans.append(plans[..., :2])
            self.plan_steps.append(self._step)
        plan = self.plans[-1]
        index = min(self._step - self.plan_steps[-1] + 1, plan.shape[1] - 1)
        self._step += 1
        return kinematic_action(plan[:, index], xy)


@dataclass
class OGBenchEvaluation:
    """OGBench's verdict (``evaluate_ogbench``'s dict: success per task, paths) and the follower's plans."""

    result: dict[str, Any]
    plans: list[np.ndarray]
    plan_steps: list[int]
    planning_seconds: float


def evaluate_ogbench_planner(loaded: LoadedDiffuser, maze: str, episodes_per_task: int = 5, seed: int = 0,
                             replan_every: int | None = 32, task_ids: list[int] | None = None,
                             sampler: str | None = None, num_steps: int | None = None,
                             max_steps: int | None = None) -> OGBenchEvaluation:
    """A loaded Diffuser + ``PlanFollower`` on OGBench's fixed tasks of ``maze``, scored by the env's own
    ``info["success"]``. ``seed`` fixes OGBench's start/goal noise and the sampling noise."""
    trained_on = loaded.cfg.env.name
    require(trained_on == maze, f"the checkpoint was trained on {trained_on}, not {maze}")
    require(int(loaded.diffusion.observation_dim) == 2,
            f"the checkpoint observes {loaded.diffusion.observation_dim} dims; OGBench's point observes [x, y]")
    follower = PlanFollower(DiffuserPlanner(loaded, sampler=sampler, num_steps=num_steps, seed=int(seed)), replan_every)
    result = evaluate_ogbench(follower, maze, episodes_per_task=episodes_per_task, seed=seed, task_ids=task_ids,
                              keep_paths=True, max_steps=max_steps)
    return OGBenchEvaluation(result=result, plans=follower.plans, plan_steps=follower.plan_steps,
                             planning_seconds=follower.seconds)


def plans_in_wall_fraction(maze: str, plans: list[np.ndarray], plan_steps: list[int], episode_steps: np.ndarray
                           ) -> np.ndarray:
    """Per episode, the fraction of planned positions inside walls over the plans made while it ran
    (a plan made after an episode ended, for its frozen row, is not its plan)."""
    fractions = np.zeros(len(episode_steps))
    for k, steps in enumerate(np.asarray(episode_steps)):
        mine = [p[k] for p, t in zip(plans, plan_steps) if t < steps]
        fractions[k] = float(in_wall(maze, np.stack(mine)).mean())
    return fractions
