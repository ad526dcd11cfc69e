"""The config schema of every job, checked in one place (``validate_config``) before any work starts.

Each top-level config in ``configs/`` has a dataclass here that lists its keys and their types; the YAML
files stay the only place defaults live, so a schema field is required (no default; a key missing from
the YAML is an error too) unless the code reads it as optional (``OmegaConf.select``). ``validate_config`` merges the resolved config into the schema
with OmegaConf, which rejects unknown keys and values of the wrong type, then runs the job's checks of
combinations no single type can express (a horizon the U-Net cannot halve, GroupNorm groups that do
not divide a width, batch statistics over a batch of one, ...). Every failure is a ``ConfigError`` with
one line that names the key, which ``run_job`` prints without a stack trace.

The ``norm`` node is checked against the registered layer's constructor, so a norm registered later
needs no schema entry: its keyword arguments are its keys.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from diffnorm.envs.maze2d import maze_names
from diffnorm.errors import ConfigError
from diffnorm.models.norms import NORM_LAYERS
from diffnorm.models.registry import model_settings
from diffnorm.toy.localization import check_inputs
from diffnorm.training.step import LR_SCHEDULES

log = logging.getLogger(__name__)

# Optional[...] instead of `X | None`: OmegaConf reads the annotations at runtime, also on Python 3.10.
# ruff: noqa: UP045


# ------------------------------------------------------------------------------------------- groups

@dataclass
class OgbenchEnvSchema:
    env: str
    episodes: int
    episode_steps: int
    data_seed: int
    controller: str
    # Not read: OGBench's follower replans by the stitching study's protocol. Kept so that runs saved when
    # the env config set it (32) still load and resume; it is not part of a run's identity.
    replan_every: Optional[int] = None


@dataclass
class EnvSchema:
    name: str
    horizon: int
    n_diffusion_steps: int
    max_episode_steps: int
    dataset_steps: int
    observation_dim: int  # maze2d: 4 (x, y, vx, vy); OGBench's point: 2 (x, y)
    # Optional key (read with OmegaConf.select): only OGBench's envs have it.
    ogbench: Optional[OgbenchEnvSchema] = None


@dataclass
class ModelSchema:
    """The union of the registered networks' settings (``models.registry``); each config sets its own."""
    name: str
    dim: int
    kernel_size: int
    dim_mults: Optional[list[int]] = None  # temporal_unet
    depth: Optional[int] = None  # eqnet
    kernel_growth_every: Optional[int] = None  # eqnet


@dataclass
class DiffusionSchema:
    observation_dim: int
    action_dim: int
    clip_denoised: bool
    sampler: str
    num_steps: Optional[int]


@dataclass
class TrainSchema:
    steps: int
    batch_size: int
    grad_accumulation: int
    lr: float
    ema_decay: float
    ema_every: int
    ema_start: int
    checkpoint_every: int
    sample_every: int
    n_samples: int
    log_every: int
    resume: bool
    bf16: bool
    compile: bool
    num_threads: Optional[int]
    progress: bool
    shards: int = 1  # CPU batch shards on threads (diffnorm.training.step)
    snapshot_every: int = 0  # EMA snapshots for learning curves; 0 = none
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    decay_steps: int = 0  # lr_schedule=wsd: the final steps of the linear decay to 0
    tensorboard: bool = False  # metrics.csv's scalars also as TensorBoard events in tensorboard/


@dataclass
class ProbeSchema:
    sites: Any  # "all" or a list of module names
    inputs: str
    t_fraction: float
    n_train: int
    n_test: int
    forward_batch: int
    steps: int
    hidden: int
    batch_size: int
    lr: float
    alpha: float


@dataclass
class InfluenceSchema:
    n_windows: int
    t_fractions: list[float]
    row_stride: int
    chunk_size: int


@dataclass
class LeakageSchema:
    conditions: list[str]
    n_windows: int
    t_fractions: list[float]
    chain_samples: int
    sampler: Optional[str]
    num_steps: Optional[int]


@dataclass
class ToyProbeSchema:
    n_train: int
    n_test: int
    steps: int
    hidden: int
    batch_size: int
    lr: float


@dataclass
class StitchDataSchema:
    episodes: int
    episode_steps: int
    travel_cells: Optional[int]


@dataclass
class OgbenchDataSchema:
    episodes: int
    episode_steps: int


