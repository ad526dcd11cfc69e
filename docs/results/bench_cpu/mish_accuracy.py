# Record of a past measurement: diffnorm.models.activations (the one-exp Mish) was removed in favour of
# nn.Mish after mish_presets.py measured at most 4.4 % either way at the CPU presets. To re-run, check out
# commit 412af82 first (git worktree add /tmp/before 412af82).
"""Accuracy of the package's Mish against the float64 definition, next to ATen's float32 mish.

    python docs/results/bench_cpu/mish_accuracy.py    # output: mish_accuracy.txt beside this file
"""
import torch
import torch.nn.functional as F

from diffnorm.models.activations import mish

x = torch.linspace(-120, 120, 48_001)
exact = x.double() * torch.tanh(F.softplus(x.double()))
for name, fn in (("ATen F.mish", F.mish), ("package mish", mish)):
    err = (fn(x).double() - exact).abs()
    big = exact.abs() >= 1e-2
    rel = err[big] / exact[big].abs()
    print(f"{name:13s} max abs error {err.max():.2e} (at x = {x[err.argmax()]:.2f}); "
          f"max relative error where |y| >= 1e-2: {rel.max():.2e} (at x = {x[big][rel.argmax()]:.2f})")
