"""The two-stream overlap experiment of Pfrommer et al. (2025), Sec. 3.2.

Two noise sequences go through the same weights with valid (unpadded) convolutions, so neither stream
has an edge to localize against and the streams touch only through PackNorm: concatenate the two
activations along time, InstanceNorm the pack, split it back. Stream 1 must output -1 and stream 2 +1.
With independent streams the network is equivariant to swapping them and can do no better than the
constant prediction (MSE 1). Copying the last ``overlap`` entries of stream 1 into the first entries of
stream 2 breaks the symmetry; how much overlap the network needs tells how it communicates.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from diffnorm.models.norms import SequenceNorm
from diffnorm.toy.localization import check_cnn_settings


class PackNorm(nn.Module, SequenceNorm):
    """InstanceNorm over the time-concatenation of two streams stacked on the batch axis.

    x [2B, C, T] holds stream 1 in the first B rows and stream 2 in the last B; statistics pool over
    both streams' time steps, per sample and channel.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.GroupNorm(channels, channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = x.chunk(2, dim=0)
        packed = self.norm(torch.cat([first, second], dim=-1))
        first, second = packed.split(x.shape[-1], dim=-1)
        return torch.cat([first, second], dim=0)


class TwoStreamCNN(nn.Module):
    """``depth`` valid convolutions with PackNorm then ReLU between them, shared by both streams.

    forward(x1, x2), each [B, 1, T] -> (y1, y2), each [B, 1, T - depth * (kernel_size - 1)].
    """

    def __init__(self, depth: int, kernel_size: int, hidden: int):
        super().__init__()
        check_cnn_settings(depth, kernel_size, hidden)
        widths = [1] + [hidden] * (depth - 1) + [1]
        self.convs = nn.ModuleList(nn.Conv1d(a, b, kernel_size) for a, b in zip(widths, widths[1:]))
        self.norms = nn.ModuleList(PackNorm(hidden) for _ in range(depth - 1))
        self.shrink = depth * (kernel_size - 1)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([x1, x2], dim=0)
        for conv, norm in zip(self.convs, self.norms):
            x = torch.relu(norm(conv(x)))
        y = self.convs[-1](x)
        return y.chunk(2, dim=0)


def overlapping_pair(batch: int, length: int, overlap: int, generator: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Two N(0, 1) sequences [B, 1, T] where stream 2 starts with a copy of stream 1's last ``overlap``
    entries."""
    x1 = torch.randn(batch, 1, length, generator=generator)
    x2 = torch.randn(batch, 1, length, generator=generator)
    if overlap:
        x2[..., :overlap] = x1[..., length - overlap:]
    return x1, x2


def pair_loss(model: TwoStreamCNN, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """MSE against -1 for stream 1 and +1 for stream 2; the constant prediction 0 scores 1."""
    y1, y2 = model(x1, x2)
    return 0.5 * (((y1 + 1) ** 2).mean() + ((y2 - 1) ** 2).mean())


def train_packnorm(model: TwoStreamCNN, length: int, overlap: int, steps: int, lr: float, batch_size: int,
                   seed: int = 0, progress: bool = False) -> list[float]:
    """Adam on ``pair_loss`` with fresh overlapping pairs every step; returns the loss per step."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in tqdm(range(steps), desc=f"overlap {overlap}", disable=not progress, leave=False):
        loss = pair_loss(model, *overlapping_pair(batch_size, length, overlap, gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def evaluate_packnorm(model: TwoStreamCNN, length: int, overlap: int, n: int, seed: int) -> float:
    """Test MSE on ``n`` fresh pairs."""
    gen = torch.Generator().manual_seed(seed)
    return pair_loss(model.eval(), *overlapping_pair(n, length, overlap, gen)).item()
