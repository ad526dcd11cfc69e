"""Maze2d planning with a trained Diffuser: planner, the published controller, rollouts and their metrics;
``kinematic`` follows plans with OGBench's kinematic point on its fixed tasks.

``evaluate_planner(loaded, env_name, episodes, mode, seed, ...)`` is the entry point for studies;
``run_episodes`` takes any ``Planner`` callable, so hand-made plans go through the same rollout.
"""

from diffnorm.planning.controller import controller_action, plan_target
from diffnorm.planning.kinematic import OGBenchEvaluation, PlanFollower, evaluate_ogbench_planner
from diffnorm.planning.planner import DiffuserPlanner, GoalOnlyPlanner, Planner
from diffnorm.planning.rollout import (
    MODES,
    Evaluation,
    Rollouts,
    episode_resets,
    evaluate_planner,
    rollout_metrics,
    run_episodes,
)

__all__ = ["MODES", "DiffuserPlanner", "Evaluation", "GoalOnlyPlanner", "OGBenchEvaluation", "PlanFollower", "Planner",
           "Rollouts", "controller_action", "episode_resets", "evaluate_ogbench_planner", "evaluate_planner", "plan_target", "rollout_metrics",
           "run_episodes"]
