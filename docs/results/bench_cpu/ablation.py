# Record of a past measurement: diffnorm.models.activations (the one-exp Mish) was removed in favour of
# nn.Mish after mish_presets.py measured at most 4.4 % either way at the CPU presets. To re-run, check out
# commit 412af82 first (git worktree add /tmp/before 412af82).
"""What each part of the CPU speed work buys: one network step (forward, backward, fused Adam) of the
published U-Net at H = 128, B = 32, variants interleaved round by round, median step time.

    python docs/results/bench_cpu/ablation.py     # output: ablation.txt beside this file

Variants: the plain reference; the package; the package with ATen's mish put back (isolates the one-exp
Mish); and, per shape, Mish forward + backward alone, ATen vs the package.
"""
import statistics
import time

import torch
import torch.nn.functional as F

from diffnorm.bench.plain import PlainTemporalUnet
from diffnorm.models.activations import Mish, mish
from diffnorm.models.temporal_unet import TemporalUnet

torch.set_num_threads(2)
torch.manual_seed(0)
x, t = torch.randn(32, 128, 6), torch.randint(0, 64, (32,))


class AtenMish(torch.nn.Module):
    def forward(self, v):
        return F.mish(v)


def with_aten_mish(net):
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Mish):
                setattr(module, name, AtenMish())
    return net


def stepper(net):
    opt = torch.optim.Adam(net.parameters(), fused=True)

    def step():
        opt.zero_grad()
        (net(x, t) - x).square().mean().backward()
        opt.step()
    return step


variants = {"plain reference": stepper(PlainTemporalUnet()), "package": stepper(TemporalUnet(128, 6)),
            "package, ATen mish": stepper(with_aten_mish(TemporalUnet(128, 6)))}
for step in variants.values():
    for _ in range(3):
        step()
times = {k: [] for k in variants}
for _ in range(40):
    for k, step in variants.items():
        start = time.perf_counter()
        step()
        times[k].append(time.perf_counter() - start)
plain = times["plain reference"]
print("network step (fwd + bwd + fused Adam), H=128 B=32, 2 threads, 40 interleaved rounds")
for k, v in times.items():
    paired = statistics.median(p / q for p, q in zip(plain, v))
    print(f"  {k:22s} median {statistics.median(v) * 1e3:6.1f} ms   x plain {statistics.median(plain) / statistics.median(v):.2f}"
          f" (paired {paired:.2f})")


def best_us(fn, n=50, rounds=3):
    out = []
    for _ in range(rounds):
        for _ in range(5):
            fn()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - start) / n * 1e6)
    return min(out)


print("Mish forward + backward alone (best of 3 x 50 calls)")
for shape in [(32, 32, 128), (32, 128, 64), (32, 256, 32)]:
    v = torch.randn(*shape).requires_grad_()
    g = torch.randn(*shape)
    aten = best_us(lambda: F.mish(v).backward(g))
    ours = best_us(lambda: mish(v).backward(g))
    print(f"  {str(list(shape)):16s} ATen {aten:6.0f} us   package {ours:6.0f} us   {aten / ours:.2f}x")
