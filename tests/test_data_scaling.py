"""Limits scaler: [-1, 1] range, exact round trip in numpy and torch, state_dict round trip, bad input."""

import numpy as np
import pytest
import torch

from diffnorm.data.scaling import LimitsScaler, TrajectoryScaler
from diffnorm.experiments.common import ConfigError


@pytest.fixture
def x():
    rng = np.random.default_rng(0)
    return rng.normal(size=(500, 4)) * np.array([1.0, 10.0, 0.1, 3.0]) + np.array([0.0, 5.0, -2.0, 1.0])


def test_fit_maps_limits_to_unit_interval(x):
    y = LimitsScaler.fit(x).normalize(x)
    np.testing.assert_allclose(y.min(0), -1.0, atol=1e-12)
    np.testing.assert_allclose(y.max(0), 1.0, atol=1e-12)


def test_round_trip_numpy_and_torch(x):
    s = LimitsScaler.fit(x)
    np.testing.assert_allclose(s.unnormalize(s.normalize(x)), x, atol=1e-10)
    t = torch.tensor(x, dtype=torch.float32)
    back = s.unnormalize(s.normalize(t))
    assert back.dtype == torch.float32
    torch.testing.assert_close(back, t, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(s.normalize(t).numpy(), s.normalize(x), atol=1e-5)
    y3 = s.normalize(x.reshape(50, 10, 4))  # any leading shape
    np.testing.assert_allclose(y3.reshape(500, 4), s.normalize(x))


def test_state_dict_round_trip_is_plain_lists(x):
    s = LimitsScaler.fit(x)
    state = s.state_dict()
    assert all(isinstance(v, list) for v in state.values())
    np.testing.assert_array_equal(LimitsScaler.from_state_dict(state).normalize(x), s.normalize(x))


def test_trajectory_scaler_separates_actions_and_observations(x):
    data = {"observations": x, "actions": x[:, :2] * 0.01}
    ts = TrajectoryScaler.fit(data)
    assert ts.actions.dim == 2 and ts.observations.dim == 4
    np.testing.assert_allclose(ts.normalize_actions(data["actions"]).max(0), 1.0)
    np.testing.assert_allclose(ts.unnormalize_observations(ts.normalize_observations(x)), x, atol=1e-10)
    np.testing.assert_allclose(ts.unnormalize_actions(ts.normalize_actions(data["actions"])), data["actions"],
                               atol=1e-12)
    again = TrajectoryScaler.from_state_dict(ts.state_dict())
    np.testing.assert_array_equal(again.normalize_observations(x), ts.normalize_observations(x))


@pytest.mark.parametrize("bad,named", [
    (np.ones((10, 2)), "max <= min"),
    (np.zeros((0, 2)), "non-empty"),
    (np.zeros(5), "[N, D]"),
])
def test_bad_fit_input(bad, named):
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        LimitsScaler.fit(bad)


def test_wrong_dimension_and_missing_state_raise(x):
    s = LimitsScaler.fit(x)
    with pytest.raises(ConfigError, match="fitted on 4 dims"):
        s.normalize(np.zeros((3, 2)))
    with pytest.raises(ConfigError, match="missing"):
        LimitsScaler.from_state_dict({"mins": [0.0]})
    with pytest.raises(ConfigError, match="'actions'"):
        TrajectoryScaler.fit({"observations": x})