@dataclass
class StitchStudyDataSchema:
    episodes: int
    episode_steps: Optional[int]
    seed: int


# --------------------------------------------------------------------------------------------- jobs

@dataclass
class TrainDiffuserSchema:
    env: EnvSchema
    norm: Any  # checked against the registered layer (``_check_norm``)
    model: ModelSchema
    diffusion: DiffusionSchema
    train: TrainSchema
    seed: int
    data_seed: int
    dataset: Optional[str]
    data_dir: str
    device: str
    dataset_frame: str = "auto"
    preset: str = "auto"  # the experiment= preset applied; auto = chosen by device (experiments.diffuser)


@dataclass
class PlanMazeSchema:
    checkpoint: Optional[str]
    mode: str
    episodes: int
    seed: int
    replan_every: Optional[int]
    replan_off_plan: Optional[float]
    max_steps: Optional[int]
    sampler: Optional[str]
    num_steps: Optional[int]
    device: str
    num_threads: Optional[int]
    plot_episodes: int
    progress: bool


@dataclass
class LearningCurveSchema:
    runs: list[str]
    labels: Any  # {run dir: label} or null: a mapping given whole on the command line replaces null
    mode: str
    episodes: int
    seed: int
    steps: Optional[list[int]]
    final_multi_episodes: int
    summary: Optional[str]
    preset: Optional[str]
    sampler: Optional[str]
    num_steps: Optional[int]
    device: str
    num_threads: int


@dataclass
class LeakProbeSchema:
    probe: ProbeSchema
    checkpoint: Optional[str]
    checkpoints: list[str]
    norms: list[str]
    train_overrides: list[str]
    horizon: Optional[int]
    horizons: list[int]
    seed: int
    dtype: str
    num_threads: int
    influence: InfluenceSchema
    leakage: LeakageSchema


@dataclass
class ToyInputsSchema:
    kind: str = "gaussian"
    levels: int = 2
    period: int = 4


@dataclass
class LocalizationSchema:
    norm: Any
    length: int
    depth: int
    kernel_size: int
    hidden: int
    lr: float
    batch_size: int
    accumulation: int
    steps: int
    seeds: list[int]
    alpha: float
    n_test: int
    eval_batch_size: int
    workers: int
    probe: Optional[ToyProbeSchema]
    inputs: ToyInputsSchema


@dataclass
class GroupnormGroupsSchema(LocalizationSchema):
    groups: list[int]
    lrs: list[float]
    n_test_more: Optional[int]


@dataclass
class BatchnormStatsSchema(LocalizationSchema):
    effective_batch: int
    batch_sizes: list[int]
    momentum: float


@dataclass
class LocalizationNormsSchema(LocalizationSchema):
    norms: list[str]
    norm_batch: int


@dataclass
class UninformativeInputsSchema(LocalizationSchema):
    input_kinds: list[ToyInputsSchema]


@dataclass
class ToyRunsSchema:
    localization: str
    packnorm_overlap: str
    groupnorm_groups: str
    batchnorm_stats: str
    localization_norms: str
    uninformative_inputs: str


@dataclass
class ToySummarySchema:
    runs: ToyRunsSchema
    summary: Optional[str]


@dataclass
class PacknormOverlapSchema:
    length: int
    depth: int
    kernel_size: int
    hidden: int
    lr: float
    batch_size: int
    steps: int
    overlaps: list[int]
    seeds: list[int]
    n_test: int
    workers: int


@dataclass
class ControllerBaselineSchema:
    mazes: list[str]
    episodes: int
    seed: int
    d4rl_persistent: bool
    plot_paths: int


@dataclass
class MakeMazeDatasetSchema:
    env: EnvSchema
    dataset: str
    steps: int
    stitch: StitchDataSchema
    ogbench: OgbenchDataSchema
    seed: int
    data_dir: str
    force: bool
    progress: bool
    plot_episodes: int


@dataclass
class StitchingStudySchema:
    env: EnvSchema  # the env config group: trainings are composed with the same option
    norms: list[str]
    # {arm name: [train_diffuser overrides]} or null: planners other than a norm swap (a windowed norm, another
    # network). Closed to new keys once composed, so it is given whole on the command line (arms={a: [...]}).
    arms: Any
    seeds: list[int]
    baseline: str
    workers: int
    train_overrides: list[str]
    stitch: StitchStudyDataSchema
    data_dir: str
    episodes_per_task: int
    max_steps: Optional[int]
    protocol: Optional[str]
    protocols: list[str]
    train_data: str
    eval_seed: int
    plot_tasks: int
    device: str


