"""Why the stitching study replans off-plan episodes: the same planners under five protocols.

The planners are the umaze CPU-preset planners trained on the whole-path D4RL-recipe data (the ceiling
control: whole paths between any two cells exist in their data), i.e. the 6,000-step snapshots of
outputs/curves/umaze_quick_{group,none} (bit-identical to `experiment=cpu_umaze` runs). Each protocol
plans the two umaze stitch tasks 20 times each (eval seed 0), 300 steps, the published controller.

    python docs/results/stitching_answer/protocol_check.py > docs/results/stitching_answer/protocol_check.txt
"""

import sys
import time

import numpy as np
import torch

from diffnorm.data.stitch import stitch_task_cells, stitch_tasks
from diffnorm.planning.rollout import Protocol, evaluate_planner
from diffnorm.planning.stitch import plan_path_stats
from diffnorm.training.checkpoint import load_checkpoint

torch.set_num_threads(1)
EPISODES = 20
RUNS = sys.argv[1:] or [f"outputs/curves/umaze_quick_{n}/snapshots/step_0006000.safetensors" for n in ("group", "none")]
tasks = stitch_tasks("maze2d-umaze")
starts = np.repeat(np.stack([s for s, _ in tasks]), EPISODES, axis=0)
goals = np.repeat(np.stack([g for _, g in tasks]), EPISODES, axis=0)
print(f"tasks {[(s.tolist(), g.tolist()) for s, g in tasks]}, {EPISODES} episodes each, eval seed 0")
for run in RUNS:
    loaded = load_checkpoint(run, "cpu")
    for name in ("open_loop", "replan_8", "replan_32", "off_plan_0.5", "off_plan_1"):
        protocol = Protocol.parse(name)
        tic = time.perf_counter()
        evaluation = evaluate_planner(loaded, episodes=len(starts), starts=starts, goals=goals, seed=0,
                                      replan_every=protocol.replan_every, replan_off_plan=protocol.replan_off_plan)
        m = evaluation.metrics
        success = np.array([e["success"] for e in m["per_episode"]])
        if name == "open_loop":  # the t = 0 plans are the same under every protocol (same seed, same batch)
            plans = evaluation.rollouts.plans[0]
            cells = stitch_task_cells("maze2d-umaze")
            connected = np.mean([plan_path_stats("maze2d-umaze", plans[k, :, :2], cells[k // EPISODES][1],
                                                 cells[k // EPISODES][2])["plan_connected"] for k in range(len(plans))])
            print(f"{loaded.cfg.norm.name:>6} step {loaded.step}: connected t = 0 plans {connected:.3f}")
        print(f"{loaded.cfg.norm.name:>6} step {loaded.step} {name:>13}: success {success.mean():.3f} "
              f"(task 0 {success[:EPISODES].mean():.2f}, task 1 {success[EPISODES:].mean():.2f}), "
              f"score {m['score_mean']:6.1f} ± {m['score_sem']:4.1f}, plans/episode {m['plans_per_episode']:.2f}, "
              f"{time.perf_counter() - tic:.0f} s", flush=True)
