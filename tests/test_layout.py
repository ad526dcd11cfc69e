"""Time-major layers compute exactly what nn.Conv1d, nn.ConvTranspose1d, torch.cat and the norms compute,
and keep activations time-major through the whole U-Net."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffnorm.models.layout import (
    TimeMajorConv1d,
    TimeMajorConvTranspose1d,
    as_image,
    cat_channels,
    is_time_major,
)
from diffnorm.models.norms import NORM_LAYERS, norm_factory
from diffnorm.models.temporal_unet import TemporalUnet

pytestmark = pytest.mark.usefixtures("single_thread")


def _time_major(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def test_layout_helpers():
    x = torch.randn(2, 3, 5)
    assert not is_time_major(x) and is_time_major(_time_major(x))
    tm = _time_major(x)
    assert as_image(tm).data_ptr() == tm.data_ptr()  # free for a time-major tensor
    torch.testing.assert_close(as_image(x).squeeze(2), x)
    y = torch.randn(2, 4, 5)
    both = cat_channels((tm, y))
    assert torch.equal(both, torch.cat((x, y), dim=1)) and is_time_major(both)


@pytest.mark.parametrize("c_in,c_out,kernel,stride,padding", [(3, 8, 5, 1, 2), (8, 8, 3, 2, 1), (6, 4, 1, 1, 0)])
@pytest.mark.parametrize("time_major_input", [False, True])
def test_conv_matches_nn_conv1d_forward_and_backward(c_in, c_out, kernel, stride, padding, time_major_input):
    torch.manual_seed(0)
    ref = nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=padding)
    ours = TimeMajorConv1d(c_in, c_out, kernel, stride=stride, padding=padding)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, c_in, 16)
    x_ours = (_time_major(x) if time_major_input else x.clone()).requires_grad_()
    x_ref = x.clone().requires_grad_()
    y_ours, y_ref = ours(x_ours), ref(x_ref)
    assert is_time_major(y_ours)
    torch.testing.assert_close(y_ours, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y_ref)
    y_ours.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-5)
    assert ours.weight.is_contiguous() and ours.weight.grad.is_contiguous()  # parameters keep torch's layout


def test_conv_refuses_padding_it_cannot_express_when_built():
    with pytest.raises(ValueError, match="integer zero padding only"):
        TimeMajorConv1d(4, 4, 3, padding=1, padding_mode="reflect")
    with pytest.raises(ValueError, match="integer zero padding only"):
        TimeMajorConv1d(4, 4, 3, padding="same")


def test_transposed_conv_matches_nn_conv_transpose1d():
    torch.manual_seed(0)
    ref = nn.ConvTranspose1d(8, 8, 4, stride=2, padding=1)
    ours = TimeMajorConvTranspose1d(8, 8, 4, stride=2, padding=1)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 8, 10, requires_grad=True)
    y_ours, y_ref = ours(_time_major(x.detach()).requires_grad_()), ref(x)
    assert y_ours.shape == (3, 8, 20) and is_time_major(y_ours)
    torch.testing.assert_close(y_ours, y_ref, rtol=1e-5, atol=1e-5)
    y_ours.square().sum().backward()
    y_ref.square().sum().backward()
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="output_size"):
        ours(x, output_size=[20])


@pytest.mark.parametrize("name", sorted(NORM_LAYERS))
def test_every_norm_gives_the_same_result_for_either_layout(name):
    torch.manual_seed(0)
    a, b = norm_factory(name)(16), norm_factory(name)(16)
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 16, 12)
    xa, xb = x.clone().requires_grad_(), _time_major(x).requires_grad_()
    ya, yb = a(xa), b(xb)
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
    assert is_time_major(yb)
    ya.square().sum().backward()
    yb.square().sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-5)
    for (key, va), vb in zip(a.state_dict().items(), b.state_dict().values()):  # BatchNorm's running stats
        torch.testing.assert_close(vb, va, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("name", ["group", "none", "channel", "batch"])
def test_unet_activations_stay_time_major(name):
    net = TemporalUnet(16, 6, dim=8, dim_mults=(1, 2, 2), norm_layer=norm_factory(name))
    seen = {}
    for site in net.probe_sites():
        net.get_submodule(site).register_forward_hook(lambda m, i, o, site=site: seen.__setitem__(site, o))
    y = net(torch.randn(2, 16, 6), torch.tensor([0, 3]))
    assert y.is_contiguous() and y.shape == (2, 16, 6)
    assert seen and all(is_time_major(out) for out in seen.values()), [s for s, o in seen.items() if not is_time_major(o)]