@dataclass
class StitchingAnswerSchema:
    # {key: run dir} or null. Typed or empty mappings are closed to new keys once Hydra composes, so a
    # mapping given whole on the command line (studies={a: dir}) can only replace a null.
    studies: Any
    leak_probes: Any
    baseline: str
    summary: Optional[str]


@dataclass
class ExportDiffusersSchema:
    checkpoint: Optional[str]  # required when the job runs
    seed: int
    leak: bool


@dataclass
class NormReachSchema:
    studies: Any  # {benchmark key: stitching_study run dir}; given whole on the command line
    leak_probes: Any  # {benchmark key: leak_probe run dir or list of them} or null
    summary: Optional[str]


@dataclass
class StudySchema:
    env: str
    norms: list[str]
    baseline: str
    seed: int
    workers: int
    toy_overrides: list[str]
    train_overrides: list[str]
    leak_overrides: list[str]
    plan_overrides: list[str]


# ------------------------------------------------------------------------------------- combinations

def _positive(cfg: dict, *keys: str) -> None:
    for key in keys:
        value = _get(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"{key}={value} must be positive")


def _get(cfg: dict, key: str) -> Any:
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def _one_of(cfg: dict, key: str, choices: tuple[Any, ...]) -> None:
    value = _get(cfg, key)
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of {list(choices)}")


def _check_model(model: dict) -> None:
    """``model.name`` is registered and every setting given is one of its network's."""
    try:
        accepted = model_settings(model["name"])
    except ValueError as err:
        raise ConfigError(f"model.name: {err}") from None
    for key, value in model.items():
        if key != "name" and value is not None and key not in accepted:
            raise ConfigError(f"model.{key} is not a setting of model {model['name']!r} (its settings: {accepted})")
    for key in ("dim_mults",) if model["name"] == "temporal_unet" else ():
        if model[key] is None:
            raise ConfigError(f"model.{key} is needed by model {model['name']!r}")
    for key in ("depth", "kernel_growth_every"):
        if model[key] is not None and model[key] < (1 if key == "depth" else 0):
            raise ConfigError(f"model.{key}={model[key]} must be {'positive' if key == 'depth' else '>= 0'}")


def _check_norm(norm: Any, channels: list[int]) -> None:
    """``norm`` must name a registered layer, with only its constructor's keyword arguments, and build
    for every width in ``channels`` (GroupNorm: groups divide each width)."""
    if not isinstance(norm, dict) or "name" not in norm:
        raise ConfigError(f"norm={norm!r} must be a mapping with a 'name' (e.g. norm=group)")
    name = norm["name"]
    if name not in NORM_LAYERS:
        raise ConfigError(f"norm.name={name!r} is unknown; choose one of {sorted(NORM_LAYERS)}")
    params = inspect.signature(NORM_LAYERS[name]).parameters
    accepted = [p for p in list(params)[1:] if params[p].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
                or params[p].kind is inspect.Parameter.KEYWORD_ONLY]
    for key, value in norm.items():
        if key == "name":
            continue
        if key not in accepted:
            raise ConfigError(f"norm.{key} is not a setting of norm {name!r} (its settings: {accepted})")
        default = params[key].default
        if default is not inspect.Parameter.empty and default is not None:
            kind = type(default)
            ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
            ok = ok or (kind is float and isinstance(value, int) and not isinstance(value, bool))
            if not ok:
                raise ConfigError(f"norm.{key}={value!r} has type {type(value).__name__}, expected {kind.__name__}")
    settings = {k: v for k, v in norm.items() if k != "name"}
    for width in sorted(set(channels)):
        try:
            NORM_LAYERS[name](width, **settings)
        except (TypeError, ValueError) as err:
            reason = " ".join(str(err).split())
            if "channels" not in reason:  # a setting wrong at any width (e.g. an even window)
                raise ConfigError(f"norm={name}: {reason}") from None
            raise ConfigError(f"norm={name} with {settings} cannot normalize {width} channels: {reason}") from None


