"""Success per protocol of the OGBench planner and the floor, from protocol_check.py's results.json.

    python docs/results/stitching_study/ogbench_medium/protocol_check/plot.py
"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

here = Path(__file__).parent
rows = json.loads((here / "results.json").read_text())["rows"]
protocols = list(dict.fromkeys(r["protocol"] for r in rows))
runs = list(dict.fromkeys(r["run"] for r in rows))
fig, ax = plt.subplots(figsize=(9, 4.2))
width = 0.8 / len(runs)
for k, run in enumerate(runs):
    success = [next(r["success_rate"] for r in rows if r["run"] == run and r["protocol"] == p) for p in protocols]
    label = "floor (straight at the goal)" if run == "goal_only" else f"Diffuser {run} (cpu_medium, 20k steps)"
    ax.bar(np.arange(len(protocols)) + (k - (len(runs) - 1) / 2) * width, success, width, label=label)
ax.set_xticks(np.arange(len(protocols)), protocols, rotation=12)
ax.set_xlabel("planning protocol")
ax.set_ylabel("success rate (5 tasks x 20 episodes)")
ax.set_ylim(0, 1)
ax.set_title("OGBench pointmaze-medium-stitch: the same planner under five protocols")
ax.legend(loc="upper left")
fig.tight_layout()
fig.savefig(here / "protocol_check.png", dpi=120)
