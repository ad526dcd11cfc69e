from pathlib import Path

import pytest
import torch
import yaml

from diffnorm.models.norms import NORM_LAYERS, is_norm, norm_factory

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "norm"


def test_config_files_match_registry():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(NORM_LAYERS)


@pytest.mark.parametrize("name", sorted(NORM_LAYERS))
def test_every_norm_builds_from_its_config_and_runs_forward_backward(name):
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    assert cfg["name"] == name
    layer = norm_factory(**cfg)(16)
    assert is_norm(layer)
    x = torch.randn(4, 16, 10, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all()


def test_unknown_norm_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown norm 'grup'; choose one of \[.*'group'.*'none'"):
        norm_factory("grup")


def test_none_is_parameter_free_identity():
    layer = norm_factory("none")(8)
    x = torch.randn(2, 8, 5)
    assert not list(layer.parameters())
    assert torch.equal(layer(x), x)


def test_group_count_must_divide_channels():
    with pytest.raises(ValueError, match="groups=3"):
        norm_factory("group", groups=3)(8)


def _time_jacobian(layer, length=6, channels=8):
    """|d y[:, :, i] / d x[:, :, j]| summed over channels: [T, T]."""
    x = torch.randn(1, channels, length, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: layer(v), x)  # [1, C, T, 1, C, T]
    return jac.abs().sum(dim=(0, 1, 3, 4))


@pytest.mark.parametrize("name,leaks", [("none", False), ("channel", False), ("group", True),
                                        ("instance", True), ("layer", True)])
def test_which_norms_mix_time_steps(name, leaks):
    layer = norm_factory(name)(8).double()
    jac = _time_jacobian(layer)
    off_diagonal = jac - torch.diag(torch.diag(jac))
    assert (off_diagonal.max() > 1e-6) == leaks


def test_batchnorm_inference_statistics_choice():
    layer = norm_factory("batch", inference_stats="population")(4)
    for _ in range(20):
        layer(torch.randn(8, 4, 10) * 3 + 1)
    layer.eval()
    x = torch.randn(2, 4, 10)
    population = layer(x)
    layer.inference_stats = "minibatch"
    minibatch = layer(x)
    # Minibatch statistics standardize the batch itself; population statistics do not.
    assert minibatch.mean().abs() < 1e-5
    assert not torch.allclose(population, minibatch)
    with pytest.raises(ValueError, match="inference_stats"):
        norm_factory("batch", inference_stats="running")(4)
