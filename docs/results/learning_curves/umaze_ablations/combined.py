"""One figure of every umaze ablation against the preset's own `group` curve, from the committed
results.json files (no evaluation is rerun).

    .venv/bin/python docs/results/learning_curves/umaze_ablations/combined.py

Writes combined.png and combined.json (the curves drawn, steps <= 6,000) in this folder.
"""

import json
from pathlib import Path

from diffnorm.plotting.curves import learning_curves

HERE = Path(__file__).resolve().parent
# (label, results.json): the baseline is the preset's recipe (quick settings trained longer), group norm.
RUNS = [
    ("baseline: width 16, batch 32, eager", HERE.parent / "umaze_quick_10k" / "results.json"),
    ("width 32", HERE / "dim32" / "results.json"),
    ("train.compile=true", HERE / "compile" / "results.json"),
    ("batch 64", HERE / "batch64" / "results.json"),
    ("1M-step dataset (AVX2 CPU)", HERE / "data1m" / "results.json"),
    ("EMA 0.995 every 10 from 2k (AVX2 CPU)", HERE / "ema_default" / "results.json"),
]

records = []
for label, path in RUNS:
    if not path.is_file():
        continue
    run = next(r for r in json.loads(path.read_text())["runs"] if r["norm"] == "group")
    run = {**run, "label": label, "points": [p for p in run["points"] if p["step"] <= 6000]}
    records.append(run)
learning_curves(HERE / "combined.png", records,
                title="maze2d-umaze ablations of cpu_umaze (group, one thread each, 100 episodes per point)")
(HERE / "combined.json").write_text(json.dumps(
    {r["label"]: [{k: p[k] for k in ("step", "train_seconds", "score_mean", "score_sem", "success_rate")}
                  for p in r["points"]] for r in records}, indent=1) + "\n")
print(f"{len(records)} curves -> {HERE / 'combined.png'}")
