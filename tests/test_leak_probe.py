"""The leak_probe job end to end on tiny trained Diffusers: the script (training its own quick models),
the float64 acceptance of issue 5 on the job's own numbers, and bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import load_results

from diffnorm.experiments.common import ConfigError

# train_diffuser settings of a tiny U-Net (receptive field 33 / 32) on a 96-step horizon
TRAIN = ["model.dim=8", "model.dim_mults=[1,2]", "model.kernel_size=3", "env.horizon=96", "env.n_diffusion_steps=8",
         "env.dataset_steps=3000", "train.steps=2", "train.batch_size=4", "train.grad_accumulation=1",
         "train.n_samples=2", "train.sample_every=0", "train.num_threads=1", "train.progress=false"]
# leak_probe sizes for it
SMALL = ["horizons=[128]", "influence.n_windows=1", "influence.row_stride=3", "leakage.n_windows=3",
         "leakage.chain_samples=2", "probe.n_train=16", "probe.n_test=48", "probe.steps=100", "probe.batch_size=256"]


pytestmark = pytest.mark.usefixtures("single_thread")


def train_overrides(data_dir: Path) -> str:
    quoted = ",".join(f"'{o}'" for o in [*TRAIN, f"data_dir={data_dir}"])
    return f"train_overrides=[{quoted}]"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The script with no checkpoint: it trains a tiny group and none model, then probes them."""
    from conftest import run_script

    run_dir = tmp_path_factory.mktemp("leak_probe")
    data_dir = tmp_path_factory.mktemp("data")
    proc = run_script("leak_probe", "norms=[group,none]", train_overrides(data_dir), *SMALL,
                      "influence.t_fractions=[1.0]",
                      "leakage.t_fractions=[1.0]", "probe.sites=[mid1,final_block]", run_dir=run_dir)
    return run_dir, proc


def compose(*overrides: str):
    from diffnorm.experiments.common import compose_job

    return compose_job("leak_probe", list(overrides))


def test_script_trains_quick_models_and_writes_results(smoke):
    run_dir, proc = smoke
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(run_dir)
    res = load_results(run_dir)
    assert set(res["comparison"]) == {"group (groups=8)", "none"}
    assert (res["receptive_field"]["left"], res["receptive_field"]["right"]) == (33, 32)
    # horizons=[128] and the measured H = 96 (always listed); 96 > 33 + 32 + 1
    assert [(h["horizon"], h["count"]) for h in res["receptive_field"]["sees_both_ends"]] == [(96, 0), (128, 0)]
    for name in ("influence_heatmaps", "influence_profiles", "probe_localization", "condition_leakage",
                 "chain_leakage"):
        assert (run_dir / f"{name}.png").stat().st_size > 10_000
    arrays = np.load(run_dir / "arrays.npz")
    assert arrays["none/influence_map"].shape == (32, 96)
    for norm in ("group", "none"):
        assert (run_dir / "train" / norm / "ema.safetensors").is_file()
    group, none = res["comparison"]["group (groups=8)"], res["comparison"]["none"]
    assert none["beyond_rf_influence_fraction"] == 0.0 and group["beyond_rf_influence_fraction"] > 0
    assert none["goal_one_pass_max_beyond_rf"] == 0.0 and group["goal_one_pass_max_beyond_rf"] > 0


def test_float64_acceptance_on_trained_models(smoke, tmp_path):
    """Issue 5: for none, beyond-RF influence and one-pass leakage <= 1e-12 and nothing probe-localized
    beyond the RF (at every probe site); for group, non-zero influence and leakage."""
    from diffnorm.experiments.leak_probe import leak_probe

    run_dir, _ = smoke
    cfg = compose(f"checkpoints=[{run_dir / 'train' / 'group'},{run_dir / 'train' / 'none'}]", "dtype=float64",
                  *SMALL, "influence.t_fractions=[0.0,1.0]", "leakage.t_fractions=[0.0,1.0]")
    res = leak_probe(cfg, tmp_path)
    group, none = res["comparison"]["group (groups=8)"], res["comparison"]["none"]
    assert none["beyond_rf_influence_fraction"] <= 1e-12 < group["beyond_rf_influence_fraction"]
    for cond in ("goal", "start"):
        assert none[f"{cond}_one_pass_max_beyond_rf"] <= 1e-12 < group[f"{cond}_one_pass_max_beyond_rf"]
    assert none["localized_beyond_rf"] == 0 and none["localized_beyond_own_rf"] == 0
    probes = res["models"]["none"]["probes"]["sites"]
    assert len(probes) == 25 and sum(s["n_localized"] for s in probes.values()) > 0  # the edges are localized
    assert probes["final_block"]["beyond_rf"] == 96 - 2 - 33 - 32


def test_missing_checkpoint_is_one_line_and_exit_2(script, tmp_path):
    proc = script("leak_probe", f"checkpoint={tmp_path / 'nowhere'}", run_dir=tmp_path / "run")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: checkpoint={tmp_path / 'nowhere'} does not exist"]