def check_schedule(train: dict) -> None:
    """The learning-rate schedule's rules (``train_diffuser``'s train settings as a dict); a resumed run's
    are checked by the job once its saved config and the given settings are merged."""
    if train["lr_schedule"] == "wsd" and not 1 <= train["decay_steps"] <= train["steps"] - train["warmup_steps"]:
        raise ConfigError(f"train.lr_schedule=wsd needs 1 <= train.decay_steps <= train.steps - train.warmup_steps "
                          f"= {train['steps'] - train['warmup_steps']}, got {train['decay_steps']}")
    if train["lr_schedule"] != "wsd" and train["decay_steps"]:
        raise ConfigError(f"train.decay_steps={train['decay_steps']} is used only by train.lr_schedule=wsd "
                          f"(the schedule is {train['lr_schedule']})")


def _check_train_diffuser(cfg: dict) -> None:
    env, model, train, diffusion = cfg["env"], cfg["model"], cfg["train"], cfg["diffusion"]
    if env["name"] not in maze_names():
        raise ConfigError(f"env.name={env['name']!r} is not a known maze; choose one of {maze_names()}")
    _positive(cfg, "env.horizon", "env.n_diffusion_steps", "env.max_episode_steps", "env.dataset_steps", "model.dim",
              "model.kernel_size", "train.steps", "train.batch_size", "train.grad_accumulation", "train.ema_every",
              "train.checkpoint_every", "train.log_every", "train.n_samples", "train.num_threads",
              "diffusion.observation_dim", "diffusion.action_dim", "diffusion.num_steps")
    _check_model(model)
    _one_of(cfg, "diffusion.sampler", ("ddpm", "ddim", "dpm"))
    _one_of(cfg, "train.lr_schedule", LR_SCHEDULES)
    _one_of(cfg, "dataset_frame", ("auto", "diffnorm", "d4rl", "centred", "ogbench"))
    mults = model["dim_mults"] or [1]  # eqnet: one resolution
    if model["name"] == "temporal_unet":
        if len(mults) < 2 or min(mults) < 1:
            raise ConfigError(f"model.dim_mults={mults} needs at least two positive multipliers")
        multiple = 2 ** (len(mults) - 1)
        if env["horizon"] % multiple:
            raise ConfigError(f"env.horizon={env['horizon']} must be a positive multiple of {multiple} (the U-Net "
                              f"halves it {len(mults) - 1} times with model.dim_mults={mults})")
    if env["horizon"] > env["max_episode_steps"]:
        raise ConfigError(f"env.horizon={env['horizon']} is longer than an episode of {env['name']} "
                          f"(env.max_episode_steps={env['max_episode_steps']}): no plan could be followed to its end")
    if model["kernel_size"] % 2 == 0:
        raise ConfigError(f"model.kernel_size={model['kernel_size']} must be odd")
    if diffusion["num_steps"] is not None and diffusion["num_steps"] > env["n_diffusion_steps"]:
        raise ConfigError(f"diffusion.num_steps={diffusion['num_steps']} exceeds env.n_diffusion_steps="
                          f"{env['n_diffusion_steps']}")
    if not train["lr"] > 0:
        raise ConfigError(f"train.lr={train['lr']} must be positive")
    if not 0 <= train["ema_decay"] < 1:
        raise ConfigError(f"train.ema_decay={train['ema_decay']} must lie in [0, 1)")
    for key in ("train.sample_every", "train.snapshot_every", "train.ema_start", "train.warmup_steps",
                "train.decay_steps"):
        if _get(cfg, key) < 0:
            raise ConfigError(f"{key}={_get(cfg, key)} must be >= 0")
    # On resume the schedule is the run's saved one under the given settings: checked once they are merged.
    if not train["resume"]:
        check_schedule(train)
    if train["tensorboard"] and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("train.tensorboard=true needs the optional 'tensorboard' package: "
                          "pip install 'diffnorm[tensorboard]'")
    norm = cfg["norm"]
    if isinstance(norm, dict) and norm.get("name") == "batch" and train["batch_size"] < 2:
        raise ConfigError(f"norm=batch with train.batch_size={train['batch_size']}: batch statistics over a batch "
                          "of one are the sample's own statistics; use train.batch_size >= 2 or another norm")
    _check_norm(norm, [model["dim"] * m for m in mults] + [model["dim"]])


