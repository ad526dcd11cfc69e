"""What a trained denoiser's norm carries beyond its receptive field, measured on dataset windows.

Three measurements of one network (Pfrommer et al. 2025, Sec. 2 and Definition 2.3, applied to the
Diffuser's U-Net), each independent of the others:

* ``measure_influence``: influence maps |d out_i / d in_j| on noisy windows at several diffusion steps,
  their offset profiles and the share of their mass beyond the receptive field;
* ``measure_probes``: probe localization at every probe site, counting localized indices whose reach
  excludes both ends of the plan;
* ``measure_leakage``: the output change far from a changed goal (start) condition, in one forward pass
  and over the whole sampling chain;
* ``measure``: the first and third for *any* temporal denoiser (a diffusers ``UNet1DModel``, another
  paper's network), on Gaussian windows, without a dataset or a diffnorm checkpoint.

For a network without a time-pooling norm the first and the one-pass part of the third are exactly zero,
and the second finds nothing beyond the receptive field: everything non-zero there is the side channel.
The inputs are windows of a ``SequenceDataset`` (``dataset_windows``); the configs are the ``influence``,
``probe`` and ``leakage`` groups of the leak-probe job (any object with those attributes).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from diffnorm.analysis import influence
from diffnorm.analysis.receptive_field import receptive_field
from diffnorm.diffusion.gaussian import GaussianDiffusion
from diffnorm.errors import require
from diffnorm.probing.hooks import record_activations
from diffnorm.probing.probes import localize_sites
from diffnorm.toy.localization import ramp_target
from diffnorm.training.step import collate

CONDITION_STEP = {"start": 0, "goal": -1}  # which inpainted timestep each named condition sits at


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """The sampler draws its noise in the default dtype; a float64 network needs float64 noise."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def dataset_windows(dataset: Any, n: int, seed: int, dtype: torch.dtype
                    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """``n`` random windows x0 [n, H, D] and their start/goal conditions {timestep: [n, obs_dim]}."""
    require(len(dataset) >= n, f"the dataset has {len(dataset)} windows; {n} are needed")
    picks = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    x0, conditions = collate([dataset[i] for i in picks], torch.device("cpu"))
    return x0.to(dtype), {k: v.to(dtype) for k, v in conditions.items()}


def diffusion_steps(diffusion: GaussianDiffusion, fractions: list[float]) -> list[int]:
    """The diffusion steps at ``fractions`` of the chain (0 = the cleanest, 1 = pure noise), sorted, unique."""
    for f in fractions:
        require(0.0 <= float(f) <= 1.0, f"diffusion-step fraction {f} must lie in [0, 1]")
    last = diffusion.n_diffusion_steps - 1
    return sorted({round(float(f) * last) for f in fractions})


def _noisy(diffusion: GaussianDiffusion, x0: torch.Tensor, conditions: dict[int, torch.Tensor], step: int,
           seed: int) -> torch.Tensor:
    """x_t of the forward process at diffusion step ``step``, conditions inpainted (the denoiser's input)."""
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    t = torch.full((len(x0),), step, dtype=torch.long)
    x_t = diffusion.noise_schedule.add_noise(x0.float(), noise, t).to(x0.dtype)
    return diffusion.apply_conditions(x_t, conditions)


def _changed(conditions: dict[int, torch.Tensor], step: int) -> dict[int, torch.Tensor]:
    """The same conditions with the one at ``step`` taken from the next window (a real, different state)."""
    changed = dict(conditions)
    changed[step] = conditions[step].roll(1, dims=0)
    return changed


# ------------------------------------------------------------------------------------------- measurements

def measure_influence(diffusion: GaussianDiffusion, x0: torch.Tensor, conditions: dict[int, torch.Tensor],
                      left: int, right: int, cfg: Any, seed: int) -> dict[str, Any]:
    """Influence maps at each configured diffusion step, their offset profiles and beyond-RF mass."""
    length = x0.shape[1]
    require(cfg.row_stride >= 1, f"influence.row_stride={cfg.row_stride} must be positive")
    rows = np.arange(0, length, cfg.row_stride)
    outside = influence.beyond_band(rows, length, left, right)
    maps, per_step = [], []
    for step in diffusion_steps(diffusion, list(cfg.t_fractions)):
        x_t = _noisy(diffusion, x0, conditions, step, seed + step)
        t = torch.full((len(x0),), step, dtype=torch.long)
        imap = influence.influence_map(diffusion.model, x_t, t, rows, chunk_size=cfg.chunk_size).double().numpy()
        maps.append(imap)
        _, profile = influence.offset_profile(imap, rows)
        per_step.append({"t": step, "beyond_rf_fraction": influence.beyond_fraction(imap, outside),
                         "max_beyond_rf": float(imap[outside].max()) if outside.any() else 0.0,
                         "max_within_rf": float(imap[~outside].max()), "profile": profile})
    mean_map = np.mean(maps, axis=0)
    offsets, profile = influence.offset_profile(mean_map, rows)
    return {"rows": rows, "map": mean_map, "offsets": offsets, "profile": profile, "per_step": per_step,
            "beyond_rf_fraction": influence.beyond_fraction(mean_map, outside),
            "max_beyond_rf": float(mean_map[outside].max()) if outside.any() else 0.0}


