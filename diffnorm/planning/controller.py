"""The Diffuser's maze2d controller (Janner et al. 2022; ``scripts/plan_maze2d.py`` of the maze2d branch).

The plan is a sequence of states; the agent steers at the state one step ahead of its place in the plan:

    action = (target.xy - state.xy) + (target.v - state.v),  clipped to [-1, 1]

where ``target = plan[k + 1]`` at plan step ``k``. Once the plan is used up (``k >= H - 1``) the target is
the last planned state with zero velocity, so the agent brakes at the plan's end (the goal). The plan's
actions are not used, as published.
"""

from __future__ import annotations

import numpy as np

from diffnorm.errors import require


def plan_target(plans: np.ndarray, index: int | np.ndarray) -> np.ndarray:
    """The state [B, 4] to steer at when the agent is at step ``index`` (one for all, or one per episode
    [B]) of plans [B, H, 4] (maze units): the plan's next state, or its last one held still at the end."""
    plans = np.asarray(plans, dtype=np.float64)
    require(plans.ndim == 3 and plans.shape[-1] == 4, f"plans must be [batch, horizon, 4], got {plans.shape}")
    index = np.broadcast_to(np.asarray(index), (plans.shape[0],))
    require(bool((index >= 0).all()), f"plan index {index} must be non-negative")
    ended = index + 1 >= plans.shape[1]
    target = plans[np.arange(plans.shape[0]), np.minimum(index + 1, plans.shape[1] - 1)].copy()
    target[ended, 2:] = 0.0  # hold at the plan's end instead of flying on at its last velocity
    return target


def controller_action(target: np.ndarray, state: np.ndarray) -> np.ndarray:
    """Actions [B, 2] = clip((target.xy - state.xy) + (target.v - state.v), -1, 1) for states [B, 4]."""
    target = np.asarray(target, dtype=np.float64)
    state = np.asarray(state, dtype=np.float64)
    require(target.shape == state.shape and target.shape[-1] == 4,
            f"target {target.shape} and state {state.shape} must both be [..., 4]")
    action = (target[..., :2] - state[..., :2]) + (target[..., 2:] - state[..., 2:])
    return np.clip(action, -1.0, 1.0)
