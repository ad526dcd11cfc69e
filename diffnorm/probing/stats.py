"""Definition 2.3 of Pfrommer et al. (2025): when does a network localize an index?"""

from __future__ import annotations

import numpy as np
from scipy.stats import ttest_ind


def localized_indices(preds: np.ndarray, alpha: float = 0.05, period: int = 1) -> np.ndarray:
    """bool[T]: index i is localized when its prediction distribution differs from both neighbours'.

    ``preds`` are N sampled predictions per index, shape [N, T], for an increasing target. "Differs"
    is Welch's t-test (unequal variances) at p < alpha with the mean moving in the target's direction;
    the two end indices have one neighbour. Indices whose predictions are constant (NaN p-value) are
    not localized.

    ``period`` > 1 makes the neighbours of i the indices i - period and i + period. A strided network
    (the U-Net: two stride-2 stages) is equivariant to shifts by its total stride only, so indices i and
    i + 1 differ structurally even without any position information; comparing within one phase of the
    stride keeps that pattern from counting as localization.
    """
    preds = np.asarray(preds, dtype=np.float64)
    if preds.ndim != 2 or preds.shape[0] < 2:
        raise ValueError(f"preds must be [N >= 2, T], got shape {preds.shape}")
    if period < 1:
        raise ValueError(f"period={period} must be positive")
    if period > 1:
        mask = np.zeros(preds.shape[1], dtype=bool)
        for phase in range(min(period, preds.shape[1])):
            mask[phase::period] = localized_indices(preds[:, phase::period], alpha)
        return mask
    with np.errstate(invalid="ignore", divide="ignore"):
        test = ttest_ind(preds[:, 1:], preds[:, :-1], axis=0, equal_var=False)
    rises = (test.pvalue < alpha) & (preds[:, 1:].mean(0) > preds[:, :-1].mean(0))
    # rises[k] compares index k+1 with index k: the right neighbour of k, the left neighbour of k+1.
    return np.concatenate([[True], rises]) & np.concatenate([rises, [True]])


def localization_distance(mask: np.ndarray) -> int:
    """Largest d such that the first d and the last d indices are all localized (capped at ceil(T/2),
    which means full localization)."""
    mask = np.asarray(mask, dtype=bool)
    length = len(mask)

    def run(m: np.ndarray) -> int:
        misses = np.flatnonzero(~m)
        return int(misses[0]) if len(misses) else length

    return min(run(mask), run(mask[::-1]), (length + 1) // 2)


def welch_difference(a: list[float] | np.ndarray, b: list[float] | np.ndarray, confidence: float = 0.95
                     ) -> dict[str, float]:
    """Difference of means a - b with Welch's confidence interval and two-sided p-value.

    Shared by the jobs that compare norms (episodes or seeds as samples). Two constant samples give a
    zero-width interval at their difference and p = nan rather than scipy's warning and nan interval.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.std() == 0 and b.std() == 0:
        diff = float(a.mean() - b.mean())
        return {"difference": diff, "ci_low": diff, "ci_high": diff, "p_value": float("nan")}
    test = ttest_ind(a, b, equal_var=False)
    ci = test.confidence_interval(confidence)
    return {"difference": float(a.mean() - b.mean()), "ci_low": float(ci.low), "ci_high": float(ci.high),
            "p_value": float(test.pvalue)}
