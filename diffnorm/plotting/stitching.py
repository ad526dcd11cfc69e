"""Figures of the stitching study: per-norm bars of a metric's mean over seeds with its 95% interval,
each seed's value as a dot (with 2-3 seeds the dots say more than the bar), the baseline hatched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from diffnorm.plotting.planning import _save


def _seed_bars(ax: plt.Axes, norms: list[str], cells: list[dict[str, Any]], baseline: str, spread: float) -> None:
    """One bar per norm at ``cells[k]``'s mean over seeds, its 95 % interval as an error bar and each seed
    a dot (spread over +-``spread``); the baseline grey and hatched. A cell without a mean is left out."""
    for k, (n, cell) in enumerate(zip(norms, cells)):
        if cell["mean"] is None:
            continue
        ax.bar(k, cell["mean"], color="tab:gray" if n == baseline else "tab:blue", alpha=0.6,
               hatch="//" if n == baseline else None, edgecolor="black", lw=0.5)
        ax.errorbar(k, cell["mean"], yerr=[[cell["mean"] - cell["ci_low"]], [cell["ci_high"] - cell["mean"]]],
                    color="black", capsize=4, lw=1)
        seeds = [v for v in cell["per_seed"] if v is not None]
        ax.scatter(k + np.linspace(-spread, spread, len(seeds)) if len(seeds) > 1 else [k], seeds, color="black",
                   s=12, zorder=5)


def norm_bars(path: Path, summary: dict[str, dict[str, Any]], metrics: list[tuple[str, str]], baseline: str,
              title: str = "") -> Path:
    """PNG with one panel per ``(key, label)`` in ``metrics``: for each norm of ``summary`` (as built by
    ``diffnorm.probing.stats.summarize``) a bar at the mean over seeds, the 95% CI as an error bar,
    and the seeds as dots. Metrics without a value for a norm leave its bar out."""
    norms = list(summary)
    fig, axes = plt.subplots(1, len(metrics), figsize=(1.2 + 1.1 * len(norms) * len(metrics), 3.6), squeeze=False)
    x = np.arange(len(norms))
    for ax, (key, label) in zip(axes.flat, metrics):
        _seed_bars(ax, norms, [summary[n][key] for n in norms], baseline, spread=0.15)
        ax.set_xticks(x, norms)
        ax.set_xlabel("norm")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def task_bars(path: Path, tasks: list[str], rows: list[dict[str, dict[str, Any]]], baseline: str,
              title: str = "", ylabel: str = "success rate", references: dict[str, list[float]] | None = None
              ) -> Path:
    """PNG of one metric per task: for each task (``tasks`` labels, ``rows[k][norm]`` = per-seed values, mean
    and 95% CI as ``probing.stats.seed_interval`` gives them) a group of bars, one per norm, with the CI and the seeds as
    dots; the baseline hatched. Per-task rates tell a norm that fails one long task from one that fails all.
    ``references`` (name -> one value per task) are drawn as a marked line across each task's group."""
    norms = list(rows[0]) if rows else []
    width = 0.8 / max(len(norms), 1)
    fig, ax = plt.subplots(figsize=(1.5 + 1.6 * len(tasks), 3.8))
    colors = plt.get_cmap("tab10")
    for j, n in enumerate(norms):
        x = np.arange(len(tasks)) + (j - (len(norms) - 1) / 2) * width
        for k, row in enumerate(rows):
            cell = row[n]
            if cell["mean"] is None:
                continue
            ax.bar(x[k], cell["mean"], width * 0.9, color=colors(j), alpha=0.6, edgecolor="black", lw=0.5,
                   hatch="//" if n == baseline else None, label=n if k == 0 else None)
            ax.errorbar(x[k], cell["mean"], yerr=[[cell["mean"] - cell["ci_low"]], [cell["ci_high"] - cell["mean"]]],
                        color="black", capsize=3, lw=1)
            seeds = [v for v in cell["per_seed"] if v is not None]
            ax.scatter(x[k] + np.linspace(-0.25, 0.25, len(seeds)) * width if len(seeds) > 1 else [x[k]], seeds,
                       color="black", s=8, zorder=5)
    for (name, values), style in zip((references or {}).items(), ("--", ":", "-.")):
        for k, v in enumerate(values):
            ax.plot([k - 0.45, k + 0.45], [v, v], style, color="black", lw=1.2, label=name if k == 0 else None)
    ax.set_xticks(np.arange(len(tasks)), [t.replace(": ", "\n") for t in tasks], fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)  # a rate: the whole scale, so a near-zero result looks like one
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="norm", fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def answer_bars(path: Path, entries: dict[str, dict[str, Any]], summaries: dict[str, dict[str, Any]],
                baseline: str) -> Path:
    """PNG of the stitching answer: one column per benchmark (``entries`` as
    ``diffnorm.experiments.stitching_answer.answer_entry`` builds them), rows for the success rate and the
    fraction of connected t = 0 plans; per norm the mean over seeds with its 95 % interval and each seed a
    dot (``summaries[benchmark]``: the study's ``summary``), the baseline hatched. Column titles give the
    horizon and receptive field, and whether some plan index lies beyond it."""
    keys = list(entries)
    rows = [("success_rate", "stitch-task success rate"), ("plan_connected", "connected t = 0 plans")]
    fig, axes = plt.subplots(len(rows), len(keys), figsize=(0.8 + 2.6 * len(keys), 6.6), squeeze=False,
                             sharey="row")
    for col, key in enumerate(keys):
        entry = entries[key]
        norms = [n for n, row in entry.items() if isinstance(row, dict)]
        for r, (metric, label) in enumerate(rows):
            ax = axes[r, col]
            _seed_bars(ax, norms, [summaries[key][n][metric] for n in norms], baseline, spread=0.2)
            ax.set_xticks(np.arange(len(norms)), norms)
            ax.set_xlabel("norm")
            ax.set_ylim(0, 1.05)
            ax.grid(axis="y", alpha=0.3)
            if col == 0:
                ax.set_ylabel(label)
        left, right = entry["receptive_field"]
        axes[0, col].set_title(f"{key}\nH = {entry['horizon']}, RF {left}/{right}"
                               f" ({'indices beyond it' if entry['beyond_rf'] else 'all within'})", fontsize=8)
    fig.suptitle("Per norm: mean over seeds, 95 % CI, seeds as dots", fontsize=10)
    return _save(fig, path)


