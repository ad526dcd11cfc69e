"""Time-major storage of [batch, channels, time] activations, and the 1-D layers that keep it.

Why: oneDNN, torch's CPU convolution backend, runs a convolution fastest on channels-last data, where
the channels of one time step sit next to each other in memory. A [B, C, T] tensor stored that way
(strides (C*T, 1, C): a transposed [B, T, C]) is already a channels-last [B, C, 1, T] image, so the
2-D view each convolution and norm runs on costs no copy. The U-Net's input [B, H, D] transposed to
[B, D, H] is time-major from the start, and every layer here returns time-major output.

Only strides change: shapes, module names, parameters and state dicts are those of ``nn.Conv1d`` and
``nn.ConvTranspose1d``, and code reading activations (probes, hooks) sees ordinary [B, C, T] tensors.
The plain reference (``diffnorm.bench.plain``, timed by ``scripts/bench.py``) shows what this buys.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def is_time_major(x: torch.Tensor) -> bool:
    """True if ``x`` [B, C, T] is stored with the channels of each time step adjacent."""
    return x.dim() == 3 and x.unsqueeze(2).is_contiguous(memory_format=torch.channels_last)


def as_image(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T] -> channels-last [B, C, 1, T]; free for a time-major ``x``, one copy otherwise."""
    return x.unsqueeze(2).contiguous(memory_format=torch.channels_last)


def on_image(op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply a per-channel op (a norm) to a time-major ``x`` through its channels-last 4-D view, so the
    op runs its channels-last kernel and the result stays time-major; any other ``x`` goes in as it is."""
    return op(as_image(x)).squeeze(2) if is_time_major(x) else op(x)


def cat_channels(tensors: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """``torch.cat(tensors, dim=1)`` with a time-major result (torch.cat would return a contiguous one)."""
    return torch.cat([x.transpose(1, 2) for x in tensors], dim=2).transpose(1, 2)


def _image_weight(weight: torch.Tensor) -> torch.Tensor:
    # Converted once per call here, the channels-last weight is also what autograd saves for backward,
    # so the backward pass does not convert it again (oneDNN would, twice, from a contiguous one).
    return weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)


class TimeMajorConv1d(nn.Conv1d):
    """``nn.Conv1d`` computed as a channels-last 2-D convolution; accepts any layout, returns time-major."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise ValueError("TimeMajorConv1d supports integer zero padding only")

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.kernel_size[0] == 1 and self.stride[0] == 1 and self.padding[0] == 0 and self.groups == 1:
            # Pointwise: on the [B, T, C] view (contiguous when x is time-major) one matrix product.
            return F.linear(x.transpose(1, 2), weight.squeeze(2), bias).transpose(1, 2)
        out = F.conv2d(as_image(x), _image_weight(weight), bias, (1, self.stride[0]), (0, self.padding[0]),
                       (1, self.dilation[0]), self.groups)
        return out.squeeze(2)


class TimeMajorConvTranspose1d(nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` computed as a channels-last 2-D transposed convolution (time-major output)."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is not None:
            raise ValueError("TimeMajorConvTranspose1d takes no output_size; set output_padding instead")
        out = F.conv_transpose2d(as_image(x), _image_weight(self.weight), self.bias, (1, self.stride[0]),
                                 (0, self.padding[0]), (0, self.output_padding[0]), self.groups,
                                 (1, self.dilation[0]))
        return out.squeeze(2)
