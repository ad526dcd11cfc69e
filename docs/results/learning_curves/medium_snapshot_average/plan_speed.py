"""Record script: plan step length against the plan's own velocity channel (x dt = 0.01) and the agent's step,
and how far the agent is behind the plan when the plan ends, for one or more snapshots (100 episodes each).

    python docs/results/learning_curves/medium_snapshot_average/plan_speed.py <snapshot> [<snapshot> ...]
"""
import sys, numpy as np, torch
torch.set_num_threads(1)
from diffnorm.planning.rollout import evaluate_planner
from diffnorm.training.checkpoint import load_checkpoint
for path in sys.argv[1:]:
    ld = load_checkpoint(path)
    ev = evaluate_planner(ld, episodes=100, mode="single", seed=0)
    r = ev.rollouts; plan = r.plans[0]; H = plan.shape[1]
    step = np.linalg.norm(np.diff(plan[:, :, :2], axis=1), axis=-1)[:, :-1]
    speed = np.linalg.norm(plan[:, :-1, 2:], axis=-1)
    net = np.linalg.norm(plan[:, H // 2, :2] - plan[:, 0, :2], axis=-1) / (H // 2)
    agent = np.linalg.norm(np.diff(r.states[:, :H, :2], axis=1), axis=-1)
    lag = np.linalg.norm(r.states[:, H - 1, :2] - plan[:, H - 1, :2], axis=-1)
    print(f"{path.split('outputs/curves/')[1]}: score {ev.metrics['score_mean']:.1f}; plan step {np.median(step):.4f} "
          f"(velocity x 0.01 = {np.median(speed) * 0.01:.4f}), agent step {np.median(agent):.4f}, "
          f"agent-to-plan at t=H-1 {np.median(lag):.2f}", flush=True)