def leak_scatter(path: Path, leaks: dict[str, dict[str, Any]], key: str, outcome: str = "success_rate") -> Path:
    """PNG with one panel per benchmark: each planner's leak (``key`` of the leak probe's comparison,
    e.g. the fraction of the denoiser's input influence that comes from beyond the receptive field)
    against its stitching ``outcome`` (success rate, or the fraction of connected t = 0 plans),
    coloured by norm, Pearson's r over all planners in the title."""
    labels = {"success_rate": "stitch-task success rate", "plan_connected": "connected t = 0 plans"}
    fig, axes = plt.subplots(1, len(leaks), figsize=(0.8 + 3.4 * len(leaks), 3.6), squeeze=False)
    # One colour per norm across all panels, so panels with different norm sets read alike.
    all_norms = sorted({r["norm"] for leak in leaks.values() for r in leak["planners"]})
    colors = {n: plt.get_cmap("tab10")(j) for j, n in enumerate(all_norms)}
    for ax, (bench, leak) in zip(axes.flat, leaks.items()):
        for n in sorted({r["norm"] for r in leak["planners"]}):
            rows = [r for r in leak["planners"] if r["norm"] == n and key in r]
            ax.scatter([r[key] for r in rows], [r[outcome] for r in rows], color=colors[n], label=n, s=18)
        c = leak["correlation"][outcome][key]["all_planners"]
        r_text = "r undefined" if c["r"] is None else f"r = {c['r']:+.2f} [{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]"
        ax.set_title(f"{bench}, H = {leak['horizon']}: {r_text}", fontsize=8)
        ax.set_xlabel(key.replace("beyond_rf", "beyond-RF").replace("_", " "))
        ax.set_ylabel(labels.get(outcome, outcome))
        ax.grid(alpha=0.3)
        ax.legend(title="norm", fontsize=7)
    return _save(fig, path)


