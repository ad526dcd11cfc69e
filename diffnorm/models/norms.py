"""The one registry of normalization layers.

Every norm maps [batch, channels, time] -> [batch, channels, time]. What differs is the set of axes
its statistics pool over, which decides whether it can carry information along the time axis
(Pfrommer et al. 2025, Sec. 2): pooling over time (group, instance, layer, batch) opens a side
channel across the whole sequence; pooling over channels only (channel) or not at all (none) does not;
pooling over a window of time steps (local_group) opens one as wide as the window.

Configs name a norm (``configs/norm/<key>.yaml``); builders call ``norm_factory(name, **kwargs)``
and hand the returned constructor to the network, which calls it with a channel count.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from diffnorm.models.layout import on_image

NormLayer = Callable[[int], nn.Module]


class SequenceNorm:
    """Marker for the registry's layers, so analysis code can find (and strip) every norm."""


class NoNorm(nn.Identity, SequenceNorm):
    """Identity without parameters. Pools over nothing; keeps module trees equal across norms."""

    half_window = 0  # reaches no other time step (analysis.receptive_field)

    def __init__(self, channels: int):
        super().__init__()


class _GroupStatistics(nn.GroupNorm, SequenceNorm):
    """``nn.GroupNorm`` that keeps a time-major input time-major (``models.layout``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return on_image(super().forward, x)


class GroupNorm(_GroupStatistics):
    """Pools over (channels of one group) x time, per sample: the Diffuser's choice (8 groups)."""

    def __init__(self, channels: int, groups: int = 8, eps: float = 1e-5):
        if groups < 1 or channels % groups:
            raise ValueError(f"norm.groups={groups} must be a positive divisor of the {channels} channels")
        super().__init__(groups, channels, eps=eps)


class InstanceNorm(_GroupStatistics):
    """Pools over time, per sample and channel (GroupNorm with one channel per group, affine)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__(channels, channels, eps=eps)


class LayerNorm(_GroupStatistics):
    """The paper's LayerNorm: pools over channels x time per sample (one group), affine per channel."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__(1, channels, eps=eps)


class BatchNorm(nn.BatchNorm1d, SequenceNorm):
    """Pools over batch x time, per channel.

    ``inference_stats`` decides what eval mode uses: ``"population"`` (running averages, the usual
    choice, which pools over the training set and so carries nothing about the current input) or
    ``"minibatch"`` (the current batch's statistics, as in training; Appendix D of the paper shows this
    is what lets the network localize).
    """

    def __init__(self, channels: int, inference_stats: str = "population", momentum: float = 0.1,
                 eps: float = 1e-5):
        if inference_stats not in ("population", "minibatch"):
            raise ValueError(f"norm.inference_stats={inference_stats!r}; choose 'population' or 'minibatch'")
        super().__init__(channels, eps=eps, momentum=momentum)
        self.inference_stats = inference_stats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return on_image(self._normalize, x)  # a time-major input stays time-major (models.layout)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.inference_stats == "population":
            return super().forward(x)
        return F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=self.eps)

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 3, 4):  # 4: the [B, C, 1, T] view of a time-major input
            raise ValueError(f"BatchNorm expects [batch, channels, time], got {x.dim()}-D input")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, inference_stats={self.inference_stats}"


class ChannelNorm(nn.Module, SequenceNorm):
    """Pools over channels at each time step separately (LayerNorm on the channel vector), per sample.

    Nothing is averaged along time, so it cannot move information between time steps: the
    leak-free control that still rescales activations the way the other norms do.
    """

    half_window = 0  # reaches no other time step (analysis.receptive_field)

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's fused LayerNorm over the last axis of the [B, T, C] view; for a time-major x that view
        # is contiguous and the result is time-major again (models.layout).
        return F.layer_norm(x.transpose(1, 2), self.weight.shape, self.weight, self.bias, self.eps).transpose(1, 2)


