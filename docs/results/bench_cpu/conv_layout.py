"""One convolution's forward + backward: torch's Conv1d on contiguous [B, C, T] vs the package's
time-major TimeMajorConv1d (channels-last 2-D view), at the U-Net's layer shapes, 2 threads.

    python docs/results/bench_cpu/conv_layout.py    # output: conv_layout.txt beside this file
"""
import time

import torch
from torch import nn

from diffnorm.models.layout import TimeMajorConv1d

torch.set_num_threads(2)


def best_ms(fn, n=20, rounds=3):
    out = []
    for _ in range(rounds):
        for _ in range(3):
            fn()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - start) / n * 1e3)
    return min(out)


for c_in, c_out, length in [(32, 32, 128), (128, 128, 64), (256, 256, 32), (512, 128, 32)]:
    ref, ours = nn.Conv1d(c_in, c_out, 5, padding=2), TimeMajorConv1d(c_in, c_out, 5, padding=2)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(32, c_in, length, requires_grad=True)
    x_tm = x.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    g = torch.randn(32, c_out, length)
    g_tm = g.transpose(1, 2).contiguous().transpose(1, 2)
    a = best_ms(lambda: ref(x).backward(g))
    b = best_ms(lambda: ours(x_tm).backward(g_tm))
    print(f"{c_in:4d} -> {c_out:4d}, T = {length:3d}: Conv1d {a:6.2f} ms, time-major {b:6.2f} ms, {a / b:.2f}x")
