"""Parity of TemporalUnet with Janner's maze2d network, and its contract for every registry norm."""

import math
import re

import pytest
import torch

from diffnorm.analysis.receptive_field import receptive_field
from diffnorm.experiments.common import ConfigError
from diffnorm.models.blocks import SinusoidalTimeEmbedding
from diffnorm.models.norms import NORM_LAYERS, is_norm, norm_factory
from diffnorm.models.temporal_unet import TemporalUnet

pytestmark = pytest.mark.usefixtures("single_thread")


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def janner():
    torch.manual_seed(0)
    return TemporalUnet(128, 6)


def test_parameter_counts_match_published(janner):
    assert n_params(janner) == 3_682_118
    assert n_params(TemporalUnet(128, 6, norm_layer=norm_factory("none"))) == 3_675_398


def test_receptive_field_matches_published(janner):
    assert receptive_field(janner) == (147, 144)


def test_per_level_shapes_and_unused_first_skip(janner):
    """Channel widths and lengths per level as in REFERENCE.md; the first level's skip never feeds the up path."""
    assert janner.up[0].res1.block1.conv.in_channels == 2 * 256
    assert janner.up[1].res1.block1.conv.in_channels == 2 * 128
    assert janner.final_block.conv.in_channels == 32
    shapes = {}
    hooks = [janner.get_submodule(name).register_forward_hook(
        lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape)))
        for name in ["down.0.res2", "down.1.res2", "down.2.res2", "mid2", "up.0.upsample", "up.1.upsample"]]
    try:
        janner(torch.randn(2, 128, 6), torch.tensor([0, 5]))
    finally:
        for h in hooks:
            h.remove()
    assert shapes == {"down.0.res2": (2, 32, 128), "down.1.res2": (2, 128, 64), "down.2.res2": (2, 256, 32),
                      "mid2": (2, 256, 32), "up.0.upsample": (2, 128, 64), "up.1.upsample": (2, 32, 128)}


def test_time_embedding_is_the_published_sinusoid():
    t = torch.tensor([0, 1, 17, 63])
    half = 16
    freqs = [math.exp(-math.log(10000) * k / (half - 1)) for k in range(half)]
    expected = torch.tensor([[math.sin(s * f) for f in freqs] + [math.cos(s * f) for f in freqs] for s in t.tolist()])
    torch.testing.assert_close(SinusoidalTimeEmbedding(32)(t), expected)


def _to_diffusers_name(name: str) -> str:
    """Our parameter names -> diffusers' UNet1DModel names for the same Janner blocks."""
    rules = [
        (r"^time_mlp\.1\.", "time_mlp.linear_1."), (r"^time_mlp\.3\.", "time_mlp.linear_2."),
        (r"^down\.(\d)\.res(\d)\.", lambda m: f"down_blocks.{m[1]}.resnets.{int(m[2]) - 1}."),
        (r"^down\.(\d)\.downsample\.", r"down_blocks.\1.downsample."),
        (r"^mid(\d)\.", lambda m: f"mid_block.resnets.{int(m[1]) - 1}."),
        (r"^up\.(\d)\.res(\d)\.", lambda m: f"up_blocks.{m[1]}.resnets.{int(m[2]) - 1}."),
        (r"^up\.(\d)\.upsample\.", r"up_blocks.\1.upsample."),
        (r"\.block1\.conv\.", ".conv_in.conv1d."), (r"\.block1\.norm\.", ".conv_in.group_norm."),
        (r"\.block2\.conv\.", ".conv_out.conv1d."), (r"\.block2\.norm\.", ".conv_out.group_norm."),
        (r"\.time_mlp\.1\.", ".time_emb."), (r"\.residual\.", ".residual_conv."),
        (r"^final_block\.conv\.", "out_block.final_conv1d_1."), (r"^final_block\.norm\.", "out_block.final_conv1d_gn."),
        (r"^final_conv\.", "out_block.final_conv1d_2."),
    ]
    for pattern, repl in rules:
        name = re.sub(pattern, repl, name)
    return name


