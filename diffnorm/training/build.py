"""Config -> network and diffusion model. Shared by training and by ``load_checkpoint``, so a checkpoint
is always rebuilt by the same code that trained it."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from torch import nn

from diffnorm.diffusion.gaussian import GaussianDiffusion
from diffnorm.errors import ConfigError
from diffnorm.models.norms import norm_factory
from diffnorm.models.registry import model_class


def architecture(cfg: DictConfig) -> dict:
    """The settings that decide the shapes of the weights: what a checkpoint must agree with."""
    return {
        # Settings left null belong to other networks (config.ModelSchema): not part of this one's shapes.
        "model": {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if v is not None},
        "norm": OmegaConf.to_container(cfg.norm, resolve=True),
        "horizon": cfg.env.horizon,
        "observation_dim": cfg.diffusion.observation_dim,
        "action_dim": cfg.diffusion.action_dim,
    }


def build_model(cfg: DictConfig) -> nn.Module:
    """The registered network ``cfg.model.name`` (``models.registry``) with ``cfg.model``'s settings and
    the norm ``cfg.norm``; settings left null belong to other networks and are dropped."""
    model_cfg = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if v is not None}
    name = model_cfg.pop("name", "temporal_unet")
    try:
        network = model_class(name)
        norm_layer = norm_factory(**OmegaConf.to_container(cfg.norm, resolve=True))
        return network(horizon=cfg.env.horizon,
                       transition_dim=cfg.diffusion.observation_dim + cfg.diffusion.action_dim,
                       norm_layer=norm_layer, **model_cfg)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:  # unknown model or keys, unknown norm, groups not dividing widths
        raise ConfigError(f"cannot build the model from model={model_cfg} norm={dict(cfg.norm)}: {err}") from err


def build_diffusion(cfg: DictConfig) -> GaussianDiffusion:
    """GaussianDiffusion around ``build_model(cfg)``; steps per maze come from ``cfg.env``."""
    d = cfg.diffusion
    return GaussianDiffusion(build_model(cfg), horizon=cfg.env.horizon, observation_dim=d.observation_dim,
                             action_dim=d.action_dim, n_diffusion_steps=cfg.env.n_diffusion_steps,
                             clip_denoised=d.clip_denoised, sampler=d.sampler,
                             num_steps=d.num_steps)
