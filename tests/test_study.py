"""The one-command study end to end on tiny settings: every stage runs and report.md states the answer."""

from conftest import load_results

TRAIN = ["experiment=tiny", "train.grad_accumulation=1", "train.steps=3", "train.checkpoint_every=3"]
TOY = ["seeds=[0]", "steps=20", "n_test=40", "workers=1", "length=24", "depth=2", "kernel_size=3", "hidden=8",
       "probe.steps=10", "probe.n_train=8", "probe.n_test=40"]
LEAK = ["horizons=[32]", "influence.n_windows=1", "influence.row_stride=3", "influence.t_fractions=[1.0]",
        "leakage.n_windows=2", "leakage.t_fractions=[1.0]", "leakage.chain_samples=1", "probe.n_train=8",
        "probe.n_test=40", "probe.steps=20", "probe.batch_size=64", "probe.sites=[mid1,final_block]"]


def _listing(values: list[str]) -> str:
    return "[" + ",".join(f"'{v}'" for v in values) + "]"


def test_study_runs_every_stage_and_reports(script, tmp_path):
    data_dir = f"data_dir={tmp_path / 'data'}"
    proc = script("study", f"train_overrides={_listing(TRAIN + [data_dir])}",
                  f"toy_overrides={_listing(TOY)}", f"leak_overrides={_listing(LEAK)}",
                  f"plan_overrides={_listing(['episodes=2', 'max_steps=20', 'plot_episodes=2'])}", run_dir=tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    res = load_results(run)
    assert set(res["planning"]) == {"group", "none"}
    assert res["leak"]["comparison"]["none"]["beyond_rf_influence_fraction"] == 0
    report = (run / "report.md").read_text()
    lines = report.splitlines()
    assert report.startswith("# diffnorm study") and lines[2] == "## Question and answer"
    assert "Welch 95% CI" in report and "so nothing lies beyond it" in report  # H = 32 < its reach
    assert "**What this run cannot answer.**" in report and "stitching_study" in report
    for term in ("**Receptive field**", "**Influence mass beyond the receptive field**", "**One-pass leakage**",
                 "**Chain leakage**", "**Probe-localized**", "**Goal jump**"):
        assert term in report
    assert "see settings below" not in report and "full-scale numbers" not in report  # no dangling references
    assert "| goal jump (mean) |" in lines[next(i for i, l in enumerate(lines) if l == "## Planning rollouts") + 2]
    figures = [p for p in run.rglob("*.png") if "/samples/" not in str(p)]
    assert (run / "train" / "samples.png") in figures, "training samples are one grid"
    for png in figures:
        rel = str(png.relative_to(run))
        assert f"]({rel})" in report
        caption = next(l for l in lines if l.startswith(f"**{rel}.**"))
        assert "described in its title" not in caption, f"{rel} has no caption of its own"


def test_study_rerun_reuses_finished_stages(script, tmp_path):
    data_dir = f"data_dir={tmp_path / 'data'}"
    plan = ["episodes=2", "max_steps=20", "plot_episodes=2"]

    def run(plan_overrides):
        proc = script("study", f"train_overrides={_listing(TRAIN + [data_dir])}", f"toy_overrides={_listing(TOY)}",
                      f"leak_overrides={_listing(LEAK)}", f"plan_overrides={_listing(plan_overrides)}",
                      "norms=[group,none]", "workers=1", run_dir=tmp_path / "run")
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout + proc.stderr, load_results(tmp_path / "run")

    _, first = run(plan)
    output, again = run(plan)
    for stage in ("toy", "leak", "plan/group", "plan/none"):
        assert f"{tmp_path / 'run' / stage}: reusing the finished" in output, stage
    for norm in ("group", "none"):
        assert f"{tmp_path / 'run' / 'train' / norm}: reusing the finished training there" in output
    assert again["leak"]["comparison"] == first["leak"]["comparison"]
    assert again["planning"] == first["planning"]
    # The reused stages keep the wall time their work took; this run's own seconds are recorded beside them.
    assert set(again["reused_stages"]) == {"toy", "train", "leak_probe", "plan"}
    for stage in again["reused_stages"]:
        assert again["wall_time_s"][stage] == first["wall_time_s"][stage], stage
    assert again["this_run_wall_time_s"]["train"] < first["wall_time_s"]["train"]
    assert "| train | " in (tmp_path / "run" / "report.md").read_text()

    output, more = run(["episodes=3", "max_steps=20", "plot_episodes=2"])  # only the rollouts change
    assert f"{tmp_path / 'run' / 'leak'}: reusing the finished" in output
    assert "plan/group: reusing" not in output and more["planning"]["group"]["episodes"] == 3
