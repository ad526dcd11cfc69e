"""Following Diffuser plans with OGBench's kinematic point, and scoring them on OGBench's fixed tasks.

``evaluate_ogbench`` runs any policy on the env's fixed tasks (``reset(options={"task_id": i})``, goal
from ``info["goal"]``, env defaults: 1000 steps, episode ends at the goal) and scores each episode with
the env's own ``info["success"]`` at its last step, as OGBench's ``evaluate`` does; ``oracle_policy`` is
the BFS reference it is tested with.

maze2d's PD controller (``controller.py``) steers a point with momentum; OGBench's point has none: an
action moves it by ``OGBENCH_STEP`` cells per unit (clipped), and it observes only [x, y]. So the follower
steers straight at the next planned position (``kinematic_action``), and can replan from where the point
is every ``replan_every`` steps and/or when the point is off its plan (``replan_off_plan``), as maze2d's
rollouts do (``planning.rollout.Protocol``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diffnorm.envs.frames import OGBenchFrame
from diffnorm.envs.maze2d import bfs_distances, in_wall, maze_spec, xy_to_cell
from diffnorm.envs.ogbench_maze import OGBENCH_ENVS, OGBENCH_STEP, make_ogbench_env, numpy_global_seed
from diffnorm.errors import require
from diffnorm.planning.planner import DiffuserPlanner, Planner
from diffnorm.planning.rollout import Protocol
from diffnorm.training.checkpoint import LoadedDiffuser

# policy(xy [N, 2], goal_xy [N, 2], active [N] bool: the episodes still running) -> actions [N, 2], D4RL frame
Policy = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def kinematic_action(target_xy: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """The action (D4RL frame) that moves OGBench's point from ``xy`` to ``target_xy`` in one step, clipped
    to [-1, 1]: what a plan follower needs instead of maze2d's PD controller."""
    return np.clip((np.asarray(target_xy, dtype=np.float64) - np.asarray(xy, dtype=np.float64)) / OGBENCH_STEP,
                   -1.0, 1.0)


def evaluate_ogbench(policy: Policy, maze: str, episodes_per_task: int = 1, seed: int = 0,
                     task_ids: list[int] | None = None, keep_paths: bool = False, max_steps: int | None = None
                     ) -> dict[str, Any]:
    """Success of ``policy`` on OGBench's fixed tasks of ``maze``, scored by the env's ``info["success"]``.

    All episodes (``episodes_per_task`` per task, tasks 1..5 by default, task-major) step in lockstep, one
    env each. ``policy`` sees every episode's position and goal at once ([N, 2] each, D4RL frame, rows in
    a fixed order, so a plan follower can keep per-episode state) and which are still running ([N] bool),
    and returns their actions; the actions of episodes that have ended are discarded. An episode stops
    when the env ends it: goal reached, or its time limit (OGBench's 1000 steps; ``max_steps`` shortens it, e.g. for tests). Start and goal noise
    come from OGBench's own draws, seeded by ``seed``.
    """
    require(int(episodes_per_task) >= 1, f"episodes_per_task={episodes_per_task} must be positive")
    require(max_steps is None or int(max_steps) >= 1, f"max_steps={max_steps} must be null or positive")
    limit = {} if max_steps is None else {"max_episode_steps": int(max_steps)}
    frame = OGBenchFrame()
    probe = make_ogbench_env(maze)
    num_tasks, infos = probe.unwrapped.num_tasks, probe.unwrapped.task_infos
    probe.close()
    task_ids = list(range(1, num_tasks + 1)) if task_ids is None else [int(t) for t in task_ids]
    require(all(1 <= t <= num_tasks for t in task_ids), f"task_ids={task_ids} must lie in [1, {num_tasks}]")
    runs = [t for t in task_ids for _ in range(int(episodes_per_task))]
    envs = [make_ogbench_env(maze, **limit) for _ in runs]
    xy, goal = np.zeros((len(runs), 2)), np.zeros((len(runs), 2))
    with numpy_global_seed(int(seed)):
        for k, (env, task_id) in enumerate(zip(envs, runs)):
            env.action_space.seed(int(seed) + k)
            ob, info = env.reset(seed=int(seed) + k, options={"task_id": task_id})
            xy[k], goal[k] = frame.point_to_d4rl(ob), frame.point_to_d4rl(info["goal"])
        active = np.ones(len(runs), dtype=bool)
        success, steps = np.zeros(len(runs), dtype=bool), np.zeros(len(runs), dtype=np.int64)
        paths = [[xy[k].copy()] for k in range(len(runs))] if keep_paths else []
        while active.any():
            actions = np.asarray(policy(xy.copy(), goal.copy(), active.copy()), dtype=np.float64)
            require(actions.shape == (len(runs), 2), f"the policy returned {actions.shape}, expected "
                    f"[{len(runs)}, 2]")
            index = np.flatnonzero(active)
            for k, action in zip(index, frame.action_from_d4rl(actions[index])):
                ob, _, terminated, truncated, info = envs[k].step(action)
                xy[k] = frame.point_to_d4rl(ob)
                steps[k] += 1
                if keep_paths:
                    paths[k].append(xy[k].copy())
                if terminated or truncated:
                    active[k] = False
                    success[k] = bool(info["success"])
    for env in envs:
        env.close()
    per_task = []
    for task_id in task_ids:
        mine = np.array([r == task_id for r in runs])
        info = infos[task_id - 1]
        start_cell, goal_cell = tuple(info["init_ij"]), tuple(info["goal_ij"])
        per_task.append({"task_id": task_id, "task_name": info["task_name"], "start_cell": list(start_cell),
                         "goal_cell": list(goal_cell),
                         "bfs_distance": int(bfs_distances(maze, start_cell)[goal_cell]),
                         "success_rate": float(success[mine].mean()), "successes": success[mine].tolist(),
                         "steps": steps[mine].tolist()})
    result = {"env": OGBENCH_ENVS[maze], "maze": maze, "episodes": len(runs), "seed": int(seed), "task_ids": runs,
              "goals": goal.tolist(),
              "success_rate": float(success.mean()), "tasks": per_task}
    if keep_paths:
        result["paths"] = [np.asarray(p) for p in paths]
    return result


