"""Planning: the published controller, rollouts with planted plans, metrics, and the plan_maze job end to end."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from omegaconf import OmegaConf

from diffnorm.envs.maze2d import GOAL_RADIUS, in_wall, maze_spec, normalized_score
from diffnorm.experiments.common import ConfigError
from diffnorm.planning import (
    DiffuserPlanner,
    GoalOnlyPlanner,
    controller_action,
    episode_resets,
    evaluate_planner,
    plan_target,
    rollout_metrics,
    run_episodes,
)
from diffnorm.planning.rollout import OFF_PLAN_COOLDOWN, Protocol
from diffnorm.training.checkpoint import CONFIG, load_checkpoint

UMAZE = "maze2d-umaze"


pytestmark = pytest.mark.usefixtures("single_thread")


# ---- the controller ----

def test_controller_is_position_plus_velocity_error_clipped():
    state = np.array([[1.0, 2.0, 0.1, -0.2], [1.0, 1.0, 0.0, 0.0]])
    target = np.array([[1.3, 1.9, 0.4, -0.1], [3.0, -2.0, 0.5, 0.0]])
    # (0.3 + 0.3, -0.1 + 0.1) and (2 + 0.5, -3 + 0) -> clipped to [-1, 1]
    np.testing.assert_allclose(controller_action(target, state), [[0.6, 0.0], [1.0, -1.0]], atol=1e-12)


def test_plan_target_takes_one_index_per_episode():
    plans = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)
    target = plan_target(plans, np.array([0, 2]))  # episode 1's plan is used up: its end, at rest
    np.testing.assert_array_equal(target[0], plans[0, 1])
    np.testing.assert_array_equal(target[1], [*plans[1, -1, :2], 0.0, 0.0])


def test_plan_target_is_the_next_state_then_the_last_state_at_rest():
    plans = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)
    np.testing.assert_array_equal(plan_target(plans, 0), plans[:, 1])
    np.testing.assert_array_equal(plan_target(plans, 1), plans[:, 2])
    for index in (2, 50):  # the plan is used up: hold its last position with zero velocity
        expected = plans[:, -1].copy()
        expected[:, 2:] = 0
        np.testing.assert_array_equal(plan_target(plans, index), expected)
    assert plans[0, -1, 2] != 0, "plan_target must not modify the plan"


# ---- rollouts with planted plans ----

class FixedPlanner:
    """Returns the same plan [H, 4] for every query and records the queries."""

    def __init__(self, plan):
        self.plan = np.asarray(plan, dtype=float)
        self.queries = []

    def __call__(self, start_obs, goal_xy):
        self.queries.append((start_obs.copy(), goal_xy.copy()))
        return np.repeat(self.plan[None], len(start_obs), axis=0)


def corridor_plan(start=(1.0, 3.0), end=(1.0, 1.0), steps=100, dt=0.01):
    """A straight constant-speed plan along umaze's open top corridor, velocities matching positions."""
    frac = np.linspace(0.0, 1.0, steps + 1)[:, None]
    xy = np.asarray(start) + frac * (np.asarray(end) - np.asarray(start))
    velocity = np.repeat(((np.asarray(end) - np.asarray(start)) / (steps * dt))[None], steps + 1, axis=0)
    velocity[-1] = 0
    return np.concatenate([xy, velocity], axis=1)


def test_a_perfect_plan_reaches_the_goal_and_scores():
    plan = corridor_plan()
    resets = [(seed, {"start_xy": plan[0, :2]}) for seed in range(2)]
    rollouts = run_episodes(FixedPlanner(plan), UMAZE, resets)
    m = rollout_metrics(UMAZE, rollouts)
    assert m["steps"] == maze_spec(UMAZE).max_episode_steps == 300
    assert m["success_rate"] == m["success_rate_final"] == 1.0
    assert m["score_mean"] > 100, "arriving after about a third of the episode and staying scores above D4RL's max"
    assert m["plan_in_wall_fraction"] == 0.0 and m["plan_rounds"] == 1
    assert m["tracking_error_mean"] < 0.1, "the controller follows a dynamically consistent plan closely"
    for episode in m["per_episode"]:
        assert 40 <= episode["first_step_in_goal"] <= 100
    np.testing.assert_allclose(m["returns"], rollouts.rewards.sum(axis=1))
    np.testing.assert_allclose(m["scores"], normalized_score(UMAZE, rollouts.rewards.sum(axis=1)))


