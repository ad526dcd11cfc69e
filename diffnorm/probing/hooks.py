"""Read intermediate activations from outside the model, with hooks that are always removed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from diffnorm.errors import ConfigError


@contextmanager
def record_activations(model: nn.Module, sites: Sequence[str], detach: bool = True
                       ) -> Iterator[dict[str, torch.Tensor]]:
    """Yield a dict that each forward pass fills with the (detached) output of every named site.

    Unknown sites raise ConfigError listing the valid module names; hooks are removed on exit even
    when the body raises. ``detach=False`` keeps the outputs in the autograd graph, for gradients of a
    site with respect to the input (the per-site receptive field).
    """
    modules = dict(model.named_modules())
    unknown = [s for s in sites if s not in modules]
    if unknown:
        valid = getattr(model, "probe_sites", lambda: [n for n in modules if n])()
        raise ConfigError(f"unknown probe site(s) {unknown}; valid sites: {list(valid)}")
    recorded: dict[str, torch.Tensor] = {}

    def hook_for(site: str):
        def hook(_module, _inputs, output):
            recorded[site] = output.detach() if detach else output

        return hook

    handles = [modules[s].register_forward_hook(hook_for(s)) for s in sites]
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()
