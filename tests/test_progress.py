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


_SLEEPING_STUDY = '''
import os, sys, time
from pathlib import Path
from diffnorm.experiments.parallel import map_trials

def trial(k):
    Path(sys.argv[1], f"worker{k}.pid").write_text(str(os.getpid()))
    time.sleep(600)

if __name__ == "__main__":
    map_trials(trial, [{"k": 0}, {"k": 1}], workers=2, desc="trials")
'''


def test_sigterm_to_the_main_process_ends_its_workers(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "study.py"
    script.write_text(_SLEEPING_STUDY)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("worker*.pid"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "the workers never started"
        time.sleep(0.2)
    pids = [int(p.read_text()) for p in tmp_path.glob("worker*.pid")]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "KeyboardInterrupt: SIGTERM" in err
    time.sleep(1)  # terminate() is asynchronous
    alive = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)  # a survivor is ended here, so a failing run leaves none behind
            alive.append(pid)
        except ProcessLookupError:
            pass
    assert not alive, f"workers {alive} still ran after the main process was terminated"


def _log_from_a_worker() -> int:
    import logging

    logging.getLogger("diffnorm.experiments.diffuser").info("continuing the training")
    return logging.getLogger("diffnorm.experiments.diffuser").getEffectiveLevel()


def test_workers_log_at_the_main_process_level_into_its_log_file(tmp_path):
    import logging

    root, handler = logging.getLogger(), logging.FileHandler(tmp_path / "job.log")
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        levels = map_trials(_log_from_a_worker, [{}, {}], workers=2, desc="trials")
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(level)
    assert levels == [logging.INFO, logging.INFO]
    assert (tmp_path / "job.log").read_text().count("continuing the training") == 2
