"""The Diffuser's temporal U-Net (Janner et al. 2022, App. C), with the norm layer as the only free choice.

Defaults reproduce the maze2d network: dim 32, dim_mults (1, 4, 8), kernel 5, GroupNorm(8). Channel
pairs (D->32), (32->128), (128->256); two residual blocks per level, a stride-2 downsample after all but
the last level, two middle blocks, and an up path over the deeper levels that concatenates their skips.
As in the original, the first level's skip is stored but never consumed, so the up path ends at width
``dim`` after ``len(dim_mults) - 1`` upsamplings and the output head is Conv1dBlock(dim, dim) -> 1x1 conv.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

from diffnorm.errors import ConfigError, require
from diffnorm.models.blocks import (
    Conv1dBlock,
    Downsample1d,
    ResidualTemporalBlock,
    SinusoidalTimeEmbedding,
    Upsample1d,
)
from diffnorm.models.layout import TimeMajorConv1d, cat_channels
from diffnorm.models.norms import NormLayer, norm_factory


class DownLevel(nn.Module):
    """Two residual blocks at one resolution, then (except at the deepest level) a downsample."""

    def __init__(self, c_in: int, c_out: int, embed_dim: int, kernel_size: int, norm_layer: NormLayer,
                 downsample: bool):
        super().__init__()
        self.res1 = ResidualTemporalBlock(c_in, c_out, embed_dim, kernel_size, norm_layer)
        self.res2 = ResidualTemporalBlock(c_out, c_out, embed_dim, kernel_size, norm_layer)
        self.downsample = Downsample1d(c_out) if downsample else nn.Identity()


class UpLevel(nn.Module):
    """Concatenated [x, skip] -> two residual blocks -> upsample."""

    def __init__(self, c_skip: int, c_out: int, embed_dim: int, kernel_size: int, norm_layer: NormLayer):
        super().__init__()
        self.res1 = ResidualTemporalBlock(2 * c_skip, c_out, embed_dim, kernel_size, norm_layer)
        self.res2 = ResidualTemporalBlock(c_out, c_out, embed_dim, kernel_size, norm_layer)
        self.upsample = Upsample1d(c_out)


class TemporalUnet(nn.Module):
    """x [batch, horizon, transition_dim], integer diffusion steps t [batch] -> [batch, horizon, transition_dim].

    ``horizon`` (and any length passed to ``forward``) must be a multiple of ``length_multiple`` =
    2 ** (len(dim_mults) - 1), since every downsample halves the time axis and the up path must land on
    the skip lengths again. ``horizon`` is only validated and recorded; the weights fit any such length.
    """

    sequence_axis = 1  # time axis of the [B, H, D] input and output (read by analysis.receptive_field)
    length_multiple = 4  # for the default three levels; instances with other dim_mults override it

    def __init__(self, horizon: int, transition_dim: int, dim: int = 32, dim_mults: Sequence[int] = (1, 4, 8),
                 kernel_size: int = 5, norm_layer: NormLayer | None = None):
        super().__init__()
        norm_layer = norm_layer if norm_layer is not None else norm_factory("group")
        dim_mults = tuple(int(m) for m in dim_mults)
        require(transition_dim >= 1, f"transition_dim={transition_dim} must be positive")
        require(dim >= 4 and dim % 2 == 0, f"model.dim={dim} must be even and at least 4")
        require(len(dim_mults) >= 2 and all(m >= 1 for m in dim_mults),
                f"model.dim_mults={list(dim_mults)} needs at least two positive multipliers")
        require(kernel_size >= 1 and kernel_size % 2 == 1, f"model.kernel_size={kernel_size} must be odd")
        self.length_multiple = 2 ** (len(dim_mults) - 1)
        require(horizon >= self.length_multiple and horizon % self.length_multiple == 0,
                f"horizon={horizon} must be a positive multiple of {self.length_multiple} "
                f"(the U-Net halves it {len(dim_mults) - 1} times)")
        self.horizon = horizon
        self.transition_dim = transition_dim

        widths = [transition_dim] + [dim * m for m in dim_mults]
        pairs = list(pairwise(widths))
        embed_dim = dim
        self.time_mlp = nn.Sequential(
            SinusoidalTimeEmbedding(dim), nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, embed_dim))
        self.down = nn.ModuleList(
            DownLevel(c_in, c_out, embed_dim, kernel_size, norm_layer, downsample=i < len(pairs) - 1)
            for i, (c_in, c_out) in enumerate(pairs))
        self.mid1 = ResidualTemporalBlock(widths[-1], widths[-1], embed_dim, kernel_size, norm_layer)
        self.mid2 = ResidualTemporalBlock(widths[-1], widths[-1], embed_dim, kernel_size, norm_layer)
        # Deepest first; the shallowest pair (transition_dim -> dim) gets no up level, hence no skip use.
        self.up = nn.ModuleList(
            UpLevel(c_out, c_in, embed_dim, kernel_size, norm_layer) for c_in, c_out in reversed(pairs[1:]))
        # The original hard-codes kernel 5 here independently of the residual blocks' kernel.
        self.final_block = Conv1dBlock(dim, dim, 5, norm_layer)
        self.final_conv = TimeMajorConv1d(dim, transition_dim, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[2] != self.transition_dim:
            raise ConfigError(f"expected x [batch, horizon, {self.transition_dim}], got {list(x.shape)}")
        if x.shape[1] % self.length_multiple:
            raise ConfigError(f"sequence length {x.shape[1]} is not a multiple of {self.length_multiple}")
        h = x.transpose(1, 2)  # [B, D, H], stored time-major (see models.layout)
        t_emb = self.time_mlp(t)
        skips = []
        for level in self.down:
            h = level.res2(level.res1(h, t_emb), t_emb)
            skips.append(h)
            h = level.downsample(h)
        h = self.mid2(self.mid1(h, t_emb), t_emb)
        for level in self.up:
            h = cat_channels((h, skips.pop()))
            h = level.upsample(level.res2(level.res1(h, t_emb), t_emb))
        h = self.final_conv(self.final_block(h))
        return h.transpose(1, 2)

    def receptive_field_inputs(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Example forward arguments for ``analysis.receptive_field``: x [1, length, D] and t = [0]."""
        return torch.zeros(1, length, self.transition_dim), torch.zeros(1, dtype=torch.long)

    def probe_sites(self) -> list[str]:
        """Names of every residual block and every Conv1dBlock, in forward order.

        Sites are module names, so they are the same for every norm (``none`` keeps an identity module).
        """
        sites: list[str] = []

        def residual(name: str) -> None:
            sites.extend([f"{name}.block1", f"{name}.block2", name])

        for i in range(len(self.down)):
            residual(f"down.{i}.res1")
            residual(f"down.{i}.res2")
        residual("mid1")
        residual("mid2")
        for i in range(len(self.up)):
            residual(f"up.{i}.res1")
            residual(f"up.{i}.res2")
        sites.append("final_block")
        return sites
