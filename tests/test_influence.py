"""Influence maps, per-site reach and condition leakage on small random U-Nets in float64.

The acceptance of the leak probe on the smallest networks that still have an interior: without a
time-pooling norm everything beyond the receptive field is exactly zero; with one it is not.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffnorm.analysis.influence import (
    Reach,
    beyond_band,
    beyond_fraction,
    blind_to,
    chain_leakage,
    condition_leakage,
    influence_map,
    interior_mask,
    offset_profile,
    sees_both_ends,
    site_receptive_fields,
)
from diffnorm.analysis.leak import default_dtype
from diffnorm.analysis.receptive_field import receptive_field
from diffnorm.diffusion.gaussian import GaussianDiffusion
from diffnorm.models.norms import norm_factory
from diffnorm.models.temporal_unet import TemporalUnet
from diffnorm.probing.hooks import record_activations
from diffnorm.probing.stats import localized_indices

H = 96
RF = (33, 32)  # dim_mults (1, 2), kernel 3 (the output block keeps kernel 5)
LOCAL = ["none", "channel", "batch"]  # batch: eval mode uses population statistics, a per-channel affine map
POOLING = ["group", "instance", "layer"]


pytestmark = pytest.mark.usefixtures("single_thread")


def unet(norm: str, horizon: int = H, seed: int = 0) -> TemporalUnet:
    torch.manual_seed(seed)
    kwargs = {"groups": 4} if norm == "group" else {}
    model = TemporalUnet(horizon, 6, dim=8, dim_mults=(1, 2), kernel_size=3, norm_layer=norm_factory(norm, **kwargs))
    if norm == "batch":  # non-trivial population statistics
        with torch.no_grad():
            model.train()(torch.randn(8, horizon, 6), torch.zeros(8, dtype=torch.long))
    return model.double().eval()


def inputs(n: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, H, 6, generator=g, dtype=torch.float64), torch.randint(0, 8, (n,), generator=g)


def test_small_unet_receptive_field():
    assert receptive_field(unet("group")) == RF


@pytest.mark.parametrize("norm", LOCAL + POOLING)
def test_influence_beyond_the_receptive_field(norm):
    model = unet(norm)
    x, t = inputs(1)
    rows = np.arange(0, H, 3)
    imap = influence_map(model, x, t, rows).numpy()
    outside = beyond_band(rows, H, *RF)
    assert imap[~outside].max() > 0
    if norm in LOCAL:
        assert imap[outside].max() <= 1e-12 and beyond_fraction(imap, outside) == 0.0
        # ... and the band is tight: the non-zero offsets span exactly [-left, right].
        offsets, profile = offset_profile(imap, rows)
        nonzero = offsets[np.nan_to_num(profile) > 0]
        assert (nonzero.min(), nonzero.max()) == (-RF[0], RF[1])
    else:
        assert (imap[outside] > 0).all() and beyond_fraction(imap, outside) > 1e-3


def test_influence_map_matches_a_loop_over_rows():
    model = unet("group")
    x, t = inputs(2)
    rows = [0, 17, 50, 95]
    fast = influence_map(model, x, t, rows, chunk_size=7)
    slow = torch.zeros(len(rows), H, dtype=torch.float64)
    for xi, ti in zip(x, t):
        jac = torch.autograd.functional.jacobian(lambda inp, ti=ti: model(inp[None], ti[None])[0], xi)  # [H, D, H, D]
        slow += jac[rows].abs().mean(dim=(1, 3))
    torch.testing.assert_close(fast, slow / 2)


def test_offset_profile_and_fraction_on_a_known_map():
    rows = np.array([0, 2])
    imap = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    offsets, profile = offset_profile(imap, rows)
    assert offsets.tolist() == [-2, -1, 0, 1, 2]
    np.testing.assert_allclose(profile, [4, 5, 3.5, 2, 3])  # offset 0: (1 + 6) / 2
    outside = beyond_band(rows, 3, 1, 0)  # allowed offsets -1, 0
    assert outside.tolist() == [[False, True, True], [True, False, False]]
    assert beyond_fraction(imap, outside) == pytest.approx((2 + 3 + 4) / 21)


def test_site_receptive_fields_grow_along_the_network_and_end_at_the_output():
    model = unet("group")
    sites = model.probe_sites()
    reaches = site_receptive_fields(model, sites)
    assert reaches["final_block"] == Reach(*RF, stride=1)
    assert reaches["down.0.res1.block1"] == Reach(1, 1, 1)  # one kernel-3 convolution
    assert {r.stride for r in reaches.values()} == {1, 2}
    assert all(r.left <= RF[0] and r.right <= RF[1] for r in reaches.values())
    # The reach of a stride-2 site matches autograd on a random (not positive) network without norms.
    plain = unet("none")
    x = torch.randn(1, 4 * H, 6, dtype=torch.float64, requires_grad=True)
    with record_activations(plain, ["mid1"], detach=False) as acts:
        plain(x, torch.zeros(1, dtype=torch.long))
    centre = acts["mid1"].shape[2] // 2
    lefts, rights = [], []
    for k in (centre, centre + 1):  # both phases of the stride
        (grad,) = torch.autograd.grad(acts["mid1"][0, :, k].sum(), x, retain_graph=True)
        hit = (grad[0].abs().sum(1) > 0).nonzero().flatten()
        lefts.append(2 * k - int(hit.min()))
        rights.append(int(hit.max()) - 2 * k)
    assert (max(lefts), max(rights)) == (reaches["mid1"].left, reaches["mid1"].right)


def test_which_indices_see_both_ends_of_the_published_horizons():
    """REFERENCE.md: with (147, 144) umaze sees the whole plan, medium only the middle, large nothing."""
    umaze, medium, large = (sees_both_ends(147, 144, h) for h in (128, 256, 384))
    assert umaze["count"] == 128 and (umaze["first"], umaze["last"]) == (0, 127)
    assert (medium["first"], medium["last"], medium["count"]) == (111, 147, 37)
    assert large["count"] == 0 and large["first"] is None


def test_interior_and_blind_masks():
    assert np.flatnonzero(interior_mask(12, Reach(2, 3, 1))).tolist() == [3, 4, 5, 6, 7]
    assert np.flatnonzero(interior_mask(12, Reach(2, 1, 2))).tolist() == [2, 3, 4]  # positions 4, 6, 8
    assert np.flatnonzero(blind_to(10, 9, left=2, right=3)).tolist() == [0, 1, 2, 3, 4, 5]
    assert np.flatnonzero(blind_to(10, 0, left=2, right=3)).tolist() == [3, 4, 5, 6, 7, 8, 9]


def test_localization_within_one_stride_phase():
    """A stride pattern (means 0, 1, 2, 3 repeating) is not position information; a ramp is."""
    rng = np.random.default_rng(0)
    noise = 0.1 * rng.standard_normal((400, 32))
    sawtooth = np.tile(np.arange(4.0), 8) + noise
    assert localized_indices(sawtooth).any()
    assert not localized_indices(sawtooth, period=4).any()
    ramp = np.arange(32.0) + noise
    assert localized_indices(ramp, period=4).all()


def diffusion_for(norm: str) -> GaussianDiffusion:
    return GaussianDiffusion(unet(norm), horizon=H, n_diffusion_steps=8).double()


def conditions(n: int = 3, seed: int = 2) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    conds = {0: torch.rand(n, 4, generator=g, dtype=torch.float64) * 2 - 1,
             H - 1: torch.rand(n, 4, generator=g, dtype=torch.float64) * 2 - 1}
    return conds, {**conds, H - 1: conds[H - 1].roll(1, dims=0)}


@pytest.mark.parametrize("norm", ["none", "channel", "group", "instance"])
def test_one_pass_condition_leakage(norm):
    diffusion = diffusion_for(norm)
    conds, changed = conditions()
    x, t = inputs(3)
    delta = condition_leakage(diffusion, x, t, conds, changed).numpy()
    blind = blind_to(H, H - 1, *RF)
    assert blind.sum() == H - 1 - RF[1] and delta[~blind].max() > 0
    if norm in LOCAL:
        assert delta[blind].max() <= 1e-12
    else:
        assert delta[blind].min() > 0


@pytest.mark.parametrize("norm", ["none", "group"])
def test_chain_leakage_separates_one_pass_from_iterative_spread(norm):
    diffusion = diffusion_for(norm)
    conds, changed = conditions(2)
    with default_dtype(torch.float64):
        chain = chain_leakage(diffusion, conds, changed, seed=0)
    per_step, blind = chain["per_step"].numpy(), blind_to(H, H - 1, *RF)
    assert per_step.shape == (8, H) and chain["plan"].shape == (H,)
    if norm == "none":
        assert per_step[0, blind].max() <= 1e-12  # the first pass cannot see the goal from there ...
        assert per_step[-1, blind].max() > 0      # ... but the chain carries it one RF per step
        changed_at = [np.flatnonzero(d > 0).min() for d in per_step]
        assert changed_at[0] == H - 1 - RF[1] and changed_at[1] < changed_at[0]
    else:
        assert per_step[0, blind].min() > 0


def test_probe_localization_finds_position_information_wherever_it_is():
    """Positive control for the probe counting: a site whose activations carry the index localizes its
    interior too; a site of stationary noise localizes (almost) nothing."""
    from diffnorm.probing.probes import localize_sites
    from diffnorm.toy.localization import ramp_target

    g = torch.Generator().manual_seed(0)

    def acts(n: int, length: int, ramp: bool) -> torch.Tensor:
        a = torch.randn(n, 4, length, generator=g)
        if ramp:
            a[:, 0] += 3 * torch.linspace(-1, 1, length)
        return a

    shapes = [(32, True), (32, False), (16, True)]
    train = [acts(64, length, ramp) for length, ramp in shapes]
    test = [acts(200, length, ramp) for length, ramp in shapes]
    masks = localize_sites(train, test, ramp_target, 0.05, steps=300, hidden=16, batch_size=256, lr=1e-2,
                           seed=0, periods=[4, 4, 2])
    interior = interior_mask(32, Reach(8, 8, 1))
    assert masks[0][interior].all() and masks[2].sum() >= 12
    assert masks[1].sum() <= 1
