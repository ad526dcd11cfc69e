"""Eq-Net (Clark & Shkurti 2025) as diffnorm builds it: shapes, replicate padding, its receptive field,
the norm swap, shift equivariance away from the edges, and training / leak probing from a config."""

import pytest
import torch
from torch import nn

from diffnorm.analysis.receptive_field import receptive_field
from diffnorm.experiments.common import ConfigError, compose_job
from diffnorm.experiments.leak_probe import leak_probe
from diffnorm.models.eqnet import EqNet, ReplicateConv1d, block_kernels
from diffnorm.models.norms import NORM_LAYERS, is_norm, norm_factory
from diffnorm.models.registry import MODELS, model_class
from diffnorm.training.build import build_model


def test_replicate_conv_equals_torch_replicate_padding():
    torch.manual_seed(0)
    ours = ReplicateConv1d(8, 8, 5, padding=2).double()
    ref = nn.Conv1d(8, 8, 5, padding=2, padding_mode="replicate").double()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 8, 20, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-12, atol=1e-12)
    time_major = x.detach().transpose(1, 2).contiguous().transpose(1, 2)
    torch.testing.assert_close(ours(time_major), ref(x), rtol=1e-12, atol=1e-12)


def test_kernels_grow_and_the_receptive_field_follows():
    assert block_kernels(12, 3, 3) == [3, 3, 3, 5, 5, 5, 7, 7, 7, 9, 9, 9]
    assert block_kernels(4, 5, 0) == [5] * 4
    net = EqNet(128, 6)  # the config's defaults
    # input block (kernel 3) + two convolutions per residual block; the 1x1 output adds nothing
    expected = 1 + sum(k - 1 for k in net.kernels)
    assert receptive_field(net) == (expected, expected) == (61, 61)
    assert sum(p.numel() for p in net.parameters()) == 171654


@pytest.mark.parametrize("name", sorted(NORM_LAYERS))
def test_every_norm_swaps_in_and_trains(name):
    torch.manual_seed(0)
    settings = {"window": 3} if name == "local_group" else {}
    net = EqNet(32, 6, dim=8, depth=3, norm_layer=norm_factory(name, **settings))
    assert sum(is_norm(m) for m in net.modules()) == 1 + 2 * 3
    x = torch.randn(2, 32, 6, requires_grad=True)
    out = net(x, torch.tensor([0, 5]))
    assert out.shape == x.shape
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():
        assert net(torch.randn(1, 37, 6), torch.tensor([1])).shape == (1, 37, 6)  # any length: no resampling


def test_shift_equivariant_away_from_the_edges():
    """No resampling and a leak-free norm: shifting the input shifts the output, wherever the shifted
    index's receptive field stays inside the sequence."""
    torch.manual_seed(1)
    net = EqNet(64, 6, dim=8, depth=2, kernel_size=3, norm_layer=norm_factory("channel")).double().eval()
    left, right = receptive_field(net)
    x = torch.randn(1, 64, 6, dtype=torch.float64)
    shift = 3
    with torch.no_grad():
        a = net(x, torch.tensor([4]))
        b = net(torch.roll(x, shift, dims=1), torch.tensor([4]))
    inner = slice(left + shift, 64 - right - shift)
    torch.testing.assert_close(torch.roll(a, shift, dims=1)[:, inner], b[:, inner], rtol=1e-10, atol=1e-10)


def test_registry_and_configs_agree():
    from pathlib import Path

    import yaml
    configs = Path(__file__).resolve().parents[1] / "configs" / "model"
    names = {yaml.safe_load(p.read_text())["name"] for p in configs.glob("*.yaml")}
    assert names == set(MODELS)
    with pytest.raises(ValueError, match=r"unknown model 'unet'; choose one of \['eqnet', 'temporal_unet'\]"):
        model_class("unet")


def test_built_from_the_config_with_the_chosen_norm():
    cfg = compose_job("train_diffuser", ["experiment=tiny", "model=eqnet", "norm=local_group", "norm.window=3",
                                         "norm.groups=2"])
    net = build_model(cfg)
    assert isinstance(net, EqNet) and net.horizon == 32 and len(net.blocks) == 12
    with pytest.raises(ConfigError, match=r"model.dim_mults is not a setting of model 'eqnet'"):
        compose_job("train_diffuser", ["experiment=tiny", "model=eqnet", "model.dim_mults=[1,2]"])
    with pytest.raises(ConfigError, match=r"model.kernel_growth_every=-1 must be >= 0"):
        compose_job("train_diffuser", ["experiment=tiny", "model=eqnet", "model.kernel_growth_every=-1"])


def test_trains_and_is_leak_probed_like_the_unet(tmp_path, script):
    run = tmp_path / "eqnet"
    proc = script("train_diffuser", "experiment=tiny", "model=eqnet", "model.depth=2", "norm=group", run_dir=run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    probe = ["influence.n_windows=1", "influence.row_stride=7", "influence.t_fractions=[1.0]", "leakage.n_windows=2",
             "leakage.t_fractions=[1.0]", "leakage.chain_samples=1", "probe.n_train=16", "probe.n_test=32",
             "probe.steps=20", "probe.sites=[blocks.1]", "horizons=[32]", "horizon=64"]
    res = leak_probe(compose_job("leak_probe", [f"checkpoint={run}", *probe]), tmp_path / "leak")
    (model,) = res["models"].values()
    assert model["receptive_field"] == [1 + 2 + 2, 1 + 2 + 2] and model["receptive_field_with_norms"] is None
    assert res["comparison"]["group (groups=8)"]["beyond_rf_influence_fraction"] > 0  # GroupNorm leaks here too