def oracle_policy(maze: str, speed: float = 1.0) -> Policy:
    """A noiseless BFS oracle in the D4RL frame (unit vector toward the next cell centre of a shortest path
    to the goal's cell, scaled by ``speed``): the reference policy the adapter is tested with."""
    spec = maze_spec(maze)
    cache: dict[tuple[int, int], np.ndarray] = {}

    def act(xy: np.ndarray, goal_xy: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        out = np.zeros_like(np.asarray(xy, dtype=np.float64))
        for k, (p, g) in enumerate(zip(np.asarray(xy, dtype=np.float64), np.asarray(goal_xy, dtype=np.float64))):
            if active is not None and not active[k]:
                continue
            here, there = tuple(int(v) for v in xy_to_cell(p)), tuple(int(v) for v in xy_to_cell(g))
            if there not in cache:
                cache[there] = bfs_distances(maze, there)
            dist = cache[there]
            target = g
            if here != there and spec.layout[here] == 0:
                options = [(here[0] + di, here[1] + dj) for di, dj in ((-1, 0), (0, -1), (1, 0), (0, 1))]
                nxt = min((c for c in options if dist[c] >= 0), key=lambda c: dist[c])
                target = np.asarray(nxt, dtype=np.float64)
            direction = target - p
            out[k] = speed * direction / (np.linalg.norm(direction) + 1e-6)
        return out

    return act


@dataclass
class PlanFollower:
    """A ``policy(xy [N, 2], goal [N, 2], active [N] = None) -> actions [N, 2]`` (D4RL frame) that plans
    with ``planner`` at its first call, and in between steers at plan step k + 1 when k steps into the plan; past the plan's
    end it holds its last position. It plans again for every episode ``replan_every`` calls after its
    plan was made (``None``: never), and, with ``replan_off_plan=d`` (cells), for an episode farther than
    d from where its plan puts it now (at most once per ``OFF_PLAN_COOLDOWN`` calls): a point pinned on a
    wall that its plan crosses, or left behind by a plan that jumps, gets a plan from where it is.

    Episodes that have ended (``active`` False) are not planned for again. Rows are episodes in a fixed
    order (``evaluate_ogbench`` keeps them so). Each planning round keeps the plans in force after it in
    ``plans`` ([N, H, 2] positions), the step it was made at in ``plan_steps`` and which episodes it gave a
    new plan in ``replanned`` ([N] bool), for metrics and figures.
    """

    planner: Planner
    replan_every: int | None = None
    replan_off_plan: float | None = None
    plans: list[np.ndarray] = field(default_factory=list)
    plan_steps: list[int] = field(default_factory=list)
    replanned: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0
    _step: int = 0
    _start: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))  # each episode's plan's step
    _protocol: Protocol = field(init=False)

    def __post_init__(self) -> None:
        self._protocol = Protocol(self.replan_every, self.replan_off_plan)  # maze2d rollouts' rule and errors

    def __call__(self, xy: np.ndarray, goal_xy: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        xy = np.asarray(xy, dtype=np.float64)
        rows = np.arange(len(xy))
        if not self.plans:
            due = np.ones(len(xy), dtype=bool)
            self._start = np.zeros(len(xy), dtype=int)
        else:
            due = self._protocol.due(self._step - self._start, xy, self.plans[-1])
            if active is not None:
                due &= np.asarray(active, dtype=bool)
        if due.any():
            tic = time.perf_counter()
            new = np.asarray(self.planner(xy[due].copy(), np.asarray(goal_xy, dtype=np.float64)[due].copy()),
                             dtype=np.float64)
            self.seconds += time.perf_counter() - tic
            require(new.ndim == 3 and new.shape[0] == int(due.sum()) and new.shape[2] >= 2,
                    f"the planner returned {new.shape}, expected [{int(due.sum())}, horizon, >= 2]")
            plans = new[..., :2] if not self.plans else self.plans[-1].copy()  # a new array each round
            plans[due] = new[..., :2]
            self._start[due] = self._step
            self.plans.append(plans)
            self.plan_steps.append(self._step)
            self.replanned.append(due)
        plan = self.plans[-1]
        index = np.minimum(self._step - self._start + 1, plan.shape[1] - 1)
        self._step += 1
        return kinematic_action(plan[rows, index], xy)


@dataclass
class OGBenchEvaluation:
    """OGBench's verdict (``evaluate_ogbench``'s dict: success per task, paths) and the follower's plans."""

    result: dict[str, Any]
    plans: list[np.ndarray]
    plan_steps: list[int]
    replanned: list[np.ndarray]
    planning_seconds: float


def evaluate_ogbench_planner(loaded: LoadedDiffuser, maze: str, episodes_per_task: int = 5, seed: int = 0,
                             replan_every: int | None = None, task_ids: list[int] | None = None,
                             sampler: str | None = None, num_steps: int | None = None,
                             max_steps: int | None = None, replan_off_plan: float | None = None
                             ) -> OGBenchEvaluation:
    """A loaded Diffuser + ``PlanFollower`` (``replan_every``, ``replan_off_plan``) on OGBench's fixed
    tasks of ``maze``, scored by the env's own ``info["success"]``. ``seed`` fixes OGBench's start/goal
    noise and the sampling noise."""
    trained_on = loaded.cfg.env.name
    require(trained_on == maze, f"the checkpoint was trained on {trained_on}, not {maze}")
    require(int(loaded.diffusion.observation_dim) == 2,
            f"the checkpoint observes {loaded.diffusion.observation_dim} dims; OGBench's point observes [x, y]")
    follower = PlanFollower(DiffuserPlanner(loaded, sampler=sampler, num_steps=num_steps, seed=int(seed)), replan_every,
                            replan_off_plan)
    result = evaluate_ogbench(follower, maze, episodes_per_task=episodes_per_task, seed=seed, task_ids=task_ids,
                              keep_paths=True, max_steps=max_steps)
    return OGBenchEvaluation(result=result, plans=follower.plans, plan_steps=follower.plan_steps,
                             replanned=follower.replanned, planning_seconds=follower.seconds)


def plans_followed(plan_steps: list[int], replanned: list[np.ndarray], episode_steps: np.ndarray) -> np.ndarray:
    """[rounds, N] bool: which of ``PlanFollower``'s rounds made a plan for each episode while it ran (a plan
    made after an episode ended, for its frozen row, is not its plan)."""
    return np.stack(replanned) & (np.asarray(plan_steps)[:, None] < np.asarray(episode_steps)[None, :])


def plans_in_wall_fraction(maze: str, plans: list[np.ndarray], followed: np.ndarray) -> np.ndarray:
    """Per episode, the fraction of planned positions inside walls over the plans it followed
    (``plans_followed``)."""
    return np.array([float(in_wall(maze, np.stack([p[k] for p, mine in zip(plans, followed[:, k]) if mine])).mean())
                     for k in range(followed.shape[1])])
