"""Record script: does averaging a run's EMA snapshots (a slow average of the weights, as a slower EMA
or SWA would keep) lift the medium CPU preset's score? No training: the snapshots of an existing run are
averaged, written as a snapshot of a scratch run directory (the run's config and scaler copied), and
scored with the learning-curve protocol (100 episodes, eval seed 0, one plan at t = 0).

    python docs/results/learning_curves/medium_snapshot_average/average.py <run_dir> <out_dir> 16000,18000,20000 ...
"""

import json
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from diffnorm.planning.rollout import evaluate_planner
from diffnorm.training.checkpoint import list_snapshots, load_checkpoint

torch.set_num_threads(1)
run, out = Path(sys.argv[1]), Path(sys.argv[2])
snaps = dict(list_snapshots(run))
rows = []
for spec in sys.argv[3:]:
    steps = [int(s) for s in spec.split(",")]
    scratch = out / f"avg_{steps[0]}_{steps[-1]}_{len(steps)}"
    (scratch / "snapshots").mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "scaler.json"):
        shutil.copy(run / name, scratch / name)
    total, meta = None, None
    for s in steps:
        with safe_open(str(snaps[s]), framework="pt") as f:
            t = {k: f.get_tensor(k).double() for k in f.keys()}  # noqa: SIM118
            meta = dict(f.metadata())
        total = t if total is None else {k: total[k] + t[k] for k in t}
    avg = {k: (v / len(steps)).float().contiguous() for k, v in total.items()}
    path = scratch / "snapshots" / f"step_{steps[-1]:07d}.safetensors"
    save_file(avg, str(path), metadata=meta)
    t0 = time.perf_counter()
    m = evaluate_planner(load_checkpoint(path), episodes=100, mode="single", seed=0).metrics
    row = {"steps_averaged": steps, "score_mean": m["score_mean"], "score_sem": m["score_sem"],
           "success_rate": m["success_rate"], "plan_in_wall_fraction": m["plan_in_wall_fraction"],
           "eval_seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(row), flush=True)
    rows.append(row)
(out / "results.json").write_text(json.dumps({"run": str(run), "rows": rows}, indent=2) + "\n")