def test_a_plan_that_stays_put_never_scores():
    start = np.array([3.0, 1.0, 0.0, 0.0])  # the far end of the U from the goal at (1, 1)
    rollouts = run_episodes(FixedPlanner(np.stack([start, start])), UMAZE, [(0, {"start_xy": start[:2]})])
    m = rollout_metrics(UMAZE, rollouts)
    assert m["success_rate"] == m["success_rate_final"] == 0.0 and m["returns"] == [0.0]
    assert m["score_mean"] == pytest.approx(float(normalized_score(UMAZE, 0.0)))
    assert m["per_episode"][0]["first_step_in_goal"] is None
    assert np.linalg.norm(rollouts.states[0, -1, :2] - start[:2]) < GOAL_RADIUS


def test_goal_only_baseline_needs_a_clear_line_to_the_goal():
    """Steering straight at the goal works along the open corridor but sticks at the wall across the U."""
    resets = [(0, {"start_xy": (1.0, 3.0)}), (1, {"start_xy": (3.0, 1.0)})]
    m = rollout_metrics(UMAZE, run_episodes(GoalOnlyPlanner(), UMAZE, resets))
    assert [e["success"] for e in m["per_episode"]] == [True, False]


def test_replanning_queries_the_current_states_every_k_steps():
    plan = corridor_plan()
    planner = FixedPlanner(plan)
    resets = [(0, {"start_xy": plan[0, :2]}), (1, {"start_xy": (3.0, 3.0), "goal_xy": (3.0, 1.0)})]
    rollouts = run_episodes(planner, UMAZE, resets, replan_every=40, max_steps=100)
    assert rollouts.plan_steps == [0, 40, 80] and len(planner.queries) == 3
    for (starts, goals), t in zip(planner.queries, rollouts.plan_steps):
        np.testing.assert_array_equal(starts, rollouts.states[:, t])
        np.testing.assert_array_equal(goals, [[1.0, 1.0], [3.0, 1.0]])
    assert rollouts.rewards.shape == (2, 100) and rollouts.states.shape == (2, 101, 4)


def test_off_plan_replanning_replans_only_the_episode_its_plan_left_behind():
    good = corridor_plan()  # along the open top corridor: the agent keeps up
    cut = corridor_plan(start=(1.0, 1.0), end=(3.0, 1.0))  # straight through the wall block (2, 1): it cannot

    class TwoPlans:
        def __init__(self):
            self.queries = []

        def __call__(self, start_obs, goal_xy):  # both at t = 0; later only the stranded episode asks
            self.queries.append(start_obs.copy())
            return np.stack([good, cut]) if len(start_obs) == 2 else np.repeat(cut[None], len(start_obs), axis=0)

    planner = TwoPlans()
    resets = [(0, {"start_xy": good[0, :2]}), (1, {"start_xy": cut[0, :2], "goal_xy": (3.0, 1.0)})]
    r = run_episodes(planner, UMAZE, resets, replan_off_plan=0.5, max_steps=60)
    assert r.plan_steps[0] == 0 and len(r.plan_steps) >= 2 and r.plan_steps[1] >= OFF_PLAN_COOLDOWN
    assert not any(mask[0] for mask in r.replanned[1:]), "the episode on its plan keeps it"
    assert all(mask[1] for mask in r.replanned), "the stranded one is replanned from where it is"
    t = r.plan_steps[1]
    planned = cut[min(t, len(cut) - 1), :2]
    assert np.linalg.norm(r.states[1, t, :2] - planned) > 0.5  # it was off its plan when replanned
    np.testing.assert_array_equal(planner.queries[1], r.states[1:, t])  # planned for the stranded one only
    m = rollout_metrics(UMAZE, r)
    assert m["per_episode"][0]["plans_made"] == 1 and m["per_episode"][1]["plans_made"] == len(r.plan_steps)
    # The open loop on the same plans: one round only, the stranded episode never replanned.
    assert run_episodes(TwoPlans(), UMAZE, resets, max_steps=60).plan_steps == [0]


@pytest.mark.parametrize("name,every,off", [("open_loop", None, None), ("replan_16", 16, None),
                                            ("off_plan_1", None, 1.0), ("replan_32+off_plan_0.5", 32, 0.5)])
def test_protocol_names_round_trip(name, every, off):
    protocol = Protocol.parse(name)
    assert (protocol.replan_every, protocol.replan_off_plan) == (every, off) and protocol.name == name
    assert Protocol(every, off).name == name


@pytest.mark.parametrize("name", ["closed", "replan_x", "off_plan_-1", "replan_0", "replan_4+replan_8"])
def test_bad_protocol_names_raise_config_error(name):
    with pytest.raises(ConfigError):
        Protocol.parse(name)


