"""How steady is this machine? 40 timings of 10 x (1024^3 fp32 matmul) on one thread, wall and CPU time.

    python docs/results/bench_cpu/machine_noise.py    # output: machine_noise.txt beside this file
"""
import time

import torch

torch.set_num_threads(1)
a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
wall, cpu = [], []
for _ in range(40):
    w, c = time.perf_counter(), time.process_time()
    for _ in range(10):
        a @ b
    wall.append((time.perf_counter() - w) * 100)  # ms per matmul
    cpu.append((time.process_time() - c) * 100)
print("ms per matmul, wall:", " ".join(f"{v:.1f}" for v in wall))
print("ms per matmul, cpu: ", " ".join(f"{v:.1f}" for v in cpu))
print(f"wall min {min(wall):.1f} max {max(wall):.1f}; cpu min {min(cpu):.1f} max {max(cpu):.1f}")
