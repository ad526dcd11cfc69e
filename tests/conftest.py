"""Shared test helpers: run a script as a user would, compose configs with overrides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str, *overrides: str, run_dir: Path | None = None, timeout: int = 600,
               cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run ``scripts/<script>.py`` with Hydra overrides in a subprocess launched from ``cwd``; the run dir
    goes to ``run_dir``."""
    args = [sys.executable, str(ROOT / "scripts" / f"{script}.py"), *overrides]
    if run_dir is not None:
        args.append(f"hydra.run.dir={run_dir}")
    env = dict(os.environ, MPLBACKEND="Agg", HYDRA_FULL_ERROR="0")
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def load_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture
def script():
    return run_script


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module: small convolutions on a shared 2-core machine run far slower when
    two OpenMP threads wait on busy cores. Modules opt in with ``pytestmark = pytest.mark.usefixtures``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

