"""Why parameters stay contiguous: fused Adam on the CPU walks .grad and its state in the parameter's
memory order, so a gradient laid out differently from its parameter gives silently wrong updates.

    python docs/results/bench_cpu/fused_adam_layout.py    # output: fused_adam_layout.txt beside this file
"""
import torch

w0 = torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0))
grad = torch.arange(60.0).reshape(4, 3, 5).sin()  # contiguous, as an assigned gradient may be
updated = {}
for permuted in (False, True):
    for fused in (False, True):
        w = w0.transpose(1, 2).contiguous().transpose(1, 2) if permuted else w0.clone()
        p = torch.nn.Parameter(w)
        opt = torch.optim.Adam([p], lr=0.1, fused=fused)
        p.grad = grad.clone()
        opt.step()
        updated[(permuted, fused)] = p.detach().clone()
ref = updated[(False, False)]
for (permuted, fused), value in updated.items():
    layout = "channels-last-like parameter" if permuted else "contiguous parameter"
    print(f"{layout:29s} fused={fused!s:5s}: max |difference from the reference update| = "
          f"{(value - ref).abs().max().item():.3g}")
