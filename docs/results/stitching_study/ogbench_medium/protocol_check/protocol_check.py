"""Which protocol OGBench's stitch study should read: the same planner (and the floor) under several.

The planner is the study's `group` seed 0 (cpu_medium preset, 20,000 steps, committed beside this
folder); each protocol runs OGBench pointmaze-medium's 5 tasks 20 times each (eval seed 0, 1000 steps,
the kinematic PlanFollower), exactly as the study evaluates. The floor is GoalOnlyPlanner (straight at
the goal) followed under the same protocol.

    OMP_NUM_THREADS=1 python docs/results/stitching_study/ogbench_medium/protocol_check/protocol_check.py \
        [run ...] > docs/results/stitching_study/ogbench_medium/protocol_check/protocol_check.txt
"""

import json
import sys
import time
from pathlib import Path

import torch

from diffnorm.planning.rollout import Protocol
from diffnorm.planning.stitch import evaluate_on_ogbench_tasks, ogbench_references

torch.set_num_threads(1)
EPISODES, MAZE = 20, "maze2d-medium"
PROTOCOLS = ["open_loop", "replan_32", "off_plan_0.5", "off_plan_1", "replan_32+off_plan_1"]
RUNS = sys.argv[1:] or ["outputs/stitching_study/ogbench_medium/runs/group/seed0"]
rows = []


def per_task(metrics):
    return " ".join(f"{t['success_rate']:.2f}" for t in metrics["per_task"])


print(f"OGBench pointmaze-medium, 5 tasks x {EPISODES} episodes, eval seed 0, 1000 steps", flush=True)
for name in PROTOCOLS:
    protocol = Protocol.parse(name)
    tic = time.perf_counter()
    floor = ogbench_references(MAZE, EPISODES, 0, None, protocol)["goal_only"]
    print(f"{'floor':>14} {name:>20}: success {floor['success_rate']:.2f} "
          f"(tasks {per_task(floor)}), {time.perf_counter() - tic:.0f} s",
          flush=True)
    rows.append({"run": "goal_only", "protocol": name, "success_rate": floor["success_rate"],
                 "per_task": [t["success_rate"] for t in floor["per_task"]]})
    for run in RUNS:
        tic = time.perf_counter()
        m, _ = evaluate_on_ogbench_tasks(Path(run), MAZE, EPISODES, 0, None, protocol)
        label = "/".join(Path(run).parts[-2:])
        print(f"{label:>14} {name:>20}: success {m['success_rate']:.2f} "
              f"(tasks {per_task(m)}), "
              f"plans/episode {m['plans_per_episode']:.1f}, planned states in walls {m['plan_in_wall_fraction']:.3f}, "
              f"{time.perf_counter() - tic:.0f} s", flush=True)
        rows.append({"run": label, "protocol": name, "success_rate": m["success_rate"],
                     "per_task": [t["success_rate"] for t in m["per_task"]],
                     "plans_per_episode": m["plans_per_episode"], "plan_in_wall_fraction": m["plan_in_wall_fraction"],
                     "rollout_seconds": m["rollout_seconds"]})
(Path(__file__).parent / "results.json").write_text(json.dumps({"episodes_per_task": EPISODES, "eval_seed": 0,
                                                                "rows": rows}, indent=1))
