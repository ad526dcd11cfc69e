"""What every job shares: seeding, device choice, the run directory, results.json, clear errors.

``run_job`` is the one door every script goes through: it validates the config against its schema
(``diffnorm.config``) before any work, turns bad input into one ``error:`` line and exit code 2 (bugs
keep their stack trace), and inside a Hydra multirun records a failed job in its own ``error.json``
and lets the sweep go on, so one bad job does not lose the others. ``write_results`` stamps every
results.json with the job's seeds and the package versions.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import functools
import json
import math
import os
import platform
import random
import shutil
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import (
    CompactHydraException,
    ConfigCompositionException,
    HydraException,
    MissingConfigException,
    OverrideParseException,
)
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm import tqdm

# Re-exported: job modules and tests import the package's errors and writers from here too.
from diffnorm.config import (  # importing it registers the job schemas with Hydra
    config_message,
    validate_config,
)
from diffnorm.devices import bf16_supported, resolve_device  # noqa: F401
from diffnorm.errors import (  # noqa: F401
    ConfigError,
    TrainingDiverged,
    TrainingInterrupted,
    TrainingStopped,
    require,
)
from diffnorm.io import atomic_write_bytes, fsync_dir  # noqa: F401


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for explicit sampling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def run_dir() -> Path:
    """The Hydra run directory when inside a Hydra job, else the current directory."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


def launch_dir() -> Path:
    """The directory the user launched the job from: Hydra's original working directory inside a Hydra
    job (also when ``hydra.job.chdir=true`` moved the process into the run directory), else the cwd."""

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.cwd)
    return Path.cwd()


def resolve_path(path: str | os.PathLike) -> Path:
    """A path-valued setting as an absolute path: ``~`` expanded, a relative path taken against
    ``launch_dir()`` (never against the run directory), so a job reads the same file with and without
    ``hydra.job.chdir``."""
    p = Path(os.fspath(path)).expanduser()
    return p if p.is_absolute() else launch_dir() / p


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # an undefined statistic (Welch's p of two constant samples): null, not JSON-invalid NaN
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray, torch.Tensor)):
        return _jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return value


VERSIONED = ("diffnorm", "torch", "numpy", "diffusers", "gymnasium", "gymnasium-robotics", "mujoco", "hydra-core",
             "h5py")


@functools.cache
def package_versions() -> dict[str, str | None]:
    """Versions of python and the packages a result depends on (None: not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def config_seeds(cfg: DictConfig | dict) -> dict[str, Any]:
    """Every setting named like a seed (``seed``, ``data_seed``, ``seeds``, ``stitch.seed``, ...), top
    level and one level down: what, with the versions, reproduces a run."""
    plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
    found: dict[str, Any] = {}
    for key, value in plain.items():
        if "seed" in str(key):
            found[str(key)] = value
        elif isinstance(value, dict):
            found.update({f"{key}.{k}": v for k, v in value.items() if "seed" in str(k)})
    return found


# The job run_job is running in this process: (its name, run directory, seeds). Results written into that
# directory record its seeds; jobs nested in it (a study's stages) name it as their parent.
_ACTIVE_JOB: contextvars.ContextVar[tuple[str, Path, dict[str, Any]] | None] = contextvars.ContextVar(
    "diffnorm_active_job", default=None)


def _provenance(out_dir: Path) -> dict[str, Any]:
    record: dict[str, Any] = {"versions": package_versions()}
    active = _ACTIVE_JOB.get()
    own_config = out_dir / "config.yaml"  # train_diffuser's resolved config, also in nested runs
    if active is not None and out_dir.resolve() == active[1].resolve():
        record.update(job=active[0], seeds=active[2])
    elif own_config.is_file():
        record["seeds"] = config_seeds(OmegaConf.load(own_config))
    if active is not None and out_dir.resolve() != active[1].resolve():
        record["nested_in"] = {"job": active[0], "run_dir": str(active[1]), "seeds": active[2]}
    record.setdefault("seeds", None)
    return record


def json_bytes(record: Any, sort_keys: bool = False) -> bytes:
    """``record`` as strict JSON (RFC 8259), indented: numpy/torch values and paths converted, NaN and
    infinities written as null, which every JSON reader accepts (``jq``, JavaScript, ``json.loads``)."""
    return (json.dumps(_jsonable(record), indent=2, allow_nan=False, sort_keys=sort_keys) + "\n").encode()


def write_results(out_dir: Path, results: dict[str, Any]) -> Path:
    """Write results.json atomically (temporary file, fsync, rename) and return its path.

    A ``provenance`` entry is added: the package versions and the seeds of the job's config. The file is
    strict JSON (``json_bytes``): an undefined value such as a NaN p-value is written as null."""
    path = Path(out_dir) / "results.json"
    record = {**results, "provenance": _provenance(Path(out_dir))}
    atomic_write_bytes(path, json_bytes(record))
    return path


def _hydra_job() -> tuple[str | None, bool]:
    """(config name, multirun?) of the Hydra job this process is running, (None, False) outside Hydra."""

    if not HydraConfig.initialized():
        return None, False
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.job.config_name, hydra_cfg.mode == RunMode.MULTIRUN


class SweepJobFailed(CompactHydraException):
    """Raised to Hydra for a failed job of a multirun: Hydra finishes the other jobs first, then prints
    this message alone (a CompactHydraException has no stack trace) and exits non-zero. A module-level
    class, so process launchers (joblib) can pickle it back to the sweep."""


def _record_failure(out: Path, err: BaseException, user_error: bool, cfg: DictConfig) -> Path:
    path = out / "error.json"
    provenance = _provenance(out)
    if provenance["seeds"] is None:  # failed before the job started (validation): read them from cfg
        with contextlib.suppress(Exception):  # a config too broken to resolve has no seeds to record
            provenance["seeds"] = config_seeds(cfg)
    record = {"status": "failed", "error": str(err), "type": type(err).__name__, "user_error": user_error,
              "traceback": None if user_error else traceback.format_exc(), "provenance": provenance}
    atomic_write_bytes(path, json_bytes(record))
    return path


def _close_progress_bars() -> None:
    """Close the bars an interrupted job left open, so the interruption's message is the last line
    (an open tqdm bar redraws itself when it is collected at exit)."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


