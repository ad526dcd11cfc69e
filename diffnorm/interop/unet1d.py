"""Weights both ways between diffnorm's ``TemporalUnet`` and Hugging Face diffusers' ``UNet1DModel``.

diffusers ports the Diffuser (Janner et al. 2022, "Planning with Diffusion for Flexible Behavior
Synthesis"; the value-guided planning pipeline) as a ``UNet1DModel`` made of ``DownResnetBlock1D``,
``MidResTemporalBlock1D``, ``UpResnetBlock1D`` and ``OutConv1DBlock`` (diffusers ``models/unets/unet_1d.py``,
``models/unets/unet_1d_blocks.py``), built from ``ResidualTemporalBlock1D`` / ``Conv1dBlock``
(``models/resnet.py``), ``Downsample1D`` / ``Upsample1D`` and the ``Timesteps`` + ``TimestepEmbedding`` time
MLP (``models/embeddings.py``). That layout is the same network as ``TemporalUnet`` with ``norm=group``;
the code here was written from reading those files (diffusers 0.42.1), none of it is copied.

The settings that make the two compute the same function (``unet1d_config``), and why:

* ``time_embedding_type="positional"``, ``use_timestep_embedding=True``, ``act_fn="mish"``: sinusoid ->
  Linear(dim, 4 dim) -> Mish -> Linear(4 dim, dim), as ``TemporalUnet.time_mlp``.
* ``flip_sin_to_cos=False`` (UNet1DModel's default is True) and ``freq_shift=1`` (default 0): diffusers'
  frequencies are exp(-ln(10000) i / (half - freq_shift)) and its order is sin, cos unless flipped;
  ``SinusoidalTimeEmbedding`` divides by half - 1 and puts sines first.
* ``layers_per_block=1``: diffusers' 1-D resnet blocks always add one residual block before the
  ``num_layers`` more, so 1 gives the Diffuser's two per level (and two in the middle).
* ``norm_num_groups=8``: it reaches only the output block's GroupNorm. Every residual block's
  ``Conv1dBlock`` uses its default ``n_groups=8`` (and kernel 5), which ``UNet1DModel`` never passes on,
  so only a TemporalUnet with 8 groups and kernel 5 has a UNet1DModel twin.
* Skips: each ``DownResnetBlock1D`` returns its pre-downsample output, and ``UNet1DModel.forward`` hands
  the up blocks the last one each (``down_block_res_samples[-1:]``); with one up block fewer than down
  blocks the shallowest skip is left over, exactly as in diffnorm and the original (never consumed).

Conventions differ only at the boundary: ``TemporalUnet(x [B, H, D], t [B]) -> [B, H, D]`` is time-second,
``UNet1DModel(sample [B, D, H], timestep [B]).sample -> [B, D, H]`` channels-first, so
``unet(x.transpose(1, 2), t).sample.transpose(1, 2)`` equals ``model(x, t)``.

One numerical difference remains and is not a mapping matter: diffusers computes the sinusoid in float32
whatever the model's dtype (``get_timestep_embedding`` casts the steps with ``.float()``), diffnorm in the
model's dtype. In float32 the two embeddings are bitwise equal; in float64 they differ by float32
rounding (1e-7 relative to the angle, so up to ~1e-5 at t = 1000), and so do the outputs for t > 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
from diffusers import UNet1DModel
from torch import nn

from diffnorm.errors import ConfigError
from diffnorm.models.blocks import Conv1dBlock
from diffnorm.models.norms import NORM_LAYERS, GroupNorm, norm_factory
from diffnorm.models.temporal_unet import TemporalUnet

# Fixed inside diffusers' ResidualTemporalBlock1D / Conv1dBlock (models/resnet.py defaults) and nn.GroupNorm.
KERNEL_SIZE = 5
GROUPS = 8
EPS = 1e-5

DOWN_BLOCK, UP_BLOCK = "DownResnetBlock1D", "UpResnetBlock1D"
MID_BLOCK, OUT_BLOCK = "MidResTemporalBlock1D", "OutConv1DBlock"

# Settings of a Diffuser-layout UNet1DModel that do not depend on the widths (see the module docstring).
_FIXED = {
    "mid_block_type": MID_BLOCK,
    "out_block_type": OUT_BLOCK,
    "layers_per_block": 1,
    "time_embedding_type": "positional",
    "use_timestep_embedding": True,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "act_fn": "mish",
    "norm_num_groups": GROUPS,
    "extra_in_channels": 0,
    "downsample_each_block": False,
}

# (diffnorm, diffusers) module names inside one ResidualTemporalBlock / ResidualTemporalBlock1D.
_RESIDUAL = (
    ("block1.conv", "conv_in.conv1d"),
    ("block1.norm", "conv_in.group_norm"),
    ("time_mlp.1", "time_emb"),
    ("block2.conv", "conv_out.conv1d"),
    ("block2.norm", "conv_out.group_norm"),
    ("residual", "residual_conv"),  # a 1x1 conv only where the block changes width (Identity otherwise)
)


def unet1d_config(block_out_channels: Sequence[int], transition_dim: int, sample_size: int = 128) -> dict:
    """Keyword arguments of the ``UNet1DModel`` that computes ``TemporalUnet`` (norm=group, 8 groups).

    ``block_out_channels`` = dim * dim_mults (the Diffuser's maze2d network: (32, 128, 256)); ``transition_dim``
    = D, the input and output channels; ``sample_size`` is only recorded (diffusers uses it nowhere in
    ``forward``); ``to_diffusers`` writes the TemporalUnet's horizon there.
    """
    depth = len(block_out_channels)
    return {
        "sample_size": int(sample_size),
        "in_channels": int(transition_dim),
        "out_channels": int(transition_dim),
        "block_out_channels": tuple(int(c) for c in block_out_channels),
        "down_block_types": (DOWN_BLOCK,) * depth,
        "up_block_types": (UP_BLOCK,) * (depth - 1),  # the shallowest level gets no up block (no skip use)
        **_FIXED,
    }


def parameter_pairs(depth: int) -> Iterator[tuple[str, str]]:
    """(diffnorm name, diffusers name) of every parameter of a ``depth``-level network, in forward order.

    The one name mapping, used by both ``to_diffusers`` and ``from_diffusers``. ``depth`` = len(dim_mults)
    = len(block_out_channels). The names of the 1x1 residual convolutions are yielded for every residual
    block; a network has them only where a block changes width, and the converters skip the pairs whose
    source name is absent (then load the target strictly, so a missing or extra tensor still fails).
    """
    if depth < 2:
        raise ValueError(f"depth={depth}: the Diffuser's U-Net has at least two levels")

    def weight_and_bias(ours: str, theirs: str) -> Iterator[tuple[str, str]]:
        yield f"{ours}.weight", f"{theirs}.weight"
        yield f"{ours}.bias", f"{theirs}.bias"

    def residual(ours: str, theirs: str) -> Iterator[tuple[str, str]]:
        for a, b in _RESIDUAL:
            yield from weight_and_bias(f"{ours}.{a}", f"{theirs}.{b}")

    # time_mlp: diffnorm's Sequential(sinusoid, Linear, Mish, Linear) vs diffusers' TimestepEmbedding.
    yield from weight_and_bias("time_mlp.1", "time_mlp.linear_1")
    yield from weight_and_bias("time_mlp.3", "time_mlp.linear_2")
    for i in range(depth):
        yield from residual(f"down.{i}.res1", f"down_blocks.{i}.resnets.0")
        yield from residual(f"down.{i}.res2", f"down_blocks.{i}.resnets.1")
        if i < depth - 1:  # the deepest level does not downsample in either
            yield from weight_and_bias(f"down.{i}.downsample.conv", f"down_blocks.{i}.downsample.conv")
    yield from residual("mid1", "mid_block.resnets.0")
    yield from residual("mid2", "mid_block.resnets.1")
    for j in range(depth - 1):  # deepest first in both
        yield from residual(f"up.{j}.res1", f"up_blocks.{j}.resnets.0")
        yield from residual(f"up.{j}.res2", f"up_blocks.{j}.resnets.1")
        yield from weight_and_bias(f"up.{j}.upsample.conv", f"up_blocks.{j}.upsample.conv")
    yield from weight_and_bias("final_block.conv", "out_block.final_conv1d_1")
    yield from weight_and_bias("final_block.norm", "out_block.final_conv1d_gn")
    yield from weight_and_bias("final_conv", "out_block.final_conv1d_2")


def _load(target: nn.Module, source: Mapping[str, torch.Tensor], pairs: Iterable[tuple[str, str]]) -> None:
    """Copy ``source`` into ``target`` under the mapped names (a copy: the two share no storage)."""
    pairs = list(pairs)
    renamed = {dst: source[src] for src, dst in pairs if src in source}
    unknown = sorted(set(source) - {src for src, _ in pairs})
    if unknown:  # a tensor the mapping does not know: the layout checks let a network through they should not
        raise RuntimeError(f"no diffnorm<->diffusers name for {unknown[:5]} ({len(unknown)} tensors)")
    target.load_state_dict(renamed, strict=True)


def _norm_name(norm: nn.Module) -> str:
    names = {builder: name for name, builder in NORM_LAYERS.items()}
    name = names.get(type(norm))
    return f"'{name}' ({type(norm).__name__})" if name else type(norm).__name__


def _check_norms(model: TemporalUnet) -> None:
    """Every norm slot must be the registry's GroupNorm with diffusers' fixed 8 groups and eps."""
    norms = [m.norm for m in model.modules() if isinstance(m, Conv1dBlock)]
    other = sorted({_norm_name(n) for n in norms if type(n) is not GroupNorm})
    if other:
        raise ConfigError(f"UNet1DModel hard-codes GroupNorm({GROUPS} groups) in every block (diffusers "
                          f"models/resnet.py Conv1dBlock); this model's norm is {', '.join(other)}: "
                          "only norm=group converts")
    groups = sorted({n.num_groups for n in norms})
    if groups != [GROUPS]:
        raise ConfigError(f"UNet1DModel hard-codes GroupNorm with {GROUPS} groups in its residual blocks "
                          f"(norm_num_groups reaches only the output block); this model's GroupNorm has "
                          f"{groups} groups")
    if any(n.eps != EPS or not n.affine for n in norms):
        raise ConfigError(f"UNet1DModel's GroupNorm is affine with eps={EPS}; this model's differs")


def to_diffusers(model: TemporalUnet) -> UNet1DModel:
    """The ``UNet1DModel`` that computes ``model``: same weights (copied), dtype, device and train/eval mode.

    ``model``: a TemporalUnet with norm=group (8 groups, the default), kernel 5 and dim_mults[0] = 1 (any
    dim and depth otherwise); the result has block_out_channels = dim * dim_mults, sample_size = horizon
    and the settings of ``unet1d_config``, and ``save_pretrained`` works on it (``from_pretrained`` loads
    float32 unless given ``torch_dtype``, whatever dtype was saved). Shapes: where
    ``model(x [B, H, D], t [B])`` is [B, H, D], ``result(x.transpose(1, 2), t).sample`` is [B, D, H] and
    equal to its transpose (float64: up to diffusers' float32 time sinusoid, see the module docstring).

    Raises ``ConfigError`` (a ``ValueError``) in one line: for anything but a TemporalUnet, for a norm other
    than the registry's GroupNorm with 8 groups (UNet1DModel hard-codes it), for a kernel other than 5.
    """
    if not isinstance(model, TemporalUnet):
        raise ConfigError(f"to_diffusers converts a TemporalUnet (the Diffuser's U-Net); got {type(model).__name__}, "
                          "which UNet1DModel's block layout cannot express")
    _check_norms(model)
    kernel = model.down[0].res1.block1.conv.kernel_size[0]
    if kernel != KERNEL_SIZE:
        raise ConfigError(f"UNet1DModel's residual blocks hard-code kernel {KERNEL_SIZE}; this model has "
                          f"kernel_size={kernel}")
    widths = [level.res1.block1.conv.out_channels for level in model.down]
    dim = model.time_mlp[1].in_features
    if widths[0] != dim:  # UNet1DModel's time embedding and output block run at block_out_channels[0]
        raise ConfigError(f"dim_mults must start at 1 (first level {widths[0]} channels vs dim={dim})")

    unet = UNet1DModel(**unet1d_config(widths, model.transition_dim, sample_size=model.horizon))
    reference = model.time_mlp[1].weight
    # Cast before loading (load_state_dict casts to the target's dtype). nn.Module.to, not ModelMixin.to:
    # the latter only adds quantization/offloading checks that a fresh model passes, and a warning about
    # float32-kept modules that it logs on every dtype cast even though UNet1DModel keeps none.
    nn.Module.to(unet, device=reference.device, dtype=reference.dtype)
    _load(unet, model.state_dict(), parameter_pairs(len(widths)))
    return unet.train(model.training)


def _layout_problems(config: Mapping) -> list[str]:
    """What in a UNet1DModel config differs from the Diffuser's layout, as 'key=found (needs needed)'."""
    widths = tuple(config["block_out_channels"])
    needed = unet1d_config(widths, config["in_channels"])
    needed["out_channels"] = config["in_channels"]
    keys = ["down_block_types", "up_block_types", "mid_block_type", "out_block_type", *_FIXED, "out_channels"]
    problems = []
    for key in dict.fromkeys(keys):  # block types first, each once
        found = config.get(key)
        found = tuple(found) if isinstance(found, list | tuple) else found
        if found != needed[key]:
            problems.append(f"{key}={found!r} (needs {needed[key]!r})")
    dim = widths[0] if widths else 0
    if len(widths) < 2 or dim < 1 or any(w % dim for w in widths):
        problems.append(f"block_out_channels={widths} (needs at least two, each a multiple of the first)")
    return problems


def from_diffusers(unet: UNet1DModel, *, horizon: int = 128) -> TemporalUnet:
    """The ``TemporalUnet`` that computes ``unet``: norm=group (8 groups), weights copied, dtype, device, mode kept.

    ``unet``: a UNet1DModel of the Diffuser's layout, i.e. ``unet1d_config``'s settings (DownResnetBlock1D
    at every level, one UpResnetBlock1D fewer, MidResTemporalBlock1D, OutConv1DBlock, layers_per_block=1,
    positional embedding with use_timestep_embedding=True, flip_sin_to_cos=False, freq_shift=1,
    act_fn="mish", norm_num_groups=8, in_channels = out_channels). The result has transition_dim =
    in_channels, dim = block_out_channels[0], dim_mults = block_out_channels / dim. Shapes: ``result(x [B, H, D],
    t [B])`` is [B, H, D] and equals ``unet(x.transpose(1, 2), t).sample.transpose(1, 2)`` (in float64 up to
    diffusers' float32 time sinusoid, see the module docstring).

    ``horizon`` (default 128, the maze2d-umaze plan length): UNet1DModel does not fix one (its sample_size
    is a recorded default, 65536 unless set; ``to_diffusers`` writes the horizon there, so pass
    ``horizon=unet.config.sample_size`` to get it back). TemporalUnet only validates and records it: the
    weights fit any length that is a multiple of 2 ** (depth - 1), and ``forward`` takes any such length.

    Raises ``ConfigError`` (a ``ValueError``) in one line naming the block types (and other settings)
    found and the ones needed, for any other layout; for a horizon that is not such a multiple.
    """
    if not isinstance(unet, UNet1DModel):
        raise ConfigError(f"from_diffusers converts a diffusers UNet1DModel; got {type(unet).__name__}")
    problems = _layout_problems(unet.config)
    if problems:
        raise ConfigError("UNet1DModel is not of the Diffuser's layout (Janner et al. 2022): " + "; ".join(problems))
    widths = tuple(unet.config.block_out_channels)
    dim = widths[0]
    model = TemporalUnet(horizon, unet.config.in_channels, dim=dim, dim_mults=[w // dim for w in widths],
                         kernel_size=KERNEL_SIZE, norm_layer=norm_factory("group", groups=GROUPS, eps=EPS))
    reference = unet.time_mlp.linear_1.weight
    model.to(device=reference.device, dtype=reference.dtype)
    _load(model, unet.state_dict(), ((ours, theirs) for theirs, ours in parameter_pairs(len(widths))))
    return model.train(unet.training)