def _activations(model: torch.nn.Module, sites: list[str], x: torch.Tensor, t: torch.Tensor,
                 batch_size: int) -> list[torch.Tensor]:
    chunks: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    with torch.no_grad(), record_activations(model, sites) as acts:
        for start in range(0, len(x), batch_size):
            model(x[start:start + batch_size], t[start:start + batch_size])
            for s in sites:
                chunks[s].append(acts[s].float())
    return [torch.cat(chunks.pop(s)) for s in sites]  # pop: one site's chunks and its copy at a time


def _probe_inputs(diffusion: GaussianDiffusion, dataset: Any, n: int, cfg: Any, seed: int,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``noise``: x_T ~ N(0, I) with dataset start/goal inpainted, the sampler's first input, whose
    interior is stationary; ``dataset``: noisy dataset windows at step ``t_fraction``."""
    require(cfg.inputs in ("noise", "dataset"), f"probe.inputs={cfg.inputs!r}; choose 'noise' or 'dataset'")
    (step,) = diffusion_steps(diffusion, [cfg.t_fraction])
    x0, conditions = dataset_windows(dataset, n, seed, dtype)
    if cfg.inputs == "noise":
        x = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float32)
        x = diffusion.apply_conditions(x.to(dtype), conditions)
    else:
        x = _noisy(diffusion, x0, conditions, step, seed + 1)
    return x, torch.full((n,), step, dtype=torch.long)


def measure_probes(diffusion: GaussianDiffusion, dataset: Any, sites: list[str], reaches: dict[str, influence.Reach],
                   left: int, right: int, cfg: Any, seed: int, dtype: torch.dtype) -> dict[str, Any]:
    """Definition 2.3 on probes at every site (ramp target over the site's length), and how many
    localized indices lie beyond the network's (and the site's own) receptive field from both ends."""
    model = diffusion.model
    length = int(diffusion.horizon)
    multiple = int(getattr(model, "length_multiple", 1))
    x_train, t_train = _probe_inputs(diffusion, dataset, cfg.n_train, cfg, seed, dtype)
    x_test, t_test = _probe_inputs(diffusion, dataset, cfg.n_test, cfg, seed + 7919, dtype)
    train = _activations(model, sites, x_train, t_train, cfg.forward_batch)
    test = _activations(model, sites, x_test, t_test, cfg.forward_batch)
    # Neighbours one stride phase apart: the network is equivariant to input shifts by `multiple` only.
    periods = [max(1, multiple // reaches[s].stride) for s in sites]
    masks = localize_sites(train, test, ramp_target, cfg.alpha, steps=cfg.steps,
                           hidden=cfg.hidden, batch_size=cfg.batch_size, lr=cfg.lr,
                           seed=seed, periods=periods)
    per_site = {}
    for site, mask, period in zip(sites, masks, periods):
        reach = reaches[site]
        beyond_net = influence.interior_mask(length, influence.Reach(left, right, reach.stride))
        beyond_own = influence.interior_mask(length, reach)
        per_site[site] = {"stride": reach.stride, "reach": [reach.left, reach.right], "period": period,
                          "localized": np.flatnonzero(mask), "n_localized": int(mask.sum()),
                          "beyond_rf": int(beyond_net.sum()), "localized_beyond_rf": int((mask & beyond_net).sum()),
                          "beyond_own_rf": int(beyond_own.sum()),
                          "localized_beyond_own_rf": int((mask & beyond_own).sum())}
    return {"inputs": cfg.inputs, "t": int(t_train[0]), "masks": masks, "sites": per_site,
            "localized_beyond_rf": sum(s["localized_beyond_rf"] for s in per_site.values()),
            "sites_localizing_beyond_rf": sum(s["localized_beyond_rf"] > 0 for s in per_site.values()),
            "localized_beyond_own_rf": sum(s["localized_beyond_own_rf"] for s in per_site.values())}


def measure_leakage(diffusion: GaussianDiffusion, x0: torch.Tensor, conditions: dict[int, torch.Tensor],
                    left: int, right: int, cfg: Any, seed: int, dtype: torch.dtype) -> dict[str, Any]:
    """Per condition (goal / start): output change at indices blind to it, one pass and whole chain."""
    length = x0.shape[1]
    result = {}
    for name in cfg.conditions:
        require(name in CONDITION_STEP, f"leakage.conditions entry {name!r}; choose from {list(CONDITION_STEP)}")
        position = CONDITION_STEP[name] % length
        require(position in conditions, f"the model is not conditioned at timestep {position} ({name})")
        changed = _changed(conditions, position)
        blind = influence.blind_to(length, position, left, right)
        one_pass = []
        for step in diffusion_steps(diffusion, list(cfg.t_fractions)):
            x_t = _noisy(diffusion, x0, conditions, step, seed + step)
            t = torch.full((len(x0),), step, dtype=torch.long)
            delta = influence.condition_leakage(diffusion, x_t, t, conditions, changed).double().numpy()
            one_pass.append({"t": step, "delta": delta, **_blind_stats(delta, blind)})
        n_chain = cfg.chain_samples
        chain_conditions = {k: v[:n_chain] for k, v in conditions.items()}
        with default_dtype(dtype):
            chain = influence.chain_leakage(diffusion, chain_conditions, _changed(chain_conditions, position), seed,
                                            sampler=cfg.sampler, num_steps=cfg.num_steps)
        plan = chain["plan"].double().numpy()
        per_step = chain["per_step"].double().numpy()
        distance = np.abs(np.arange(length) - position)
        result[name] = {
            "position": position, "n_blind": int(blind.sum()), "one_pass": one_pass,
            "one_pass_max_beyond_rf": max(p["max_beyond_rf"] for p in one_pass),
            "one_pass_mean_beyond_rf": float(np.mean([p["mean_beyond_rf"] for p in one_pass])),
            "chain": {"plan_delta": plan, **_blind_stats(plan, blind),
                      "per_step_mean_beyond_rf": per_step[:, blind].mean(1) if blind.any() else np.zeros(len(per_step)),
                      # farthest index the change has reached at each denoising step (exact non-zero)
                      "reach_per_step": [int(distance[d > 0].max()) if (d > 0).any() else 0 for d in per_step]},
        }
    return result


def _blind_stats(delta: np.ndarray, blind: np.ndarray) -> dict[str, float]:
    seen = delta[~blind].mean() if (~blind).any() else 0.0
    beyond = delta[blind].mean() if blind.any() else 0.0
    return {"mean_beyond_rf": float(beyond), "max_beyond_rf": float(delta[blind].max()) if blind.any() else 0.0,
            "mean_within_rf": float(seen), "ratio_beyond_to_within": float(beyond / seen) if seen > 0 else 0.0}


# ----------------------------------------------------------------------------- any temporal denoiser

class SequenceDenoiser(nn.Module):
    """Any temporal denoiser seen as ``f(x [B, H, D], t [B]) -> [B, H, D]``, with what the analysis reads
    (``sequence_axis``, ``length_multiple``, ``transition_dim``, ``receptive_field_inputs``).

    ``layout="BDH"`` adapts a network that takes and returns [B, D, H] (diffusers' ``UNet1DModel``); an
    output with a ``sample`` attribute (diffusers' output classes) or a tuple is unwrapped to its tensor.
    ``length_multiple``: the lengths the network accepts are its multiples (2 ** downsamplings of a U-Net).
    """

    sequence_axis = 1

    def __init__(self, model: nn.Module, transition_dim: int, layout: str = "BHD", length_multiple: int = 1):
        super().__init__()
        require(layout in ("BHD", "BDH"), f"layout={layout!r}; choose 'BHD' ([batch, horizon, dim]) or 'BDH'")
        require(transition_dim >= 1 and length_multiple >= 1,
                f"transition_dim={transition_dim} and length_multiple={length_multiple} must be positive")
        self.model, self.layout = model, layout
        self.transition_dim, self.length_multiple = transition_dim, length_multiple

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.model(x.transpose(1, 2) if self.layout == "BDH" else x, t)
        out = getattr(out, "sample", out)
        out = out[0] if isinstance(out, tuple) else out
        return out.transpose(1, 2) if self.layout == "BDH" else out

    def receptive_field_inputs(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(1, length, self.transition_dim), torch.zeros(1, dtype=torch.long)


def diffusers_length_multiple(unet: nn.Module) -> int:
    """2 ** (downsampling blocks) of a diffusers 1-D U-Net: the lengths it maps back to themselves."""
    config = getattr(unet, "config", None)
    require(config is not None and hasattr(config, "down_block_types"),
            f"{type(unet).__name__} has no diffusers config with down_block_types")
    return 2 ** (len(config.down_block_types) - 1)


def measure(model: nn.Module, horizon: int, transition_dim: int, observation_dim: int | None = None, *,
            layout: str = "BHD", length_multiple: int | None = None, n_diffusion_steps: int = 32,
            n_windows: int = 4, t_fractions: tuple[float, ...] = (0.0, 0.5, 1.0), row_stride: int = 1,
            chain_samples: int = 4, seed: int = 0, dtype: torch.dtype = torch.float64) -> dict[str, Any]:
    """The leak probe for any temporal denoiser ``model(x, t)`` (x [B, H, D] or, ``layout="BDH"``,
    [B, D, H]; integer diffusion steps t [B]): what one forward pass carries beyond its receptive field.

    * ``receptive_field``: the conv-only reach (left, right) in steps, by autograd on a copy whose norms
      (the registry's and torch's GroupNorm / LayerNorm / InstanceNorm / BatchNorm) are identities; and
      ``receptive_field_with_norms``, the reach with windowed norms, or None where a norm pools the whole
      sequence (``analysis.receptive_field``);
    * ``beyond_rf_mass``: the share of the influence |d out_i / d in_j| (on ``n_windows`` Gaussian windows
      x [n, H, D] with inpainted start and goal, at each diffusion step of ``t_fractions``) beyond that
      reach; ``beyond_rf_mass_per_t`` per step;
    * ``goal_one_pass_max_beyond_rf``: the largest mean output change, at indices blind to the goal, when
      the goal changes (one forward pass); ``goal_chain_mean_beyond_rf``: the same over a whole DDPM chain
      of ``n_diffusion_steps`` (where information may travel one receptive field per step).

    ``observation_dim`` (default: all of ``transition_dim``) is the part the start and goal inpaint. The
    model is copied (to ``dtype``), never changed. A network without a time-pooling norm gives exactly 0
    for the beyond-RF mass and the one-pass leak (Pfrommer et al. 2025, Sec. 2). ``ValueError`` / ConfigError
    for a bad layout, a horizon that is not a multiple of ``length_multiple``, or a non-positive size.
    """
    observation_dim = transition_dim if observation_dim is None else observation_dim
    if length_multiple is None:
        length_multiple = diffusers_length_multiple(model) if layout == "BDH" else int(
            getattr(model, "length_multiple", 1))
    require(horizon >= 2 and horizon % length_multiple == 0,
            f"horizon={horizon} must be a multiple of {length_multiple} (the network's length multiple), >= 2")
    require(1 <= observation_dim <= transition_dim, f"observation_dim={observation_dim} must lie in "
            f"[1, transition_dim={transition_dim}]")
    require(n_windows >= 1 and chain_samples >= 1, "n_windows and chain_samples must be positive")
    net = SequenceDenoiser(copy.deepcopy(model), transition_dim, layout, length_multiple).to(dtype).eval()
    left, right = receptive_field(net)
    try:
        with_norms: list[int] | None = list(receptive_field(net, with_norms=True))
    except ValueError:
        with_norms = None
    diffusion = GaussianDiffusion(net, horizon, observation_dim, transition_dim - observation_dim,
                                  n_diffusion_steps=n_diffusion_steps)
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn(max(n_windows, chain_samples), horizon, transition_dim, generator=generator, dtype=dtype)
    conditions = {0: x0[:, 0, :observation_dim], horizon - 1: x0[:, -1, :observation_dim]}
    influence_cfg = SimpleNamespace(row_stride=row_stride, t_fractions=list(t_fractions), chunk_size=None)
    leakage_cfg = SimpleNamespace(conditions=["goal"], t_fractions=list(t_fractions), chain_samples=chain_samples,
                                  sampler="ddpm", num_steps=None)
    part = {k: v[:n_windows] for k, v in conditions.items()}
    influence_result = measure_influence(diffusion, x0[:n_windows], part, left, right, influence_cfg, seed)
    goal = measure_leakage(diffusion, x0, conditions, left, right, leakage_cfg, seed, dtype)["goal"]
    return {"horizon": horizon, "receptive_field": [left, right], "receptive_field_with_norms": with_norms,
            "beyond_rf_mass": influence_result["beyond_rf_fraction"],
            "beyond_rf_mass_per_t": {int(p["t"]): p["beyond_rf_fraction"] for p in influence_result["per_step"]},
            "goal_one_pass_max_beyond_rf": goal["one_pass_max_beyond_rf"],
            "goal_chain_mean_beyond_rf": goal["chain"]["mean_beyond_rf"],
            "n_blind_to_goal": goal["n_blind"], "influence_map": influence_result["map"]}
