"""Nothing lost: a stitching study stopped by Ctrl-C (SIGINT to its process group) or SIGTERM leaves every
training in flight resumable from the step it reached, and the same command continues them to the weights
an uninterrupted study ends with."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffnorm.training.checkpoint import CHECKPOINT, EMA_WEIGHTS, checkpoint_step

ROOT = Path(__file__).resolve().parents[1]
STEPS = 300
TRAIN = ["experiment=tiny", "train.grad_accumulation=1", f"train.steps={STEPS}", "train.checkpoint_every=1000",
         "train.log_every=10"]


def _study_args(tmp_path: Path, run: Path) -> list[str]:
    listing = "[" + ",".join(f"'{v}'" for v in TRAIN) + "]"
    return [sys.executable, str(ROOT / "scripts" / "stitching_study.py"), f"train_overrides={listing}",
            "norms=[group,none]", "seeds=[0,1]", "workers=2", "episodes_per_task=1", "max_steps=10",
            "stitch.episodes=40", f"data_dir={tmp_path / 'data'}", "protocols=[]", f"hydra.run.dir={run}"]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow  # three small studies, about a minute on 2 cores: pytest -m slow
def test_ctrl_c_to_a_stitching_study_resumes_to_the_uninterrupted_weights(tmp_path):
    run, reference = tmp_path / "run", tmp_path / "reference"
    proc = subprocess.Popen(_study_args(tmp_path, run), cwd=ROOT, env=dict(os.environ, MPLBACKEND="Agg"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    first = [run / "runs" / "group" / f"seed{s}" / "metrics.csv" for s in (0, 1)]  # both workers training
    deadline = time.monotonic() + 300
    while not all(p.is_file() for p in first) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(p.is_file() for p in first), proc.communicate()[1][-3000:]
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: every process of the job gets it
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("interrupted:") and "Traceback" not in err, err[-3000:]
    stopped = [checkpoint_step(p.parent / CHECKPOINT) for p in first]
    assert all(0 < step < STEPS for step in stopped), stopped  # each kept the step it had reached
    assert not list((run / "runs").glob("none/seed*/metrics.csv"))  # no queued training started after it
    assert f"hydra.run.dir={run} continues it" in err

    again = _run(_study_args(tmp_path, run))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"continuing the training found there (same run, checkpoint at step {stopped[0]})" in again.stdout
    straight = _run(_study_args(tmp_path, reference))
    assert straight.returncode == 0, straight.stderr[-3000:]
    for trained in (run / "runs").glob("*/seed*"):
        ours = load_file(str(trained / EMA_WEIGHTS))
        theirs = load_file(str(reference / "runs" / trained.parent.name / trained.name / EMA_WEIGHTS))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), trained
