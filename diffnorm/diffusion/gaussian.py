"""The Diffuser's diffusion model (Janner et al. 2022, Sec. 3 and App. C) on diffusers schedulers.

Trajectories are x [batch, horizon, action_dim + observation_dim], actions first. The network predicts
x0 (not the noise); the schedule is the cosine one (s = 0.008, betas clipped at 0.999, which diffusers
calls ``squaredcos_cap_v2``); predicted x0 is clipped to [-1, 1]; the training loss is plain L2 on x0.
Goal-conditioned planning is inpainting: the state part of given timesteps (start at 0, goal at H-1) is
overwritten in the noisy input and in the prediction while training, and at initialisation and after
every denoising step while sampling. The published sampler is DDPM ancestral sampling over all steps;
DDIM and DPM-Solver++ with fewer steps are options for faster planning.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import nn
from tqdm.auto import tqdm

from diffnorm.errors import ConfigError, require

Conditions = Mapping[int, torch.Tensor]
SAMPLERS = ("ddpm", "ddim", "dpm")


def make_scheduler(sampler: str, n_diffusion_steps: int) -> SchedulerMixin:
    """A fresh diffusers scheduler on the published cosine schedule with x0 prediction.

    Schedulers keep per-run state (``set_timesteps``), so each sampling run gets its own. Clipping of x0
    happens in ``GaussianDiffusion`` (the same line for every sampler: DPM-Solver has no clip option).
    ``trailing`` spacing makes a shortened run start at the last training step, i.e. from pure noise.
    DDIM's own ``step`` assumes the listed timesteps are T // n apart, which they are not when n does not
    divide T; ``GaussianDiffusion.sample`` therefore takes DDIM's update from ``ddim_step`` on the listed
    timesteps and uses this scheduler only for the timesteps and ᾱ.
    """
    common = {"num_train_timesteps": n_diffusion_steps, "beta_schedule": "squaredcos_cap_v2",
              "prediction_type": "sample", "timestep_spacing": "trailing"}
    if sampler == "ddpm":
        # fixed_small = the true posterior variance beta_t (1 - abar_{t-1}) / (1 - abar_t), as published.
        return DDPMScheduler(**common, variance_type="fixed_small", clip_sample=False)
    if sampler == "ddim":
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True)
    if sampler == "dpm":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
    raise ConfigError(f"unknown sampler {sampler!r}; choose one of {list(SAMPLERS)}")


def ddim_step(x0: torch.Tensor, x: torch.Tensor, abar: torch.Tensor, abar_prev: torch.Tensor) -> torch.Tensor:
    """One deterministic DDIM update (Song et al. 2021, Eq. 12 with eta = 0) from x_t, with ᾱ_t = ``abar``,
    to the next listed timestep, with ᾱ = ``abar_prev``, given the predicted clean sample ``x0``."""
    eps = (x - abar.sqrt() * x0) / (1.0 - abar).sqrt()
    return abar_prev.sqrt() * x0 + (1.0 - abar_prev).sqrt() * eps


class GaussianDiffusion(nn.Module):
    """x0-predicting diffusion over trajectories with start/goal inpainting; wraps a [B, H, D] denoiser.

    ``model(x [B, H, D], t [B]) -> [B, H, D]`` is the only learned part (and the only submodule), so the
    state_dict of this module is the network's, prefixed with ``model.``.
    """

    def __init__(self, model: nn.Module, horizon: int, observation_dim: int = 4, action_dim: int = 2,
                 n_diffusion_steps: int = 64, clip_denoised: bool = True, sampler: str = "ddpm",
                 num_steps: int | None = None):
        super().__init__()
        require(n_diffusion_steps >= 2, f"n_diffusion_steps={n_diffusion_steps} must be at least 2")
        require(observation_dim >= 1 and action_dim >= 0,
                f"observation_dim={observation_dim} and action_dim={action_dim} must be positive")
        transition_dim = getattr(model, "transition_dim", observation_dim + action_dim)
        require(transition_dim == observation_dim + action_dim,
                f"model transition_dim={transition_dim} != action_dim {action_dim} + observation_dim "
                f"{observation_dim}")
        self.model = model
        self.horizon = horizon
        self.observation_dim = observation_dim
        self.action_dim = action_dim
        self.transition_dim = transition_dim
        self.n_diffusion_steps = n_diffusion_steps
        self.clip_denoised = clip_denoised
        self.default_sampler = self._check_sampler(sampler, num_steps)
        self.default_num_steps = num_steps
        # Training only needs the forward process q(x_t | x_0), the same for every sampler.
        self.noise_schedule = make_scheduler("ddpm", n_diffusion_steps)

    def _check_sampler(self, sampler: str, num_steps: int | None) -> str:
        require(sampler in SAMPLERS, f"unknown sampler {sampler!r}; choose one of {list(SAMPLERS)}")
        require(num_steps is None or 1 <= num_steps <= self.n_diffusion_steps,
                f"num_steps={num_steps} must lie in [1, n_diffusion_steps={self.n_diffusion_steps}]")
        return sampler

    def apply_conditions(self, x: torch.Tensor, conditions: Conditions) -> torch.Tensor:
        """Overwrite the state part of the conditioned timesteps (out of place, so autograd sees it)."""
        if not conditions:
            return x
        x = x.clone()
        for step, state in conditions.items():
            x[:, step, self.action_dim:] = state.to(device=x.device, dtype=x.dtype)
        return x

    def _check_conditions(self, conditions: Conditions, horizon: int, batch: int | None) -> int:
        for step, state in conditions.items():
            require(-horizon <= int(step) < horizon, f"condition at timestep {step} is outside horizon {horizon}")
            require(state.dim() == 2 and state.shape[1] == self.observation_dim,
                    f"condition at timestep {step} must be [batch, {self.observation_dim}], got "
                    f"{list(state.shape)}")
            require(batch is None or state.shape[0] == batch,
                    f"condition at timestep {step} has batch {state.shape[0]}, expected {batch}")
            batch = state.shape[0]
        require(batch is not None, "sample() needs at least one condition to know the batch size")
        return batch

    def draw(self, shape: torch.Size | tuple[int, ...], generator: torch.Generator | None = None,
             dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """The randomness of one training batch of ``shape`` [B, H, D]: steps t [B] and noise, on the CPU.

        Drawn for a whole batch at once, so data-parallel workers (DDP ranks, CPU shards) can each take
        their rows of the same draw and together compute exactly the single-process loss.
        """
        t = torch.randint(0, self.n_diffusion_steps, (shape[0],), generator=generator)
        return t, torch.randn(tuple(shape), generator=generator, dtype=dtype)

    def loss(self, x0: torch.Tensor, conditions: Conditions, generator: torch.Generator | None = None,
             denoiser: nn.Module | None = None, drawn: tuple[torch.Tensor, torch.Tensor] | None = None
             ) -> torch.Tensor:
        """Mean L2 between the conditioned x0 prediction and x0, at uniformly drawn diffusion steps.

        Randomness (steps and noise) comes from ``generator`` (a CPU generator, so runs are reproducible
        on any device), or is given as ``drawn`` = (t, noise) rows of a ``draw`` for a larger batch.
        ``denoiser`` replaces ``self.model`` for the call, e.g. its torch.compile'd or DDP-wrapped form.
        """
        batch = x0.shape[0]
        self._check_conditions(conditions, x0.shape[1], batch)
        t, noise = drawn if drawn is not None else self.draw(x0.shape, generator, x0.dtype)
        require(t.shape == (batch,) and noise.shape == x0.shape,
                f"drawn t {list(t.shape)} and noise {list(noise.shape)} do not fit x0 {list(x0.shape)}")
        t, noise = t.to(x0.device), noise.to(x0.device)
        x_noisy = self.apply_conditions(self.noise_schedule.add_noise(x0, noise, t), conditions)
        x_recon = self.apply_conditions((self.model if denoiser is None else denoiser)(x_noisy, t), conditions)
        return (x_recon.float() - x0.float()).square().mean()

    @torch.no_grad()
    def sample(self, conditions: Conditions, sampler: str | None = None, num_steps: int | None = None,
               generator: torch.Generator | None = None, horizon: int | None = None,
               progress: bool = False) -> torch.Tensor:
        """Plans [batch, horizon, D] in the model's (scaled) units, given states {timestep: [batch, obs_dim]}.

        ``sampler``/``num_steps`` default to the ones given at construction (DDPM over all steps unless
        changed). Noise is drawn from ``generator`` on the CPU, so a seed gives the same plans everywhere.
        Every step goes to the scheduler's next listed timestep, and the last step returns the network's
        (clipped) x0 itself, so any ``num_steps`` in [1, n_diffusion_steps] ends on a clean sample.
        """
        sampler = sampler if sampler is not None else self.default_sampler
        num_steps = num_steps if num_steps is not None else self.default_num_steps
        self._check_sampler(sampler, num_steps)
        num_steps = num_steps if num_steps is not None else self.n_diffusion_steps
        horizon = horizon or self.horizon
        batch = self._check_conditions(conditions, horizon, None)
        device = next(self.model.parameters()).device
        scheduler = make_scheduler(sampler, self.n_diffusion_steps)
        scheduler.set_timesteps(num_steps, device=device)
        x = torch.randn((batch, horizon, self.transition_dim), generator=generator).to(device)
        x = x * scheduler.init_noise_sigma  # 1 for these variance-preserving schedulers
        x = self.apply_conditions(x, conditions)
        timesteps = [int(t) for t in scheduler.timesteps]
        abar = scheduler.alphas_cumprod.to(device=device, dtype=x.dtype)
        for k, t in enumerate(tqdm(timesteps, desc=f"{sampler} sampling", disable=not progress, leave=False)):
            x0 = self.model(x, torch.full((batch,), t, device=device, dtype=torch.long))
            if self.clip_denoised:
                x0 = x0.clamp(-1.0, 1.0)
            if k == len(timesteps) - 1:
                x = x0  # the step after the last listed timestep is the clean sample (ᾱ = 1)
            elif sampler == "ddim":
                x = ddim_step(x0, x, abar[t], abar[timesteps[k + 1]])
            else:
                # diffusers' DDPM and DPM-Solver++ step to their own next listed timestep. The schedulers
                # treat dim 1 as channels only for shape bookkeeping; [B, H, D] works as is.
                x = scheduler.step(x0, t, x, generator=generator).prev_sample
            x = self.apply_conditions(x, conditions)
        return x
