"""One style for every figure of the package: sizes, fonts, and a tight bounding box on save, so long
titles and legends are never cut off at the figure's edge."""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt

STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "savefig.bbox": "tight",  # the saved PNG grows to hold titles, labels and legends outside the axes
    "savefig.pad_inches": 0.1,
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "figure.titlesize": 12,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": False,
    "image.cmap": "viridis",
}


def apply() -> None:
    """Set the package's style on matplotlib's global rcParams (``diffnorm.plotting`` calls it on import)."""
    mpl.rcParams.update(STYLE)


def save(fig: plt.Figure, path: Path, layout: bool = True) -> Path:
    """Lay out (unless the caller did, ``layout=False``), write ``fig`` to ``path`` (making its folder)
    and close it; return the path."""
    if layout:
        fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
