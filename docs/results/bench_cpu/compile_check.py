"""The compiled CPU training step computes the eager step: same loss and gradients on one batch.

    python docs/results/bench_cpu/compile_check.py    # output: compile_check.txt beside this file
"""
import time

import torch

from diffnorm.bench.suite import synthetic_windows
from diffnorm.diffusion.gaussian import GaussianDiffusion
from diffnorm.models.temporal_unet import TemporalUnet
from diffnorm.training.step import collate

torch.set_num_threads(2)
torch.manual_seed(0)
net = TemporalUnet(128, 6)
diffusion = GaussianDiffusion(net, 128, n_diffusion_steps=64)
x0, conds = collate(synthetic_windows(32, 128), torch.device("cpu"))
compiled = torch.compile(net)
results = {}
for name, denoiser in (("eager", None), ("compiled", compiled)):
    net.zero_grad(set_to_none=True)
    start = time.perf_counter()
    loss = diffusion.loss(x0, conds, generator=torch.Generator().manual_seed(1), denoiser=denoiser)
    loss.backward()
    results[name] = (loss.item(), [p.grad.clone() for p in net.parameters()], time.perf_counter() - start)
(le, ge, te), (lc, gc, tc) = results["eager"], results["compiled"]
worst = max(((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item() for a, b in zip(gc, ge))
print(f"loss eager {le:.8f} compiled {lc:.8f} (abs diff {abs(le - lc):.2e})")
print(f"worst per-tensor gradient difference relative to the tensor's max: {worst:.2e} over {len(ge)} tensors")
print(f"first call: eager {te:.2f} s, compiled {tc:.1f} s (includes compilation; inductor cache may be warm)")
