"""Config -> network and diffusion model. Shared by training and by ``load_checkpoint``, so a checkpoint
is always rebuilt by the same code that trained it."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from diffnorm.diffusion.gaussian import GaussianDiffusion
from diffnorm.errors import ConfigError, require
from diffnorm.models.norms import norm_factory
from diffnorm.models.temporal_unet import TemporalUnet

MODELS = ("temporal_unet",)


def architecture(cfg: DictConfig) -> dict:
    """The settings that decide the shapes of the weights: what a checkpoint must agree with."""
    return {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "norm": OmegaConf.to_container(cfg.norm, resolve=True),
        "horizon": cfg.env.horizon,
        "observation_dim": cfg.diffusion.observation_dim,
        "action_dim": cfg.diffusion.action_dim,
    }


def build_model(cfg: DictConfig) -> TemporalUnet:
    """TemporalUnet from ``cfg.model`` (name, dim, dim_mults, kernel_size) and ``cfg.norm``."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    name = model_cfg.pop("name", "temporal_unet")
    require(name in MODELS, f"unknown model {name!r}; choose one of {list(MODELS)}")
    try:
        norm_layer = norm_factory(**OmegaConf.to_container(cfg.norm, resolve=True))
        return TemporalUnet(horizon=cfg.env.horizon,
                            transition_dim=cfg.diffusion.observation_dim + cfg.diffusion.action_dim,
                            norm_layer=norm_layer, **model_cfg)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:  # unknown keys, unknown norm, groups not dividing widths
        raise ConfigError(f"cannot build the model from model={model_cfg} norm={dict(cfg.norm)}: {err}") from err


def build_diffusion(cfg: DictConfig) -> GaussianDiffusion:
    """GaussianDiffusion around ``build_model(cfg)``; steps per maze come from ``cfg.env``."""
    d = cfg.diffusion
    return GaussianDiffusion(build_model(cfg), horizon=cfg.env.horizon, observation_dim=d.observation_dim,
                             action_dim=d.action_dim, n_diffusion_steps=cfg.env.n_diffusion_steps,
                             clip_denoised=d.clip_denoised, sampler=d.sampler,
                             num_steps=d.num_steps)
