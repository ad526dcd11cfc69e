"""Goal-conditioned planning with a trained Diffuser: inpaint the current state and the goal, sample, unscale.

Planning is Janner et al. (2022), Sec. 3 / App. C for maze2d: the state part of timestep 0 is the current
observation, that of timestep H - 1 is the goal with zero velocity, ``[gx, gy, 0, 0]``; one sample per
query. The observation width is the checkpoint's: OGBench's kinematic point observes ``[x, y]`` only, and
its goal state is ``[gx, gy]``. A batch of queries is one call of the sampler, so N episodes cost one denoising loop.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np
import torch

from diffnorm.diffusion.gaussian import SAMPLERS
from diffnorm.errors import require
from diffnorm.training.checkpoint import LoadedDiffuser


def goal_at_rest(goal_xy: np.ndarray, observation_dim: int) -> np.ndarray:
    """Goal states [B, observation_dim] from positions [B, 2]: any state beyond the position (maze2d's
    velocity) is zero."""
    return np.concatenate([goal_xy, np.zeros((len(goal_xy), observation_dim - 2))], axis=1)


class Planner(Protocol):
    """Anything that maps start states [B, O] and goal positions [B, 2] to planned states [B, H, O],
    all in maze (D4RL) units (O = 4 in maze2d, 2 on OGBench's point). The rollout needs nothing else, so tests can plant hand-made plans."""

    def __call__(self, start_obs: np.ndarray, goal_xy: np.ndarray) -> np.ndarray: ...


class DiffuserPlanner:
    """``plan(start_obs [B, O], goal_xy [B, 2]) -> [B, H, O]`` with a loaded Diffuser (EMA weights), O its
    observation width.

    ``sampler``/``num_steps`` override the checkpoint's sampler (``None`` keeps it: DDPM over all steps,
    as published). Noise comes from one CPU generator seeded with ``seed``, so a seed gives the same
    plans on any device; successive calls (replanning) continue the same stream.
    """

    def __init__(self, loaded: LoadedDiffuser, sampler: str | None = None, num_steps: int | None = None,
                 seed: int = 0):
        diffusion = loaded.diffusion
        self.diffusion = diffusion
        self.scaler = loaded.scaler
        self.horizon = int(diffusion.horizon)
        self.observation_dim = int(diffusion.observation_dim)
        self.sampler = sampler if sampler is not None else diffusion.default_sampler
        steps = num_steps if num_steps is not None else diffusion.default_num_steps
        self.num_steps = int(steps) if steps is not None else int(diffusion.n_diffusion_steps)
        # Checked here, so a bad override fails before any episode runs rather than at the first plan.
        require(self.sampler in SAMPLERS, f"sampler={self.sampler!r} is unknown; choose one of {list(SAMPLERS)}")
        require(1 <= self.num_steps <= diffusion.n_diffusion_steps,
                f"num_steps={self.num_steps} must lie in [1, {diffusion.n_diffusion_steps}] (the checkpoint's "
                f"diffusion steps)")
        self.generator = torch.Generator().manual_seed(int(seed))
        self.device = next(diffusion.parameters()).device
        self.calls = 0
        self.plans_made = 0
        self.seconds = 0.0

    def plan(self, start_obs: np.ndarray, goal_xy: np.ndarray) -> np.ndarray:
        """Planned states [B, H, O] in maze units from start states [B, O] and goal positions [B, 2]."""
        start_obs = np.asarray(start_obs, dtype=np.float64)
        goal_xy = np.asarray(goal_xy, dtype=np.float64)
        obs_dim = self.observation_dim
        require(start_obs.ndim == 2 and start_obs.shape[1] == obs_dim,
                f"start_obs must be [batch, {obs_dim}], got {start_obs.shape}")
        require(goal_xy.shape == (len(start_obs), 2), f"goal_xy must be [{len(start_obs)}, 2], got {goal_xy.shape}")
        goal_state = goal_at_rest(goal_xy, obs_dim)
        conditions = {
            0: torch.as_tensor(self.scaler.normalize_observations(start_obs), dtype=torch.float32, device=self.device),
            self.horizon - 1: torch.as_tensor(self.scaler.normalize_observations(goal_state), dtype=torch.float32,
                                              device=self.device),
        }
        start = time.perf_counter()
        plans = self.diffusion.sample(conditions, sampler=self.sampler, num_steps=self.num_steps,
                                      generator=self.generator)
        observations = plans[..., self.diffusion.action_dim:].detach().to("cpu", torch.float64).numpy()
        self.seconds += time.perf_counter() - start
        self.calls += 1
        self.plans_made += len(start_obs)
        return self.scaler.unnormalize_observations(observations)

    __call__ = plan


class GoalOnlyPlanner:
    """The floor a learnt planner must beat: the plan ``[start, goal at rest]``, so the controller (the
    published one, or OGBench's kinematic follower) steers straight at the goal from the first step
    (walls in the way stop it, or the point slides along them)."""

    def __call__(self, start_obs: np.ndarray, goal_xy: np.ndarray) -> np.ndarray:
        start_obs = np.asarray(start_obs, dtype=np.float64)
        goal_xy = np.asarray(goal_xy, dtype=np.float64)
        return np.stack([start_obs, goal_at_rest(goal_xy, start_obs.shape[1])], axis=1)
