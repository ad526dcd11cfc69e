"""Progress bars of worker processes: each on its own labelled line, kept when done; the main process's
bars behave as tqdm's."""

import io

import pytest

from diffnorm.experiments.parallel import map_trials
from diffnorm.progress import POSITION_ENV, bar, bar_position


@pytest.mark.parametrize("position,leave,kept", [("0", False, False), ("0", True, True), ("2", False, True)])
def test_bar_draws_on_its_workers_line(monkeypatch, position, leave, kept):
    monkeypatch.setenv(POSITION_ENV, position)
    out = io.StringIO()
    with bar(range(3), desc="group seed 0", leave=leave, file=out) as b:
        for _ in b:
            pass
    assert bar_position() == int(position) and b.pos in (int(position), -int(position))
    assert b.leave is kept and "group seed 0" in out.getvalue()


def _labelled_trial(label: str) -> tuple[str, str]:
    import os

    with bar(range(2), desc=label, leave=False, disable=True):
        pass
    return label, os.environ.get(POSITION_ENV, "0")


def test_workers_get_their_own_lines():
    results = map_trials(_labelled_trial, [{"label": f"trial {k}"} for k in range(4)], workers=2, desc="trials")
    assert [r[0] for r in results] == [f"trial {k}" for k in range(4)]
    assert {r[1] for r in results} <= {"1", "2"}, "every trial ran on a worker line, not the main one"
