"""Per-dimension limits scaling to [-1, 1], as the Diffuser does for maze2d.

Called a *scaler* (not a normalizer) so that "norm" keeps meaning the layers under study. The min and
max of every dimension over the whole dataset map to -1 and +1; observations and actions are scaled
separately (Janner et al. 2022, ``LimitsNormalizer`` in the maze2d branch). The fitted limits travel
with a checkpoint as ``state_dict()`` (plain lists, so they survive YAML/JSON) so that planning can
map sampled plans back to the environment's units.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

from diffnorm.errors import ConfigError, require

Array = TypeVar("Array", np.ndarray, torch.Tensor)


class LimitsScaler:
    """Affine map of each dimension's [min, max] onto [-1, 1].

    A constant dimension (max == min) would divide by zero; it is rejected at fit time rather than
    silently mapped to 0, because in maze2d it means the data is broken.
    """

    def __init__(self, mins: np.ndarray, maxs: np.ndarray):
        mins = np.asarray(mins, dtype=np.float64)
        maxs = np.asarray(maxs, dtype=np.float64)
        require(mins.ndim == 1 and mins.shape == maxs.shape,
                f"scaler limits must be two vectors of one length, got shapes {mins.shape} and {maxs.shape}")
        require(bool(np.all(np.isfinite(mins)) and np.all(np.isfinite(maxs))), "scaler limits must be finite")
        flat = np.flatnonzero(maxs <= mins)
        require(flat.size == 0, f"scaler dimension(s) {flat.tolist()} have max <= min (constant data?)")
        self.mins = mins
        self.maxs = maxs

    @classmethod
    def fit(cls, x: np.ndarray) -> LimitsScaler:
        """Limits of ``x[N, D]`` per dimension."""
        x = np.asarray(x)
        require(x.ndim == 2 and x.shape[0] > 0, f"LimitsScaler.fit needs a non-empty [N, D] array, got {x.shape}")
        return cls(x.min(axis=0), x.max(axis=0))

    @property
    def dim(self) -> int:
        return self.mins.shape[0]

    def _limits(self, x: Array) -> tuple[Array, Array]:
        require(x.shape[-1] == self.dim, f"scaler fitted on {self.dim} dims, got last dim {x.shape[-1]}")
        if isinstance(x, torch.Tensor):
            return (torch.as_tensor(self.mins, dtype=x.dtype, device=x.device),
                    torch.as_tensor(self.maxs, dtype=x.dtype, device=x.device))
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
        return self.mins.astype(dtype), self.maxs.astype(dtype)

    def normalize(self, x: Array) -> Array:
        """[..., D] in data units -> [..., D] with the fitted range on [-1, 1]."""
        lo, hi = self._limits(x)
        return 2 * (x - lo) / (hi - lo) - 1

    def unnormalize(self, x: Array) -> Array:
        """Inverse of ``normalize``; values outside [-1, 1] extrapolate linearly (no clipping here:
        the sampler clips x0, so clipping again would hide a bug)."""
        lo, hi = self._limits(x)
        return (x + 1) / 2 * (hi - lo) + lo

    def state_dict(self) -> dict[str, list]:
        return {"mins": self.mins.tolist(), "maxs": self.maxs.tolist()}

    @classmethod
    def from_state_dict(cls, state: dict[str, list]) -> LimitsScaler:
        missing = {"mins", "maxs"} - set(state)
        require(not missing, f"scaler state is missing {sorted(missing)}")
        return cls(np.asarray(state["mins"]), np.asarray(state["maxs"]))


class TrajectoryScaler:
    """Separate limits for actions and observations (the Diffuser scales them apart)."""

    def __init__(self, actions: LimitsScaler, observations: LimitsScaler):
        self.actions = actions
        self.observations = observations

    @classmethod
    def fit(cls, data: dict[str, np.ndarray]) -> TrajectoryScaler:
        """Fit on a D4RL-style dict with ``actions [N, A]`` and ``observations [N, O]``."""
        for key in ("actions", "observations"):
            if key not in data:
                raise ConfigError(f"TrajectoryScaler.fit: data has no {key!r} (keys: {sorted(data)})")
        return cls(LimitsScaler.fit(data["actions"]), LimitsScaler.fit(data["observations"]))

    def normalize_observations(self, x: Array) -> Array:
        return self.observations.normalize(x)

    def unnormalize_observations(self, x: Array) -> Array:
        return self.observations.unnormalize(x)

    def normalize_actions(self, x: Array) -> Array:
        return self.actions.normalize(x)

    def unnormalize_actions(self, x: Array) -> Array:
        return self.actions.unnormalize(x)

    def state_dict(self) -> dict[str, dict[str, list]]:
        return {"actions": self.actions.state_dict(), "observations": self.observations.state_dict()}

    @classmethod
    def from_state_dict(cls, state: dict[str, dict[str, list]]) -> TrajectoryScaler:
        missing = {"actions", "observations"} - set(state)
        require(not missing, f"trajectory scaler state is missing {sorted(missing)}")
        return cls(LimitsScaler.from_state_dict(state["actions"]),
                   LimitsScaler.from_state_dict(state["observations"]))