# What the launch directory held before Hydra made this job's run directory (``preflight`` records it):
# on a refusal the job removes only what it made itself and puts back Hydra's records it overwrote.
_BEFORE: dict[str, Any] = {}


def _snapshot_before_hydra(args: list[str]) -> None:
    """Record, before Hydra writes anything: the directories under ``outputs/`` (three levels; where
    default run directories are made), and for a ``hydra.run.dir=`` given, whether it exists, what is in
    it and the bytes of its ``.hydra`` records."""
    root = Path.cwd()
    _BEFORE.clear()
    level = [root / "outputs"] if (root / "outputs").is_dir() else []
    existing = set(level)
    for _ in range(3):
        level = [d for parent in level for d in parent.iterdir() if d.is_dir()]
        existing.update(level)
    _BEFORE["dirs"] = {d.resolve() for d in existing}
    given = [a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")]
    if given:
        run = (root / Path(given[-1]).expanduser()).resolve()
        _BEFORE["run"] = run
        _BEFORE["run_existed"] = run.is_dir()
        _BEFORE["entries"] = {e.name for e in run.iterdir()} if run.is_dir() else set()
        records = run / ".hydra"
        _BEFORE["records"] = ({f.name: f.read_bytes() for f in records.iterdir() if f.is_file()}
                              if records.is_dir() else None)


def _undo_refused(out: Path) -> None:
    """A refused job leaves the launch directory as it found it, as far as it can know (``_BEFORE``): a run
    directory it made is deleted (with the empty folders above it that it made); in one that existed, Hydra's
    records it overwrote are put back and the files it added there (``.hydra/``, ``<job>.log``) removed;
    nothing else is touched. Without a record (a job not started from a script) an untouched run directory
    (only Hydra's files) is deleted, as before."""
    out = out.resolve()
    if not out.is_dir() or out == Path.cwd().resolve():
        return
    if _BEFORE.get("run") == out and _BEFORE.get("run_existed"):
        records = out / ".hydra"
        if _BEFORE["records"] is None:
            shutil.rmtree(records, ignore_errors=True)
        else:
            for name, data in _BEFORE["records"].items():
                (records / name).write_bytes(data)
        for entry in out.iterdir():
            if entry.name not in _BEFORE["entries"] and entry.is_file() and entry.suffix == ".log":
                entry.unlink()
        return
    entries = list(out.iterdir())
    if not all(e.name == ".hydra" or (e.is_file() and e.suffix == ".log") for e in entries):
        return
    shutil.rmtree(out, ignore_errors=True)
    known = _BEFORE.get("dirs")
    parent = out.parent
    while known is not None and parent not in known and parent.is_dir() and not any(parent.iterdir()) \
            and Path.cwd().resolve() in parent.parents:
        parent.rmdir()
        parent = parent.parent


# Path settings per job and what each must be where it exists (a missing directory is made by the job):
# checked before any work, so a wrong path costs no data generation and leaves no traceback.
PATH_SETTINGS: dict[str, dict[str, str]] = {
    "train_diffuser": {"data_dir": "directory", "dataset": "file"},
    "make_maze_dataset": {"data_dir": "directory"},
    "stitching_study": {"data_dir": "directory"},
    "plan_maze": {"checkpoint": "existing"},
    "leak_probe": {"checkpoint": "existing", "checkpoints": "existing"},
    "export_diffusers": {"checkpoint": "existing"},
}


def check_paths(job: str, cfg: DictConfig) -> None:
    """ConfigError (one line, naming the key) for a path setting of job ``job`` that is the wrong kind of
    thing: a ``data_dir`` that is a file, a ``dataset`` that is not a file, a ``checkpoint`` that does not
    exist."""
    for key, kind in PATH_SETTINGS.get(job, {}).items():
        value = cfg.get(key)
        for item in ([] if value is None else value if OmegaConf.is_list(value) else [value]):
            path = resolve_path(str(item))
            if kind == "directory" and path.exists() and not path.is_dir():
                raise ConfigError(f"{key}={item} is a file; give a directory (it is made if missing)")
            if kind == "file" and not path.is_file():
                raise ConfigError(f"{key}={item} is {'a directory' if path.is_dir() else 'missing'}; give a "
                                  "D4RL-format .hdf5 file (or leave it null to generate one)")
            if kind == "existing" and not path.exists():
                raise ConfigError(f"{key}={item} does not exist")


def run_job(job: Callable[[DictConfig, Path], Any], cfg: DictConfig) -> None:
    """Run ``job(cfg, run_dir)`` for a script: validate ``cfg`` first; bad input becomes one line on
    stderr and exit code 2, a training that stopped itself (NaN loss, Ctrl-C) its own message and code;
    on success the run directory is printed last.

    In a Hydra multirun a failed job writes ``error.json`` into its directory and raises to Hydra,
    which runs the remaining jobs before reporting the first failure (exit code 1). Ctrl-C still stops
    the whole sweep."""
    out = run_dir()
    name, multirun = _hydra_job()
    # A job started in the background by a non-interactive shell inherits SIGINT as ignored; an explicit
    # `kill -INT` should still stop it the way Ctrl-C does.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    name = name or getattr(job, "__name__", "")
    token = None
    try:
        validate_config(name, cfg)
        check_paths(name, cfg)
        token = _ACTIVE_JOB.set((name, out, config_seeds(cfg)))
        job(cfg, out)
    except TrainingInterrupted as err:
        _close_progress_bars()
        print(f"interrupted: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt as err:
        _close_progress_bars()
        print(f"interrupted: {str(err) or 'Ctrl-C'}; the job stopped (run directory {out}; the same command with "
              f"hydra.run.dir={out} continues it, reusing what it finished)", file=sys.stderr)
        sys.exit(143 if str(err) == "SIGTERM" else TrainingInterrupted.exit_code)  # 128 + the signal
    except (ConfigError, FileNotFoundError, TrainingStopped) as err:
        code = err.exit_code if isinstance(err, TrainingStopped) else 2
        print(f"error: {err}", file=sys.stderr)
        if not multirun:
            _undo_refused(out)
            sys.exit(code)
        record = _record_failure(out, err, user_error=True, cfg=cfg)
        raise SweepJobFailed(f"error: job {out.name} of the sweep failed: {err} (recorded in {record})") from None
    except Exception as err:
        if multirun:  # a bug: keep its trace, in error.json and on stderr, and let the sweep go on
            _record_failure(out, err, user_error=False, cfg=cfg)
            traceback.print_exc()
        raise
    finally:
        if token is not None:
            _ACTIVE_JOB.reset(token)
    print(out)


def _closest(key: str, config: DictConfig) -> str:
    """ ", did you mean <key>?" for the setting of ``config`` spelled most like ``key`` (or "")."""
    keys: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for k, v in node.items():
            keys.append(prefix + str(k))
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")

    walk(OmegaConf.to_container(config, resolve=False), "")
    match = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    return f"; did you mean {match[0]}?" if match else ""


def composition_error(config_name: str, overrides: list[str]) -> str | None:
    """One line naming what is wrong with ``overrides`` of a job's config, or None if they compose
    (``compose_job``'s ConfigError message; Hydra's own settings, ``hydra.*``, are Hydra's to check)."""
    task = [o for o in overrides if not o.lstrip("+~").startswith("hydra.")]
    try:
        compose_job(config_name, task)
        return None
    except ConfigError as err:
        return str(err)


def _composition_message(config_name: str, overrides: list[str], err: Exception) -> str:
    """Hydra's multi-line composition errors as one line: an unknown config-group option (``norm=grup``)
    names the group and its options, an unknown key (``train.stepz=5``) the closest existing one, a
    value of the wrong type for the job's schema the key and the type."""

    if isinstance(err, MissingConfigException):
        group, _, option = str(err.missing_cfg_file or "").rpartition("/")
        if group and err.options:
            return f"{group}={option} is not an option of the config group {group!r}; choose one of {err.options}"
        return " ".join(str(err).split("Config search path")[0].split())
    if isinstance(err, OverrideParseException):
        reason = " ".join(str(err).split()).split(" See https")[0]  # Hydra appends a link to its grammar
        return f"cannot parse the override: {reason} (quote list items: key='[\"a=1\",\"b=2\"]')"
    text = " ".join(str(err).split())
    if isinstance(err, ConfigCompositionException) and text.startswith("Could not "):
        key = text.split("'")[1] if "'" in text else ""
        base = _composed_without(config_name, overrides, key)
        absent = object()
        if OmegaConf.select(base, key, default=absent) is absent:
            return f"unknown config key {key}{_closest(key, base)}"
        cause = str(err.__cause__ or text).strip().splitlines()[0]
        return f"config key {key} cannot be set to that value: {cause}"
    if isinstance(err.__cause__, OmegaConfBaseException):
        if "does not support deletion" in str(err.__cause__):  # ~key on a field the schema requires
            return f"config key {getattr(err.__cause__, 'full_key', '?')} cannot be deleted: the job needs it"
        return config_message(err.__cause__)  # a value of the wrong type for the job's schema
    return text


def _composed_without(config_name: str, overrides: list[str], key: str) -> DictConfig:
    """The config composed with ``overrides`` except the one setting ``key`` (the config the user's other
    choices make, e.g. ``norm=none``), or with the defaults if those do not compose either."""
    try:
        return _compose(config_name, [o for o in overrides if o.lstrip("+~").split("=")[0] != key])
    except Exception:  # noqa: BLE001 - any other bad override: fall back to the defaults
        return _compose(config_name, [])


def preflight(config_name: str, argv: list[str] | None = None) -> None:
    """Before Hydra's own composition: if the command line's overrides do not compose, print one
    ``error:`` line and exit 2. Command lines with Hydra flags (``-m``, ``--cfg``, ...) go to Hydra as
    they are."""
    args = sys.argv[1:] if argv is None else argv
    if any(a.startswith("-") for a in args):
        return
    _snapshot_before_hydra(args)
    message = composition_error(config_name, args)
    if message is not None:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def compose_job(config_name: str, overrides: list[str]) -> DictConfig:
    """A job's config composed exactly as its script would, from inside a Hydra job or outside one (a
    worker process, a test), onto the job's typed schema and checked by its rules (``validate_config``):
    an unknown key, a value of the wrong type, an unknown config-group option or a broken rule is a
    ConfigError with one line that names it."""
    try:
        cfg = _compose(config_name, overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_composition_message(config_name, overrides, err)) from None
    validate_config(config_name, cfg)
    return cfg


def compose_training(overrides: list[str]) -> DictConfig:
    """train_diffuser's config for a job that trains with its own ``train_overrides`` (plus the env and norm it
    sets): as ``compose_job``, but a ConfigError says it came from ``train_overrides``."""
    try:
        return compose_job("train_diffuser", overrides)
    except ConfigError as err:
        raise ConfigError(f"train_overrides: {err}") from None


def _compose(config_name: str, overrides: list[str]) -> DictConfig:

    if GlobalHydra.instance().is_initialized():
        return compose(config_name, overrides=overrides)
    configs = Path(__file__).resolve().parents[1] / "configs"  # the repository's configs/, or a wheel's copy
    with initialize_config_dir(config_dir=str(configs), version_base=None):
        return compose(config_name, overrides=overrides)