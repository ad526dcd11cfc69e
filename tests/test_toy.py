import numpy as np
import pytest
import torch

from diffnorm.models.norms import norm_factory
from diffnorm.probing.stats import localized_indices
from diffnorm.toy.localization import LocalizationCNN, predict, sample_inputs, train_localization
from diffnorm.toy.packnorm import PackNorm, TwoStreamCNN, overlapping_pair, pair_loss


def test_norm_free_cnn_is_exactly_translation_equivariant_in_the_interior():
    torch.manual_seed(0)
    depth, kernel, length, shift = 4, 5, 48, 5
    radius = depth * (kernel - 1) // 2
    model = LocalizationCNN(depth, kernel, 8).double()
    x = torch.randn(3, 1, length + shift, dtype=torch.float64)
    out_a = model(x[..., :length])[0:, 0]
    out_b = model(x[..., shift:])[0:, 0]
    # Output i of the shifted input is output i + shift of the original, away from the padding.
    interior = torch.arange(radius, length - radius - shift)
    assert (out_a[:, interior + shift] - out_b[:, interior]).abs().max() <= 1e-12


def test_instance_norm_reaches_beyond_the_receptive_field():
    torch.manual_seed(0)
    model = LocalizationCNN(2, 3, 4, norm_factory("instance")).double()
    x = torch.randn(1, 1, 32, dtype=torch.float64, requires_grad=True)
    model(x)[0, 0, 0].backward()
    assert x.grad[0, 0, 10:].abs().max() > 0  # r = 2, yet index 0 depends on index 31


@pytest.mark.parametrize("bad", [dict(depth=0), dict(kernel_size=4), dict(hidden=0)])
def test_bad_cnn_settings(bad):
    settings = dict(depth=2, kernel_size=3, hidden=4) | bad
    with pytest.raises(ValueError, match=next(iter(bad))):
        LocalizationCNN(**settings)


def test_short_training_reduces_loss_and_localizes_edges():
    torch.manual_seed(0)
    model = LocalizationCNN(2, 3, 8)
    losses = train_localization(model, 16, steps=300, lr=3e-3, batch_size=32, seed=0)
    assert np.mean(losses[-20:]) < 0.75 * np.mean(losses[:20])
    mask = localized_indices(predict(model, sample_inputs(400, 16, seed=1), 100))
    assert mask[0] and mask[-1]
    assert not mask[4:12].any(), "indices beyond r = 2 from both edges see only noise"


def test_packnorm_couples_streams_only_through_statistics():
    pack = PackNorm(3).double()
    x = torch.randn(4, 3, 10, dtype=torch.float64)
    y = pack(x)
    whole = torch.cat([x[:2], x[2:]], dim=-1)
    mean, std = whole.mean(-1, keepdim=True), whole.std(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(torch.cat([y[:2], y[2:]], -1), (whole - mean) / (std**2 + 1e-5).sqrt())


def test_overlap_construction_and_swap_symmetry():
    gen = torch.Generator().manual_seed(0)
    x1, x2 = overlapping_pair(3, 20, 6, gen)
    assert torch.equal(x2[..., :6], x1[..., -6:])
    assert not torch.equal(x2[..., 6:7], x1[..., :1])
    model = TwoStreamCNN(3, 3, 4)
    y1, y2 = model(x1, x2)
    assert y1.shape == (3, 1, 20 - 6)
    z2, z1 = model(x2, x1)  # swapping the streams swaps the outputs: the source of the MSE-1 floor
    torch.testing.assert_close(y1, z1)
    torch.testing.assert_close(y2, z2)
    assert pair_loss(model, x1, x2) > 0


@pytest.mark.parametrize("kind,settings", [("gaussian", {}), ("quantized", {"levels": 3}),
                                           ("periodic", {"period": 5}), ("constant", {})])
def test_input_kinds_have_the_structure_they_are_named_for(kind, settings):
    x = sample_inputs(500, 23, seed=0, inputs={"kind": kind, **settings})
    assert x.shape == (500, 1, 23)
    if kind == "gaussian":
        assert abs(float(x.std()) - 1) < 0.05 and x.unique().numel() == x.numel()
    if kind == "quantized":  # three equiprobable values spread over [-1, 1]
        values, counts = x.unique(return_counts=True)
        assert values.tolist() == [-1.0, 0.0, 1.0] and (counts / x.numel() - 1 / 3).abs().max() < 0.02
    if kind == "periodic":
        assert torch.equal(x[..., 5:], x[..., :-5]) and not torch.equal(x[..., 1:], x[..., :-1])
    if kind == "constant":
        assert torch.equal(x, x[..., :1].expand_as(x)) and x[:, 0, 0].std() > 0.5
    assert torch.equal(x, sample_inputs(500, 23, seed=0, inputs={"kind": kind, **settings}))


def test_unknown_input_kind_is_one_line_error():
    with pytest.raises(ValueError, match="inputs.kind='noise' is not one of gaussian"):
        sample_inputs(2, 8, seed=0, inputs={"kind": "noise"})


@pytest.mark.parametrize("kind,period", [("constant", 1), ("periodic", 3)])
def test_repeated_inputs_leave_a_norm_network_nothing_to_localize(kind, period):
    """Sec. 3.2: where the window an index sees repeats along the sequence, even InstanceNorm cannot tell
    the repeats apart, whatever its weights: predictions one period apart coincide away from the edges."""
    torch.manual_seed(0)
    depth, kernel, length = 2, 3, 30
    radius = depth * (kernel - 1) // 2
    inputs = {"kind": kind, "period": period}
    model = LocalizationCNN(depth, kernel, 8, norm_factory("instance"))
    preds = predict(model, sample_inputs(200, length, seed=1, inputs=inputs), 100)
    inner = preds[:, radius:length - radius]
    assert np.abs(inner).max() > 0
    np.testing.assert_allclose(inner[:, period:], inner[:, :-period], atol=1e-6)
    assert not localized_indices(preds, period=period)[radius:length - radius].any()
