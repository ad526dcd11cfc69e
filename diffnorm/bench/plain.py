"""The plain reference: the Diffuser's maze2d temporal U-Net and training step written the simplest way.

Everything the benchmark reports as a speed-up is a ratio against this, timed in the same run. It is
written from the architecture description (Janner et al. 2022, App. C; REFERENCE.md), not from the
package's modules, and deliberately keeps the original code's habits: GroupNorm applied to a 4-D view
[B, C, 1, T] through einops reshapes, eager fp32, a per-parameter EMA loop, torch's default Adam, and a
collate that stacks one numpy window at a time. The weights have the same names and shapes as
``TemporalUnet``'s (a test loads one into the other and compares outputs), so the two compute the same
function and the ratio is pure implementation speed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

try:
    from einops import rearrange
except ImportError as err:  # an optional extra: only the benchmark needs it
    raise ImportError("the benchmark's plain reference needs einops: pip install 'diffnorm[bench]'") from err


class PlainConv1dBlock(nn.Module):
    """Conv1d -> [B, C, 1, T] -> GroupNorm(8) -> [B, C, T] -> Mish, as the original wrote it."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, groups: int = 8):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2)
        self.norm = nn.GroupNorm(groups, c_out)
        self.act = nn.Mish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = rearrange(x, "b c t -> b c 1 t")
        x = self.norm(x)
        x = rearrange(x, "b c 1 t -> b c t")
        return self.act(x)


class PlainResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, embed_dim: int, kernel_size: int = 5):
        super().__init__()
        self.block1 = PlainConv1dBlock(c_in, c_out, kernel_size)
        self.time_mlp = nn.Sequential(nn.Mish(), nn.Linear(embed_dim, c_out))
        self.block2 = PlainConv1dBlock(c_out, c_out, kernel_size)
        self.residual = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.block1(x) + rearrange(self.time_mlp(t), "b c -> b c 1")
        out = self.block2(out)
        return out + self.residual(x)


class PlainSinusoid(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000) / (half - 1)))
        angles = t.float()[:, None] * freqs[None, :]
        return torch.cat((angles.sin(), angles.cos()), dim=-1)


class _Level(nn.Module):
    def __init__(self, res1: nn.Module, res2: nn.Module, resample: nn.Module, name: str):
        super().__init__()
        self.res1, self.res2 = res1, res2
        setattr(self, name, resample)


class PlainTemporalUnet(nn.Module):
    """x [B, H, transition_dim], t [B] -> [B, H, transition_dim]; GroupNorm(8) everywhere."""

    def __init__(self, transition_dim: int = 6, dim: int = 32, dim_mults: Sequence[int] = (1, 4, 8)):
        super().__init__()
        widths = [transition_dim] + [dim * m for m in dim_mults]
        pairs = list(zip(widths[:-1], widths[1:]))
        self.time_mlp = nn.Sequential(PlainSinusoid(dim), nn.Linear(dim, dim * 4), nn.Mish(),
                                      nn.Linear(dim * 4, dim))
        self.down = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(pairs):
            last = i == len(pairs) - 1
            self.down.append(_Level(PlainResidualBlock(c_in, c_out, dim), PlainResidualBlock(c_out, c_out, dim),
                                    nn.Identity() if last else _Resample(nn.Conv1d(c_out, c_out, 3, 2, 1)),
                                    "downsample"))
        self.mid1 = PlainResidualBlock(widths[-1], widths[-1], dim)
        self.mid2 = PlainResidualBlock(widths[-1], widths[-1], dim)
        self.up = nn.ModuleList()
        for c_in, c_out in reversed(pairs[1:]):
            self.up.append(_Level(PlainResidualBlock(c_out * 2, c_in, dim), PlainResidualBlock(c_in, c_in, dim),
                                  _Resample(nn.ConvTranspose1d(c_in, c_in, 4, 2, 1)), "upsample"))
        self.final_block = PlainConv1dBlock(dim, dim, 5)
        self.final_conv = nn.Conv1d(dim, transition_dim, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = rearrange(x, "b h d -> b d h")
        temb = self.time_mlp(t)
        skips = []
        for level in self.down:
            x = level.res1(x, temb)
            x = level.res2(x, temb)
            skips.append(x)
            x = level.downsample(x)
        x = self.mid1(x, temb)
        x = self.mid2(x, temb)
        for level in self.up:
            x = torch.cat((x, skips.pop()), dim=1)
            x = level.res1(x, temb)
            x = level.res2(x, temb)
            x = level.upsample(x)
        x = self.final_conv(self.final_block(x))
        return rearrange(x, "b d h -> b h d")


class _Resample(nn.Module):
    """Holds the resampling conv under the attribute name ``conv``, as the package's modules do."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def cosine_alphas_cumprod(n_steps: int, s: float = 0.008) -> torch.Tensor:
    """Cumulative alphas of the cosine schedule (Nichol & Dhariwal 2021), betas clipped at 0.999."""
    steps = torch.arange(n_steps + 1, dtype=torch.float64)
    f = torch.cos(((steps / n_steps) + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0).float()


class PlainTrainer:
    """One Diffuser training step the simplest way: collate, q_sample, inpaint, x0 L2, Adam, EMA loop."""

    def __init__(self, model: nn.Module, n_diffusion_steps: int = 64, lr: float = 2e-4, action_dim: int = 2,
                 ema_decay: float = 0.995, ema_every: int = 10):
        self.model = model
        self.ema = [p.detach().clone() for p in model.parameters()]
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr, foreach=False)
        abar = cosine_alphas_cumprod(n_diffusion_steps)
        self.sqrt_abar, self.sqrt_1m_abar = abar.sqrt(), (1 - abar).sqrt()
        self.n_steps, self.action_dim = n_diffusion_steps, action_dim
        self.ema_decay, self.ema_every, self.step_count = ema_decay, ema_every, 0

    def collate(self, items: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        x0 = torch.stack([torch.tensor(it["trajectory"]) for it in items])
        conds = {t: torch.stack([torch.tensor(it["conditions"][t]) for it in items]) for t in items[0]["conditions"]}
        return x0, conds

    def inpaint(self, x: torch.Tensor, conds: dict[int, torch.Tensor]) -> torch.Tensor:
        for t, state in conds.items():
            x[:, t, self.action_dim:] = state
        return x

    def step(self, items: Sequence[dict[str, Any]]) -> torch.Tensor:
        x0, conds = self.collate(items)
        t = torch.randint(0, self.n_steps, (len(x0),))
        noise = torch.randn_like(x0)
        x_noisy = self.sqrt_abar[t][:, None, None] * x0 + self.sqrt_1m_abar[t][:, None, None] * noise
        x_noisy = self.inpaint(x_noisy, conds)
        recon = self.inpaint(self.model(x_noisy, t), conds)
        loss = ((recon - x0) ** 2).mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        if self.step_count % self.ema_every == 0:
            with torch.no_grad():
                for avg, p in zip(self.ema, self.model.parameters()):
                    avg.mul_(self.ema_decay).add_(p.detach(), alpha=1 - self.ema_decay)
        self.step_count += 1
        return loss.detach()
