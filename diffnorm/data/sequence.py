"""Episodes -> fixed-horizon training windows with start/goal conditions (Diffuser's GoalDataset).

The D4RL maze2d stream is one long trajectory. The Diffuser (Janner et al. 2022, maze2d branch,
``maze2d_set_terminals``) segments it where the agent *leaves* the evaluation-goal region, i.e. it is
within 0.5 of the fixed target at step t but not at t+1, and ignores the file's own ``timeouts``. Windows
of ``horizon`` steps lie fully inside one segment (no padding); a window is conditioned on its first and
last observation, which become the current state and the goal at planning time.

Two deliberate differences from the reference implementation, both data bookkeeping, not method:
the reference drops the last step of every segment and the trailing segment after the last cut (side
effects of building ``next_observations``), and its ``range(max_start)`` skips the last valid window
start. Here a segment ends with its cut step, the trailing segment is kept, and every start
0..L-H is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from diffnorm.data.d4rl_format import load_dataset, read_attrs, require_finite
from diffnorm.data.scaling import TrajectoryScaler
from diffnorm.envs.maze2d import maze_spec
from diffnorm.errors import ConfigError, require

GOAL_RADIUS = 0.5  # D4RL's sparse-reward radius; also the Diffuser's segmentation threshold


def episode_bounds(data: dict[str, np.ndarray], eval_goal_xy: Sequence[float] | None,
                   cut_at_timeouts: bool = False) -> list[tuple[int, int]]:
    """Half-open ``(start, end)`` index ranges of the segments the Diffuser trains on.

    A cut follows step t when the agent is within 0.5 of ``eval_goal_xy`` at t but not at t+1, or when
    ``terminals[t]`` is set (never in maze2d, but other D4RL-layout data may have it). ``timeouts`` mark
    the generator's goal changes; the Diffuser discards them, which keeps segments long enough for
    horizons of 128-384 steps, so they only cut when ``cut_at_timeouts`` is true.

    ``eval_goal_xy=None`` makes no goal-region cuts: data made of separate episodes (stitch datasets,
    ``timeouts`` at each episode's last step) has no single evaluation goal, and is cut at ``timeouts``.
    """
    for key in ("observations", "terminals"):
        if key not in data:
            raise ConfigError(f"episode_bounds: data has no {key!r} (keys: {sorted(data)})")
    xy = np.asarray(data["observations"])[:, :2]
    n = len(xy)
    cut = np.zeros(n, dtype=bool)
    if eval_goal_xy is not None:
        goal = np.asarray(eval_goal_xy, dtype=np.float64)
        require(goal.shape == (2,), f"eval_goal_xy must be (x, y), got shape {goal.shape}")
        at_goal = np.linalg.norm(xy - goal, axis=-1) < GOAL_RADIUS
        cut[:-1] = at_goal[:-1] & ~at_goal[1:]
    cut |= np.asarray(data["terminals"], dtype=bool)
    if cut_at_timeouts:
        if "timeouts" not in data:
            raise ConfigError("episode_bounds(cut_at_timeouts=True): data has no 'timeouts'")
        cut |= np.asarray(data["timeouts"], dtype=bool)
    ends = np.flatnonzero(cut) + 1
    if n and (len(ends) == 0 or ends[-1] != n):
        ends = np.append(ends, n)
    starts = np.concatenate([[0], ends[:-1]])
    return [(int(s), int(e)) for s, e in zip(starts, ends) if e > s]


class SequenceDataset(Dataset):
    """Scaled ``[action(2), observation(4)]`` windows of length ``horizon`` inside each segment.

    ``item["trajectory"]``: float32 [H, A + O]; ``item["conditions"]``: ``{0: obs_0, H-1: obs_{H-1}}``,
    both scaled, the inpainting targets of goal-conditioned planning. The scaler is fitted on the steps
    of the segments (what the model sees) unless one is given, e.g. from a checkpoint. The observation
    width is the data's (4 in maze2d, 2 in OGBench's pointmaze); segments as in ``episode_bounds``.
    """

    def __init__(self, data: dict[str, np.ndarray], horizon: int, eval_goal_xy: Sequence[float] | None,
                 scaler: TrajectoryScaler | None = None, cut_at_timeouts: bool = False):
        require(int(horizon) == horizon and horizon >= 2, f"horizon={horizon} must be an integer >= 2")
        for key in ("observations", "actions"):
            if key not in data:
                raise ConfigError(f"SequenceDataset: data has no {key!r} (keys: {sorted(data)})")
        observations = np.asarray(data["observations"], dtype=np.float64)
        actions = np.asarray(data["actions"], dtype=np.float64)
        require(len(observations) == len(actions),
                f"observations ({len(observations)}) and actions ({len(actions)}) differ in length")
        for key, arr in (("observations", observations), ("actions", actions)):
            # In-memory data has not been through load_d4rl_hdf5's checks; a NaN here would only show
            # up later as a NaN loss.
            require(arr.ndim == 2 and len(arr) > 0, f"SequenceDataset: {key!r} has shape {arr.shape}, "
                    "expected [N > 0, dim]: there are no steps to cut into episodes")
            require_finite(arr, key, "SequenceDataset")
        self.horizon = int(horizon)
        self.bounds = episode_bounds(data, eval_goal_xy, cut_at_timeouts=cut_at_timeouts)
        lengths = np.array([e - s for s, e in self.bounds])
        require(len(lengths) > 0 and lengths.max() >= self.horizon,
                f"horizon={horizon} is longer than every episode (longest: "
                f"{int(lengths.max()) if len(lengths) else 0} steps in {len(lengths)} episodes)")
        if scaler is None:
            used = np.concatenate([np.arange(s, e) for s, e in self.bounds])
            scaler = TrajectoryScaler.fit({"observations": observations[used], "actions": actions[used]})
        self.scaler = scaler
        # One contiguous scaled array; windows index into it (a window never crosses a segment end).
        scaled = np.concatenate([scaler.normalize_actions(actions), scaler.normalize_observations(observations)],
                                axis=-1)
        self._trajectories = torch.from_numpy(scaled.astype(np.float32))
        self.action_dim = actions.shape[-1]
        self.observation_dim = observations.shape[-1]
        self.starts = np.concatenate([np.arange(s, e - self.horizon + 1) for s, e in self.bounds
                                      if e - s >= self.horizon]).astype(np.int64)

    @property
    def transition_dim(self) -> int:
        return self.action_dim + self.observation_dim

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict:
        start = int(self.starts[index])
        trajectory = self._trajectories[start:start + self.horizon]
        observations = trajectory[:, self.action_dim:]
        return {"trajectory": trajectory.clone(),
                "conditions": {0: observations[0].clone(), self.horizon - 1: observations[-1].clone()}}


def training_windows(path: str | Path, maze: str, horizon: int, frame: str = "auto",
                     scaler: TrajectoryScaler | None = None) -> tuple[SequenceDataset, dict[str, Any]]:
    """A D4RL-format file as the Diffuser's training set: read into the package's coordinate frame
    (``frame`` as ``load_dataset`` takes it), cut into ``horizon``-step windows [H, A + O] and scaled
    with ``scaler`` (fitted on the data when None); and where it came from (path, frame and why).

    A file of separate episodes (stitch and OGBench recipes: ``segments = "timeouts"`` in its metadata)
    is cut at its timeouts only and keeps the observation width it has (OGBench's point: positions
    only); a D4RL stream is cut at timeouts and at arrivals at ``maze``'s evaluation goal, as D4RL's
    maze2d loader does, with 4-dim observations."""
    separate = read_attrs(path).get("segments") == "timeouts"
    data, source = load_dataset(path, maze=maze, frame=frame, observation_dim=None if separate else 4)
    source.pop("attrs")
    dataset = SequenceDataset(data, horizon, None if separate else maze_spec(maze).eval_goal_xy, scaler=scaler,
                              cut_at_timeouts=separate)
    return dataset, source

