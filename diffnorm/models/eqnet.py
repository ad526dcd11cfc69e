"""Eq-Net: the stitching literature's local, shift-equivariant denoiser, with the norm as a free choice.

Clark & Shkurti 2025, "What Do You Need for Compositional Generalization in Diffusion Planning?"
(arXiv 2505.18083, Sec. 4; their code: rvl-lab-utoronto/diffusion-stitching, ``eqnet.py``), written here
from the paper's description: no down- or upsampling, so every layer works at the plan's resolution and
the network commutes with shifts along time (up to the edges); a stack of residual 1-D convolution blocks
whose kernels grow with depth (kernel 3, +2 every few blocks); replicate padding, so the edges see copies
of the plan's end states instead of zeros; a per-timestep LayerNorm over channels (our ``channel``).

Here each block is the Diffuser's ``ResidualTemporalBlock`` (conv -> norm -> Mish, the time embedding
added, conv -> norm -> Mish, plus the input) with replicate-padded convolutions, and the time embedding
is the Diffuser's (sinusoidal, then an MLP), so the two networks differ in their layout alone. The paper
uses 64 channels and 25 blocks; the defaults here (32 channels, 12 blocks, kernels 3, 5, 7, 9 growing
every 3 blocks; 172k parameters) train in the umaze CPU preset's budget and reach 61 steps each side, the
receptive field of the receptive-field-limited U-Net (61 / 60; ``model=temporal_unet_local``), so on
umaze's 128-step plans no index sees both ends in either network.
"""

from __future__ import annotations

import torch
from torch import nn

from diffnorm.errors import ConfigError, require
from diffnorm.models.blocks import Conv1dBlock, ResidualTemporalBlock, SinusoidalTimeEmbedding
from diffnorm.models.layout import TimeMajorConv1d
from diffnorm.models.norms import NormLayer, norm_factory


class ReplicateConv1d(TimeMajorConv1d):
    """``nn.Conv1d(..., padding_mode="replicate")``: same length out as in, the edges padded with copies of
    the end steps. Padded by concatenation on the time-major layout (``models.layout``): torch's
    replication-pad backward on the CPU costs as much as the convolution itself."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0):
        super().__init__(in_channels, out_channels, kernel_size)
        self.replicate = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.replicate
        if p:
            steps = x.transpose(1, 2)  # [B, T, C]: contiguous for a time-major x
            steps = torch.cat((steps[:, :1].expand(-1, p, -1), steps, steps[:, -1:].expand(-1, p, -1)), dim=1)
            x = steps.transpose(1, 2)
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, replicate padding={self.replicate}"


def block_kernels(depth: int, kernel_size: int, kernel_growth_every: int) -> list[int]:
    """The kernel of each of the ``depth`` residual blocks: ``kernel_size``, then +2 every
    ``kernel_growth_every`` blocks (0: never)."""
    if kernel_growth_every == 0:
        return [kernel_size] * depth
    return [kernel_size + 2 * (i // kernel_growth_every) for i in range(depth)]


class EqNet(nn.Module):
    """x [batch, horizon, transition_dim], integer diffusion steps t [batch] -> [batch, horizon, transition_dim].

    An input block (transition_dim -> dim, kernel ``kernel_size``), ``depth`` residual blocks at width
    ``dim`` with kernels ``block_kernels(depth, kernel_size, kernel_growth_every)``, and a 1x1 output
    convolution. Any sequence length works (no resampling); ``horizon`` is validated and recorded.
    One-sided receptive field: (kernel_size - 1) / 2 + sum over blocks of (kernel - 1).
    """

    sequence_axis = 1  # time axis of the [B, H, D] input and output (read by analysis.receptive_field)
    length_multiple = 1

    def __init__(self, horizon: int, transition_dim: int, dim: int = 32, depth: int = 12, kernel_size: int = 3,
                 kernel_growth_every: int = 3, norm_layer: NormLayer | None = None):
        super().__init__()
        norm_layer = norm_layer if norm_layer is not None else norm_factory("channel")
        require(transition_dim >= 1, f"transition_dim={transition_dim} must be positive")
        require(horizon >= 1, f"horizon={horizon} must be positive")
        require(dim >= 4 and dim % 2 == 0, f"model.dim={dim} must be even and at least 4")
        require(depth >= 1, f"model.depth={depth} must be positive")
        require(kernel_size >= 1 and kernel_size % 2 == 1, f"model.kernel_size={kernel_size} must be odd")
        require(kernel_growth_every >= 0, f"model.kernel_growth_every={kernel_growth_every} must be >= 0")
        self.horizon = horizon
        self.transition_dim = transition_dim
        self.kernels = block_kernels(depth, kernel_size, kernel_growth_every)
        self.time_mlp = nn.Sequential(
            SinusoidalTimeEmbedding(dim), nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))
        self.input_block = Conv1dBlock(transition_dim, dim, kernel_size, norm_layer, conv_layer=ReplicateConv1d)
        self.blocks = nn.ModuleList(
            ResidualTemporalBlock(dim, dim, dim, k, norm_layer, conv_layer=ReplicateConv1d) for k in self.kernels)
        self.final_conv = TimeMajorConv1d(dim, transition_dim, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[2] != self.transition_dim:
            raise ConfigError(f"expected x [batch, horizon, {self.transition_dim}], got {list(x.shape)}")
        t_emb = self.time_mlp(t)
        h = self.input_block(x.transpose(1, 2))
        for block in self.blocks:
            h = block(h, t_emb)
        return self.final_conv(h).transpose(1, 2)

    def receptive_field_inputs(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Example forward arguments for ``analysis.receptive_field``: x [1, length, D] and t = [0]."""
        return torch.zeros(1, length, self.transition_dim), torch.zeros(1, dtype=torch.long)

    def probe_sites(self) -> list[str]:
        """The input block, then each residual block's two conv blocks and its output, in forward order."""
        sites = ["input_block"]
        for i in range(len(self.blocks)):
            sites.extend([f"blocks.{i}.block1", f"blocks.{i}.block2", f"blocks.{i}"])
        return sites