def test_wall_fraction_counts_planted_states_in_walls():
    clean = corridor_plan(steps=9)  # 10 states along the free top corridor
    dirty = clean.copy()
    dirty[2:5, :2] = [[2.0, 1.0], [2.2, 1.6], [1.9, 2.3]]  # three states inside the wall block (2, 1)-(2, 2)
    assert in_wall(UMAZE, dirty[:, :2]).sum() == 3 and not in_wall(UMAZE, clean[:, :2]).any()

    class TwoPlans:
        def __call__(self, start_obs, goal_xy):
            return np.stack([clean, dirty])

    resets = [(0, {"start_xy": clean[0, :2]}), (1, {"start_xy": clean[0, :2]})]
    m = rollout_metrics(UMAZE, run_episodes(TwoPlans(), UMAZE, resets, max_steps=3))
    assert m["plan_in_wall_fraction"] == pytest.approx(3 / 20)
    assert m["plans_touching_walls"] == 0.5
    assert [e["plan_in_wall_fraction"] for e in m["per_episode"]] == [0.0, pytest.approx(0.3)]


def test_episode_tasks_depend_on_seed_and_index_only():
    single = episode_resets(UMAZE, 5, "single", seed=3)
    assert episode_resets(UMAZE, 2, "single", seed=3) == single[:2]
    assert all(options == {} for _, options in single), "single-task: the env's random start, D4RL's goal"
    assert [s for s, _ in episode_resets(UMAZE, 5, "single", seed=4)] != [s for s, _ in single]
    multi = episode_resets(UMAZE, 50, "multi", seed=3)
    goals = np.stack([options["goal_xy"] for _, options in multi])
    cells = np.round(goals)
    assert np.abs(goals - cells).max() <= 0.1 and not in_wall(UMAZE, goals).any()
    assert len({tuple(c) for c in cells}) == len(maze_spec(UMAZE).free_cells), "every free cell can be a goal"
    pinned = episode_resets(UMAZE, 2, "single", seed=0, starts=np.array([[3.0, 1.0], [1.0, 3.0]]),
                            goals=np.array([[1.0, 1.0], [3.0, 3.0]]))
    np.testing.assert_array_equal(pinned[1][1]["start_xy"], [1.0, 3.0])
    np.testing.assert_array_equal(pinned[1][1]["goal_xy"], [3.0, 3.0])
    with pytest.raises(ConfigError, match="mode='both' is unknown"):
        episode_resets(UMAZE, 2, "both", seed=0)
    with pytest.raises(ConfigError, match="starts must be"):
        episode_resets(UMAZE, 2, "single", seed=0, starts=np.zeros((3, 2)))


# ---- a tiny trained checkpoint: the planner, the job, the script ----

