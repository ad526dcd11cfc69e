"""Record script: where do the medium preset's failures come from? One snapshot, 100 episodes, the published
protocol and off-plan replanning; failing vs succeeding episodes: plan in walls, tracking error, goal jump
(the last plan step, against the median step), first step in the goal.

    python docs/results/learning_curves/medium_snapshot_average/diagnose.py <snapshot.safetensors>
"""
import sys, numpy as np, torch
torch.set_num_threads(1)
from diffnorm.planning.rollout import evaluate_planner
from diffnorm.training.checkpoint import load_checkpoint
ld = load_checkpoint(sys.argv[1])
for kw in ({}, {"replan_off_plan": 1.0}):
    ev = evaluate_planner(ld, episodes=100, mode="single", seed=0, **kw)
    m = ev.metrics; pe = m["per_episode"]
    fail = [e for e in pe if not e["success"]]
    ok = [e for e in pe if e["success"]]
    jumps = np.linalg.norm(np.diff(ev.rollouts.plans[0][..., :2], axis=1), axis=-1)[:, -1]
    print(kw, "score %.1f±%.1f succ %.2f" % (m["score_mean"], m["score_sem"], m["success_rate"]),
          "goal jump med %.3f step med %.3f" % (np.median(jumps), m["plan_step_median"]))
    print("  fail n=%d: wall frac %.3f, track err %.3f, jump %.3f" % (len(fail), np.mean([e["plan_in_wall_fraction"] for e in fail]) if fail else 0,
          np.nanmean([e["tracking_error_mean"] or np.nan for e in fail]) if fail else 0, np.mean([jumps[i] for i,e in enumerate(pe) if not e["success"]]) if fail else 0))
    print("  ok n=%d: first step med %s, score mean %.1f, wall %.3f, track %.3f" % (len(ok), np.median([e["first_step_in_goal"] for e in ok]), np.mean([e["score"] for e in ok]),
          np.mean([e["plan_in_wall_fraction"] for e in ok]), np.nanmean([e["tracking_error_mean"] or np.nan for e in ok])))
    print("  success_final %.2f" % m["success_rate_final"])
