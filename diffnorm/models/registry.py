"""The one registry of denoising networks: ``model.name`` -> class.

Every class takes ``(horizon, transition_dim, norm_layer=..., **settings)`` with its settings as the
keyword arguments of its constructor (what ``configs/model/<option>.yaml`` holds besides ``name``), and
maps x [batch, horizon, transition_dim], integer diffusion steps t [batch] -> [batch, horizon,
transition_dim]. Each exposes ``sequence_axis``, ``length_multiple``, ``receptive_field_inputs`` and
``probe_sites`` for the analysis code.
"""

from __future__ import annotations

import inspect

from torch import nn

from diffnorm.models.eqnet import EqNet
from diffnorm.models.temporal_unet import TemporalUnet

MODELS: dict[str, type[nn.Module]] = {"temporal_unet": TemporalUnet, "eqnet": EqNet}


def model_class(name: str) -> type[nn.Module]:
    """The class registered as ``name``; ``ValueError`` listing the valid names otherwise."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name]


def model_settings(name: str) -> list[str]:
    """The settings a config may give ``name`` (its constructor's keywords but the shared ones)."""
    params = inspect.signature(model_class(name)).parameters
    return [p for p in params if p not in ("horizon", "transition_dim", "norm_layer")]
