"""The library layers import downward: the models, diffusion, data, envs, analysis, training and
planning packages load without Hydra (which only the job layer, ``experiments/``, uses)."""

import subprocess
import sys

LIBRARY = ["diffnorm.models.temporal_unet", "diffnorm.models.norms", "diffnorm.diffusion.gaussian",
           "diffnorm.data.d4rl_format", "diffnorm.data.generate", "diffnorm.data.stitch", "diffnorm.data.sequence",
           "diffnorm.envs.maze2d", "diffnorm.envs.frames", "diffnorm.analysis.influence", "diffnorm.analysis.leak",
           "diffnorm.analysis.receptive_field", "diffnorm.training.loop", "diffnorm.training.checkpoint",
           "diffnorm.planning.rollout", "diffnorm.planning.kinematic", "diffnorm.planning.stitch",
           "diffnorm.envs.ogbench_maze", "diffnorm.probing.probes", "diffnorm.toy.localization", "diffnorm.errors",
           "diffnorm.io"]


def test_library_packages_do_not_import_hydra():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in LIBRARY)
            + "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in ('hydra', 'diffnorm')}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['diffnorm']", f"hydra was imported by a library module: {proc.stdout}"


def _package_imports() -> dict[str, set[str]]:
    """Sub-package -> the diffnorm sub-packages its modules import at module level (imports inside
    functions are deliberate, e.g. optional extras, and are left out)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "diffnorm"
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        package = path.relative_to(root.parent).with_suffix("").parts[:2]
        package = ".".join(package).removesuffix(".__init__")
        for node in ast.parse(path.read_text()).body:
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                if name.startswith("diffnorm."):
                    target = ".".join(name.split(".")[:2])
                    if target != package:
                        graph.setdefault(package, set()).add(target)
    return graph


def test_no_import_cycle_between_packages():
    graph = _package_imports()
    assert graph["diffnorm.data"] and "diffnorm.envs" in graph["diffnorm.data"]  # the graph is read at all

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted(p for p in graph if reaches(p, p, {p}))
    assert not cycles, f"packages on an import cycle: {cycles}"
