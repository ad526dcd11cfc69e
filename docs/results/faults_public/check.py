"""Re-measures the public-report faults on the current code: DDIM step sequences, D4RL-frame files.

    python docs/results/faults_public/check.py > docs/results/faults_public/check.txt
"""

import tempfile
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from diffnorm.data.d4rl_format import load_d4rl_hdf5, load_dataset
from diffnorm.data.generate import dataset_checks, generate_maze2d
from diffnorm.diffusion.gaussian import GaussianDiffusion, make_scheduler
from diffnorm.envs.maze2d import in_wall, xy_to_cell


class ExactDenoiser(nn.Module):
    """E[x0 | x_t] for x0 ~ N(0, 0.5² I)."""

    transition_dim = 6

    def __init__(self, abar):
        super().__init__()
        self.register_buffer("abar", abar.double())
        self.p = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x, t):
        a = self.abar[t][:, None, None]
        return (a.sqrt() * 0.25 / (a * 0.25 + 1 - a)) * x + self.p


def diffusers_ddim_std(T, n):
    """What diffusers' DDIMScheduler.step alone gives (prev timestep t - T // n, last step partly noisy)."""
    s = make_scheduler("ddim", T)
    s.set_timesteps(n)
    model = ExactDenoiser(s.alphas_cumprod)
    x = torch.randn(4096, 1, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    noise = x.clone()
    for t in s.timesteps:
        with torch.no_grad():
            x = s.step(model(x, torch.full((len(x),), int(t))), t, x).prev_sample
    return float((x / noise).mean())


def package_ddim_std(T, n):
    abar = make_scheduler("ddim", T).alphas_cumprod
    d = GaussianDiffusion(ExactDenoiser(abar), 4, n_diffusion_steps=T, clip_denoised=False).double()
    out = d.sample({0: torch.zeros(1, 4, dtype=torch.float64)}, sampler="ddim", num_steps=n,
                   generator=torch.Generator().manual_seed(0))
    noise = torch.randn((1, 4, 6), generator=torch.Generator().manual_seed(0)).double()
    return float((out[:, 1:] / noise[:, 1:]).mean())


print("DDIM output std for unit noise, exact denoiser, x0 ~ N(0, 0.5^2):")
for T, n in [(64, 10), (64, 8), (32, 7), (256, 100)]:
    print(f"  T={T:3d} n={n:3d}: diffusers step alone {diffusers_ddim_std(T, n):.4f}, package {package_ddim_std(T, n):.4f}")

data = generate_maze2d("maze2d-umaze", 50_000, seed=0, progress=False)
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "maze2d-umaze-v1.hdf5"
    with h5py.File(path, "w") as f:  # as D4RL's files are: positions 0.2 lower, no frame attribute
        for key, arr in data.items():
            shifted = arr - 0.2 if key in ("infos/goal", "infos/qpos") else arr.copy()
            if key == "observations":
                shifted[:, :2] -= 0.2
            f.create_dataset(key, data=shifted, compression="gzip")
    truth = xy_to_cell(data["observations"][:, :2])
    raw = load_d4rl_hdf5(path)["observations"][:, :2].astype(np.float64)
    fixed, info = load_dataset(path, maze="maze2d-umaze")
    xy = fixed["observations"][:, :2].astype(np.float64)
    print("50,000 steps of umaze motion written in D4RL's frame with h5py:")
    print(f"  read as is:      in walls {in_wall('maze2d-umaze', raw).mean():.1%}, wrong cell "
          f"{(xy_to_cell(raw) != truth).any(axis=1).mean():.1%}")
    print(f"  load_dataset:    frame {info['frame']} ({info['frame_source']}); in walls "
          f"{int(in_wall('maze2d-umaze', xy).sum())}, wrong cell {int((xy_to_cell(xy) != truth).any(axis=1).sum())}; "
          f"dataset_checks positions_in_wall {dataset_checks('maze2d-umaze', fixed)['positions_in_wall']}")