def _check_learning_curve(cfg: dict) -> None:
    _check_planning({**cfg, "replan_every": None, "replan_off_plan": None, "max_steps": None})
    if cfg["final_multi_episodes"] < 0:
        raise ConfigError(f"final_multi_episodes={cfg['final_multi_episodes']} must be >= 0 (0 = skip)")
    if cfg["summary"] is not None and cfg["mode"] != "single":
        raise ConfigError("summary= records single-task scores; run it with mode=single")


def _check_planning(cfg: dict) -> None:
    _one_of(cfg, "mode", ("single", "multi"))
    _positive(cfg, "episodes", "replan_every", "max_steps", "num_steps", "num_threads")
    if cfg["sampler"] is not None:
        _one_of(cfg, "sampler", ("ddpm", "ddim", "dpm"))


def _check_plan_maze(cfg: dict) -> None:
    _check_planning(cfg)  # checkpoint: required when the job runs; the shipped config leaves it to the user


def _check_toy_network(cfg: dict) -> None:
    """The toy CNN's settings: odd kernels, and a sequence long enough to have an interior beyond the
    receptive field (radius depth * (kernel_size - 1) / 2) from both edges."""
    _positive(cfg, "length", "depth", "hidden", "steps", "batch_size", "n_test", "workers")
    if cfg["kernel_size"] < 1 or cfg["kernel_size"] % 2 == 0:
        raise ConfigError(f"kernel_size={cfg['kernel_size']} must be odd and positive")


def _check_localization(cfg: dict) -> None:
    _check_toy_network(cfg)
    _positive(cfg, "accumulation")
    check_inputs(**cfg["inputs"])
    radius = cfg["depth"] * (cfg["kernel_size"] - 1) // 2
    if cfg["length"] <= 2 * radius:
        raise ConfigError(f"length={cfg['length']} must exceed twice the receptive field (2 x {radius}) so an "
                          "interior exists")
    if cfg["norm"].get("name") == "batch" and cfg["batch_size"] < 2:
        raise ConfigError(f"norm=batch with batch_size={cfg['batch_size']}: batch statistics need batch_size >= 2")
    _check_norm(cfg["norm"], [cfg["hidden"]])


def _check_groupnorm_groups(cfg: dict) -> None:
    _check_localization(cfg)
    for g in cfg["groups"]:
        if g < 1 or cfg["hidden"] % g:
            raise ConfigError(f"groups={g} must be a positive divisor of hidden={cfg['hidden']}")
    if cfg["n_test_more"] is not None and cfg["n_test_more"] <= cfg["n_test"]:
        raise ConfigError(f"n_test_more={cfg['n_test_more']} must exceed n_test={cfg['n_test']}")


def _check_batchnorm_stats(cfg: dict) -> None:
    _check_localization(cfg)
    for b in cfg["batch_sizes"]:
        if b < 1 or cfg["effective_batch"] % b:
            raise ConfigError(f"batch_sizes entry {b} must be a positive divisor of "
                              f"effective_batch={cfg['effective_batch']}")


def _check_localization_norms(cfg: dict) -> None:
    _check_localization(cfg)
    if cfg["norm_batch"] < 1 or cfg["batch_size"] % cfg["norm_batch"]:
        raise ConfigError(f"norm_batch={cfg['norm_batch']} must be a positive divisor of batch_size={cfg['batch_size']}")


def _check_uninformative_inputs(cfg: dict) -> None:
    _check_localization(cfg)
    for i, kind in enumerate(cfg["input_kinds"]):
        check_inputs(**kind, key=f"input_kinds[{i}]")


def _check_packnorm_overlap(cfg: dict) -> None:
    _check_toy_network(cfg)
    shrink = cfg["depth"] * (cfg["kernel_size"] - 1)
    if cfg["length"] <= shrink:
        raise ConfigError(f"length={cfg['length']} must exceed depth*(kernel_size-1)={shrink} (valid convolutions)")
    for o in cfg["overlaps"]:
        if not 0 <= o < cfg["length"]:
            raise ConfigError(f"overlaps entry {o} must lie in [0, length={cfg['length']})")


