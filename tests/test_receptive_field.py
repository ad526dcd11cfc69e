import pytest
import torch

from diffnorm.analysis.receptive_field import receptive_field, strip_norms
from diffnorm.models.norms import is_norm, norm_factory
from diffnorm.toy.localization import LocalizationCNN


def autograd_reach(model, length, index):
    """Support of d out[index] / d x for random float64 weights and inputs (union over draws)."""
    model = model.double()
    support = torch.zeros(length, dtype=torch.bool)
    for _ in range(3):
        x = torch.randn(1, 1, length, dtype=torch.float64, requires_grad=True)
        model(x)[0, 0, index].backward()
        support |= x.grad[0, 0] != 0
    hit = support.nonzero().flatten()
    return index - int(hit.min()), int(hit.max()) - index


@pytest.mark.parametrize("depth", [1, 2, 4, 7])
@pytest.mark.parametrize("kernel", [1, 3, 5, 9])
def test_receptive_field_matches_autograd(depth, kernel):
    torch.manual_seed(depth * 10 + kernel)
    model = LocalizationCNN(depth, kernel, hidden=16)
    length = 4 * depth * kernel + 8
    assert receptive_field(model) == autograd_reach(model, length, length // 2)
    assert receptive_field(model) == (depth * (kernel - 1) // 2,) * 2


def test_norms_are_stripped_before_measuring():
    model = LocalizationCNN(4, 5, 8, norm_factory("instance"))
    assert any(is_norm(m) for m in model.modules())
    assert not any(is_norm(m) for m in strip_norms(model).modules())
    assert any(is_norm(m) for m in model.modules()), "the original is left untouched"
    assert receptive_field(model) == (8, 8)
    assert receptive_field(model, length=64) == (8, 8)
