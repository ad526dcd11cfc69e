"""Statistics: Definition 2.3 of Pfrommer et al. (2025), when a network localizes an index; Welch's
difference of two samples; and the comparison of norms across training seeds (mean, t-interval, Welch)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy import stats
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
    constant = np.ptp(a) == 0, np.ptp(b) == 0  # exact: a mean of identical floats need not equal them
    if all(constant):
        diff = float(a.mean() - b.mean())
        return {"difference": diff, "ci_low": diff, "ci_high": diff, "p_value": float("nan")}
    with warnings.catch_warnings():
        # A constant sample (every seed at 80 %, say) has variance 0 up to rounding, which is its true
        # value; scipy warns of precision loss for it all the same.
        if any(constant):
            warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
        test = ttest_ind(a, b, equal_var=False)
    ci = test.confidence_interval(confidence)
    return {"difference": float(a.mean() - b.mean()), "ci_low": float(ci.low), "ci_high": float(ci.high),
            "p_value": float(test.pvalue)}


def seed_interval(values: list[float], confidence: float = 0.95, rate: bool = False) -> dict[str, Any]:
    """Mean over seeds with a Student-t interval (the per-norm error bar); None when too few values. For a
    ``rate`` the interval is clipped to [0, 1], the only values a fraction can take."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "seeds": 0}
    mean = float(x.mean())
    if len(x) < 2 or np.ptp(x) == 0:
        return {"mean": mean, "ci_low": mean, "ci_high": mean, "seeds": len(x)}
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    low, high = mean - half, mean + half
    if rate:
        low, high = max(low, 0.0), min(high, 1.0)
    return {"mean": mean, "ci_low": low, "ci_high": high, "seeds": len(x)}


def summarize_tasks(runs: dict[str, dict[int, dict[str, Any]]], baseline: str) -> list[dict[str, Any]]:
    """Per task (rows of each run's ``per_task``, same order for every run): its cells and BFS distance,
    per norm the success rate's seed values, mean and 95% t-interval, and per non-baseline norm the Welch
    difference from the baseline across seeds."""
    first = next(iter(next(iter(runs.values())).values()))["per_task"]
    rows = []
    for k, task in enumerate(first):
        row = {"task_index": k, **{key: task[key] for key in ("task_id", "task_name", "start_cell", "goal_cell",
                                                              "bfs_distance") if key in task}}
        row["success_rate"] = {n: {"per_seed": [by[s]["per_task"][k]["success_rate"] for s in by],
                                   **seed_interval([by[s]["per_task"][k]["success_rate"] for s in by], rate=True)}
                               for n, by in runs.items()}
        row["comparison_vs_baseline"] = {
            n: welch_difference(row["success_rate"][n]["per_seed"], row["success_rate"][baseline]["per_seed"])
            for n in runs if n != baseline}
        rows.append(row)
    return rows


def summarize(runs: dict[str, dict[int, dict[str, Any]]], baseline: str, metrics: list[str],
              rates: set[str] = frozenset()) -> tuple[dict, dict]:
    """Compare norms across seeds: ``runs[norm][seed]`` holds each seed's value of every key in
    ``metrics``. Returns (per norm and metric: seed values, mean and 95 % t-interval, clipped to [0, 1]
    for ``rates``; per non-baseline norm and metric: the Welch difference from the baseline across
    seeds). A metric that is None for a seed leaves that seed out."""
    summary = {n: {key: {"per_seed": [by_seed[s][key] for s in by_seed],
                         **seed_interval([by_seed[s][key] for s in by_seed if by_seed[s][key] is not None],
                                          rate=key in rates)}
                   for key in metrics} for n, by_seed in runs.items()}
    comparisons: dict[str, dict[str, Any]] = {}
    for n in runs:
        if n == baseline:
            continue
        comparisons[n] = {}
        for key in metrics:
            a = [v for v in summary[n][key]["per_seed"] if v is not None]
            b = [v for v in summary[baseline][key]["per_seed"] if v is not None]
            comparisons[n][key] = (welch_difference(a, b) if len(a) >= 2 and len(b) >= 2 else
                                   {"difference": None, "ci_low": None, "ci_high": None, "p_value": None,
                                    "note": "fewer than two seeds with a value on one side"})
    return summary, comparisons
