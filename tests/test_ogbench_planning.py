"""OGBench as the stitching study's external benchmark: the kinematic plan follower, the evaluation on
OGBench's own tasks and success signal, and the env config training and being studied end to end."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from diffnorm.envs.ogbench_maze import OGBENCH_STEP, OGBenchFrame, make_ogbench_env, ogbench_tasks
from diffnorm.experiments.common import ConfigError, compose_job
from diffnorm.planning.kinematic import (
    PlanFollower,
    evaluate_ogbench,
    oracle_policy,
    plans_followed,
    plans_in_wall_fraction,
)

ogbench = pytest.importorskip("ogbench", reason="needs the optional 'ogbench' package")
MEDIUM = "maze2d-medium"
TRAIN = ["experiment=tiny", "env.n_diffusion_steps=4", "train.grad_accumulation=1", "train.steps=2",
         "train.checkpoint_every=2"]


class RecordingPlanner:
    """Plans a straight line at constant speed from the current position to a fixed waypoint (or, when
    ``oracle``, along the BFS oracle's route to the goal) and records what it was asked."""

    def __init__(self, horizon: int, waypoint=None, oracle: bool = False):
        self.horizon, self.waypoint, self.oracle = horizon, waypoint, oracle
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []
        self.policy = oracle_policy(MEDIUM) if oracle else None

    def __call__(self, xy, goal):
        self.calls.append((xy.copy(), goal.copy()))
        plan = [xy.copy()]
        for _ in range(self.horizon - 1):
            here = plan[-1]
            if self.oracle:
                step = OGBENCH_STEP * self.policy(here, goal)
            else:
                gap = np.asarray(self.waypoint) - here
                step = gap * np.minimum(1.0, OGBENCH_STEP / (np.linalg.norm(gap, axis=-1, keepdims=True) + 1e-9))
            plan.append(here + step)
        return np.stack(plan, axis=1)


def test_follower_reaches_a_nearby_waypoint_and_replans_on_schedule():
    env = make_ogbench_env(MEDIUM)
    frame = OGBenchFrame()
    ob, _ = env.reset(seed=0, options={"task_id": 1})
    xy = frame.point_to_d4rl(ob)[None]
    waypoint = xy + np.array([[0.2, 0.15]])  # 0.25 cells away, inside the start cell's free area
    planner = RecordingPlanner(horizon=16, waypoint=waypoint)
    follower = PlanFollower(planner, replan_every=5)
    for _ in range(12):
        ob, *_ = env.step(frame.action_from_d4rl(follower(xy, xy)[0]))
        xy = frame.point_to_d4rl(ob)[None]
    env.close()
    np.testing.assert_allclose(xy, waypoint, atol=1e-3)  # 0.25 cells at 0.05 per step: there after 5 steps
    assert follower.plan_steps == [0, 5, 10] and len(planner.calls) == 3
    once = PlanFollower(RecordingPlanner(horizon=4, waypoint=waypoint))
    for _ in range(6):  # past the plan's end it holds the plan's last position
        action = once(waypoint, waypoint)
    assert once.plan_steps == [0] and np.allclose(action, 0.0)
    with pytest.raises(ConfigError, match="replan_every=0"):
        PlanFollower(planner, replan_every=0)


def test_follower_is_scored_on_ogbench_tasks_with_its_success():
    planner = RecordingPlanner(horizon=64, oracle=True)
    result = evaluate_ogbench(PlanFollower(planner, replan_every=32), MEDIUM, episodes_per_task=1, seed=0)
    assert [t["task_id"] for t in result["tasks"]] == [1, 2, 3, 4, 5] and result["success_rate"] == 1.0
    starts, goals = planner.calls[0]
    cells = ogbench_tasks(MEDIUM)
    for k, (start, goal) in enumerate(cells):  # OGBench's own starts and goals, with its +-0.25-cell noise
        assert np.abs(starts[k] - start).max() <= 0.25 and np.abs(goals[k] - goal).max() <= 0.25
    assert all(t["steps"][0] < 1000 for t in result["tasks"])  # each ended at its goal, not at the time limit
    # The same follower with a planner that stays put: OGBench's success says no on every task.
    still = PlanFollower(lambda xy, goal: np.repeat(xy[:, None], 8, axis=1))
    assert evaluate_ogbench(still, MEDIUM, seed=0, max_steps=50)["success_rate"] == 0.0
    walls = plans_in_wall_fraction(MEDIUM, [np.array([[[1.0, 1.0], [0.0, 0.0]]])],
                                   plans_followed([0], [np.array([True])], np.array([3])))
    assert walls.tolist() == [0.5]  # (0, 0) is the outer wall
    # A round that kept an episode's plan adds nothing for it; one made after it ended neither.
    rounds = [np.array([[[1.0, 1.0], [0.0, 0.0]]] * 2), np.array([[[1.0, 1.0], [1.0, 1.0]]] * 2)]
    walls = plans_in_wall_fraction(MEDIUM, rounds,
                                   plans_followed([0, 5], [np.array([True, True]), np.array([False, True])],
                                                  np.array([9, 9])))
    assert walls.tolist() == [0.5, 0.25]


def test_follower_replans_only_the_episode_its_plan_left_behind():
    """replan_off_plan: an episode pinned in place while its plan moves on gets a new plan once it is
    farther than d from where the plan puts it (not before the cooldown); one on its plan keeps it."""
    from diffnorm.planning.rollout import OFF_PLAN_COOLDOWN

    asked = []

    def planner(xy, goal):  # a straight line along +y at the point's full speed
        asked.append(len(xy))
        return xy[:, None] + np.arange(64)[None, :, None] * np.array([0.0, OGBENCH_STEP])

    start = np.array([[1.0, 1.0], [3.0, 1.0]])
    follower = PlanFollower(planner, replan_off_plan=0.2)
    xy = start.copy()
    for step in range(2 * OFF_PLAN_COOLDOWN + 1):
        follower(xy, xy)
        xy[0] = follower.plans[-1][0, min(step + 1, 63)]  # episode 0 moves along its plan; episode 1 is stuck
    assert follower.plan_steps == [0, OFF_PLAN_COOLDOWN, 2 * OFF_PLAN_COOLDOWN]
    assert [r.tolist() for r in follower.replanned] == [[True, True], [False, True], [False, True]]
    assert asked == [2, 1, 1]
    np.testing.assert_array_equal(follower.plans[-1][0], follower.plans[0][0])  # episode 0 kept its plan
    np.testing.assert_allclose(follower.plans[-1][1, 0], start[1])  # episode 1 planned from where it is
    for step in range(2 * OFF_PLAN_COOLDOWN + 1, 4 * OFF_PLAN_COOLDOWN):  # episode 1 has ended: no more plans
        follower(xy, xy, np.array([True, False]))
        xy[0] = follower.plans[-1][0, min(step + 1, 63)]
    assert follower.plan_steps == [0, OFF_PLAN_COOLDOWN, 2 * OFF_PLAN_COOLDOWN] and asked == [2, 1, 1]
    with pytest.raises(ConfigError, match="replan_off_plan=0 must be null or a positive distance"):
        PlanFollower(planner, replan_off_plan=0)


def test_env_config_trains_and_the_study_reports_per_task_success(tmp_path):
    from diffnorm.experiments.diffuser import train_diffuser, train_or_reuse
    from diffnorm.experiments.stitching import stitching_study
    from diffnorm.planning.planner import DiffuserPlanner
    from diffnorm.training.checkpoint import load_checkpoint

    data_dir = tmp_path / "data"
    cfg = compose_job("train_diffuser", ["env=ogbench_pointmaze_medium", *TRAIN, "env.ogbench.episodes=8",
                                         f"data_dir={data_dir}"])
    assert cfg.diffusion.observation_dim == 2 and cfg.env.ogbench.env == "pointmaze-medium-v0"
    res = train_diffuser(cfg, tmp_path / "train")
    assert res["n_windows"] == 8 * (201 - 32 + 1) and np.isfinite(res["final_loss"])
    # A run saved when the env config still carried the follower's replan_every is the same run.
    saved = OmegaConf.load(tmp_path / "train" / "config.yaml")
    saved.env.ogbench.replan_every = 32
    OmegaConf.save(saved, tmp_path / "train" / "config.yaml")
    again, reused = train_or_reuse(["env=ogbench_pointmaze_medium", *TRAIN, "env.ogbench.episodes=8",
                                    f"data_dir={data_dir}"], tmp_path / "train")
    assert reused and (again["steps"], again["final_loss"]) == (res["steps"], res["final_loss"])
    assert len(list(data_dir.glob("pointmaze-medium-ogbench-stitch-1-e8x201-seed0.hdf5"))) == 1
    planner = DiffuserPlanner(load_checkpoint(tmp_path / "train"), seed=0)
    start, goal = np.array([[1.0, 1.0]]), np.array([[3.0, 4.0]])
    plan = planner(start, goal)
    assert plan.shape == (1, 32, 2)
    np.testing.assert_allclose(plan[:, 0], start, atol=1e-4)  # inpainted [x, y] at both ends
    np.testing.assert_allclose(plan[:, -1], goal, atol=1e-4)

    listing = "[" + ",".join(f"'{v}'" for v in TRAIN) + "]"
    study = compose_job("stitching_study", ["env=ogbench_pointmaze_medium", f"train_overrides={listing}",
                                            "norms=[group,none]", "seeds=[0,1]", "workers=1", "episodes_per_task=1",
                                            "max_steps=20", "protocol=replan_10", "protocols=[off_plan_0.05]", "stitch.episodes=8",
                                            f"data_dir={data_dir}"])
    out = tmp_path / "study"
    results = stitching_study(study, out)
    assert results["benchmark"] == "ogbench" and results["dataset"]["recipe"] == "ogbench"
    assert [t["task_id"] for t in results["per_task"]] == [1, 2, 3, 4, 5]
    assert [t["bfs_distance"] for t in results["per_task"]] == [10, 10, 6, 10, 8]
    one = results["runs"]["group"]["0"]
    assert one["success_rate_final"] is None and one["score_mean"] is None and one["replan_every"] == 10
    assert one["plan_rounds"] == 2 and one["steps"] == 20  # replanned once; no episode reached its goal
    assert one["plans_per_episode"] == 2.0
    # Off-plan replanning on OGBench: 20 steps, at most one new plan per episode per 8 steps.
    off = results["protocols"]["off_plan_0.05"]["runs"]["group"]["0"]
    assert off["protocol"] == "off_plan_0.05" and 1 <= off["plans_per_episode"] <= off["plan_rounds"] <= 3
    replans = np.load(tmp_path / "study" / "runs" / "group" / "seed0" / "stitch_rollouts_off_plan_0.05.npz")["replans_xy"]
    assert replans.shape[0] == off["plan_rounds"] and np.isfinite(replans[0]).all()
    task = results["per_task"][0]
    assert set(task["success_rate"]) == {"group", "none"} and len(task["success_rate"]["group"]["per_seed"]) == 2
    assert "group" in task["comparison_vs_baseline"]
    for ref in results["references"].values():  # the floor and the ceiling on the same episodes
        assert [t["task_id"] for t in ref["per_task"]] == [1, 2, 3, 4, 5]
    for name in ("plans_group.png", "plans_none.png", "success.png", "success_per_task.png", "plan_quality.png"):
        assert (out / name).stat().st_size > 0
