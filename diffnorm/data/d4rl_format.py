"""The D4RL maze2d HDF5 layout: read, validate, write; and a reader for local Minari datasets.

One layout for real D4RL files (``maze2d-*-sparse-v1.hdf5``), the files diffnorm generates, and Minari
datasets converted on load, so everything downstream sees the same arrays:

    observations [N, 4]  actions [N, 2]  rewards [N]  terminals [N]  timeouts [N]
    infos/goal [N, 2]    infos/qpos [N, 2]  infos/qvel [N, 2]

Coordinate frames: every loader returns positions in the package's frame (cell (i, j) centred at
(i, j); ``diffnorm.envs.frames``). ``load_dataset`` resolves a file's frame once (``resolve_frame``: a
declared one, else the file's ``frame`` attribute, else this package's own generator, else a raw D4RL
file, whose positions are 0.2 off) and converts with ``to_package_frame``; ``load_minari`` does the same
for gymnasium-robotics' centred frame.

Observations are [N, 4] (x, y, vx, vy) for maze2d. Readers and writers take ``observation_dim=None`` to
accept any width >= 2 with x, y first, for data whose state is smaller (OGBench's kinematic point:
positions only); the default keeps maze2d's contract.

Bad input raises ``ConfigError`` (or ``FileNotFoundError``) with a one-line message naming the file,
key, shape or index at fault: truncated or corrupt files, missing keys, wrong shapes or dtypes,
NaN/inf values, episode flags that are not 0/1, empty data; nothing is repaired silently. Writes go to
a temporary file, fsynced, that is renamed into place only when complete; datasets carry fletcher32
checksums so stored bytes that change afterwards are caught on read.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from diffnorm.envs.frames import DATA_FRAMES, OGBenchFrame
from diffnorm.envs.maze2d import data_frame
from diffnorm.errors import ConfigError
from diffnorm.io import fsync_dir

# key -> per-step shape
D4RL_LAYOUT: dict[str, tuple[int, ...]] = {
    "observations": (4,),
    "actions": (2,),
    "rewards": (),
    "terminals": (),
    "timeouts": (),
    "infos/goal": (2,),
    "infos/qpos": (2,),
    "infos/qvel": (2,),
}
_FLAGS = ("terminals", "timeouts")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _shape_str(per_step: tuple[int, ...]) -> str:
    return "[" + ", ".join(["N", *map(str, per_step)]) + "]"


def validate_d4rl(data: dict[str, np.ndarray], source: str = "data", observation_dim: int | None = 4) -> None:
    """Raise ConfigError naming the first missing key, wrong shape, length mismatch or non-finite value.

    ``observation_dim=None`` accepts observations of any width >= 2 (x, y first)."""
    missing = [k for k in D4RL_LAYOUT if k not in data]
    if missing:
        raise ConfigError(f"{source}: missing key {missing[0]!r} (D4RL maze2d needs {list(D4RL_LAYOUT)})")
    n = len(data["observations"])
    if n == 0:
        raise ConfigError(f"{source}: 'observations' is empty")
    for key, per_step in D4RL_LAYOUT.items():
        arr = np.asarray(data[key])
        if key == "observations" and arr.ndim == 2 and observation_dim is None:
            per_step = (arr.shape[1],) if arr.shape[1] >= 2 else (2,)
        elif key == "observations":
            per_step = (observation_dim,)
        if arr.ndim != 1 + len(per_step) or arr.shape[1:] != per_step:
            wanted = ("at least 2 (x, y first)" if observation_dim is None
                      else "4 (x, y, vx, vy)" if observation_dim == 4 else str(observation_dim))
            detail = (f"observation dimension {arr.shape[-1]}, expected {wanted}"
                      if key == "observations" and arr.ndim == 2 else f"expected {_shape_str(per_step)}")
            raise ConfigError(f"{source}: {key!r} has shape {arr.shape}; {detail}")
        if len(arr) != n:
            raise ConfigError(f"{source}: {key!r} has {len(arr)} steps but 'observations' has {n}")
        if key in _FLAGS:
            _check_flags(arr, key, source)
            continue
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise ConfigError(f"{source}: {key!r} has dtype {arr.dtype}, expected real numbers")
        require_finite(arr, key, source)


def require_finite(arr: np.ndarray, key: str, source: str) -> None:
    """Raise ConfigError naming the index of the first NaN or infinite value of ``arr``."""
    finite = np.isfinite(arr)
    if not finite.all():
        index = np.unravel_index(int(np.argmin(finite)), arr.shape)
        raise ConfigError(f"{source}: {key!r} has a non-finite value ({arr[index]}) at index {_index(index)}")


def _index(index: tuple) -> int | tuple[int, ...]:
    return tuple(int(i) for i in index) if len(index) > 1 else int(index[0])


def _check_flags(arr: np.ndarray, key: str, source: str) -> None:
    """Episode flags are booleans; numbers are accepted only as exact 0/1, since casting 0.5 or NaN to
    bool would silently invent episode ends."""
    if arr.dtype == bool:
        return
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ConfigError(f"{source}: {key!r} has dtype {arr.dtype}, expected booleans (or 0/1)")
    bad = ~((arr == 0) | (arr == 1))
    if bad.any():
        index = np.unravel_index(int(np.argmax(bad)), arr.shape)
        raise ConfigError(f"{source}: {key!r} has {arr[index]} at index {_index(index)}, expected a boolean (0 or 1)")


def _as_layout(data: dict[str, Any]) -> dict[str, np.ndarray]:
    """The D4RL keys only, floats as float32 and flags as bool (the dtypes of D4RL's files)."""
    return {k: np.asarray(data[k], dtype=bool if k in _FLAGS else np.float32) for k in D4RL_LAYOUT}


def load_d4rl_hdf5(path: str | Path, observation_dim: int | None = 4) -> dict[str, np.ndarray]:
    """Read a D4RL-layout maze2d file (real D4RL or generated here) into validated arrays.

    Extra keys (D4RL's ``metadata/*``) are ignored. ``observation_dim=None`` takes the observation
    width from the file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"D4RL dataset file not found: {path}")
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise ConfigError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {_one_line(err)}") from None
    data: dict[str, np.ndarray] = {}
    with handle:
        for key, per_step in D4RL_LAYOUT.items():
            # h5py reports damage from any call that touches the file, `in` included, and with several
            # exception types; every one of them is a bad file, not a bug.
            try:
                node = handle.get(key)
                if isinstance(node, h5py.Dataset):
                    data[key] = node[()]
            except (OSError, RuntimeError, ValueError, KeyError, TypeError) as err:
                raise ConfigError(f"{path}: cannot read {key!r} (truncated or corrupt file?): "
                                  f"{_one_line(err)}") from None
            if node is None:
                raise ConfigError(f"{path}: missing key {key!r} (D4RL maze2d needs {list(D4RL_LAYOUT)})")
            if not isinstance(node, h5py.Dataset):
                raise ConfigError(f"{path}: {key!r} is an HDF5 group, expected a dataset of shape "
                                  f"{_shape_str(per_step)}")
    validate_d4rl(data, source=str(path), observation_dim=observation_dim)
    return _as_layout(data)


FRAME_ATTR = "frame"  # root attribute naming the coordinate frame of a file's positions


def resolve_frame(attrs: dict[str, Any], declared: str = "auto") -> tuple[str, str]:
    """(frame, why) of a file with root attributes ``attrs``: ``declared`` unless "auto"; else the file's
    ``frame`` attribute; else "diffnorm" for files this package generated (before it wrote the attribute);
    else "d4rl", a raw D4RL file (which carries no frame attribute). Raises ConfigError for an unknown name."""
    if declared != "auto":
        frame, why = declared, "declared (dataset_frame)"
    elif FRAME_ATTR in attrs:
        frame, why = str(attrs[FRAME_ATTR]), f"the file's {FRAME_ATTR!r} attribute"
    elif str(attrs.get("generator", "")).startswith("diffnorm."):
        frame, why = "diffnorm", "written by diffnorm's generator"
    else:
        frame, why = "d4rl", "no frame attribute: a D4RL file"
    if frame not in DATA_FRAMES:
        raise ConfigError(f"unknown coordinate frame {frame!r} ({why}); choose one of {['auto', *DATA_FRAMES]}")
    return frame, why


def to_package_frame(data: dict[str, np.ndarray], frame: str, maze: str | None = None) -> dict[str, np.ndarray]:
    """D4RL-layout arrays with positions (observations[:, :2], infos/goal, infos/qpos) and vectors
    (velocities observations[:, 2:4], infos/qvel, and actions) mapped from ``frame`` into the package's
    frame (``diffnorm.envs.maze2d.data_frame``). OGBench actions only swap their axes (their scale is the
    env's action box, not its units). The input is not modified."""
    if frame == "diffnorm":
        return data
    f = data_frame(frame, maze)
    out = dict(data)
    obs = np.asarray(data["observations"], dtype=np.float64)
    parts = [f.point_to_d4rl(obs[:, :2])]
    if obs.shape[1] >= 4:
        parts += [f.vector_to_d4rl(obs[:, 2:4]), obs[:, 4:]]
    out["observations"] = np.concatenate(parts, axis=1).astype(np.float32)
    for key in ("infos/goal", "infos/qpos"):
        out[key] = f.point_to_d4rl(data[key]).astype(np.float32)
    out["infos/qvel"] = f.vector_to_d4rl(data["infos/qvel"]).astype(np.float32)
    actions = OGBenchFrame.action_to_d4rl(data["actions"]) if frame == "ogbench" else f.vector_to_d4rl(data["actions"])
    out["actions"] = np.asarray(actions, dtype=np.float32)
    return out


def load_dataset(path: str | Path, maze: str | None = None, frame: str = "auto",
                 observation_dim: int | None = 4) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A D4RL-layout file in the package's frame, and what was done: ``(data, info)`` with info =
    {"path", "frame", "frame_source", "attrs"}. ``frame`` declares the file's frame ("auto": see
    ``resolve_frame``); ``maze`` is needed for the centred frame only."""
    attrs = read_attrs(path)
    resolved, why = resolve_frame(attrs, frame)
    data = to_package_frame(load_d4rl_hdf5(path, observation_dim=observation_dim), resolved, maze)
    return data, {"path": str(Path(path).resolve()), "frame": resolved, "frame_source": why, "attrs": attrs}


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The root attributes of an HDF5 file (our generator's metadata), as plain Python values."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"D4RL dataset file not found: {path}")
    try:
        with h5py.File(path, "r") as handle:
            return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in handle.attrs.items()}
    except OSError as err:
        raise ConfigError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {_one_line(err)}") from None


def write_d4rl_hdf5(path: str | Path, data: dict[str, np.ndarray], attrs: dict[str, Any] | None = None,
                    observation_dim: int | None = 4) -> Path:
    """Validate, then write the D4RL layout (gzip, like D4RL's files) atomically; return the path.

    ``attrs`` become root attributes (str, int, float or bool values)."""
    path = Path(path)
    validate_d4rl(data, source=f"write {path}", observation_dim=observation_dim)
    arrays = _as_layout(data)
    for key, value in (attrs or {}).items():
        if not isinstance(value, (str, int, float, bool, np.generic)):
            raise ConfigError(f"write {path}: attribute {key!r}={value!r} must be a str, int, float or bool")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        # libver v108: object headers with checksums, so damaged metadata is caught as well as data
        with h5py.File(tmp, "w", libver=("v108", "latest")) as handle:
            for key, arr in arrays.items():
                # fletcher32: a per-chunk checksum, so a flipped byte in stored data is an error on read
                handle.create_dataset(key, data=arr, compression="gzip", compression_opts=4,
                                      chunks=True if arr.size else None, fletcher32=bool(arr.size))
            for key, value in (attrs or {}).items():
                handle.attrs[key] = value
        with open(tmp, "rb+") as f:  # on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_minari(dataset_id: str, maze: str | None = None, frame: str = "auto") -> dict[str, np.ndarray]:
    """Read a LOCAL Minari dataset (``MINARI_DATASETS_PATH``; never downloads) into the D4RL layout.

    Minari stores each episode's final observation too; it is dropped, so step t holds the observation
    the action of step t was taken from, as in D4RL. ``terminals``/``timeouts`` are the episodes'
    terminations/truncations. Dict observations (gymnasium-robotics PointMaze) give ``observation`` and
    ``desired_goal``; flat ones (``make_env``) need ``goal`` in the recorded infos. ``qpos``/``qvel``
    come from the infos when recorded, else from the observation (for the point mass they are the same
    numbers).

    Frame: ``auto`` takes dict observations (gymnasium-robotics PointMaze, e.g. Minari's D4RL/pointmaze)
    as the ``centred`` frame and flat ones (recorded with this package's ``make_env``) as ``diffnorm``;
    any name of ``envs.frames.DATA_FRAMES`` declares it. The centred frame needs ``maze`` (its layout's
    size sets the shift); without it a ConfigError says so.
    """
    try:
        import minari  # an optional extra
    except ImportError:
        raise ConfigError("load_minari needs the optional 'minari' package: pip install 'diffnorm[minari]'") from None
    try:
        dataset = minari.load_dataset(dataset_id, download=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"Minari dataset {dataset_id!r} not found locally (MINARI_DATASETS_PATH="
                                f"{os.environ.get('MINARI_DATASETS_PATH', '~/.minari/datasets')})") from None
    parts: dict[str, list[np.ndarray]] = {k: [] for k in D4RL_LAYOUT}
    dict_observations = False
    for episode in dataset.iterate_episodes():
        where = f"minari {dataset_id!r} episode {episode.id}"
        n = len(episode.rewards)
        if n == 0:
            raise ConfigError(f"{where}: empty episode (0 steps); a D4RL-layout file cannot represent it")
        obs = episode.observations
        infos = episode.infos or {}
        if isinstance(obs, dict):
            dict_observations = True
            for key in ("observation", "desired_goal"):
                if key not in obs:
                    raise ConfigError(f"{where}: dict observation has no {key!r} (has {sorted(obs)})")
            state, goal = np.asarray(obs["observation"]), np.asarray(obs["desired_goal"])
        else:
            if "goal" not in infos:
                raise ConfigError(f"{where}: flat observations need the goal in infos['goal'] "
                                  f"(record with DataCollector(record_infos=True)); infos has {sorted(infos)}")
            state, goal = np.asarray(obs), np.asarray(infos["goal"])
        if state.ndim != 2 or state.shape[-1] != 4 or len(state) != n + 1:
            raise ConfigError(f"{where}: observations have shape {state.shape}, expected [{n + 1}, 4]")
        qpos = np.asarray(infos["qpos"]) if "qpos" in infos else state[:, :2]
        qvel = np.asarray(infos["qvel"]) if "qvel" in infos else state[:, 2:]
        parts["observations"].append(state[:n])
        parts["actions"].append(np.asarray(episode.actions))
        parts["rewards"].append(np.asarray(episode.rewards))
        parts["terminals"].append(np.asarray(episode.terminations))
        parts["timeouts"].append(np.asarray(episode.truncations))
        parts["infos/goal"].append(goal[:n])
        parts["infos/qpos"].append(qpos[:n])
        parts["infos/qvel"].append(qvel[:n])
    if not parts["observations"]:
        raise ConfigError(f"minari {dataset_id!r} has no episodes")
    data = {k: np.concatenate(v) for k, v in parts.items()}
    if frame == "auto":
        frame = "centred" if dict_observations else "diffnorm"
    if frame == "centred" and maze is None:
        raise ConfigError(f"minari {dataset_id!r} is in gymnasium-robotics' centred frame; pass maze=<maze2d-...> "
                          "to convert it (or frame= to declare another frame)")
    data = to_package_frame(data, frame, maze)
    validate_d4rl(data, source=f"minari {dataset_id!r}")
    return _as_layout(data)
