"""The toy localization CNN (Fig. 1: T = 64, L = 8, k = 5, C = 32, batch 64, 1 thread as each worker
runs): one Adam step before this session's layout work (commit c0e7b3c as ``diffnorm_before``, see
before_after.py for the extraction) and now, interleaved rounds.

    PYTHONPATH=/tmp/old python docs/results/bench_cpu/toy_before_after.py   # output: toy_before_after.txt
"""
import statistics
import time

import torch
from diffnorm_before.models.norms import norm_factory as norm_before
from diffnorm_before.toy.localization import LocalizationCNN as CNNBefore

from diffnorm.models.norms import norm_factory
from diffnorm.toy.localization import LocalizationCNN

torch.set_num_threads(1)
torch.manual_seed(0)
x, target = torch.randn(64, 1, 64), torch.linspace(-1, 1, 64).expand(64, 1, 64)
for norm in ("none", "instance"):
    nets = {"before": CNNBefore(8, 5, 32, norm_before(norm)), "now": LocalizationCNN(8, 5, 32, norm_factory(norm))}
    nets["now"].load_state_dict(nets["before"].state_dict())
    diff = (nets["now"](x) - nets["before"](x)).abs().max().item()
    steps = {}
    for k, net in nets.items():
        opt = torch.optim.Adam(net.parameters(), 1e-3)

        def step(net=net, opt=opt):
            opt.zero_grad()
            (net(x) - target).square().mean().backward()
            opt.step()
        steps[k] = step
    for step in steps.values():
        for _ in range(5):
            step()
    times = {k: [] for k in steps}
    for _ in range(100):
        for k, step in steps.items():
            start = time.perf_counter()
            step()
            times[k].append(time.perf_counter() - start)
    before, now = statistics.median(times["before"]), statistics.median(times["now"])
    paired = statistics.median(b / n for b, n in zip(times["before"], times["now"]))
    print(f"norm={norm:8s} max |output difference| {diff:.1e}; step before {before * 1e3:.2f} ms, now {now * 1e3:.2f} ms,"
          f" now/before speed {before / now:.2f}x (paired {paired:.2f}x)")
