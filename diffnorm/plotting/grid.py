"""A grid of existing PNG figures in one figure, with row and column labels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt

from diffnorm.plotting.style import save


def image_grid(path: Path, cells: Sequence[Sequence[Path | None]], row_labels: Sequence[str],
               col_labels: Sequence[str], panel_inches: float = 4.5) -> Path:
    """PNG of ``cells`` [rows][columns] (image paths; None leaves a panel empty), rows and columns labelled."""
    rows, cols = len(cells), max(len(r) for r in cells)
    first = next(p for row in cells for p in row if p is not None)
    height, width = plt.imread(str(first)).shape[:2]
    aspect = width / height  # panels keep the images' shape
    fig, axes = plt.subplots(rows, cols, figsize=(panel_inches * aspect * cols, panel_inches * rows), squeeze=False)
    for i, row in enumerate(cells):
        for j in range(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            image = row[j] if j < len(row) else None
            if image is not None:
                ax.imshow(plt.imread(str(image)))
            if i == 0:
                ax.set_title(col_labels[j], fontsize=12)
            if j == 0:
                ax.set_ylabel(row_labels[i], fontsize=12)
    return save(fig, path)
