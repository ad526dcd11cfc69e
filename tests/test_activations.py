"""The one-exp Mish computes nn.Mish's function and gradient, including under torch.func transforms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import jacrev, vmap

from diffnorm.models.activations import Mish, mish

pytestmark = pytest.mark.usefixtures("single_thread")


def _exact(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x * torch.tanh(F.softplus(x))


def test_values_and_gradients_match_the_float64_definition_over_the_whole_range():
    x = torch.cat([torch.linspace(-120, 120, 48_001), torch.tensor([-1e30, 1e30, 0.0])])
    xg = x.clone().requires_grad_()
    y = mish(xg)
    y.sum().backward()
    ref_x = x.double().requires_grad_()
    _exact(ref_x).sum().backward()
    exact = _exact(x)
    err = (y.double() - exact).abs()
    assert err.max() <= 1.5e-6  # absolute; the largest errors are at negative x, where |y| is small
    big = exact.abs() >= 1e-2
    assert (err[big] / exact[big].abs()).max() <= 1e-4  # relative, wherever the value is not tiny
    assert (err[x >= -2] / exact[x >= -2].abs().clamp(min=1e-2)).max() <= 1e-6  # where activations live
    assert torch.isfinite(xg.grad).all()
    torch.testing.assert_close(xg.grad.double(), ref_x.grad, rtol=1e-5, atol=2e-6)


def test_gradcheck_in_float64():
    x = torch.randn(64, dtype=torch.float64) * 4
    assert torch.autograd.gradcheck(mish, (x.requires_grad_(),))


def test_jacrev_and_vmap_see_the_derivative():
    x = torch.randn(5, 7)
    jac = jacrev(mish)(x[0])
    ref = torch.autograd.functional.jacobian(F.mish, x[0])
    torch.testing.assert_close(jac, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(vmap(mish)(x), F.mish(x), rtol=1e-5, atol=1e-6)


def test_module_is_a_drop_in_for_nn_mish_and_half_precision_uses_aten():
    x = torch.randn(3, 8, 16)
    torch.testing.assert_close(Mish()(x), torch.nn.Mish()(x), rtol=1e-5, atol=1e-6)
    xb = x.bfloat16()
    assert torch.equal(Mish()(xb), F.mish(xb))
    assert not list(Mish().parameters())