def test_outputs_agree_with_diffusers_port_of_the_same_network(janner):
    """diffusers' UNet1DModel ports Janner's blocks; after a name mapping both compute the same function."""
    from diffusers import UNet1DModel

    ref = UNet1DModel(
        in_channels=6, out_channels=6, block_out_channels=(32, 128, 256), extra_in_channels=0,
        down_block_types=("DownResnetBlock1D",) * 3, up_block_types=("UpResnetBlock1D",) * 2,
        mid_block_type="MidResTemporalBlock1D", out_block_type="OutConv1DBlock", act_fn="mish",
        layers_per_block=1, norm_num_groups=8, time_embedding_type="positional", flip_sin_to_cos=False,
        freq_shift=1, use_timestep_embedding=True, downsample_each_block=False)
    ours = {_to_diffusers_name(k): v for k, v in janner.state_dict().items()}
    assert set(ours) == set(ref.state_dict())
    ref.load_state_dict(ours)
    x, t = torch.randn(3, 128, 6), torch.tensor([0, 7, 63])
    with torch.no_grad():
        expected = ref(x.transpose(1, 2), t).sample.transpose(1, 2)
        torch.testing.assert_close(janner(x, t), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("horizon", [0, 6, 130])
def test_horizon_must_be_multiple_of_four(horizon):
    with pytest.raises(ConfigError, match=f"horizon={horizon} must be a positive multiple of 4"):
        TemporalUnet(horizon, 6, dim=8)


def test_length_multiple_follows_depth():
    model = TemporalUnet(16, 6, dim=8, dim_mults=(1, 2, 2, 2))
    assert model.length_multiple == 8
    with pytest.raises(ConfigError, match="multiple of 8"):
        model(torch.randn(1, 12, 6), torch.zeros(1, dtype=torch.long))


def test_probe_sites_identical_for_every_norm():
    sites = {name: TemporalUnet(128, 6, dim=8, norm_layer=norm_factory(name)).probe_sites() for name in NORM_LAYERS}
    reference = sites["group"]
    assert all(s == reference for s in sites.values())
    assert len(reference) == len(set(reference)) == 37
    model = TemporalUnet(128, 6, dim=8, norm_layer=norm_factory("none"))
    modules = dict(model.named_modules())
    assert all(site in modules for site in reference)
    conv_blocks = [s for s in reference if s.endswith(("block1", "block2")) or s == "final_block"]
    assert all(is_norm(modules[f"{s}.norm"]) for s in conv_blocks)


def test_norm_sees_channels_first_without_reshape():
    model = TemporalUnet(32, 6, dim=8)
    seen = []
    handles = [m.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
               for m in model.modules() if is_norm(m)]
    model(torch.randn(2, 32, 6), torch.tensor([1, 2]))
    for h in handles:
        h.remove()
    assert seen and all(len(s) == 3 for s in seen)
    assert (2, 8, 32) in seen and (2, 64, 8) in seen


@pytest.mark.parametrize("name", sorted(NORM_LAYERS))
@pytest.mark.parametrize("horizon", [128, 256, 384])
def test_forward_backward_every_norm_and_horizon(name, horizon):
    """Shrunk width (dim 8) keeps the sweep fast; the full-size network is checked once below."""
    torch.manual_seed(0)
    model = TemporalUnet(horizon, 6, dim=8, norm_layer=norm_factory(name))
    x = torch.randn(2, horizon, 6, requires_grad=True)
    out = model(x, torch.tensor([0, 40]))
    assert out.shape == x.shape
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_full_size_forward_backward_at_largest_horizon():
    model = TemporalUnet(384, 6)
    x = torch.randn(1, 384, 6, requires_grad=True)
    model(x, torch.tensor([255])).sum().backward()
    assert torch.isfinite(x.grad).all()
