"""Record script: the medium planner's t = 0 plans by BFS distance of the task (goal jump, plan path length,
success, first step in the goal), and the agent's distance behind the plan over time (tracking).

    python docs/results/learning_curves/medium_snapshot_average/by_distance.py <snapshot.safetensors>
"""
import sys, numpy as np, torch
torch.set_num_threads(1)
from diffnorm.planning.rollout import evaluate_planner
from diffnorm.training.checkpoint import load_checkpoint
from diffnorm.envs.maze2d import bfs_distances, xy_to_cell
ld = load_checkpoint(sys.argv[1])
ev = evaluate_planner(ld, episodes=100, mode="single", seed=0)
r = ev.rollouts; plan = r.plans[0]
jump = np.linalg.norm(plan[:, -1, :2] - plan[:, -2, :2], axis=-1)
steps = np.linalg.norm(np.diff(plan[:, :, :2], axis=1), axis=-1)
planlen = steps[:, :-1].sum(1)
d = []
for k in range(len(jump)):
    g = tuple(xy_to_cell(r.goals[k]).tolist()); s = tuple(xy_to_cell(r.states[k, 0, :2]).tolist())
    d.append(bfs_distances(ld.cfg.env.name, g)[s])
d = np.array(d); succ = r.rewards.any(1)
first = np.array([np.argmax(x) if x.any() else 999 for x in r.rewards > 0])
print("score", ev.metrics["score_mean"])
for lo, hi in ((0, 4), (4, 7), (7, 10), (10, 13), (13, 30)):
    m = (d >= lo) & (d < hi)
    if m.any():
        print(f"BFS {lo}-{hi-1}: n={m.sum():3d} jump {np.median(jump[m]):.3f} plan path {np.median(planlen[m]):.1f} success {succ[m].mean():.2f} first-in-goal median {np.median(first[m]):.0f} score {np.mean(np.array(ev.metrics['scores'])[m]):.1f}")
# where the agent falls behind: distance to the plan's state of the same step, by step, for BFS 7-9
tr = r.tracking  # [N, T] distance to the steered-at plan state
m = (d >= 7) & (d < 10)
for t in (10, 50, 100, 150, 200, 250):
    print(f"t={t}: tracking median {np.nanmedian(tr[m, t]):.2f}, agent-to-plan[t] {np.median(np.linalg.norm(r.states[m, t, :2] - plan[m, t, :2], axis=-1)):.2f}, agent in wall-adjacent stall (speed<0.01) {np.mean(np.linalg.norm(r.states[m, t, 2:], axis=-1) < 0.1):.2f}")
pv = np.linalg.norm(plan[:, :, 2:], axis=-1); av = np.linalg.norm(r.states[:, :256, 2:], axis=-1)
print("plan speed median", np.median(pv[m]), "agent speed median (first 256 steps)", np.median(av[m]))
print("plan step median", np.median(steps[m]), "agent step median", np.median(np.linalg.norm(np.diff(r.states[m, :256, :2], axis=1), axis=-1)))
