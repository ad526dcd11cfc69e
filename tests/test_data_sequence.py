"""Episode cuts as the Diffuser makes them, windows inside episodes, conditions, scaling."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from diffnorm.data.scaling import TrajectoryScaler
from diffnorm.data.sequence import SequenceDataset, episode_bounds
from diffnorm.experiments.common import ConfigError

GOAL = (1.0, 1.0)


def _stream(at_goal: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """A synthetic stream: xy on the goal where ``at_goal``, 3 units away elsewhere."""
    rng = np.random.default_rng(seed)
    n = len(at_goal)
    obs = rng.uniform(-1, 1, size=(n, 4))
    obs[:, :2] = np.where(at_goal[:, None], np.array(GOAL) + 0.1 * obs[:, :2], np.array(GOAL) + 3.0 + 0.1 * obs[:, :2])
    return {"observations": obs, "actions": rng.uniform(-1, 1, size=(n, 2)),
            "terminals": np.zeros(n, bool), "timeouts": np.zeros(n, bool)}


def test_cut_where_agent_leaves_goal_region():
    at = np.zeros(30, bool)
    at[[5, 6, 7, 20]] = True  # leaves after 7 and after 20
    assert episode_bounds(_stream(at), GOAL) == [(0, 8), (8, 21), (21, 30)]


def test_entering_goal_does_not_cut_and_terminals_do():
    at = np.zeros(20, bool)
    at[10:] = True  # enters at 10, never leaves
    data = _stream(at)
    assert episode_bounds(data, GOAL) == [(0, 20)]
    data["terminals"][4] = True
    assert episode_bounds(data, GOAL) == [(0, 5), (5, 20)]


def test_timeouts_cut_only_on_request():
    data = _stream(np.zeros(20, bool))
    data["timeouts"][9] = True
    assert episode_bounds(data, GOAL) == [(0, 20)]
    assert episode_bounds(data, GOAL, cut_at_timeouts=True) == [(0, 10), (10, 20)]


def test_windows_stay_inside_episodes_and_carry_conditions():
    at = np.zeros(100, bool)
    at[[30, 31, 70]] = True  # episodes [0, 32), [32, 71), [71, 100)
    data = _stream(at)
    ds = SequenceDataset(data, horizon=20, eval_goal_xy=GOAL)
    bounds = episode_bounds(data, GOAL)
    assert len(ds) == sum(e - s - 20 + 1 for s, e in bounds)
    for start in ds.starts:
        assert any(s <= start and start + 20 <= e for s, e in bounds)
    item = ds[len(ds) - 1]
    traj = item["trajectory"]
    assert traj.shape == (20, 6) and traj.dtype == torch.float32
    assert set(item["conditions"]) == {0, 19}
    torch.testing.assert_close(item["conditions"][0], traj[0, 2:])
    torch.testing.assert_close(item["conditions"][19], traj[-1, 2:])
    # scaled values unscale to the raw data of that window
    start = int(ds.starts[-1])
    raw_obs = ds.scaler.unnormalize_observations(traj[:, 2:].double().numpy())
    np.testing.assert_allclose(raw_obs, data["observations"][start:start + 20], atol=1e-5)
    np.testing.assert_allclose(ds.scaler.unnormalize_actions(traj[:, :2].double().numpy()),
                               data["actions"][start:start + 20], atol=1e-5)


def test_scaled_range_and_batching():
    ds = SequenceDataset(_stream(np.zeros(64, bool)), horizon=16, eval_goal_xy=GOAL)
    all_traj = torch.stack([ds[i]["trajectory"] for i in range(len(ds))])
    assert all_traj.min() >= -1 - 1e-6 and all_traj.max() <= 1 + 1e-6
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["trajectory"].shape == (4, 16, 6)
    assert batch["conditions"][0].shape == (4, 4) and batch["conditions"][15].shape == (4, 4)


def test_given_scaler_is_used_as_is():
    data = _stream(np.zeros(40, bool))
    other = TrajectoryScaler.fit({k: v * 2 for k, v in data.items() if k in ("observations", "actions")})
    ds = SequenceDataset(data, horizon=8, eval_goal_xy=GOAL, scaler=other)
    assert ds.scaler is other


def test_horizon_longer_than_every_episode():
    with pytest.raises(ConfigError, match="longer than every episode"):
        SequenceDataset(_stream(np.zeros(50, bool)), horizon=64, eval_goal_xy=GOAL)


def test_missing_key_is_named():
    data = _stream(np.zeros(10, bool))
    del data["terminals"]
    with pytest.raises(ConfigError, match="'terminals'"):
        episode_bounds(data, GOAL)
