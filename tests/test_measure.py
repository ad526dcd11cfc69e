"""The leak probe for any temporal denoiser (``analysis.leak.measure``): a diffusers ``UNet1DModel`` measures
as its diffnorm twin does, the published network's norm-stripped receptive field, exact zeros without a
norm, the export job with both paths, and the README's snippet."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import load_results

from diffnorm.analysis.leak import SequenceDenoiser, measure
from diffnorm.analysis.receptive_field import receptive_field
from diffnorm.experiments.common import ConfigError, compose_job
from diffnorm.experiments.leak_probe import leak_probe
from diffnorm.interop import to_diffusers
from diffnorm.models.norms import norm_factory
from diffnorm.models.temporal_unet import TemporalUnet

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[1]
SMALL = {"n_windows": 1, "row_stride": 5, "t_fractions": (0.0, 1.0), "chain_samples": 1, "n_diffusion_steps": 4}


def _randomized(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def test_a_diffusers_unet_measures_as_its_diffnorm_twin():
    ours = _randomized(TemporalUnet(128, 6, dim=8, dim_mults=(1, 2)))
    theirs = to_diffusers(ours)
    a = measure(ours, 128, 6, 4, **SMALL)
    b = measure(theirs, 128, 6, 4, layout="BDH", **SMALL)
    assert a["receptive_field"] == b["receptive_field"] == [61, 60] and b["receptive_field_with_norms"] is None
    assert a["beyond_rf_mass"] > 0.01
    # diffusers computes its time sinusoid in float32 even in a float64 model: agreement to float32 rounding
    for key in ("beyond_rf_mass", "goal_one_pass_max_beyond_rf", "goal_chain_mean_beyond_rf"):
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-9), key


def test_the_published_unet1d_has_the_diffusers_receptive_field_diffnorm_computes():
    unet = to_diffusers(TemporalUnet(128, 6))
    assert receptive_field(SequenceDenoiser(unet, 6, layout="BDH", length_multiple=4)) == (147, 144)


def test_no_norm_means_exactly_zero_beyond_the_receptive_field():
    model = _randomized(TemporalUnet(128, 6, dim=8, dim_mults=(1, 2), norm_layer=norm_factory("none")))
    leak = measure(model, 128, 6, 4, **SMALL)
    assert leak["beyond_rf_mass"] == 0.0 and leak["goal_one_pass_max_beyond_rf"] == 0.0
    assert leak["receptive_field_with_norms"] == leak["receptive_field"] == [61, 60]


def test_bad_inputs_are_one_line_errors():
    model = TemporalUnet(128, 6, dim=8, dim_mults=(1, 2))
    with pytest.raises(ConfigError, match="horizon=129 must be a multiple of 2"):
        measure(model, 129, 6)
    with pytest.raises(ConfigError, match="layout='BTD'"):
        measure(model, 128, 6, layout="BTD")
    with pytest.raises(ConfigError, match=r"observation_dim=7 must lie in \[1, transition_dim=6\]"):
        measure(model, 128, 6, 7)


@pytest.mark.slow  # four script runs (train, export, train, refused export) and a leak probe: pytest -m slow
def test_an_exported_planner_is_measured_the_same_through_diffusers(tmp_path, script):
    run = tmp_path / "run"
    proc = script("train_diffuser", "experiment=tiny", "model.dim_mults=[1,2]", "env.horizon=96", run_dir=run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exported = tmp_path / "exported"
    proc = script("export_diffusers", f"checkpoint={run}", "leak=true", run_dir=exported)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = load_results(exported)
    assert res["max_abs_diff_diffusers_forward"] < 1e-4 * max(1.0, res["output_scale"])
    ours, theirs = res["leak"]["diffnorm"], res["leak"]["diffusers"]
    assert ours["receptive_field"] == theirs["receptive_field"] and ours["horizon"] == 96
    assert theirs["beyond_rf_mass"] == pytest.approx(ours["beyond_rf_mass"], rel=1e-5)
    # The folder is a planner for every diffnorm job: the leak probe gives the run's numbers exactly.
    probe = ["influence.n_windows=1", "influence.row_stride=7", "influence.t_fractions=[1.0]", "leakage.n_windows=2",
             "leakage.t_fractions=[1.0]", "leakage.chain_samples=1", "probe.n_train=16", "probe.n_test=32",
             "probe.steps=20", "probe.sites=[final_block]", "horizons=[96]", "dtype=float64"]
    both = leak_probe(compose_job("leak_probe", [f"checkpoints=[{run},{exported}]", *probe]), tmp_path / "leak")
    first, second = both["comparison"].values()
    assert first["beyond_rf_influence_fraction"] == second["beyond_rf_influence_fraction"] > 0
    eqnet_run = tmp_path / "eqnet"
    assert script("train_diffuser", "experiment=tiny", "model=eqnet", "model.depth=1", "norm=group",
                  run_dir=eqnet_run).returncode == 0
    refused = script("export_diffusers", f"checkpoint={eqnet_run}", run_dir=tmp_path / "refused")
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0
    assert "UNet1DModel" in refused.stderr


def test_the_readme_snippet_runs(capsys):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Measure your own planner", 1)[1]
    (code,) = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], flags=re.DOTALL)
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 -- the README snippet is the test subject
    printed = capsys.readouterr().out
    assert re.fullmatch(r"receptive field \[147, 144\]: \d+\.\d% of the influence lies beyond it\n", printed), printed
    assert float(printed.split(": ")[1].split("%")[0]) > 1.0
