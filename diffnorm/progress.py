"""Progress bars that stay readable when several worker processes draw at once.

``map_trials`` gives each worker process its own terminal line (an environment variable read here), so
a bar made with ``bar`` in a worker is drawn on that line, labelled, instead of overwriting the others.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

POSITION_ENV = "DIFFNORM_BAR_POSITION"  # the line a worker process draws its bars on (0: the main process)


def bar_position() -> int:
    return int(os.environ.get(POSITION_ENV, "0"))


def bar(iterable: Iterable[Any] | None = None, *, desc: str, total: int | None = None, disable: bool = False,
        **kwargs: Any) -> tqdm:
    """A tqdm bar on this process's line; in a worker it is left on screen when done (its line is its own)."""
    position = bar_position()
    leave = kwargs.pop("leave", True) or position > 0
    return tqdm(iterable, desc=desc, total=total, disable=disable, position=position, leave=leave,
                dynamic_ncols=True, **kwargs)
