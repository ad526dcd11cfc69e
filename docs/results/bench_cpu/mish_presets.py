# Record of a past measurement: diffnorm.models.activations (the one-exp Mish) was removed in favour of
# nn.Mish after mish_presets.py measured at most 4.4 % either way at the CPU presets. To re-run, check out
# commit 412af82 first (git worktree add /tmp/before 412af82).
"""Does the package's one-exp Mish pay for itself at the CPU presets? One training step (forward,
backward, fused Adam) of the presets' U-Net (dim 16, dim_mults 1/4/8, GroupNorm), batch 32, with the
package's Mish and with ``nn.Mish`` (ATen), variants interleaved round by round, median step time.
Both compute the same function (to 1.2e-6), so steps-to-score are the same and the step-time ratio is
the time-to-score ratio.

    python docs/results/bench_cpu/mish_presets.py     # output: mish_presets.txt beside this file
"""
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from diffnorm.models.activations import Mish
from diffnorm.models.temporal_unet import TemporalUnet


def with_aten_mish(net):
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Mish):
                setattr(module, name, nn.Mish())
    return net


def stepper(net, x, t):
    opt = torch.optim.Adam(net.parameters(), fused=True)

    def step():
        opt.zero_grad()
        (net(x, t) - x).square().mean().backward()
        opt.step()
    return step


lines = []
for threads, horizon in [(1, 128), (2, 128), (2, 256)]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    x, t = torch.randn(32, horizon, 6), torch.randint(0, 32, (32,))
    variants = {"package Mish": stepper(TemporalUnet(horizon, 6, dim=16), x, t),
                "nn.Mish": stepper(with_aten_mish(TemporalUnet(horizon, 6, dim=16)), x, t)}
    for step in variants.values():
        for _ in range(5):
            step()
    times = {k: [] for k in variants}
    for _ in range(60):
        for k, step in variants.items():
            start = time.perf_counter()
            step()
            times[k].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = statistics.median(a / b for a, b in zip(times["nn.Mish"], times["package Mish"]))
    lines.append(f"dim 16, H={horizon}, B=32, {threads} thread(s), 60 interleaved rounds: "
                 f"package Mish {1e3 * med['package Mish']:.1f} ms, nn.Mish {1e3 * med['nn.Mish']:.1f} ms, "
                 f"nn.Mish / package {med['nn.Mish'] / med['package Mish']:.3f} (paired {paired:.3f})")
    print(lines[-1], flush=True)
out = Path(__file__).with_suffix(".txt")
out.write_text(f"torch {torch.__version__}, {sys.platform}\n" + "\n".join(lines) + "\n")
