"""Checkpoints of a Diffuser training run, all in the run directory and all written atomically.

    config.yaml              resolved config: enough to rebuild the network (``build_diffusion``)
    scaler.json              the data scaler, to map plans back to maze coordinates
    checkpoint.safetensors   full training state for ``train.resume``: weights, EMA, Adam, RNG, step
    ema.safetensors          EMA weights only (what planning uses; 14 MiB at the published width)
    snapshots/step_*.safetensors   EMA weights kept every ``train.snapshot_every`` steps (learning curves)

Every file is written to ``<name>.tmp``, fsynced and renamed (then the directory is fsynced), so a run
killed at any moment, even by SIGKILL or a power cut, leaves either the previous or the new version,
never a torn one; tests/test_faults.py kills a training while it saves to show it. ``load_checkpoint`` is the public entry point for
planning and probing: it rebuilds the network from config.yaml and refuses weights that do not fit it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from diffnorm.data.scaling import TrajectoryScaler
from diffnorm.diffusion.gaussian import GaussianDiffusion
from diffnorm.errors import ConfigError, require
from diffnorm.io import atomic_write_bytes
from diffnorm.training.build import architecture, build_diffusion

CONFIG = "config.yaml"
DIFFUSERS_CONFIG = "config.json"  # a diffusers save_pretrained folder
SCALER = "scaler.json"
CHECKPOINT = "checkpoint.safetensors"
EMA_WEIGHTS = "ema.safetensors"
SNAPSHOTS = "snapshots"
FORMAT = "diffnorm-diffuser-1"


def _tensors(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses views of shared storage; a contiguous CPU copy of each entry is always accepted.
    return {f"{prefix}{k}": v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _strip(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118 (not a dict)
    except Exception as err:  # safetensors raises its own error types for truncated or foreign files
        raise ConfigError(f"cannot read checkpoint {path}: {err}") from err


def write_run_files(run_dir: Path, cfg: DictConfig, scaler: Any) -> None:
    """config.yaml (resolved) and scaler.json: written once per run, before the first checkpoint."""
    atomic_write_bytes(run_dir / CONFIG, OmegaConf.to_yaml(cfg, resolve=True).encode())
    atomic_write_bytes(run_dir / SCALER, (json.dumps(scaler.state_dict(), indent=2) + "\n").encode())


def save_training_state(run_dir: Path, cfg: DictConfig, model: nn.Module, ema_model: nn.Module,
                        optimizer: torch.optim.Optimizer, step: int, train_seconds: float = 0.0) -> Path:
    """Write checkpoint.safetensors (everything resume needs) and ema.safetensors; return the former.

    ``train_seconds`` is the wall-clock time trained so far, summed over every start of the run, so a
    resumed run keeps counting where the interrupted one stopped.
    """
    arch = json.dumps(architecture(cfg), sort_keys=True)
    optim_state = optimizer.state_dict()
    tensors = {**_tensors("model.", model.state_dict()), **_tensors("ema.", ema_model.state_dict())}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entries in optim_state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    meta = {"format": FORMAT, "step": str(step), "architecture": arch, "train_seconds": repr(float(train_seconds)),
            "optim_param_groups": json.dumps(optim_state["param_groups"]), "optim_scalars": json.dumps(scalars)}
    path = run_dir / CHECKPOINT
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata=meta))
    ema_meta = {"format": FORMAT, "step": str(step), "architecture": arch, "train_seconds": repr(float(train_seconds))}
    atomic_write_bytes(run_dir / EMA_WEIGHTS, safetensors_bytes(_tensors("", ema_model.state_dict()), metadata=ema_meta))
    return path


def snapshot_path(run_dir: Path, step: int) -> Path:
    """Where the EMA snapshot of optimizer step ``step`` lives: ``snapshots/step_0004000.safetensors``."""
    return Path(run_dir) / SNAPSHOTS / f"step_{step:07d}.safetensors"


def save_snapshot(run_dir: Path, cfg: DictConfig, ema_model: nn.Module, step: int, train_seconds: float) -> Path:
    """Keep the EMA weights of ``step`` (with the training seconds so far) under ``snapshots/``; unlike
    ema.safetensors it is never overwritten by later steps. ``load_checkpoint`` accepts the file."""
    path = snapshot_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "step": str(step), "architecture": json.dumps(architecture(cfg), sort_keys=True),
            "train_seconds": repr(float(train_seconds))}
    atomic_write_bytes(path, safetensors_bytes(_tensors("", ema_model.state_dict()), metadata=meta))
    return path


def list_snapshots(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every snapshot of a run, by step; empty when the run kept none."""
    found = []
    for path in (Path(run_dir) / SNAPSHOTS).glob("step_*.safetensors"):
        digits = path.stem.removeprefix("step_")
        if digits.isdigit():
            found.append((int(digits), path))
    return sorted(found)


