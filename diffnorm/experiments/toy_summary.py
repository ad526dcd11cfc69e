"""The toy reproduction's claims, each judged from the finished runs of the toy jobs.

``toy_summary(cfg, out)`` reads the ``results.json`` of each toy run named in ``cfg.runs`` and writes one
entry per claim of Pfrommer et al. (2025): ``{claim_id: {"paper", "ours", "matches", "seeds"}}``. Each
claim's rule for ``matches`` is fixed here, before any number is seen, so the summary cannot be edited
into agreement; ``ours`` quotes the measured numbers the rule used.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from diffnorm.errors import ConfigError, require
from diffnorm.experiments.common import json_bytes, resolve_path, write_results
from diffnorm.io import atomic_write_bytes

Claim = dict[str, Any]


def _claim(paper: str, ours: str, matches: bool, seeds: int) -> Claim:
    return {"paper": paper, "ours": ours, "matches": bool(matches), "seeds": int(seeds)}


def _norm_entry(fig1: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    labels = [k for k in fig1["norms"] if k != "none"]
    require(labels, "the localization run compared no norm with none: run it with a norm (e.g. norm=instance)")
    return labels[0], fig1["norms"][labels[0]]


def _needs(results: dict[str, Any], key: str, job: str) -> Any:
    require(results.get(key) is not None, f"the {job} run has no {key!r}: rerun scripts/{job}.py with this version")
    return results[key]


def fig1_none_edges(fig1: dict[str, Any]) -> Claim:
    r, none = fig1["receptive_field"], fig1["norms"]["none"]
    ok = all(d == r for d in none["localization_distance"]) and not any(none["localized_interior"]) \
        and all(n == 2 * r for n in none["localized_total"])
    return _claim("Without normalization the CNN localizes only the indices within its receptive field of "
                  "either edge, none in the interior.",
                  f"none: localization distance {none['localization_distance']} (r = {r}), indices localized "
                  f"{none['localized_total']} of {fig1['settings']['length']}, interior {none['localized_interior']} "
                  f"of {none['interior_size']} per seed", ok, len(none["localized_total"]))


def fig1_norm_all(fig1: dict[str, Any]) -> Claim:
    label, norm = _norm_entry(fig1)
    length = fig1["settings"]["length"]
    return _claim("With a normalization layer the same CNN localizes every index of the sequence, far beyond "
                  "its receptive field.",
                  f"{label}: indices localized {norm['localized_total']} of {length}, test MSE "
                  f"{[round(x, 4) for x in norm['test_loss']]} (none: "
                  f"{[round(x, 4) for x in fig1['norms']['none']['test_loss']]}) per seed",
                  all(n == length for n in norm["localized_total"]), len(norm["localized_total"]))


def _probe_reach(mask: np.ndarray) -> int:
    """How far from the nearer edge the farthest localized index of one layer lies (0: none)."""
    length = mask.shape[-1]
    idx = np.flatnonzero(mask)
    return int(max((min(i + 1, length - i) for i in idx), default=0))


def fig1b_depth(fig1: dict[str, Any]) -> Claim:
    s = fig1["settings"]
    step = (s["kernel_size"] - 1) // 2
    require(s.get("probe"), "the localization run has no probes: rerun scripts/localization.py without probe=null")
    none = [np.asarray(m, bool) for m in _needs(fig1["norms"]["none"], "probe_localized", "localization")]
    label, norm = _norm_entry(fig1)
    normed = [np.asarray(m, bool) for m in _needs(norm, "probe_localized", "localization")]
    length, layers = s["length"], len(none[0])
    # Hidden layer l (0-based) has seen l + 1 convolutions: its receptive field is (l + 1) * step per side.
    # Beyond it the norm-free layer is translation equivariant, so a probe "localizes" there only by a
    # false positive of Welch's test; a few of the ~T x layers x seeds tests may be, hence a 1 % tolerance.
    beyond = [(layer[(l + 1) * step:length - (l + 1) * step]) for seed in none for l, layer in enumerate(seed)]
    false_rate = sum(int(b.sum()) for b in beyond) / sum(b.size for b in beyond)
    reach = [[_probe_reach(layer) for layer in seed] for seed in none]
    grows = all(seed[-1] >= layers * step - step for seed in reach)  # information does travel inward
    r_last = layers * step
    inner = slice(r_last, length - r_last)
    last = [int(seed[-1][inner].sum()) for seed in normed]
    ok = false_rate <= 0.01 and grows and all(n >= (inner.stop - inner.start) / 2 for n in last)
    return _claim("Probes on each layer: without normalization position information spreads inward from the "
                  "edges by about (k-1)/2 indices per layer; with normalization the last layers localize the "
                  "interior.",
                  f"none: farthest probe-localized index from the nearer edge, per layer, {reach[0]} (seed 0; "
                  f"receptive fields {[(l + 1) * step for l in range(layers)]}); last layer's reach per seed "
                  f"{[seed[-1] for seed in reach]}; probe-localized indices beyond a layer's receptive field "
                  f"{false_rate:.2%} of those tested; {label}: last hidden layer localizes {last} of "
                  f"{inner.stop - inner.start} indices beyond its receptive field per seed",
                  ok, min(len(none), len(normed)))


def fig3_overlap(fig3: dict[str, Any]) -> Claim:
    length = fig3["settings"]["length"]
    firsts = list(_needs(fig3, "first_overlap_below_half_per_seed", "packnorm_overlap").values())
    at_zero = fig3["test_mse"].get("0")  # JSON keys: the overlap 0 as a string
    mean = {o: round(m, 3) for o, m in fig3["mean_test_mse"].items()}
    ok = at_zero is not None and all(m >= 0.9 * fig3["constant_prediction_loss"] for m in at_zero) \
        and all(o is not None and abs(o - length / 2) <= length / 8 for o in firsts)
    return _claim("Two streams coupled only by PackNorm: without overlap the MSE equals the constant-prediction "
                  "loss; it falls to near zero from an overlap of about half the sequence length.",
                  f"T = {length}: MSE at overlap 0 {[round(x, 4) for x in at_zero or []]} (constant prediction "
                  f"{fig3['constant_prediction_loss']}); first overlap with MSE below half of it per seed {firsts}; "
                  f"mean MSE per overlap {mean}",
                  ok, len(firsts))


def fig4_groups_trend(fig4: dict[str, Any]) -> Claim:
    groups = fig4["groups"]
    trend = fig4.get("trend") or {}
    ok = trend.get("spearman_rho", 0.0) > 0 and trend.get("p_value", 1.0) < 0.05
    interior = {g: round(e["localized_interior"]["mean"], 1) for g, e in groups.items()}
    more = {g: round(e["more_tests"]["localized_interior"]["mean"], 1) for g, e in groups.items() if "more_tests" in e}
    distance = {g: round(e["localization_distance"]["mean"], 1) for g, e in groups.items()}
    return _claim("GroupNorm: localization grows with the number of groups, each group one more channel.",
                  f"interior indices localized (of {fig4['interior_size']}, mean over seeds) per groups {interior}"
                  + (f", with n_test={fig4['settings']['n_test_more']} {more}" if more else "")
                  + f"; localization distance {distance}"
                  + (f"; Spearman rho {trend['spearman_rho']:.2f} (p = {trend['p_value']:.2g}, {trend['n']} networks)"
                     if trend else "; no trend computable"),
                  ok, min(len(e["localized_interior"]["per_seed"]) for e in groups.values()))


def _batch_rows(fig56: dict[str, Any], mode: str) -> tuple[int, list[int], list[float]]:
    smallest = min(fig56["settings"]["batch_sizes"])
    row = fig56["modes"][f"BatchNorm batch {smallest}, {mode} stats"]
    return smallest, row["localized_interior"], row["test_loss"]


def fig56_batch_minibatch(fig56: dict[str, Any]) -> Claim:
    b, interior, loss = _batch_rows(fig56, "minibatch")
    none = fig56["modes"]["no norm"]
    size = none["interior_size"]
    others = {k: v["localized_interior"] for k, v in fig56["modes"].items() if "minibatch" in k}
    return _claim("BatchNorm with a small normalization batch (gradient accumulation keeps the effective batch "
                  "large) localizes the interior when minibatch statistics are used at inference.",
                  f"b = {b}, minibatch statistics: interior localized {interior} of {size}, test MSE "
                  f"{[round(x, 4) for x in loss]} (no norm: {none['localized_interior']}, "
                  f"{[round(x, 4) for x in none['test_loss']]}); all minibatch settings {others}",
                  all(n > 0 for n in interior) and not any(none["localized_interior"]), len(interior))


def fig56_batch_population(fig56: dict[str, Any]) -> Claim:
    b, interior, loss = _batch_rows(fig56, "population")
    _, mini, mini_loss = _batch_rows(fig56, "minibatch")
    # With population statistics the trained network is norm-free at inference, so the interior is lost
    # by construction; what is measured is that the same networks localized it with minibatch statistics.
    ok = all(m > 0 for m in mini) and not any(interior) and all(p > m for p, m in zip(loss, mini_loss))
    return _claim("With population (running) statistics at inference the same BatchNorm networks lose the "
                  "ability: a new explanation of BatchNorm's small-batch train/eval gap.",
                  f"b = {b}, population statistics: interior localized {interior} (minibatch: {mini}), test MSE "
                  f"{[round(x, 4) for x in loss]} (minibatch: {[round(x, 4) for x in mini_loss]}) per seed",
                  ok, len(interior))


def sec32_uninformative_inputs(inputs: dict[str, Any]) -> Claim:
    table = inputs["inputs"]
    kinds = {row["inputs"]["kind"] for row in table.values()}
    require({"gaussian", "constant"} <= kinds, "the uninformative-inputs run needs gaussian and constant inputs")
    # The prediction is about unique windows: Gaussian and quantized noise give every index a window no
    # other index sees (2^33 binary windows at r = 16), so they should localize; a periodic pattern or a
    # constant repeats every window, so no index can be told from those with its window. The latter holds
    # by construction for any weights; the measured content is the former and Definition 2.3's count.
    unique = [row for row in table.values() if row["inputs"]["kind"] in ("gaussian", "quantized")]
    repeated = [row.get("localized_interior_vs_repeats", row["localized_interior"])["per_seed"]
                for row in table.values() if row["inputs"]["kind"] in ("periodic", "constant")]
    ok = all(n > 0 for row in unique for n in row["localized_interior"]["per_seed"]) \
        and not any(n for counts in repeated for n in counts)
    listed = "; ".join(f"{label}: {row['localized_interior']['per_seed']}"
                       + (f" (told apart from its repeats: {row['localized_interior_vs_repeats']['per_seed']})"
                          if "localized_interior_vs_repeats" in row else "")
                       for label, row in table.items())
    return _claim("Communication through the norm needs informative inputs: where overlapping receptive fields "
                  "see non-unique patterns (constant or low-entropy sequences) the network localizes nothing, "
                  "even with a norm.",
                  f"{inputs['norm']}, interior indices localized (of {inputs['interior_size']}, Definition 2.3) "
                  f"per seed: {listed}",
                  ok, min(len(row["localized_interior"]["per_seed"]) for row in table.values()))


def channel_is_leak_free(norms: dict[str, Any]) -> Claim:
    r, table = norms["receptive_field"], norms["norms"]
    require("channel" in table and "none" in table, "the norm table needs the channel and none rows")
    channel, none = table["channel"], table["none"]
    ok = not any(channel["localized_interior"]["per_seed"]) and all(
        d == r for d in channel["localization_distance"]["per_seed"])
    others = {k: v["localized_interior"]["per_seed"] for k, v in table.items()}
    leaks = sum(n > 0 for n in channel["localized_interior"]["per_seed"])
    short = sum(d < r for d in channel["localization_distance"]["per_seed"])
    return _claim("ChannelNorm pools over channels at each index only, so it opens no side channel: it localizes "
                  "exactly like no norm (this project's prediction; no anchor).",
                  f"channel: interior localized {channel['localized_interior']['per_seed']} of "
                  f"{norms['interior_size']} ({'no interior index in any seed' if not leaks else f'{leaks} seeds leak'}; "
                  f"none: {none['localized_interior']['per_seed']}); localization distance "
                  f"{channel['localization_distance']['per_seed']} against r = {r} (short of the edges' reach in "
                  f"{short} seeds; none: {none['localization_distance']['per_seed']}), test MSE "
                  f"{[round(x, 4) for x in channel['test_loss']['per_seed']]} (none: "
                  f"{[round(x, 4) for x in none['test_loss']['per_seed']]}); every norm's interior count {others}",
                  ok, len(channel["localized_interior"]["per_seed"]))


# claim id -> (the toy run it is judged from, its rule)
CLAIMS: dict[str, tuple[str, Callable[[dict[str, Any]], Claim]]] = {
    "fig1_none_edges": ("localization", fig1_none_edges),
    "fig1_norm_all": ("localization", fig1_norm_all),
    "fig1b_depth": ("localization", fig1b_depth),
    "fig3_overlap": ("packnorm_overlap", fig3_overlap),
    "fig4_groups_trend": ("groupnorm_groups", fig4_groups_trend),
    "fig56_batch_minibatch": ("batchnorm_stats", fig56_batch_minibatch),
    "fig56_batch_population": ("batchnorm_stats", fig56_batch_population),
    "sec32_uninformative_inputs": ("uninformative_inputs", sec32_uninformative_inputs),
    "channel_is_leak_free": ("localization_norms", channel_is_leak_free),
}


def toy_summary(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Judge every claim in ``CLAIMS`` from the runs in ``cfg.runs`` (job name -> run directory) and write
    ``{claim_id: {"paper", "ours", "matches", "seeds"}}`` to results.json and, if set, ``cfg.summary``."""
    runs = {}
    for job in dict.fromkeys(job for job, _ in CLAIMS.values()):  # in the order of the claims
        path = resolve_path(cfg.runs[job]) / "results.json"
        require(path.is_file(), f"runs.{job}={cfg.runs[job]} is not a finished {job} run (no results.json)")
        runs[job] = json.loads(path.read_text())
    claims = {}
    for claim_id, (job, rule) in CLAIMS.items():
        try:
            claims[claim_id] = rule(runs[job])
        except ConfigError as err:  # say which run the rule could not read
            raise ConfigError(f"runs.{job}={cfg.runs[job]}: {err}") from None
    write_results(out_dir, claims)
    if cfg.summary:
        atomic_write_bytes(resolve_path(cfg.summary), json_bytes(claims))
    for claim_id, claim in claims.items():
        print(f"{claim_id:>28}: {'matches' if claim['matches'] else 'DIFFERS'} ({claim['seeds']} seeds): {claim['ours']}")
    return claims