TINY = ["experiment=tiny", "train.grad_accumulation=1"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 4-step umaze Diffuser trained by the real script (horizon 32, 8 diffusion steps)."""
    from conftest import run_script

    root = tmp_path_factory.mktemp("plan_ckpt")
    run = root / "run"
    proc = run_script("train_diffuser", *TINY, f"data_dir={root / 'data'}", run_dir=run)
    assert proc.returncode == 0, proc.stderr
    return run


def compose(*overrides):
    from diffnorm.experiments.common import compose_job

    return compose_job("plan_maze", list(overrides))


def test_config_defaults_are_the_published_protocol():
    cfg = compose()
    assert (cfg.checkpoint, cfg.mode, cfg.episodes, cfg.replan_every, cfg.sampler, cfg.num_steps) == \
        (None, "single", 20, None, None, None)


def test_diffuser_planner_inpaints_start_and_goal(checkpoint):
    loaded = load_checkpoint(checkpoint)
    planner = DiffuserPlanner(loaded, sampler="ddim", num_steps=2, seed=0)
    start = np.array([[3.0, 1.0, 0.1, -0.1], [1.0, 3.0, 0.0, 0.2]])
    goal = np.array([[1.0, 1.0], [3.0, 3.0]])
    plans = planner.plan(start, goal)
    assert plans.shape == (2, 32, 4)
    np.testing.assert_allclose(plans[:, 0], start, atol=1e-5)
    np.testing.assert_allclose(plans[:, -1], np.concatenate([goal, np.zeros((2, 2))], axis=1), atol=1e-5)
    again = DiffuserPlanner(loaded, sampler="ddim", num_steps=2, seed=0).plan(start, goal)
    np.testing.assert_array_equal(plans, again)
    with pytest.raises(ConfigError, match=r"num_steps=9 must lie in \[1, 8\]"):
        DiffuserPlanner(loaded, num_steps=9)
    with pytest.raises(ConfigError, match="sampler='euler' is unknown"):
        DiffuserPlanner(loaded, sampler="euler")


def test_evaluate_planner_runs_the_published_loop_by_default(checkpoint):
    loaded = load_checkpoint(checkpoint)
    evaluation = evaluate_planner(loaded, UMAZE, episodes=2, mode="single", seed=0, max_steps=20)
    m = evaluation.metrics
    assert (m["sampler"], m["num_steps"], m["planner_calls"], m["plan_rounds"]) == ("ddpm", 8, 1, 1)
    assert m["episodes"] == 2 and len(m["returns"]) == 2 and 0.0 <= m["plan_in_wall_fraction"] <= 1.0
    np.testing.assert_allclose(evaluation.rollouts.goals, [[1.0, 1.0], [1.0, 1.0]])
    with pytest.raises(ConfigError, match="trained on maze2d-umaze, not maze2d-medium"):
        evaluate_planner(loaded, "maze2d-medium", episodes=1)


def test_plan_maze_job_multi_task_with_replanning(checkpoint, tmp_path):
    from diffnorm.experiments.planning import plan_maze

    cfg = compose(f"checkpoint={checkpoint}", "episodes=3", "mode=multi", "replan_every=10", "max_steps=25",
                  "sampler=ddim", "num_steps=2", "plot_episodes=2", "progress=false")
    res = plan_maze(cfg, tmp_path)
    assert res["plan_steps"] == [0, 10, 20] and res["planner_calls"] == 3 and res["mode"] == "multi"
    assert res["checkpoint"]["step"] == 4 and res["checkpoint"]["norm"]["name"] == "group"
    goals = np.array([e["goal"] for e in res["per_episode"]])
    assert not np.allclose(goals, maze_spec(UMAZE).eval_goal_xy), "multi-task draws its own goals"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["score_mean"] == pytest.approx(np.mean(saved["scores"]))
    assert saved["score_sem"] == pytest.approx(np.std(saved["scores"], ddof=1) / np.sqrt(3))
    for name in ("overview.png", "episodes.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    with np.load(tmp_path / "rollouts.npz") as npz:
        assert npz["states"].shape == (3, 26, 4) and npz["first_plans"].shape == (3, 32, 4)
    # Replanning only the episodes their plans left behind: the rounds after t = 0 plan for some of them.
    cfg = compose(f"checkpoint={checkpoint}", "episodes=3", "mode=multi", "replan_off_plan=0.05", "max_steps=25",
                  "sampler=ddim", "num_steps=2", "plot_episodes=2", "progress=false")
    res = plan_maze(cfg, tmp_path / "off_plan")
    assert res["replan_off_plan"] == 0.05 and res["plan_steps"][0] == 0
    assert 1 <= res["plans_per_episode"] and sum(e["plans_made"] for e in res["per_episode"]) >= 3


def test_script_smoke_run(script, checkpoint, tmp_path):
    proc = script("plan_maze", f"checkpoint={checkpoint / 'ema.safetensors'}", "episodes=2", "sampler=ddim",
                  "num_steps=2", "plot_episodes=2", "progress=false", run_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(tmp_path)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["steps"] == 300 and res["episodes"] == 2 and res["env"] == UMAZE
    assert set(res) >= {"score_mean", "score_sem", "success_rate", "success_rate_final", "plan_in_wall_fraction"}


@pytest.mark.parametrize("overrides,message", [
    ([], "checkpoint=<train_diffuser run dir or .safetensors file> is required"),
    (["episodes=0"], "episodes=0 must be positive"),
    (["mode=both"], "mode='both' is not one of ['single', 'multi']"),
    (["replan_every=0"], "replan_every=0 must be positive"),
    (["replan_off_plan=0"], "replan_off_plan=0.0 must be null or a positive distance"),
    (["sampler=euler"], "sampler='euler' is not one of ['ddpm', 'ddim', 'dpm']"),
])
def test_bad_settings_raise_config_error(checkpoint, tmp_path, overrides, message):
    from diffnorm.experiments.planning import plan_maze

    ckpt = [] if not overrides else [f"checkpoint={checkpoint}"]
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        plan_maze(compose(*ckpt, *overrides, "max_steps=2", "progress=false"), tmp_path)


def test_missing_checkpoint_is_one_line_and_exit_code_2(tmp_path, capsys, monkeypatch):
    """Through run_job, as the script calls it (the script itself is exercised by the next test)."""
    from diffnorm.experiments.common import run_job
    from diffnorm.experiments.planning import plan_maze

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_job(plan_maze, compose(f"checkpoint={tmp_path / 'nowhere'}"))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: checkpoint={tmp_path / 'nowhere'} does not exist"]


def test_checkpoint_not_matching_its_config_is_one_line_and_nonzero_exit(script, checkpoint, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(checkpoint, other)
    cfg = OmegaConf.load(other / CONFIG)
    cfg.norm = {"name": "none"}
    (other / CONFIG).write_text(OmegaConf.to_yaml(cfg))
    proc = script("plan_maze", f"checkpoint={other}", run_dir=tmp_path / "out")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: checkpoint ") and "does not match the config: norm" in lines[0]
