"""This session's eager speed-up measured directly: the package's U-Net before the work (commit c0e7b3c,
extracted as package ``diffnorm_before``) against the current one and the plain reference, one network
step each (forward, backward, fused Adam), H = 128, B = 32, 2 threads, interleaved rounds.

    rm -rf /tmp/old && mkdir /tmp/old && git archive c0e7b3c diffnorm | tar -x -C /tmp/old
    mv /tmp/old/diffnorm /tmp/old/diffnorm_before
    grep -rl diffnorm /tmp/old/diffnorm_before --include=*.py | xargs sed -i 's/\\bdiffnorm\\./diffnorm_before./g'
    PYTHONPATH=/tmp/old python docs/results/bench_cpu/before_after.py   # output: before_after.txt
"""
import statistics
import time

import torch
from diffnorm_before.models.temporal_unet import TemporalUnet as TemporalUnetBefore

from diffnorm.bench.plain import PlainTemporalUnet
from diffnorm.models.temporal_unet import TemporalUnet

torch.set_num_threads(2)
torch.manual_seed(0)
x, t = torch.randn(32, 128, 6), torch.randint(0, 64, (32,))
nets = {"plain reference": PlainTemporalUnet(), "package before (c0e7b3c)": TemporalUnetBefore(128, 6),
        "package now": TemporalUnet(128, 6)}
state = nets["package now"].state_dict()
for net in nets.values():
    net.load_state_dict(state)  # same weights: the same function, three implementations
outs = {k: net(x, t) for k, net in nets.items()}
print("max |output - plain| :", {k: f"{(v - outs['plain reference']).abs().max().item():.1e}" for k, v in outs.items()})


def stepper(net):
    opt = torch.optim.Adam(net.parameters(), fused=True)

    def step():
        opt.zero_grad()
        (net(x, t) - x).square().mean().backward()
        opt.step()
    return step


steps = {k: stepper(net) for k, net in nets.items()}
for step in steps.values():
    for _ in range(3):
        step()
times = {k: [] for k in steps}
for _ in range(50):
    for k, step in steps.items():
        start = time.perf_counter()
        step()
        times[k].append(time.perf_counter() - start)
plain, before = times["plain reference"], times["package before (c0e7b3c)"]
print("network step, H=128 B=32, 2 threads, 50 interleaved rounds")
for k, v in times.items():
    print(f"  {k:26s} median {statistics.median(v) * 1e3:6.1f} ms   x plain {statistics.median(plain) / statistics.median(v):.2f}"
          f" (paired {statistics.median(p / q for p, q in zip(plain, v)):.2f})"
          f"   x before (paired) {statistics.median(b / q for b, q in zip(before, v)):.2f}")
