"""Figure of the speed benchmark: training throughput per variant, grouped by (horizon, batch)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt


def throughput_bars(path: Path, rows: Sequence[dict[str, Any]], title: str = "") -> Path:
    """Horizontal bars of trajectories/s, one per training row, labelled with the ratio to the plain
    reference; the plain reference is drawn grey so every bar reads as a multiple of it."""
    labels = [f"H={r['horizon']} B={r['batch']} {r['norm']}: {r['variant']}" for r in rows]
    values = [r["per_s"] for r in rows]
    colors = ["0.6" if r["variant"].startswith("plain") else "tab:blue" for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(rows) + 1.2), constrained_layout=True)
    y = range(len(rows))[::-1]
    ax.barh(list(y), values, color=colors)
    for yi, r in zip(y, rows):
        if r.get("vs_plain") is not None:
            ax.text(r["per_s"], yi, f" {r['vs_plain']:.2f}x", va="center", fontsize=8)
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.set_xlabel("training throughput (trajectories / s, median step)")
    ax.set_title(title, fontsize=9)
    fig.savefig(path)
    plt.close(fig)
    return path
