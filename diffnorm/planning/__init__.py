"""Maze2d planning with a trained Diffuser: planner, the published controller, rollouts and their metrics.

``evaluate_planner(loaded, env_name, episodes, mode, seed, ...)`` is the entry point for studies;
``run_episodes`` takes any ``Planner`` callable, so hand-made plans go through the same rollout.
"""

from diffnorm.planning.controller import controller_action, plan_target
from diffnorm.planning.planner import DiffuserPlanner, GoalOnlyPlanner, Planner
from diffnorm.planning.rollout import (
    MODES,
    Evaluation,
    Rollouts,
    episode_resets,
    evaluate_planner,
    rollout_metrics,
    run_episodes,
    tracking_errors,
)

__all__ = ["MODES", "DiffuserPlanner", "Evaluation", "GoalOnlyPlanner", "Planner", "Rollouts", "controller_action", "episode_resets",
           "evaluate_planner", "plan_target", "rollout_metrics", "run_episodes", "tracking_errors"]
