"""The library layers import downward: the models, diffusion, data, envs, analysis, training and
planning packages load without Hydra (which only the job layer, ``experiments/``, uses)."""

import subprocess
import sys

LIBRARY = ["diffnorm.models.temporal_unet", "diffnorm.models.norms", "diffnorm.diffusion.gaussian",
           "diffnorm.data.d4rl_format", "diffnorm.data.generate", "diffnorm.data.sequence", "diffnorm.envs.maze2d",
           "diffnorm.envs.frames", "diffnorm.analysis.influence", "diffnorm.analysis.receptive_field",
           "diffnorm.training.loop", "diffnorm.training.checkpoint", "diffnorm.planning.rollout",
           "diffnorm.probing.probes", "diffnorm.toy.localization", "diffnorm.errors", "diffnorm.io"]


def test_library_packages_do_not_import_hydra():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in LIBRARY)
            + "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in ('hydra', 'diffnorm')}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['diffnorm']", f"hydra was imported by a library module: {proc.stdout}"
