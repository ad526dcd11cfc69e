"""Building blocks of the Diffuser's temporal U-Net (Janner et al. 2022, App. C; maze2d branch).

Every block maps [batch, channels, time] -> [batch, channels', time']. The norm is whatever
``norm_layer(channels)`` returns and is applied to [B, C, T] directly (no reshaping), so swapping it
changes nothing else in the network: module names, shapes and probe sites stay identical.
Convolutions keep activations time-major, only for speed on the CPU (``layout``); they compute the same
function as ``nn.Conv1d``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from diffnorm.models.layout import TimeMajorConv1d, TimeMajorConvTranspose1d
from diffnorm.models.norms import NormLayer


class SinusoidalTimeEmbedding(nn.Module):
    """Diffusion step t [B] -> [B, dim]: sines then cosines of t at geometric frequencies 1 .. 1/10000."""

    def __init__(self, dim: int):
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"time embedding dim={dim} must be even and at least 4")
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / (half - 1))
        # A buffer (not a parameter): fixed, moves with .to(device), absent from the parameter count.
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.float()[:, None] * self.freqs[None, :]
        return torch.cat((angles.sin(), angles.cos()), dim=-1)


class Conv1dBlock(nn.Module):
    """Conv1d (same padding) -> norm -> activation (Mish in the Diffuser, ReLU in the paper's Eq. 1).

    ``conv``, ``norm`` and ``act`` are named for hooks. ``conv_layer`` is the Diffuser's time-major
    convolution by default; a network kept channels-first (the toy CNN) passes ``nn.Conv1d``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm_layer: NormLayer,
                 activation: type[nn.Module] = nn.Mish, conv_layer: type[nn.Conv1d] = TimeMajorConv1d):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size} must be odd and positive (same padding)")
        self.conv = conv_layer(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.norm = norm_layer(out_channels)
        self.act = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class ResidualTemporalBlock(nn.Module):
    """Two Conv1dBlocks with the time embedding added (broadcast over time) between them, plus a skip.

    x [B, C_in, T], t_emb [B, E] -> [B, C_out, T]. The skip is a 1x1 conv when the width changes.
    ``conv_layer`` builds the two convolutions (Eq-Net passes one with replicate padding).
    """

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, kernel_size: int,
                 norm_layer: NormLayer, conv_layer: type[nn.Conv1d] = TimeMajorConv1d):
        super().__init__()
        self.block1 = Conv1dBlock(in_channels, out_channels, kernel_size, norm_layer, conv_layer=conv_layer)
        self.time_mlp = nn.Sequential(nn.Mish(), nn.Linear(embed_dim, out_channels))
        self.block2 = Conv1dBlock(out_channels, out_channels, kernel_size, norm_layer, conv_layer=conv_layer)
        self.residual = (TimeMajorConv1d(in_channels, out_channels, 1) if in_channels != out_channels
                         else nn.Identity())

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x) + self.time_mlp(t_emb)[:, :, None]
        return self.block2(h) + self.residual(x)


class Downsample1d(nn.Module):
    """Halve the time axis: Conv1d(C, C, 3, stride 2, padding 1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = TimeMajorConv1d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample1d(nn.Module):
    """Double the time axis: ConvTranspose1d(C, C, 4, stride 2, padding 1).

    The transposed convolution is what makes the U-Net's receptive field asymmetric (147 left, 144 right).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = TimeMajorConvTranspose1d(channels, channels, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