def _check_leak_probe(cfg: dict) -> None:
    _one_of(cfg, "dtype", ("float32", "float64"))
    _positive(cfg, "num_threads", "horizon", "influence.n_windows", "influence.row_stride", "leakage.chain_samples")
    if cfg["checkpoint"] is None and not cfg["checkpoints"] and not cfg["norms"]:
        raise ConfigError("give checkpoint=..., checkpoints=[...] or a non-empty norms=[...]")
    if cfg["checkpoint"] is not None and cfg["checkpoints"]:
        raise ConfigError("give checkpoint=<one run> or checkpoints=[<runs>], not both (add the one to the list)")
    _known_norms(cfg)
    leakage = cfg["leakage"]
    if leakage["n_windows"] < 2:
        raise ConfigError("leakage.n_windows must be at least 2 (changed conditions come from another window)")
    if not 1 <= leakage["chain_samples"] <= leakage["n_windows"]:
        raise ConfigError(f"leakage.chain_samples={leakage['chain_samples']} must lie in [1, leakage.n_windows]")


def _check_norm_comparison(cfg: dict) -> None:
    """A comparison of norms against a baseline: at least two distinct norms, the baseline among them."""
    norms = cfg["norms"]
    if len(norms) < 2 or len(set(norms)) != len(norms):
        raise ConfigError(f"norms={norms} needs at least two distinct norms")
    if cfg["baseline"] not in norms:
        raise ConfigError(f"baseline={cfg['baseline']} must be one of norms={norms}")


def _known_norms(cfg: dict) -> None:
    unknown = [n for n in cfg["norms"] if n not in NORM_LAYERS]
    if unknown:
        raise ConfigError(f"unknown norm(s) {unknown} in norms={cfg['norms']}; choose from {sorted(NORM_LAYERS)}")


# Keys a study sets for each training itself: naming them in an override would be silently overruled.
STUDY_SET_KEYS = ("env", "seed", "dataset", "data_dir")
ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def override_key(override: str) -> str:
    """The key an override sets: ``+train.steps=5`` -> ``train.steps``, ``norm=none`` -> ``norm``."""
    return override.split("=", 1)[0].lstrip("+~")


def study_arms(cfg: dict) -> dict[str, list[str]]:
    """The stitching study's arms, in order: each of ``norms`` (overrides ``norm=<name>``), then ``arms``."""
    arms = {n: [f"norm={n}"] for n in cfg["norms"]}
    arms.update({str(k): [str(o) for o in v] for k, v in (cfg.get("arms") or {}).items()})
    return arms


def _check_stitching_study(cfg: dict) -> None:
    _known_norms(cfg)
    extra = cfg.get("arms") or {}
    if not isinstance(extra, dict) or not all(isinstance(v, list) for v in extra.values()):
        raise ConfigError(f"arms={extra!r} must map each arm's name to a list of train_diffuser overrides, e.g. "
                          "arms={local_group_w9: ['norm=local_group','norm.window=9']}")
    for name, overrides in extra.items():
        if not ARM_NAME.fullmatch(str(name)) or name in cfg["norms"]:
            raise ConfigError(f"arms.{name}: an arm's name must be letters, digits, '_', '.' or '-' and differ from "
                              f"the norms {cfg['norms']}")
        for key in map(override_key, overrides):
            if key in STUDY_SET_KEYS:
                raise ConfigError(f"arms.{name}: {key}= is set by the study for every training; leave it out")
    for key in map(override_key, cfg["train_overrides"]):
        if key in STUDY_SET_KEYS or key.split(".")[0] == "norm":
            raise ConfigError(f"train_overrides: {key}= is set by the study for every training (norm by norms= "
                              "and arms=, env by env=, seed by seeds=); leave it out")
    names = list(study_arms(cfg))
    if len(names) < 2:
        raise ConfigError(f"norms={cfg['norms']} and arms={list(extra)} need at least two planners to compare")
    if cfg["baseline"] not in names:
        raise ConfigError(f"baseline={cfg['baseline']} must be one of the norms or arms {names}")
    if len(set(cfg["norms"])) != len(cfg["norms"]):
        raise ConfigError(f"norms={cfg['norms']} repeats a norm")
    seeds = cfg["seeds"]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds={seeds} must be distinct integers")
    if len(seeds) < 2:
        raise ConfigError(f"seeds={seeds}: the comparison across seeds needs at least two seeds")
    _positive(cfg, "episodes_per_task", "workers", "max_steps")
    _one_of(cfg, "train_data", ("stitch", "full"))


def _check_make_maze_dataset(cfg: dict) -> None:
    _one_of(cfg, "dataset", ("d4rl", "stitch", "ogbench"))
    if cfg["dataset"] == "d4rl" and cfg["steps"] < 1:
        raise ConfigError(f"steps={cfg['steps']} must be a positive integer")


