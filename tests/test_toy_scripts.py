"""Every toy script end to end in a subprocess with tiny settings, and its bad-input errors."""

import pytest
from conftest import load_results

TINY = ["steps=30", "seeds=[0]", "n_test=60", "workers=1", "length=24", "depth=2", "kernel_size=3", "hidden=8"]


def test_localization_script(script, tmp_path):
    proc = script("localization", *TINY, "norm=group", "norm.groups=2", "probe.steps=20", "probe.n_train=16",
                  "probe.n_test=60", run_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(tmp_path)
    res = load_results(tmp_path)
    assert res["receptive_field"] == 2
    assert set(res["norms"]) == {"none", "group (groups=2)"}
    assert (tmp_path / "fig1a_predictions.png").stat().st_size > 0
    assert (tmp_path / "fig1b_probes.png").stat().st_size > 0


def test_groupnorm_groups_script(script, tmp_path):
    proc = script("groupnorm_groups", *TINY, "groups=[1,2]", "lrs=[1e-3]", run_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert set(load_results(tmp_path)["groups"]) == {"1", "2"}
    assert (tmp_path / "fig4_groups.png").exists()


def test_batchnorm_stats_script(script, tmp_path):
    proc = script("batchnorm_stats", *TINY, "effective_batch=4", "batch_sizes=[1,2]", run_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    modes = load_results(tmp_path)["modes"]
    assert set(modes) == {"no norm"} | {f"BatchNorm batch {b}, {m} stats" for b in (1, 2) for m in ("minibatch", "population")}
    assert (tmp_path / "fig5_batchnorm_predictions.png").exists()
    assert (tmp_path / "fig6_batchnorm_localized.png").exists()


def test_packnorm_script(script, tmp_path):
    proc = script("packnorm_overlap", "steps=20", "seeds=[0]", "n_test=16", "workers=1", "length=16", "depth=2",
                  "kernel_size=3", "hidden=4", "overlaps=[0,8]", run_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    res = load_results(tmp_path)
    assert set(res["mean_test_mse"]) == {"0", "8"}
    assert (tmp_path / "fig3_packnorm_overlap.png").exists()


@pytest.mark.parametrize("override,named", [
    ("kernel_size=4", "kernel_size=4"),
    ("length=4", "length=4"),
    ("depth=0", "depth=0"),
    ("hidden=-1", "hidden=-1"),
    ("steps=0", "steps=0"),
])
def test_bad_settings_fail_with_one_line(script, tmp_path, override, named):
    proc = script("localization", *TINY, override, run_dir=tmp_path)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and named in lines[-1]


def test_unknown_norm_fails(script, tmp_path):
    proc = script("localization", *TINY, "norm=grup", run_dir=tmp_path)
    assert proc.returncode != 0
    assert "grup" in proc.stderr and "instance" in proc.stderr
