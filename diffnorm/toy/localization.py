"""The toy localization task of Pfrommer et al. (2025), Sec. 2.

Inputs are pure noise x ~ N(0, I_T); the target is the fixed ramp linspace(-1, 1, T). A CNN without
normalization sees only noise in the interior and, being translation equivariant there, predicts the
same distribution at every interior index: it can localize only indices within its receptive field of
the zero-padded edges. A norm that pools over time lets it localize everything.

Sec. 3.2 adds that the side channel needs informative inputs: an index can tell where it is only if the
input pattern its receptive field sees is unique along the sequence. ``sample_inputs`` therefore also
draws less informative sequences (quantized noise, a short repeated pattern, a constant).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from diffnorm.errors import require
from diffnorm.models.blocks import Conv1dBlock
from diffnorm.models.norms import NormLayer, norm_factory
from diffnorm.progress import bar


def check_cnn_settings(depth: int, kernel_size: int, hidden: int) -> None:
    require(depth >= 1, f"depth={depth} must be positive")
    require(hidden >= 1, f"hidden={hidden} must be positive")
    require(kernel_size >= 1 and kernel_size % 2 == 1, f"kernel_size={kernel_size} must be odd and positive")


class LocalizationCNN(nn.Module):
    """Eq. 1: ``depth`` convolutions (odd kernel, zero padding, bias), norm then ReLU between them.

    x [batch, 1, T] -> [batch, 1, T]. Receptive field r = depth * (kernel_size - 1) / 2 per side.
    """

    sequence_axis = 2

    def __init__(self, depth: int, kernel_size: int, hidden: int, norm_layer: NormLayer | None = None):
        super().__init__()
        check_cnn_settings(depth, kernel_size, hidden)
        norm_layer = norm_layer or norm_factory("none")
        widths = [1] + [hidden] * (depth - 1)
        # Channels-first nn.Conv1d: the time-major layout of the Diffuser's U-Net buys nothing at 32
        # channels and slows InstanceNorm here (timed before and after the change on the toy task).
        self.blocks = nn.ModuleList(
            Conv1dBlock(c_in, c_out, kernel_size, norm_layer, activation=nn.ReLU, conv_layer=nn.Conv1d)
            for c_in, c_out in zip(widths, widths[1:])
        )
        self.head = nn.Conv1d(widths[-1], 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def probe_sites(self) -> list[str]:
        """The hidden activations h_1 .. h_{L-1}, after norm and ReLU."""
        return [f"blocks.{i}" for i in range(len(self.blocks))]

    def receptive_field_inputs(self, length: int) -> tuple[torch.Tensor]:
        return (torch.zeros(1, 1, length),)


def ramp_target(length: int) -> torch.Tensor:
    """The increasing target sequence, linspace(-1, 1, T)."""
    return torch.linspace(-1.0, 1.0, length)


INPUT_KINDS = ("gaussian", "quantized", "periodic", "constant")


def check_inputs(kind: str, levels: int = 2, period: int = 4, key: str = "inputs") -> None:
    """One-line errors for ``draw_inputs`` settings, naming them as the config entry ``key``."""
    require(kind in INPUT_KINDS, f"{key}.kind={kind!r} is not one of {', '.join(INPUT_KINDS)}")
    require(levels >= 2, f"{key}.levels={levels} must be at least 2")
    require(period >= 1, f"{key}.period={period} must be positive")


def draw_inputs(n: int, length: int, generator: torch.Generator, kind: str = "gaussian", levels: int = 2,
                period: int = 4) -> torch.Tensor:
    """[n, 1, T] input sequences of decreasing information (Sec. 3.2), one draw per sequence:

    - ``gaussian``: x ~ N(0, I_T), every window unique;
    - ``quantized``: the same noise mapped to ``levels`` equiprobable values spread evenly over [-1, 1]
      (by the standard normal's quantiles), so windows repeat more often;
    - ``periodic``: a Gaussian pattern of ``period`` entries tiled from index 0, so indices ``period``
      apart see the same window away from the edges;
    - ``constant``: one Gaussian value repeated over the sequence.
    """
    check_inputs(kind, levels, period)
    if kind == "periodic":
        pattern = torch.randn(n, 1, period, generator=generator)
        return pattern.repeat(1, 1, -(-length // period))[..., :length].contiguous()
    if kind == "constant":
        return torch.randn(n, 1, 1, generator=generator).expand(n, 1, length).contiguous()
    x = torch.randn(n, 1, length, generator=generator)
    if kind == "quantized":
        bins = torch.special.ndtr(x).mul(levels).floor().clamp(max=levels - 1)
        x = bins * (2.0 / (levels - 1)) - 1.0
    return x


def train_localization(model: nn.Module, length: int, steps: int, lr: float, batch_size: int,
                       accumulation: int = 1, seed: int = 0, progress: bool = False, desc: str = "train",
                       inputs: dict | None = None) -> list[float]:
    """Adam on MSE to the ramp; ``accumulation`` minibatches of ``batch_size`` per update, so a
    BatchNorm sees small batches while the gradient averages over a large effective batch. ``inputs``
    are ``draw_inputs`` settings (default Gaussian noise). Returns the loss of each update."""
    inputs = inputs or {}
    gen = torch.Generator().manual_seed(seed)
    target = ramp_target(length)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in bar(range(steps), desc=desc, disable=not progress, leave=False, mininterval=2.0):
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(accumulation):
            x = draw_inputs(batch_size, length, gen, **inputs)
            loss = ((model(x)[:, 0] - target) ** 2).mean() / accumulation
            loss.backward()
            total += loss.item()
        opt.step()
        losses.append(total)
    return losses


@torch.no_grad()
def sample_inputs(n: int, length: int, seed: int, inputs: dict | None = None) -> torch.Tensor:
    """[n, 1, T] test inputs from their own seed; ``inputs`` as in ``train_localization``."""
    return draw_inputs(n, length, torch.Generator().manual_seed(seed), **(inputs or {}))


@torch.no_grad()
def predict(model: nn.Module, inputs: torch.Tensor, batch_size: int) -> np.ndarray:
    """Eval-mode predictions [N, T], in minibatches of ``batch_size`` (which matters for BatchNorm with
    minibatch statistics)."""
    model.eval()
    return torch.cat([model(chunk)[:, 0] for chunk in inputs.split(batch_size)]).numpy()