def _check_controller_baseline(cfg: dict) -> None:
    _positive(cfg, "episodes")


class Job(NamedTuple):
    """A job: its config schema, the cross-field rules checked after composition, and the module of
    ``diffnorm.experiments`` that holds the function of the job's name (``job_function``)."""

    schema: type
    check: Callable[[dict], None] | None
    module: str


# Every job, keyed by its name: the name of its script, its YAML config and its function.
JOBS: dict[str, Job] = {
    "train_diffuser": Job(TrainDiffuserSchema, _check_train_diffuser, "diffuser"),
    "norm_reach": Job(NormReachSchema, None, "norm_reach"),
    "export_diffusers": Job(ExportDiffusersSchema, None, "export"),
    "plan_maze": Job(PlanMazeSchema, _check_plan_maze, "planning"),
    "learning_curve": Job(LearningCurveSchema, _check_learning_curve, "learning_curve"),
    "leak_probe": Job(LeakProbeSchema, _check_leak_probe, "leak_probe"),
    "localization": Job(LocalizationSchema, _check_localization, "toy"),
    "groupnorm_groups": Job(GroupnormGroupsSchema, _check_groupnorm_groups, "toy"),
    "batchnorm_stats": Job(BatchnormStatsSchema, _check_batchnorm_stats, "toy"),
    "localization_norms": Job(LocalizationNormsSchema, _check_localization_norms, "toy"),
    "uninformative_inputs": Job(UninformativeInputsSchema, _check_uninformative_inputs, "toy"),
    "toy_summary": Job(ToySummarySchema, None, "toy_summary"),
    "packnorm_overlap": Job(PacknormOverlapSchema, _check_packnorm_overlap, "toy"),
    "controller_baseline": Job(ControllerBaselineSchema, _check_controller_baseline, "maze_data"),
    "make_maze_dataset": Job(MakeMazeDatasetSchema, _check_make_maze_dataset, "maze_data"),
    "stitching_study": Job(StitchingStudySchema, _check_stitching_study, "stitching"),
    "stitching_answer": Job(StitchingAnswerSchema, None, "stitching_answer"),
    "study": Job(StudySchema, _check_norm_comparison, "study"),
}


def job_function(name: str) -> Callable[[DictConfig, Path], Any]:
    """The function that runs job ``name``, imported on use (the job layer imports this module)."""
    return getattr(importlib.import_module(f"diffnorm.experiments.{JOBS[name].module}"), name)


def config_message(err: OmegaConfBaseException) -> str:
    """OmegaConf's multi-line message as one line that leads with the key."""
    key = getattr(err, "full_key", None) or "<root>"
    first = str(getattr(err, "msg", err)).strip().splitlines()[0]
    if "not in" in first and first.startswith("Key "):
        return f"unknown config key {key}"
    if first.startswith("Value '"):  # "Value 'abc' of type 'str' could not be converted to Integer"
        return f"config key {key}: {first[0].lower()}{first[1:]}"
    return f"config key {key}: {first}"


def validate_config(config_name: str, cfg: DictConfig) -> None:
    """Raise ConfigError (one line, naming the key) if ``cfg`` does not fit the schema of ``config_name``.

    A job without a schema is only logged (tests/test_faults.py fails for a script that has none)."""
    if config_name not in JOBS:
        log.warning("no config schema for job %r in diffnorm/config.py: its config is not validated", config_name)
        return
    schema, check, _ = JOBS[config_name]
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(config_message(err)) from None
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), plain)
    except OmegaConfBaseException as err:
        raise ConfigError(config_message(err)) from None
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise ConfigError(f"config key {missing[0]} is missing ({config_name}.yaml and its groups must set it)")
    if check is not None:
        check(OmegaConf.to_container(merged))


def register_schemas() -> None:
    """Store every job's schema in Hydra's ConfigStore as ``<job>_schema``. Each job's YAML names it
    first in its defaults list, so Hydra composes the YAML onto the typed schema: an unknown key or a
    value of the wrong type fails at composition, for scripts, sub-jobs and tests alike."""
    store = ConfigStore.instance()
    for job, (schema, _, _) in JOBS.items():
        store.store(name=f"{job}_schema", node=schema)


register_schemas()