def _metadata(path: Path) -> dict[str, str]:
    """A checkpoint, EMA or snapshot file's metadata, without reading its tensors."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def checkpoint_step(path: Path) -> int:
    """The optimizer steps a checkpoint, EMA or snapshot file has taken (from its metadata)."""
    return int(_metadata(path)["step"])


def training_seconds(path: Path) -> float | None:
    """The training seconds recorded in a checkpoint, EMA or snapshot file (None for files written
    before the count existed)."""
    value = _metadata(path).get("train_seconds")
    return float(value) if value is not None else None


def _check_architecture(path: Path, meta: dict[str, str], cfg: DictConfig) -> None:
    require(meta.get("format") == FORMAT, f"{path} is not a diffnorm Diffuser checkpoint "
            f"(format {meta.get('format')!r}, expected {FORMAT!r})")
    saved = json.loads(meta.get("architecture", "{}"))
    if isinstance(saved.get("model"), dict):  # null settings belong to other networks (build.architecture)
        saved["model"] = {k: v for k, v in saved["model"].items() if v is not None}
    expected = architecture(cfg)
    diff = {k: (saved.get(k), expected[k]) for k in expected if saved.get(k) != expected[k]}
    require(not diff, f"checkpoint {path} does not match the config: "
            + "; ".join(f"{k}: checkpoint {a} vs config {b}" for k, (a, b) in diff.items()))


def _load_weights(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise ConfigError(f"checkpoint {path} does not fit the network built from its config: "
                          f"{' '.join(line.strip() for line in first[:3])}") from err


def load_training_state(run_dir: Path, cfg: DictConfig, model: nn.Module, ema_model: nn.Module,
                        optimizer: torch.optim.Optimizer) -> int:
    """Restore weights, EMA, Adam state and the torch RNG from checkpoint.safetensors; return the step
    (``training_seconds`` reads the time trained until then)."""
    path = run_dir / CHECKPOINT
    require(path.is_file(), f"train.resume=true but {path} does not exist")
    tensors, meta = _read(path)
    _check_architecture(path, meta, cfg)
    _load_weights(model, _strip("model.", tensors), path)
    _load_weights(ema_model, _strip("ema.", tensors), path)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, entries in json.loads(meta["optim_scalars"]).items():
        state.setdefault(int(idx), {}).update(entries)
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["optim_param_groups"])})
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    return int(meta["step"])


@dataclass
class LoadedDiffuser:
    """A trained Diffuser ready to plan: ``diffusion.sample(conditions)`` gives scaled plans, which
    ``scaler`` maps back to maze coordinates; ``cfg`` is the run's resolved config."""

    diffusion: GaussianDiffusion
    scaler: Any
    cfg: DictConfig
    step: int
    path: Path
    train_seconds: float | None = None  # wall-clock training time until ``step`` (None: not recorded)


def load_scaler(state: dict) -> Any:
    """The data scaler from its ``state_dict()``."""
    return TrajectoryScaler.from_state_dict(state)


def _load_diffusers_folder(path: Path, device: str | torch.device) -> LoadedDiffuser:
    """A diffusers ``UNet1DModel`` folder (``save_pretrained``; loaded from disk, never downloaded) that
    carries diffnorm's config.yaml and scaler.json beside it, as ``export_diffusers`` writes it."""
    from diffusers import UNet1DModel

    from diffnorm.interop.unet1d import from_diffusers  # diffusers loads only for such folders

    missing = [name for name in (CONFIG, SCALER) if not (path / name).is_file()]
    require(not missing, f"{path} is a diffusers folder without diffnorm's {' and '.join(missing)}: diffnorm plans "
            "with a planner's data scaling and settings (python scripts/export_diffusers.py writes both); measure "
            "a bare network with diffnorm.analysis.leak.measure")
    cfg = OmegaConf.load(path / CONFIG)
    # low_cpu_mem_usage=False: the default asks for the optional `accelerate` in a multi-line warning
    unet = UNet1DModel.from_pretrained(str(path), local_files_only=True, low_cpu_mem_usage=False)
    diffusion = build_diffusion(cfg)
    converted = from_diffusers(unet, horizon=int(cfg.env.horizon))
    _load_weights(diffusion.model, converted.state_dict(), path)
    scaler = load_scaler(json.loads((path / SCALER).read_text()))
    exported = json.loads((path / "results.json").read_text()) if (path / "results.json").is_file() else {}
    return LoadedDiffuser(diffusion=diffusion.to(device).eval(), scaler=scaler, cfg=cfg,
                          step=int(exported.get("step", -1)), path=path)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> LoadedDiffuser:
    """Load the EMA network of a run for planning: ``path`` is a run directory or one of its
    ``.safetensors`` files (config.yaml and scaler.json are read from the same directory), or a diffusers
    ``UNet1DModel`` folder exported with diffnorm's config.yaml and scaler.json (``export_diffusers``).

    Raises ConfigError for a missing path or files, and for weights whose architecture or norm differs
    from the config next to them.
    """
    path = Path(path)
    require(path.exists(), f"checkpoint {path} does not exist")
    if path.is_dir() and (path / DIFFUSERS_CONFIG).is_file() and not (path / EMA_WEIGHTS).is_file():
        return _load_diffusers_folder(path, device)
    if path.is_dir():
        candidates = [path / EMA_WEIGHTS, path / CHECKPOINT]
        found = [p for p in candidates if p.is_file()]
        require(bool(found), f"no {EMA_WEIGHTS} or {CHECKPOINT} in {path}: not a train_diffuser run directory")
        path = found[0]
    require(path.suffix == ".safetensors", f"checkpoint {path} is not a training run directory or a "
            f".safetensors weights file (ema.safetensors, checkpoint.safetensors or snapshots/step_*.safetensors)")
    run = path.parent.parent if path.parent.name == SNAPSHOTS else path.parent
    for name in (CONFIG, SCALER):
        require((run / name).is_file(), f"{run / name} is missing; a checkpoint needs its run's {name}")
    cfg = OmegaConf.load(run / CONFIG)
    tensors, meta = _read(path)
    _check_architecture(path, meta, cfg)
    diffusion = build_diffusion(cfg)
    weights = _strip("ema.", tensors) if any(k.startswith("ema.") for k in tensors) else tensors
    _load_weights(diffusion.model, weights, path)
    scaler = load_scaler(json.loads((run / SCALER).read_text()))
    return LoadedDiffuser(diffusion=diffusion.to(device).eval(), scaler=scaler, cfg=cfg,
                          step=int(meta.get("step", -1)), path=path,
                          train_seconds=float(meta["train_seconds"]) if "train_seconds" in meta else None)
