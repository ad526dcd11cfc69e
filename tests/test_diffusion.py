"""GaussianDiffusion against the published Diffuser formulas, computed independently here in float64."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from diffnorm.diffusion.gaussian import SAMPLERS, GaussianDiffusion, make_scheduler
from diffnorm.experiments.common import ConfigError
from diffnorm.models.temporal_unet import TemporalUnet

pytestmark = pytest.mark.usefixtures("single_thread")


def published_cosine_betas(T: int, s: float = 0.008) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule as the Diffuser uses it: alpha-bar on T + 1 grid points,
    normalised by its value at 0, betas from consecutive ratios, clipped to [0, 0.999]."""
    grid = np.arange(T + 1, dtype=np.float64) / T
    abar = np.cos((grid + s) / (1 + s) * math.pi / 2) ** 2
    abar = abar / abar[0]
    return np.clip(1 - abar[1:] / abar[:-1], 0, 0.999)


class Affine(nn.Module):
    """A deterministic stand-in denoiser whose output depends on x and t (and exceeds [-1, 1])."""

    transition_dim = 6

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(1.7))

    def forward(self, x, t):
        return self.w * torch.tanh(x) + 0.01 * t.float()[:, None, None]


@pytest.mark.parametrize("T", [64, 256])
def test_schedule_is_the_published_cosine_schedule(T):
    betas = published_cosine_betas(T)
    scheduler = make_scheduler("ddpm", T)
    np.testing.assert_allclose(scheduler.betas.double().numpy(), betas, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(scheduler.alphas_cumprod.double().numpy(), np.cumprod(1 - betas),
                               rtol=1e-5, atol=1e-7)
    assert betas[-1] == pytest.approx(0.999)  # the clip is active at the last step
    for sampler in SAMPLERS:
        np.testing.assert_allclose(make_scheduler(sampler, T).alphas_cumprod.double().numpy(),
                                   np.cumprod(1 - betas), rtol=1e-5, atol=1e-7)


def published_ddpm_sample(model, shape, conditions, T, generator, action_dim=2):
    """Janner's p_sample_loop: x0 prediction clipped, posterior mean, sqrt(posterior variance) noise
    except at t = 0, conditions applied at init and after every step."""
    betas = torch.tensor(published_cosine_betas(T))
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    coef1 = betas * abar_prev.sqrt() / (1 - abar)
    coef2 = (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar)
    var = betas * (1 - abar_prev) / (1 - abar)

    def condition(x):
        for step, state in conditions.items():
            x[:, step, action_dim:] = state
        return x

    x = condition(torch.randn(shape, generator=generator))
    for t in reversed(range(T)):
        x0 = model(x, torch.full((shape[0],), t)).clamp(-1, 1)
        mean = coef1[t] * x0 + coef2[t] * x
        if t > 0:
            mean = mean + var[t].sqrt() * torch.randn(shape, generator=generator)
        x = condition(mean.float())
    return x


def test_ddpm_sampling_equals_published_loop():
    T, H = 16, 8
    diffusion = GaussianDiffusion(Affine(), H, n_diffusion_steps=T)
    cond = {0: torch.randn(3, 4), H - 1: torch.randn(3, 4)}
    ours = diffusion.sample(cond, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = published_ddpm_sample(diffusion.model, (3, H, 6), cond, T, torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("num_steps", [None, 5])
def test_sampling_respects_conditions_shape_and_step_count(sampler, num_steps):
    T, H = 20, 16
    model = Affine()
    calls = []
    model.register_forward_hook(lambda _m, args, _o: calls.append(int(args[1][0])))
    diffusion = GaussianDiffusion(model, H, n_diffusion_steps=T)
    cond = {0: torch.full((2, 4), 0.3), H - 1: torch.full((2, 4), -0.4)}
    out = diffusion.sample(cond, sampler=sampler, num_steps=num_steps, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, H, 6)
    assert torch.equal(out[:, 0, 2:], cond[0]) and torch.equal(out[:, H - 1, 2:], cond[H - 1])
    assert torch.isfinite(out).all()
    assert len(calls) == (num_steps or T)
    assert calls[0] == T - 1, "every sampler starts from the pure-noise end of the schedule"
    again = diffusion.sample(cond, sampler=sampler, num_steps=num_steps, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_ddpm_output_is_clipped_x0():
    diffusion = GaussianDiffusion(Affine(), 8, n_diffusion_steps=8)
    out = diffusion.sample({0: torch.zeros(4, 4)}, generator=torch.Generator().manual_seed(1))
    assert out.abs().max() <= 1.0
    assert not GaussianDiffusion(Affine(), 8, n_diffusion_steps=8, clip_denoised=False).sample(
        {0: torch.zeros(4, 4)}, generator=torch.Generator().manual_seed(1)).abs().max() <= 1.0


class Spy(nn.Module):
    transition_dim = 6

    def __init__(self):
        super().__init__()
        self.seen = None
        self.p = nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        self.seen = (x.detach().clone(), t.clone())
        return torch.zeros_like(x) + self.p


def test_loss_applies_conditions_to_noisy_input_and_prediction():
    H = 12
    spy = Spy()
    diffusion = GaussianDiffusion(spy, H, n_diffusion_steps=64)
    x0 = torch.rand(5, H, 6) * 2 - 1
    cond = {0: x0[:, 0, 2:], H - 1: x0[:, H - 1, 2:]}
    loss = diffusion.loss(x0, cond, generator=torch.Generator().manual_seed(0))
    x_noisy, t = spy.seen
    assert torch.equal(x_noisy[:, 0, 2:], x0[:, 0, 2:]) and torch.equal(x_noisy[:, H - 1, 2:], x0[:, H - 1, 2:])
    assert ((0 <= t) & (t < 64)).all()
    # A zero prediction is wrong everywhere except the inpainted states, which are exact.
    target = x0.clone()
    target[:, [0, H - 1], 2:] = 0
    torch.testing.assert_close(loss, target.square().mean())
    loss.backward()
    assert spy.p.grad is not None


def _small_loss_problem() -> tuple[GaussianDiffusion, torch.Tensor, dict[int, torch.Tensor]]:
    torch.manual_seed(0)
    diffusion = GaussianDiffusion(TemporalUnet(16, 6, dim=8), 16, n_diffusion_steps=10)
    x0 = torch.rand(4, 16, 6) * 2 - 1
    return diffusion, x0, {0: x0[:, 0, 2:]}


def test_loss_noise_comes_from_the_generator():
    diffusion, x0, cond = _small_loss_problem()
    a = diffusion.loss(x0, cond, generator=torch.Generator().manual_seed(3))
    b = diffusion.loss(x0, cond, generator=torch.Generator().manual_seed(3))
    c = diffusion.loss(x0, cond, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_loss_accepts_a_compiled_denoiser():
    """A torch.compile'd module has no truth value; the loss must call it, not test it (a former bug)."""
    diffusion, x0, cond = _small_loss_problem()
    compiled = torch.compile(diffusion.model, backend="eager")  # dynamo tracing without codegen: fast on CPU
    a = diffusion.loss(x0, cond, generator=torch.Generator().manual_seed(3), denoiser=compiled)
    b = diffusion.loss(x0, cond, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


def test_noisy_input_follows_q_sample():
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with the published abar, eps from the generator."""
    T, H = 32, 8
    spy = Spy()
    diffusion = GaussianDiffusion(spy, H, n_diffusion_steps=T)
    x0 = torch.rand(6, H, 6)
    diffusion.loss(x0, {}, generator=torch.Generator().manual_seed(9))
    gen = torch.Generator().manual_seed(9)
    t = torch.randint(0, T, (6,), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    abar = torch.tensor(np.cumprod(1 - published_cosine_betas(T)), dtype=torch.float32)[t][:, None, None]
    x_noisy, seen_t = spy.seen
    assert torch.equal(seen_t, t)
    torch.testing.assert_close(x_noisy, abar.sqrt() * x0 + (1 - abar).sqrt() * eps)


@pytest.mark.parametrize("kwargs,match", [
    ({"sampler": "euler"}, "unknown sampler 'euler'"),
    ({"num_steps": 0}, "num_steps=0"),
    ({"num_steps": 99}, "num_steps=99"),
])
def test_bad_sampler_settings_raise(kwargs, match):
    diffusion = GaussianDiffusion(Affine(), 8, n_diffusion_steps=10)
    with pytest.raises(ConfigError, match=match):
        diffusion.sample({0: torch.zeros(1, 4)}, **kwargs)


def test_bad_conditions_raise():
    diffusion = GaussianDiffusion(Affine(), 8, n_diffusion_steps=10)
    with pytest.raises(ConfigError, match="outside horizon 8"):
        diffusion.sample({8: torch.zeros(1, 4)})
    with pytest.raises(ConfigError, match=r"must be \[batch, 4\]"):
        diffusion.sample({0: torch.zeros(1, 6)})
    with pytest.raises(ConfigError, match="transition_dim=6"):
        GaussianDiffusion(Affine(), 8, observation_dim=3, action_dim=2)


# ---- step sequences that do not divide the diffusion steps: every step lands on a listed timestep ----

DATA_VAR = 0.25  # x0 ~ N(0, 0.5² I)


class ExactDenoiser(nn.Module):
    """The exact posterior mean E[x0 | x_t] for x0 ~ N(0, 0.25 I): √ᾱ·0.25 / (ᾱ·0.25 + 1 − ᾱ) · x_t."""

    transition_dim = 6

    def __init__(self, abar: torch.Tensor):
        super().__init__()
        self.register_buffer("abar", abar.double())
        self.p = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x, t):
        a = self.abar[t][:, None, None]
        return (a.sqrt() * DATA_VAR / (a * DATA_VAR + 1 - a)) * x + self.p


def ddim_std_on_listed_timesteps(abar: np.ndarray, timesteps: list[int]) -> float:
    """The deterministic DDIM recursion for the exact denoiser, stepping between the *listed* timesteps
    and ending at ᾱ = 1, applied to unit-variance noise: the output's standard deviation."""
    std = 1.0
    for k, t in enumerate(timesteps):
        a = abar[t]
        c = np.sqrt(a) * DATA_VAR / (a * DATA_VAR + 1 - a)
        a_prev = abar[timesteps[k + 1]] if k + 1 < len(timesteps) else 1.0
        std *= np.sqrt(a_prev) * c + np.sqrt(1 - a_prev) * (1 - np.sqrt(a) * c) / np.sqrt(1 - a)
    return std


def sampled_std_factor(T: int, sampler: str, num_steps: int) -> float:
    """Output / initial noise of a deterministic sampler with the exact denoiser (linear in the noise, so
    the ratio is the same for every entry outside the conditioned one)."""
    abar = make_scheduler(sampler, T).alphas_cumprod
    diffusion = GaussianDiffusion(ExactDenoiser(abar), 4, n_diffusion_steps=T, clip_denoised=False).double()
    out = diffusion.sample({0: torch.zeros(2, 4, dtype=torch.float64)}, sampler=sampler, num_steps=num_steps,
                           generator=torch.Generator().manual_seed(0))
    noise = torch.randn((2, 4, 6), generator=torch.Generator().manual_seed(0)).double()
    ratio = out[:, 1:] / noise[:, 1:]
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-9), "the output is linear in the noise"
    return float(ratio.flatten()[0])


@pytest.mark.parametrize("T,num_steps,expected", [(64, 10, 0.4268), (64, 8, 0.4100), (32, 7, 0.3955),
                                                  (256, 100, 0.4918)])
def test_ddim_follows_the_listed_timesteps_to_a_clean_sample(T, num_steps, expected):
    """Before the fix T = 64, 10 steps gave 0.4564 and T = 256, 100 steps 0.5766 (steps of T // n)."""
    scheduler = make_scheduler("ddim", T)
    scheduler.set_timesteps(num_steps)
    recursion = ddim_std_on_listed_timesteps(scheduler.alphas_cumprod.double().numpy(),
                                             [int(t) for t in scheduler.timesteps])
    assert recursion == pytest.approx(expected, abs=5e-5)
    assert sampled_std_factor(T, "ddim", num_steps) == pytest.approx(recursion, rel=1e-6)


@pytest.mark.parametrize("T", [32, 64])
def test_ddim_matches_its_recursion_for_every_step_count(T):
    for num_steps in range(1, T + 1):
        scheduler = make_scheduler("ddim", T)
        scheduler.set_timesteps(num_steps)
        recursion = ddim_std_on_listed_timesteps(scheduler.alphas_cumprod.double().numpy(),
                                                 [int(t) for t in scheduler.timesteps])
        # float32 ᾱ and noise: a few 1e-6 relative where the factor is small by cancellation (T = 64, n = 49: 1.3e-5)
        assert sampled_std_factor(T, "ddim", num_steps) == pytest.approx(recursion, rel=1e-5, abs=1e-8), num_steps


@pytest.mark.parametrize("T", [32, 64])
def test_ddpm_steps_to_its_next_listed_timestep(T):
    """diffusers fixed DDPMScheduler upstream: its previous timestep is the next listed one, then -1 (ᾱ = 1)."""
    for num_steps in range(1, T + 1):
        scheduler = make_scheduler("ddpm", T)
        scheduler.set_timesteps(num_steps)
        listed = [int(t) for t in scheduler.timesteps]
        assert [int(scheduler.previous_timestep(t)) for t in listed] == [*listed[1:], -1], num_steps


class ConstantX0(nn.Module):
    """Predicts the same clean sample everywhere (1.7 outside [-1, 1], so clipping shows)."""

    transition_dim = 6

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(1.7))

    def forward(self, x, t):
        return torch.zeros_like(x) + self.p


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("T", [7, 32])
def test_every_sampler_and_step_count_ends_on_the_clipped_x0(sampler, T):
    diffusion = GaussianDiffusion(ConstantX0(), 8, n_diffusion_steps=T)
    for num_steps in range(1, T + 1):
        out = diffusion.sample({0: torch.zeros(2, 4)}, sampler=sampler, num_steps=num_steps,
                               generator=torch.Generator().manual_seed(num_steps))
        assert torch.equal(out[:, 1:], torch.ones_like(out[:, 1:])), (sampler, num_steps)