class LocalGroupNorm(nn.Module, SequenceNorm):
    """GroupNorm whose statistics come from a centred window of ``window`` time steps, per sample and group.

    Output t of group g is (x_t - mean_t) / sqrt(var_t + eps) with mean and variance over the group's
    C/groups channels at the time steps t - window//2 .. t + window//2 that exist: the edges average
    over fewer steps, nothing is padded in. Local Context Normalization (Ortiz et al., CVPR 2020,
    arXiv 1912.05845) in 1-D. ``window`` counts the layer's own time steps: in a U-Net a layer below k
    downsamplings pools a span of ``window * 2**k`` input steps. ``window = 1`` with ``groups = channels``
    would normalize single numbers; with ``groups = 1`` it is ``channel`` exactly, and any window of at
    least ``2 * T - 1`` steps covers the whole sequence from every position: ``group`` again.

    The reach this adds to a layer, ``window // 2`` steps to each side, is the attribute ``half_window``,
    which ``analysis.receptive_field`` reads for the receptive field with norms included.
    """

    def __init__(self, channels: int, window: int = 9, groups: int = 8, eps: float = 1e-5):
        super().__init__()
        if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
            raise ValueError(f"norm.window={window!r} must be an odd positive number of time steps (a centred window)")
        if groups < 1 or channels % groups:
            raise ValueError(f"norm.groups={groups} must be a positive divisor of the {channels} channels")
        self.window, self.groups, self.eps = window, groups, eps
        self.half_window = window // 2
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        # On the [B, T, G, C/G] view the channels of a group are adjacent (and the view is free for a
        # time-major x, ``models.layout``), so the per-step statistics reduce over contiguous memory.
        steps = x.transpose(1, 2).reshape(b, t, self.groups, c // self.groups)
        # Per step first ([B, T, G]): the channels' mean and variance. Every step has the same channel
        # count, so window averages (over the steps that exist: count_include_pad=False) of these give the
        # window's mean, and its variance by the law of total variance: the mean within-step variance
        # (computed stably per step) plus the variance of the step means (the only difference of squares,
        # and exactly 0 for a window of one step).
        step_mean = steps.mean(-1)
        step_var = (steps - step_mean[..., None]).square().mean(-1)
        moments = torch.cat((step_var, step_mean, step_mean.square()), dim=2).transpose(1, 2)  # [B, 3G, T]
        pooled = F.avg_pool1d(moments, self.window, stride=1, padding=self.half_window, count_include_pad=False)
        within, mean, mean_sq = pooled.transpose(1, 2).split(self.groups, dim=2)  # each [B, T, G]
        var = within + (mean_sq - mean.square()).clamp_min(0.0)
        y = (steps - mean[..., None]) * torch.rsqrt(var + self.eps)[..., None]
        return (y.reshape(b, t, c) * self.weight + self.bias).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, window={self.window}, groups={self.groups}, eps={self.eps}"


NORM_LAYERS: dict[str, Callable[..., nn.Module]] = {}


def register_norm(name: str, builder: Callable[..., nn.Module]) -> None:
    """Add a norm under ``name``; ``builder(channels, **kwargs)`` must return a [B, C, T] module."""
    if name in NORM_LAYERS:
        raise ValueError(f"norm {name!r} is already registered")
    NORM_LAYERS[name] = builder


for _name, _builder in {
    "none": NoNorm,
    "group": GroupNorm,
    "instance": InstanceNorm,
    "layer": LayerNorm,
    "batch": BatchNorm,
    "channel": ChannelNorm,
    "local_group": LocalGroupNorm,
}.items():
    register_norm(_name, _builder)


def norm_factory(name: str, **kwargs) -> NormLayer:
    """Constructor ``channels -> module`` for the registered norm ``name`` with its settings."""
    if name not in NORM_LAYERS:
        raise ValueError(f"unknown norm {name!r}; choose one of {sorted(NORM_LAYERS)}")
    return partial(NORM_LAYERS[name], **kwargs)


def is_norm(module: nn.Module) -> bool:
    """True for every layer built by this registry (the toy PackNorm registers itself too)."""
    return isinstance(module, SequenceNorm)
