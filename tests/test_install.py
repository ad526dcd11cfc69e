"""A non-editable install (a wheel) carries the Hydra configs: jobs that compose their sub-jobs run from
an installed package, outside the source tree."""

from __future__ import annotations

import json
import site
import subprocess
import sys
import venv

from conftest import ROOT

JOB = """
import json, sys
from pathlib import Path
import diffnorm
from diffnorm.experiments.common import compose_job
from diffnorm.experiments.diffuser import train_diffuser

cfg = compose_job("train_diffuser", ["experiment=tiny", "train.steps=2", f"data_dir={sys.argv[1]}/data"])
result = train_diffuser(cfg, Path(sys.argv[1]) / "run")
print(json.dumps({"package": diffnorm.__file__, "steps": result["steps"],
                  "stitching_keys": sorted(compose_job("stitching_study", []))}))
"""


def test_wheel_runs_jobs_outside_the_source_tree(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            str(ROOT), "-w", str(wheels)], capture_output=True, text=True, timeout=300, check=False)
    assert build.returncode == 0, build.stderr[-2000:]
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (wheel,) = wheels.glob("diffnorm-*.whl")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", purelib, str(wheel)],
                             capture_output=True, text=True, timeout=300, check=False)
    assert install.returncode == 0, install.stderr[-2000:]
    # The dependencies come from this interpreter's site-packages, appended after the venv's own (so the
    # installed diffnorm, not the editable source tree, is the one imported).
    deps = [p for p in site.getsitepackages() if "site-packages" in p]
    with open(f"{purelib}/test_deps.pth", "w") as f:
        f.write("\n".join(deps) + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = subprocess.run([str(python), "-c", JOB, str(work)], cwd=work, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["package"].startswith(purelib) and not out["package"].startswith(str(ROOT))
    assert out["steps"] == 2 and (work / "run" / "ema.safetensors").is_file()
    assert "protocols" in out["stitching_keys"] and "train_overrides" in out["stitching_keys"]
