"""MLP probes (two hidden ReLU layers) trained for all probe sites at once.

A probe reads one time column of an activation h_l [C, T] and regresses the target at that index
(Pfrommer et al. 2025, Sec. 2). All sites are trained together in one batched module: sites with fewer
channels are zero-padded, and since a padded input is always zero its weights get zero gradient, so
each site's probe trains exactly as it would alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from diffnorm.probing.stats import localized_indices


class BatchedMLP(nn.Module):
    """``sites`` independent MLPs in_dim -> hidden -> hidden -> 1, evaluated with batched matmuls."""

    def __init__(self, sites: int, in_dim: int, hidden: int = 64):
        super().__init__()
        dims = [in_dim, hidden, hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(dims[:-1], dims[1:]):
            bound = 1 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(sites, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(sites, 1, fan_out).uniform_(-bound, bound)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [sites, N, in_dim] -> [sites, N]."""
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if i < len(self.weights) - 1:
                x = torch.relu(x)
        return x.squeeze(-1)


def _columns(activations: list[torch.Tensor], width: int) -> torch.Tensor:
    """[N, C_s, T] per site -> [sites, N*T, width] time columns, zero-padded to ``width`` channels."""
    cols = [a.transpose(1, 2).reshape(-1, a.shape[1]) for a in activations]
    return torch.stack([nn.functional.pad(c, (0, width - c.shape[1])) for c in cols])


class SiteProbes:
    """Probes for a fixed list of sites: ``fit`` on activations, ``predict`` per-index predictions."""

    def __init__(self, channels: list[int], hidden: int = 64, seed: int = 0):
        torch.manual_seed(seed)
        self.width = max(channels)
        self.mlp = BatchedMLP(len(channels), self.width, hidden)
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None

    def _standardize(self, cols: torch.Tensor) -> torch.Tensor:
        return (cols - self.mean) / self.std

    def fit(self, activations: list[torch.Tensor], target: torch.Tensor, steps: int = 1500,
            batch_size: int = 1024, lr: float = 1e-3, progress: bool = False) -> list[float]:
        """Train on activations [N, C_s, T] per site against ``target`` [T]; returns the mean loss per step."""
        cols = _columns(activations, self.width)
        self.mean = cols.mean(1, keepdim=True)
        self.std = cols.std(1, keepdim=True).clamp_min(1e-6)
        cols = self._standardize(cols)
        n, length = activations[0].shape[0], activations[0].shape[2]
        labels = target.to(cols.dtype).repeat(n)  # column (sample, index) -> target[index]
        opt = torch.optim.Adam(self.mlp.parameters(), lr=lr)
        losses = []
        for _ in tqdm(range(steps), desc="probes", disable=not progress, leave=False):
            idx = torch.randint(0, n * length, (batch_size,))
            pred = self.mlp(cols[:, idx])
            # Summed over sites so each probe gets exactly its own gradient.
            loss = ((pred - labels[idx]) ** 2).mean(1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item() / len(activations))
        return losses

    @torch.no_grad()
    def predict(self, activations: list[torch.Tensor]) -> torch.Tensor:
        """Predictions [sites, N, T] for activations [N, C_s, T] per site."""
        n, length = activations[0].shape[0], activations[0].shape[2]
        pred = self.mlp(self._standardize(_columns(activations, self.width)))
        return pred.reshape(len(activations), n, length)


def localize_sites(train: Sequence[torch.Tensor], test: Sequence[torch.Tensor],
                   target: Callable[[int], torch.Tensor], alpha: float, steps: int, hidden: int,
                   batch_size: int, lr: float, seed: int, periods: Sequence[int] | None = None,
                   predict_batch: int = 64) -> list[np.ndarray]:
    """bool[T_s] per site: the indices a probe on that site localizes (Definition 2.3).

    ``train`` and ``test`` hold one activation [N, C_s, T_s] per site. Probes read one time column and
    regress ``target(T_s)`` at its index. Sites of equal length share one batched ``SiteProbes``; a
    U-Net's levels have different lengths, so each length gets its own (seeded ``seed + k``).
    ``periods[s]`` is the neighbour distance of the Welch test for site s (``localized_indices``).
    Test predictions are made ``predict_batch`` samples at a time (the padded columns of all test
    samples at once would need several times the activations' memory).
    """
    if len(train) != len(test):
        raise ValueError(f"{len(train)} training but {len(test)} test activations")
    periods = list(periods) if periods is not None else [1] * len(train)
    masks: list[np.ndarray | None] = [None] * len(train)
    lengths = sorted({a.shape[2] for a in train}, reverse=True)
    for k, length in enumerate(lengths):
        group = [i for i, a in enumerate(train) if a.shape[2] == length]
        probes = SiteProbes([train[i].shape[1] for i in group], hidden=hidden, seed=seed + k)
        probes.fit([train[i] for i in group], target(length), steps=steps, batch_size=batch_size, lr=lr)
        n_test = test[group[0]].shape[0]
        preds = torch.cat([probes.predict([test[i][start:start + predict_batch] for i in group])
                           for start in range(0, n_test, predict_batch)], dim=1).numpy()
        for i, p in zip(group, preds):
            masks[i] = localized_indices(p, alpha, period=periods[i])
    return masks