def test_checkpoint_not_matching_its_config(smoke, tmp_path):
    from diffnorm.experiments.leak_probe import leak_probe

    run_dir, _ = smoke
    bad = tmp_path / "edited"
    shutil.copytree(run_dir / "train" / "none", bad)
    config = bad / "config.yaml"
    config.write_text(config.read_text().replace("dim: 8", "dim: 16"))
    with pytest.raises(ConfigError, match=r"does not match the config.*model"):
        leak_probe(compose(f"checkpoint={bad}"), tmp_path / "out")


def test_unknown_probe_site_lists_the_valid_sites(smoke, tmp_path):
    from diffnorm.experiments.leak_probe import leak_probe

    run_dir, _ = smoke
    valid = r"unknown probe site.*'mid3'.*valid sites.*'down\.0\.res1\.block1'.*'final_block'"
    with pytest.raises(ConfigError, match=valid):
        leak_probe(compose(f"checkpoint={run_dir / 'train' / 'none'}", "probe.sites=[mid1,mid3]"), tmp_path)
    # Without a checkpoint the sites are checked before any training starts.
    with pytest.raises(ConfigError, match="unknown probe site"):
        leak_probe(compose("norms=[none]", "probe.sites=[mid3]", train_overrides(tmp_path / "data")), tmp_path)
    assert not (tmp_path / "train").exists()


def test_checkpoints_of_different_horizons_are_refused(smoke, tmp_path):
    from omegaconf import OmegaConf

    from diffnorm.experiments.common import compose_job
    from diffnorm.experiments.diffuser import train_diffuser
    from diffnorm.experiments.leak_probe import leak_probe

    run_dir, _ = smoke
    trained = run_dir / "train" / "none"
    data_dir = OmegaConf.load(trained / "config.yaml").data_dir
    other = tmp_path / "h128"
    train_diffuser(compose_job("train_diffuser", [*TRAIN, "env.horizon=128", "norm=none", f"data_dir={data_dir}"]), other)
    with pytest.raises(ConfigError, match="different horizons"):
        leak_probe(compose(f"checkpoints=[{trained},{other}]"), tmp_path / "out")


def test_measuring_at_another_horizon(smoke, tmp_path):
    """horizon= runs the fully convolutional nets on longer windows than they were trained on: the
    interior beyond the receptive field grows with it, and its zeros for `none` stay exact."""
    from diffnorm.experiments.leak_probe import leak_probe

    run_dir, _ = smoke
    checkpoints = f"checkpoints=[{run_dir / 'train' / 'group'},{run_dir / 'train' / 'none'}]"
    res = leak_probe(compose(checkpoints, "horizon=128", *SMALL, "influence.t_fractions=[1.0]",
                             "leakage.t_fractions=[1.0]", "probe.sites=[final_block]"), tmp_path / "h128")
    none, group = res["models"]["none"], res["models"]["group (groups=8)"]
    assert (none["horizon"], none["trained_horizon"]) == (128, 96)
    assert none["probes"]["sites"]["final_block"]["beyond_rf"] == 128 - 2 - 33 - 32
    assert none["influence"]["beyond_rf_fraction"] == 0.0 < group["influence"]["beyond_rf_fraction"]
    assert np.load(tmp_path / "h128" / "arrays.npz")["none/influence_map"].shape[1] == 128
    with pytest.raises(ConfigError, match="horizon=129 must be a positive multiple of 2"):
        leak_probe(compose(checkpoints, "horizon=129"), tmp_path / "bad")


def test_a_plan_shorter_than_the_receptive_field_is_flagged_as_measuring_nothing(smoke, tmp_path, script):
    """At H = 32 every index of the tiny U-Net (receptive field 33 / 32) sees the whole plan: the job warns,
    points to horizon=, and records that the beyond-RF set is empty; at H = 96 it is not."""
    run_dir, _ = smoke
    assert load_results(run_dir)["beyond_rf_set_empty"] is False
    proc = script("leak_probe", f"checkpoints=[{run_dir / 'train' / 'none'}]", "horizon=32", *SMALL,
                  "influence.t_fractions=[1.0]", "leakage.t_fractions=[1.0]", "probe.sites=[final_block]",
                  run_dir=tmp_path / "h32")
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = load_results(tmp_path / "h32")
    assert res["beyond_rf_set_empty"] is True and res["horizon"] == 32
    assert "warning: at H=32 no plan index lies beyond the receptive field" in proc.stdout
    assert "measure at a longer plan with horizon=<H>" in proc.stdout + proc.stderr  # the log line


def test_horizon_is_checked_before_training(script, tmp_path):
    """With no checkpoints the job trains its own models; a horizon they cannot take stops it before any
    training, and one with nothing beyond the receptive field is flagged before the training starts."""
    data_dir = tmp_path / "data"
    proc = script("leak_probe", "norms=[group,none]", train_overrides(data_dir), "horizon=33", run_dir=tmp_path / "bad")
    assert proc.returncode == 2 and "horizon=33 must be a positive multiple of 2" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "bad" / "train").exists()

    proc = script("leak_probe", "norms=[none]", train_overrides(data_dir), "horizon=32", *SMALL,
                  "influence.t_fractions=[1.0]", "leakage.t_fractions=[1.0]", "probe.sites=[final_block]",
                  run_dir=tmp_path / "short")
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (tmp_path / "short" / "leak_probe.log").read_text()
    assert log.index("at H=32 every plan index sees every other") < log.index("trained into")