def span_response(path: Path, benchmarks: dict[str, dict[str, dict[str, Any]]], horizons: dict[str, int]) -> Path:
    """PNG of stitching against the span of one norm statistic (``experiments.norm_reach`` entries): one
    column per benchmark, connected first plans (top) and success (bottom) against the statistic's centred
    window in full-resolution steps (log scale: ``none`` drawn at 0.5, ``channel`` at 1, ``group`` at
    2 H - 1, the window that covers the plan from every index), each arm's seeds as dots and its mean with
    a 95 % interval; the U-Net's arms joined by a line,
    Eq-Net's (and any other network's) beside them with their own marker."""
    keys = list(benchmarks)
    rows = [("connected", "connected first plans"), ("success", "success (main protocol)")]
    fig, axes = plt.subplots(len(rows), len(keys), figsize=(1.0 + 4.2 * len(keys), 6.4), squeeze=False,
                             sharey="row")
    markers = {"temporal_unet": ("o", "tab:blue", 1.0), "eqnet": ("s", "tab:red", 1.25)}
    for col, key in enumerate(keys):
        arms, horizon = benchmarks[key], horizons[key]
        for r, (metric, label) in enumerate(rows):
            ax = axes[r, col]
            series: dict[tuple[str, Any], list[tuple[float, dict[str, Any]]]] = {}
            for entry in arms.values():
                ladder = (entry["model"], 1 if entry.get("groups") == 1 else None)
                series.setdefault(ladder, []).append((max(entry["statistic_span"], 0.5), entry[metric]))
            for (model, one_group), points in series.items():
                marker, colour, shift = markers.get(model, ("^", "tab:green", 0.8))
                colour = "tab:purple" if one_group else colour
                points.sort(key=lambda p: p[0])
                xs = np.array([p[0] for p in points]) * shift
                means = [p[1]["mean"] for p in points]
                name = {"temporal_unet": "Diffuser U-Net", "eqnet": "Eq-Net"}.get(model, model)
                ax.plot(xs, means, marker=marker, color=colour, lw=1.2, ms=6,
                        label=name + (", 1 group" if one_group else ""))
                for x, (_, cell) in zip(xs, points):
                    if cell["mean"] is not None and cell["ci_low"] is not None:
                        ax.errorbar(x, cell["mean"], yerr=[[cell["mean"] - cell["ci_low"]],
                                                          [cell["ci_high"] - cell["mean"]]],
                                    color=colour, capsize=3, lw=0.8)
                    seeds = [v for v in cell["per_seed"] if v is not None]
                    ax.scatter(np.full(len(seeds), x), seeds, color=colour, s=10, alpha=0.5, zorder=5)
            ax.set_xscale("log", base=2)
            ticks = sorted({max(e["statistic_span"], 0.5) for e in arms.values()})
            names = {0.5: "none", 1: "channel\n1", 2 * horizon - 1: f"group\n{2 * horizon - 1}"}
            ax.set_xticks(ticks, [names.get(t, str(int(t))) for t in ticks])
            ax.minorticks_off()
            ax.set_ylim(-0.03, 1.03)
            ax.grid(alpha=0.3)
            ax.set_xlabel("centred window of one norm statistic (steps at full resolution, log scale)")
            if col == 0:
                ax.set_ylabel(label)
        axes[0, col].set_title(f"{key} (H = {horizon})")
        axes[0, col].legend(loc="upper right")
    fig.suptitle("Stitching against the span of the norm's statistics: seeds as dots, mean and 95 % CI")
    return _save(fig, path)
