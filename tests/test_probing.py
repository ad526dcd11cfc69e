import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.stats import ttest_ind

from diffnorm.experiments.common import ConfigError
from diffnorm.models.norms import norm_factory
from diffnorm.probing.hooks import record_activations
from diffnorm.probing.probes import BatchedMLP, SiteProbes
from diffnorm.probing.stats import localization_distance, localized_indices, seed_interval, welch_difference
from diffnorm.toy.localization import LocalizationCNN


def test_localized_indices_agrees_with_scipy_welch():
    rng = np.random.default_rng(0)
    length, n = 12, 300
    means = np.array([0, 0, 1, 2, 2, 2.05, 3, 3, 2, 4, 5, 6], dtype=float)
    scales = rng.uniform(0.5, 2.0, size=length)
    preds = means + scales * rng.standard_normal((n, length))
    expected = np.ones(length, dtype=bool)
    for i in range(length):
        for j in (i - 1, i + 1):
            if 0 <= j < length:
                lo, hi = (j, i) if j < i else (i, j)
                p = ttest_ind(preds[:, hi], preds[:, lo], equal_var=False).pvalue
                expected[i] &= p < 0.05 and preds[:, hi].mean() > preds[:, lo].mean()
    got = localized_indices(preds, alpha=0.05)
    np.testing.assert_array_equal(got, expected)
    # The planted structure: equal neighbours (0, 1), (3, 4) and the drop at 8 are not localized.
    assert not got[[0, 1, 3, 4, 7, 8]].any()
    assert got[[2, 10, 11]].all()


def test_constant_predictions_are_not_localized():
    preds = np.zeros((50, 5))
    assert not localized_indices(preds).any()


def test_welch_difference_with_constant_samples():
    # Every seed at 80 %: the mean of identical floats is not exactly 0.8, so a std test misses it.
    a, b = [0.8] * 3, [0.3, 0.5, 0.6]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no precision-loss warning reaches the user
        one = welch_difference(a, b)
        both = welch_difference(a, [0.5] * 3)
        interval = seed_interval(a)
    # One constant sample: Welch's interval is the other sample's one-sample t-interval.
    se = np.std(b, ddof=1) / np.sqrt(3)
    half = stats.t.ppf(0.975, 2) * se
    assert one["difference"] == pytest.approx(0.8 - np.mean(b))
    assert [one["ci_low"], one["ci_high"]] == pytest.approx([one["difference"] - half, one["difference"] + half])
    assert both["ci_low"] == both["ci_high"] == pytest.approx(0.3) and np.isnan(both["p_value"])
    assert interval["ci_low"] == interval["ci_high"] == interval["mean"]


def test_localization_distance():
    assert localization_distance(np.array([1, 1, 0, 0, 0, 1, 1, 1], bool)) == 2
    assert localization_distance(np.array([0, 1, 1, 1], bool)) == 0
    assert localization_distance(np.ones(9, bool)) == 5
    assert localization_distance(np.array([1, 1, 1, 0, 1, 1, 1, 1], bool)) == 3


def test_record_activations_removes_hooks_even_on_error():
    model = LocalizationCNN(3, 3, 4, norm_factory("group", groups=2))
    sites = model.probe_sites()
    with record_activations(model, sites) as acts:
        model(torch.randn(2, 1, 10))
    assert set(acts) == set(sites) and acts["blocks.0"].shape == (2, 4, 10)
    with pytest.raises(RuntimeError), record_activations(model, sites):
        raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in model.modules())


def test_unknown_site_lists_valid_sites():
    model = LocalizationCNN(3, 3, 4)
    with pytest.raises(ConfigError, match=r"unknown probe site.*blocks\.9.*valid sites.*blocks\.0"):
        with record_activations(model, ["blocks.9"]):
            pass


def test_batched_probes_train_each_site_as_if_alone():
    """Zero padding must not couple sites: a 2-site module matches a 1-site module with the same init."""
    torch.manual_seed(0)
    wide, narrow = torch.randn(40, 6, 5), torch.randn(40, 3, 5)
    target = torch.linspace(-1, 1, 5)
    joint = SiteProbes([6, 3], hidden=8, seed=1)
    alone = SiteProbes([3], hidden=8, seed=1)
    alone.mlp = BatchedMLP(1, 3, 8)
    with torch.no_grad():  # copy the narrow site's initial weights (its real, unpadded rows)
        for a, j in zip(alone.mlp.weights, joint.mlp.weights):
            a.copy_(j[1:, : a.shape[1]])
        for a, j in zip(alone.mlp.biases, joint.mlp.biases):
            a.copy_(j[1:])
    torch.manual_seed(5)
    joint.fit([wide, narrow], target, steps=30, batch_size=64)
    torch.manual_seed(5)
    alone.fit([narrow], target, steps=30, batch_size=64)
    torch.testing.assert_close(joint.predict([wide, narrow])[1], alone.predict([narrow])[0])


def test_probes_recover_a_position_code():
    """A site whose activations encode the index is localized everywhere; pure noise is not."""
    torch.manual_seed(0)
    n, length = 200, 16
    position = torch.linspace(-1, 1, length).expand(n, 1, length)
    informative = torch.cat([position, torch.randn(n, 3, length)], dim=1)
    noise = torch.randn(n, 4, length)
    probes = SiteProbes([4, 4], hidden=32, seed=0)
    probes.fit([informative[:100], noise[:100]], torch.linspace(-1, 1, length), steps=400, batch_size=256)
    preds = probes.predict([informative[100:], noise[100:]]).numpy()
    assert localized_indices(preds[0]).all()
    assert localized_indices(preds[1]).sum() <= 2
