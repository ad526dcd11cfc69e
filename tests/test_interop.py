"""TemporalUnet <-> diffusers' UNet1DModel (diffnorm.interop): same function, exact round trips, refusals."""

import copy

import pytest
import torch
from diffusers import UNet1DModel
from torch import nn

from diffnorm.interop import from_diffusers, to_diffusers
from diffnorm.interop.unet1d import parameter_pairs, unet1d_config
from diffnorm.models.eqnet import EqNet
from diffnorm.models.norms import NORM_LAYERS, norm_factory
from diffnorm.models.temporal_unet import TemporalUnet

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = torch.tensor([0, 1, 17, 255, 999])  # one diffusion step per batch element
SMALL = {"dim": 8, "dim_mults": (1, 4, 8)}  # the published layout at a quarter of the width
SMALL_WIDTHS = (8, 32, 64)
D = 6  # maze2d transition_dim


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Every parameter (GroupNorm affine included) drawn from randn: none keeps its init value, so a
    misplaced tensor cannot hide behind a default (ones, zeros or a shared init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def small_unet(horizon: int = 128, **changes) -> UNet1DModel:
    return UNet1DModel(**{**unet1d_config(SMALL_WIDTHS, D, sample_size=horizon), **changes})


def run_diffusers(unet: UNet1DModel, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """diffusers is channels-first: sample [B, D, H] -> .sample [B, D, H]; back to diffnorm's [B, H, D]."""
    return unet(x.transpose(1, 2), t).sample.transpose(1, 2)


class Float32Sinusoid(nn.Module):
    """diffnorm's sinusoid computed the way diffusers computes it in any dtype: in float32, then cast
    (``get_timestep_embedding`` casts the steps with ``.float()``). Same frequencies, same sin-then-cos."""

    def __init__(self, freqs: torch.Tensor):
        super().__init__()
        self.freqs = freqs

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t.float()[:, None] * self.freqs.float()[None, :]
        return torch.cat((angles.sin(), angles.cos()), dim=-1).to(self.freqs.dtype)


def with_float32_sinusoid(model: TemporalUnet) -> TemporalUnet:
    pinned = copy.deepcopy(model)
    pinned.time_mlp[0] = Float32Sinusoid(model.time_mlp[0].freqs)
    return pinned


def assert_same_function(model: TemporalUnet, unet: UNet1DModel, horizon: int) -> None:
    assert next(unet.parameters()).dtype == next(model.parameters()).dtype == torch.float64
    x = torch.randn(len(STEPS), horizon, D, generator=torch.Generator().manual_seed(horizon), dtype=torch.float64)
    with torch.no_grad():
        theirs = run_diffusers(unet, x, STEPS)
        ours = with_float32_sinusoid(model)(x, STEPS)
        stock = model(x, STEPS)
    assert theirs.shape == ours.shape == (len(STEPS), horizon, D)
    # Same time embedding: the networks agree to float64 rounding at every step.
    assert (ours - theirs).abs().max().item() <= 1e-10
    # The stock model computes its sinusoid in float64: identical at t = 0 (sin 0, cos 0 are exact) ...
    assert (stock - theirs)[STEPS == 0].abs().max().item() <= 1e-10
    # ... and off by diffusers' float32 rounding of the angles elsewhere (measured ~1e-7 of the output scale).
    assert (stock - theirs).abs().max().item() <= 1e-5 * theirs.abs().max().item()


def assert_state_equal(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key, value in a.items():
        assert value.dtype == b[key].dtype and torch.equal(value, b[key]), key


def test_published_size_matches_temporal_unet():
    """The Diffuser's maze2d network: 3,682,118 parameters on both sides, the same sinusoid bitwise."""
    unet = UNet1DModel(**unet1d_config((32, 128, 256), D))
    model = TemporalUnet(128, D)
    assert n_params(unet) == n_params(model) == 3_682_118
    steps = torch.arange(1000)
    assert torch.equal(unet.time_proj(steps), model.time_mlp[0](steps))  # float32: no rounding difference

    config = to_diffusers(model).config
    assert {key: config[key] for key in ("in_channels", "out_channels", "block_out_channels", "down_block_types",
                                         "up_block_types", "mid_block_type", "out_block_type", "act_fn",
                                         "norm_num_groups", "time_embedding_type", "use_timestep_embedding",
                                         "layers_per_block", "flip_sin_to_cos", "freq_shift")} == {
        "in_channels": 6, "out_channels": 6, "block_out_channels": (32, 128, 256),
        "down_block_types": ("DownResnetBlock1D",) * 3, "up_block_types": ("UpResnetBlock1D",) * 2,
        "mid_block_type": "MidResTemporalBlock1D", "out_block_type": "OutConv1DBlock", "act_fn": "mish",
        "norm_num_groups": 8, "time_embedding_type": "positional", "use_timestep_embedding": True,
        "layers_per_block": 1, "flip_sin_to_cos": False, "freq_shift": 1}


def test_parameter_pairs_cover_both_state_dicts():
    pairs = list(parameter_pairs(3))
    model = TemporalUnet(128, D, **SMALL)
    unet = small_unet()
    present = [(a, b) for a, b in pairs if a in model.state_dict()]
    assert sorted(a for a, _ in present) == sorted(model.state_dict())
    assert sorted(b for _, b in present) == sorted(unet.state_dict())
    assert all((a in model.state_dict()) == (b in unet.state_dict()) for a, b in pairs)  # residual convs


@pytest.mark.parametrize("horizon", [128, 384])
def test_to_diffusers_computes_the_same_function(horizon):
    model = randomize(TemporalUnet(horizon, D, **SMALL).double(), seed=1)
    unet = to_diffusers(model)
    assert unet.config.sample_size == horizon
    assert_same_function(model, unet, horizon)


@pytest.mark.parametrize("horizon", [128, 384])
def test_from_diffusers_computes_the_same_function(horizon):
    unet = randomize(small_unet().double(), seed=2)
    model = from_diffusers(unet, horizon=horizon)
    assert model.horizon == horizon
    assert_same_function(model, unet, horizon)


@pytest.mark.parametrize("dim_mults", [(1, 4, 8), (1, 2), (1, 1, 2, 4)])
def test_round_trip_from_temporal_unet_is_exact(dim_mults):
    """(1, 1, 2, 4) has a width-keeping first block in a down level: no residual conv there."""
    model = randomize(TemporalUnet(64, D, dim=8, dim_mults=dim_mults).double(), seed=3)
    back = from_diffusers(to_diffusers(model), horizon=model.horizon)
    assert_state_equal(model.state_dict(), back.state_dict())
    assert back.horizon == model.horizon and back.training == model.training


def test_round_trip_from_unet1d_is_exact():
    unet = randomize(small_unet(horizon=256), seed=4).eval()
    back = to_diffusers(from_diffusers(unet, horizon=unet.config.sample_size))
    assert_state_equal(unet.state_dict(), back.state_dict())
    assert {k: v for k, v in back.config.items() if not k.startswith("_")} == {
        k: v for k, v in unet.config.items() if not k.startswith("_")}
    assert not back.training


def test_save_pretrained_then_from_pretrained_gives_the_same_outputs(tmp_path):
    model = randomize(TemporalUnet(128, D, **SMALL).double(), seed=5)
    unet = to_diffusers(model)
    unet.save_pretrained(tmp_path)
    # from_pretrained loads into float32 unless told otherwise, whatever dtype the file holds.
    loaded = UNet1DModel.from_pretrained(tmp_path, torch_dtype=torch.float64)
    assert_state_equal(loaded.state_dict(), unet.state_dict())
    assert_state_equal(from_diffusers(loaded).state_dict(), model.state_dict())
    x = torch.randn(len(STEPS), 128, D, dtype=torch.float64)
    with torch.no_grad():
        # Equal weights, yet not bitwise equal outputs: the loaded tensors sit at other memory alignments
        # (8 or 24 bytes mod 64 instead of 0), which sends the CPU kernels down other summation paths.
        assert (run_diffusers(loaded, x, STEPS) - run_diffusers(unet, x, STEPS)).abs().max().item() <= 1e-12


OTHER_NORMS = sorted(set(NORM_LAYERS) - {"group"})
NORM_SETTINGS = {"local_group": {"window": 3}}


@pytest.mark.parametrize("name", OTHER_NORMS)
def test_to_diffusers_refuses_other_norms(name):
    model = TemporalUnet(16, D, **SMALL, norm_layer=norm_factory(name, **NORM_SETTINGS.get(name, {})))
    with pytest.raises(ValueError, match="UNet1DModel hard-codes GroupNorm") as info:
        to_diffusers(model)
    assert "\n" not in str(info.value) and f"'{name}'" in str(info.value)


@pytest.mark.parametrize(("model", "match"), [
    (EqNet(16, D, dim=8, depth=2), "got EqNet"),
    (TemporalUnet(16, D, **SMALL, norm_layer=norm_factory("group", groups=4)), r"8 groups.*\[4\] groups"),
    (TemporalUnet(16, D, **SMALL, kernel_size=3), "kernel_size=3"),
    (TemporalUnet(16, D, dim=8, dim_mults=(2, 4)), "dim_mults must start at 1"),
], ids=["eqnet", "group4", "kernel3", "mults2"])
def test_to_diffusers_refuses_what_unet1d_cannot_express(model, match):
    with pytest.raises(ValueError, match=match) as info:
        to_diffusers(model)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("unet", "found", "needed"), [
    (UNet1DModel(), "DownBlock1DNoSkip", "DownResnetBlock1D"),  # diffusers' default: the dance-diffusion layout
    (small_unet(up_block_types=("UpResnetBlock1D", "UpBlock1D")), "UpBlock1D'", "UpResnetBlock1D"),
    (small_unet(flip_sin_to_cos=True), "flip_sin_to_cos=True", "needs False"),
    (small_unet(norm_num_groups=4), "norm_num_groups=4", "needs 8"),
], ids=["default", "up_block", "flip", "groups4"])
def test_from_diffusers_refuses_other_layouts(unet, found, needed):
    with pytest.raises(ValueError, match="not of the Diffuser's layout") as info:
        from_diffusers(unet)
    message = str(info.value)
    assert "\n" not in message and found in message and needed in message


def test_from_diffusers_refuses_other_inputs():
    with pytest.raises(ValueError, match="UNet1DModel; got TemporalUnet"):
        from_diffusers(TemporalUnet(16, D, **SMALL))
    with pytest.raises(ValueError, match="multiple of 4"):
        from_diffusers(small_unet(), horizon=130)
