"""The windowed GroupNorm (``local_group``) and the receptive field it widens."""

import pytest
import torch

from diffnorm.analysis.receptive_field import has_windowed_norms, receptive_field
from diffnorm.models.layout import is_time_major
from diffnorm.models.norms import norm_factory
from diffnorm.models.temporal_unet import TemporalUnet
from diffnorm.toy.localization import LocalizationCNN


def naive_local_group(x, window, groups, weight, bias, eps):
    """One position at a time: mean and (biased) variance over the group's channels and the window's steps."""
    b, c, t = x.shape
    half, per = window // 2, c // groups
    out = torch.empty_like(x)
    for i in range(t):
        lo, hi = max(0, i - half), min(t, i + half + 1)
        for g in range(groups):
            block = x[:, g * per:(g + 1) * per, lo:hi].reshape(b, -1)
            mean = block.mean(1, keepdim=True)
            var = block.var(1, unbiased=False, keepdim=True)
            out[:, g * per:(g + 1) * per, i] = (x[:, g * per:(g + 1) * per, i] - mean) / torch.sqrt(var + eps)
    return out * weight[:, None] + bias[:, None]


def _randomized(layer):
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    return layer


@pytest.mark.parametrize("window", [1, 3, 7, 15, 39])
@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("time_major", [False, True])
def test_equals_a_naive_loop_over_positions_in_float64(window, groups, time_major):
    torch.manual_seed(window + groups)
    layer = _randomized(norm_factory("local_group", window=window, groups=groups)(8)).double()
    x = torch.randn(3, 8, 20, dtype=torch.float64) * 2 + 1
    if time_major:
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    expected = naive_local_group(x, window, groups, layer.weight, layer.bias, layer.eps)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_a_window_covering_the_sequence_is_group(dtype, tol):
    torch.manual_seed(0)
    length = 32
    local = _randomized(norm_factory("local_group", window=2 * length - 1, groups=8)(16)).to(dtype)
    group = norm_factory("group", groups=8)(16).to(dtype)
    group.load_state_dict(local.state_dict())
    x = torch.randn(4, 16, length, dtype=dtype) * 3 - 2
    torch.testing.assert_close(local(x), group(x), rtol=tol, atol=tol)
    # One step shorter and the first position no longer sees the last one.
    shorter = norm_factory("local_group", window=2 * length - 3, groups=8)(16).to(dtype)
    assert not torch.allclose(shorter(x), group(x), rtol=tol, atol=tol)


def test_window_one_with_one_group_is_channel():
    torch.manual_seed(1)
    local = _randomized(norm_factory("local_group", window=1, groups=1)(16)).double()
    channel = norm_factory("channel")(16).double()
    channel.load_state_dict(local.state_dict())
    x = torch.randn(2, 16, 24, dtype=torch.float64)
    torch.testing.assert_close(local(x), channel(x), rtol=1e-12, atol=1e-12)


def test_keeps_a_time_major_input_time_major():
    x = torch.randn(2, 16, 12).transpose(1, 2).contiguous().transpose(1, 2)
    assert is_time_major(norm_factory("local_group", window=5)(16)(x))


@pytest.mark.parametrize("window", [0, -3, 4, 2.0, True])
def test_a_window_that_is_not_odd_and_positive_is_refused(window):
    with pytest.raises(ValueError, match=r"^norm.window=.* must be an odd positive number of time steps"):
        norm_factory("local_group", window=window)(16)


def test_groups_must_divide_channels():
    with pytest.raises(ValueError, match="norm.groups=3"):
        norm_factory("local_group", window=3, groups=3)(16)


def support(model, x_shape, index, axis, draws=3):
    """Input steps with a non-zero gradient of output ``index`` (union over random float64 inputs)."""
    hit = torch.zeros(x_shape[axis], dtype=torch.bool)
    for seed in range(draws):
        torch.manual_seed(seed)
        x = torch.randn(x_shape, dtype=torch.float64, requires_grad=True)
        out = model(x) if axis == 2 else model(x, torch.tensor([7]))
        out.select(axis, index).sum().backward()
        dims = [d for d in range(x.dim()) if d != axis]
        hit |= x.grad.abs().sum(dim=dims) != 0
    return hit


@pytest.mark.parametrize("window", [1, 3, 5, 9])
def test_receptive_field_with_windows_matches_autograd_on_a_plain_cnn(window):
    torch.manual_seed(window)
    depth, kernel = 4, 5
    model = LocalizationCNN(depth, kernel, hidden=16, norm_layer=norm_factory("local_group", window=window)).double()
    left, right = receptive_field(model, with_norms=True)
    # depth convolutions, and a norm after each but the last (the head)
    assert (left, right) == (depth * (kernel // 2) + (depth - 1) * (window // 2),) * 2
    assert receptive_field(model) == (depth * (kernel - 1) // 2,) * 2  # the conv-only yardstick is unchanged
    length = 2 * (left + right) + 16
    centre = length // 2
    hit = support(model, (1, 1, length), centre, axis=2)
    reached = hit.nonzero().flatten()
    assert (centre - int(reached.min()), int(reached.max()) - centre) == (left, right)


@pytest.mark.parametrize("window", [1, 3, 7])
def test_no_influence_outside_the_computed_receptive_field_of_a_unet(window):
    torch.manual_seed(window)
    # Two groups of 4 channels at width 8: one channel per group and a window of one step would normalize
    # single numbers to 0 and cut every path.
    norm = norm_factory("local_group", window=window, groups=2)
    net = TemporalUnet(128, 6, dim=8, dim_mults=(1, 2), norm_layer=norm).double()
    left, right = receptive_field(net, with_norms=True)
    assert has_windowed_norms(net) == (window > 1)
    assert left >= 61 and right >= 60 and (left > 61) == (window > 1)  # the conv-only reach is 61 / 60
    length = 2 * max(left, right) + 32
    steps, widest = torch.arange(length), [0, 0]
    for index in range(length // 2 - 2, length // 2 + 2):  # both stride phases of the two-level U-Net
        hit = support(net, (1, length, 6), index, axis=1, draws=1)
        assert not hit[(steps < index - left) | (steps > index + right)].any(), index
        reached = hit.nonzero().flatten()
        widest = [max(widest[0], index - int(reached.min())), max(widest[1], int(reached.max()) - index)]
    assert tuple(widest) == (left, right)  # the bound is attained: the computed reach is exact


def test_norms_without_a_window_have_no_receptive_field_with_norms():
    net = TemporalUnet(32, 6, dim=8, norm_layer=norm_factory("group"))
    with pytest.raises(ValueError, match="pools over the whole sequence"):
        receptive_field(net, with_norms=True)
    assert receptive_field(TemporalUnet(32, 6, dim=8, norm_layer=norm_factory("none")), with_norms=True) \
        == receptive_field(net)
