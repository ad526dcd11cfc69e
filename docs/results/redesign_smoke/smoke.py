"""Tiny smoke runs of every job at several commits, and a comparison of their results.json numbers.

    python docs/results/redesign_smoke/smoke.py OUT COMMIT [COMMIT ...]

Each commit is checked out into its own git worktree under OUT and runs the same jobs with the same
explicit tiny overrides (no ``experiment=tiny``: older commits lack it), one thread, fresh data per
commit. Then every numeric leaf of every results.json is compared with the first commit's: equal, or
the largest relative difference. Writes OUT/comparison.txt.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
TRAIN = ["experiment=quick", "model.dim=8", "model.dim_mults=[1,2,2]", "env.horizon=32", "env.n_diffusion_steps=8",
         "env.dataset_steps=3000", "train.steps=4", "train.batch_size=4", "train.grad_accumulation=1",
         "train.n_samples=2", "train.sample_every=0", "train.num_threads=1", "train.progress=false",
         "train.checkpoint_every=2", "train.snapshot_every=2"]
TOY = ["steps=30", "seeds=[0]", "n_test=60", "workers=1", "length=24", "depth=2", "kernel_size=3", "hidden=8"]
LEAK = ["horizons=[32]", "influence.n_windows=1", "influence.row_stride=3", "influence.t_fractions=[1.0]",
        "leakage.n_windows=2", "leakage.t_fractions=[1.0]", "leakage.chain_samples=1", "probe.n_train=8",
        "probe.n_test=40", "probe.steps=20", "probe.batch_size=64", "probe.sites=[mid1,final_block]"]


def jobs(data: Path, out: Path) -> list[tuple[str, list[str]]]:
    run = out / "train_diffuser"
    listing = "[" + ",".join(f"'{v}'" for v in TRAIN) + "]"
    return [
        ("make_maze_dataset", ["steps=3000", f"data_dir={data}", "progress=false"]),
        ("train_diffuser", [*TRAIN, f"data_dir={data}", "norm=group"]),
        ("plan_maze", [f"checkpoint={run}", "episodes=2", "max_steps=40", "plot_episodes=1", "num_threads=1"]),
        ("learning_curve", [f"runs=[{run}]", "episodes=2", "final_multi_episodes=0"]),
        ("leak_probe", [f"checkpoints=[{run}]", *LEAK]),
        ("controller_baseline", ["mazes=[maze2d-umaze]", "episodes=2", "plot_paths=1"]),
        ("localization", [*TOY, "norm=group", "norm.groups=2", "probe.steps=20", "probe.n_train=16", "probe.n_test=60"]),
        ("packnorm_overlap", ["steps=20", "seeds=[0]", "n_test=16", "workers=1", "length=16", "depth=2",
                              "kernel_size=3", "hidden=8", "overlaps=[0,4]"]),
        ("stitching_study", [f"train_overrides={listing}", "norms=[group,none]", "seeds=[0,1]", "workers=1",
                             "episodes_per_task=1", "max_steps=10", "stitch.episodes=40", f"data_dir={data}",
                             ]),
        # jobs added after the redesign began (the paper's toy claims at full strength): compared from fe4a69f
        ("groupnorm_groups", [*TOY, "groups=[1,2]", "lrs=[1e-3]"]),
        ("batchnorm_stats", [*TOY, "effective_batch=4", "batch_sizes=[1,2]"]),
        ("localization_norms", [*TOY, "batch_size=4", "norm_batch=2", "norms=[none,batch,channel]"]),
        ("uninformative_inputs", [*TOY, "input_kinds=[{kind: gaussian},{kind: periodic, period: 3}]"]),
    ]


def run_commit(commit: str, out: Path) -> None:
    tree = out / f"tree_{commit}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), commit], check=True,
                       capture_output=True)
    runs, data = out / commit, out / commit / "data"
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", PYTHONPATH=str(tree))
    for name, overrides in jobs(data, runs):
        if (runs / name / "results.json").exists():
            continue
        proc = subprocess.run([sys.executable, str(tree / "scripts" / f"{name}.py"), *overrides,
                               f"hydra.run.dir={runs / name}"], cwd=tree, env=env, capture_output=True, text=True)
        status = "ok" if proc.returncode == 0 else f"FAILED ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}"
        print(f"{commit} {name}: {status}", flush=True)


def leaves(value, prefix=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, f"{prefix}/{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from leaves(v, f"{prefix}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield prefix, float(value)


TIMING = ("_s", "seconds", "wall", "cpu", "steps_per_s", "timings", "time", "per_s")


def compare(out: Path, commits: list[str]) -> str:
    base, lines = commits[0], []
    for other in commits[1:]:
        lines.append(f"== {other} against {base} (numeric leaves of results.json; timings left out)")
        for name, _ in jobs(Path("."), Path(".")):
            a, b = out / base / name / "results.json", out / other / name / "results.json"
            if not (a.exists() and b.exists()):
                lines.append(f"{name:20s} missing at {'both' if not a.exists() and not b.exists() else (base if not a.exists() else other)}")
                continue
            la = {k: v for k, v in leaves(json.loads(a.read_text())) if not any(t in k.lower() for t in TIMING)}
            lb = {k: v for k, v in leaves(json.loads(b.read_text())) if not any(t in k.lower() for t in TIMING)}
            common = sorted(set(la) & set(lb))
            differ = [(k, abs(la[k] - lb[k]) / max(abs(la[k]), abs(lb[k]), 1e-300)) for k in common
                      if la[k] != lb[k] and not (math.isnan(la[k]) and math.isnan(lb[k]))]
            worst = max(differ, key=lambda kv: kv[1]) if differ else None
            lines.append(f"{name:20s} {len(common)} numbers in both, {len(differ)} differ"
                         + (f"; largest relative difference {worst[1]:.2e} at {worst[0]}" if worst else "")
                         + (f"; only at {base}: {len(set(la) - set(lb))}, only at {other}: {len(set(lb) - set(la))}"
                            if set(la) ^ set(lb) else ""))
            lines += [f"    {k}: {la[k]!r} -> {lb[k]!r}" for k, _ in sorted(differ, key=lambda kv: -kv[1])[:6]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    out, commits = Path(sys.argv[1]).resolve(), sys.argv[2:]
    out.mkdir(parents=True, exist_ok=True)
    for c in commits:
        run_commit(c, out)
    text = compare(out, commits)
    (out / "comparison.txt").write_text(text)
    print(text)
