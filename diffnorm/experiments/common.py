"""What every job shares: seeding, device choice, the run directory, results.json, clear errors."""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig


class ConfigError(ValueError):
    """A bad setting or input; the scripts print it as one line and exit non-zero."""


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds."""
    if not condition:
        raise ConfigError(message)


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for explicit sampling."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_dir() -> Path:
    """The Hydra run directory when inside a Hydra job, else the current directory."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic, torch.Tensor)):
        return _jsonable(value.tolist())
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def write_results(out_dir: Path, results: dict[str, Any]) -> Path:
    """Write results.json atomically (temporary file, then rename) and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_jsonable(results), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def run_job(job: Callable[[DictConfig, Path], Any], cfg: DictConfig) -> None:
    """Run ``job(cfg, run_dir)`` for a script: bad input becomes one line on stderr and exit code 2;
    on success the run directory is printed last."""
    out = run_dir()
    try:
        job(cfg, out)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(out)


def compose_job(config_name: str, overrides: list[str]) -> DictConfig:
    """A job's config composed exactly as its script would, from inside a Hydra job or outside one
    (a worker process, a test)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name, overrides=overrides)
    configs = Path(__file__).resolve().parents[2] / "configs"
    with initialize_config_dir(config_dir=str(configs), version_base=None):
        return compose(config_name, overrides=overrides)
