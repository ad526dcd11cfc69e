"""The case study from one command (``make study``): data -> toy Fig. 1 -> quick planners per norm ->
leak probe -> planning rollouts -> ``report.md`` that opens with the answer.

Every stage is the package's own job function on a config composed exactly as its script would
compose it, writing into a sub-directory of the study's run directory; the report only reads their
results.json files. Rerun into the same directory, a study reuses what is finished: trainings by
``train_or_reuse``'s rule (and continues one stopped part-way), every other stage when it was run with
the same overrides on inputs that were themselves reused.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from diffnorm.config import job_function
from diffnorm.experiments.common import compose_job, compose_training, json_bytes, write_results
from diffnorm.experiments.diffuser import train_or_reuse
from diffnorm.experiments.parallel import map_trials
from diffnorm.io import atomic_write_bytes
from diffnorm.plotting.grid import image_grid
from diffnorm.probing.stats import welch_difference


def run_composed(job: str, overrides: list[str], out: str) -> dict[str, Any]:
    """Compose ``job``'s config with ``overrides`` and run the job (``config.job_function``) into ``out``.

    Top-level so worker processes can run it: they compose their own config.
    """
    Path(out).mkdir(parents=True, exist_ok=True)  # as Hydra would have made it
    return job_function(job)(compose_job(job, overrides), Path(out))


STAGE_RECORD = "study_stage.json"  # the job and overrides a stage directory's results.json came from


def run_or_reuse(job: str, overrides: list[str], out: str,
                 inputs_reused: bool = True) -> tuple[dict[str, Any], bool]:
    """(results, reused): ``out``'s finished run when it came from the same ``job`` and ``overrides`` and
    its inputs (``inputs_reused``: the checkpoints it reads were not retrained) are unchanged; otherwise
    ``run_composed``. Top-level so worker processes can run it."""
    path, settings = Path(out), {"job": job, "overrides": list(overrides)}
    record = path / STAGE_RECORD
    if (inputs_reused and (path / "results.json").is_file() and record.is_file()
            and json.loads(record.read_text()) == settings):
        print(f"[study] {path}: reusing the finished {job} run there", flush=True)
        return json.loads((path / "results.json").read_text()), True
    record.unlink(missing_ok=True)  # a stage stopped while being replaced is never taken for the old one
    results = run_composed(job, overrides, out)
    atomic_write_bytes(record, json_bytes(settings))
    return results, False


def study(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Run every stage of the study and write report.md; see configs/study.yaml."""
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    # A rerun reuses finished stages: their work's wall time is the one measured when it was done.
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    measured_before = previous.get("wall_time_s", {})
    reused_stages: set[str] = set()

    began = time.perf_counter()

    def stage(name: str, fn, *args) -> Any:
        start = time.perf_counter()
        print(f"[study] {name} ...", flush=True)
        result = fn(*args)
        timings[name] = round(time.perf_counter() - start, 1)
        print(f"[study] {name}: done in {timings[name]:.0f} s (elapsed {time.perf_counter() - began:.0f} s)", flush=True)
        return result

    env = [f"env={cfg.env}"]
    train_cfg = compose_training(env + list(cfg.train_overrides))
    data_overrides = env + [f"steps={train_cfg.env.dataset_steps}", f"seed={train_cfg.data_seed}",
                            f"data_dir={train_cfg.data_dir}", "progress=false"]
    data = stage("data", run_composed, "make_maze_dataset", data_overrides, str(out / "data"))
    toy, toy_reused = stage("toy", run_or_reuse, "localization", list(cfg.toy_overrides), str(out / "toy"))

    runs = {str(n): out / "train" / str(n) for n in cfg.norms}
    train_jobs = [dict(out=run, overrides=env + list(cfg.train_overrides) + [f"norm={n}", f"seed={cfg.seed}"])
                  for n, run in runs.items()]
    trained, reused = zip(*stage("train", map_trials, train_or_reuse, train_jobs, cfg.workers,
                                 "train planners"))

    checkpoints = "[" + ",".join(str(r) for r in runs.values()) + "]"
    leak, leak_reused = stage("leak_probe", run_or_reuse, "leak_probe",
                              [f"checkpoints={checkpoints}"] + list(cfg.leak_overrides), str(out / "leak"), all(reused))
    plan_jobs = [dict(job="plan_maze", out=str(out / "plan" / n), inputs_reused=r,
                      overrides=[f"checkpoint={run}", f"seed={cfg.seed}", "progress=false"] + list(cfg.plan_overrides))
                 for (n, run), r in zip(runs.items(), reused)]
    plans = stage("plan", map_trials, run_or_reuse, plan_jobs, cfg.workers, "plan rollouts")
    planned = {n: p for n, (p, _) in zip(runs, plans)}
    reused_stages.update(name for name, was in (("toy", toy_reused), ("train", all(reused)),
                                                 ("leak_probe", leak_reused), ("plan", all(r for _, r in plans))) if was)

    def report() -> dict[str, Any]:
        work = {k: measured_before[k] if k in reused_stages and k in measured_before else v for k, v in timings.items()}
        results = summarize(cfg, data, toy, dict(zip(runs, trained)), leak, planned, work)
        results["this_run_wall_time_s"] = {**timings, "total": round(sum(timings.values()), 1)}
        results["reused_stages"] = sorted(reused_stages)
        results["figures"] = {"train_samples": sample_grid(out, list(runs))}
        write_results(out, results)
        write_report(out / "report.md", results, out)
        return results

    results = stage("report", report)
    print(f"[study] report: {out / 'report.md'}")
    return results


def summarize(cfg: DictConfig, data: dict, toy: dict, trained: dict, leak: dict, planned: dict,
              timings: dict[str, float]) -> dict[str, Any]:
    """The numbers the report states, gathered from every stage's results."""
    base = cfg.baseline
    scores = {n: [e["score"] for e in p["per_episode"]] for n, p in planned.items()}
    comparisons = {n: welch_difference(scores[n], scores[base]) for n in scores if n != base}
    return {
        "settings": OmegaConf.to_container(cfg, resolve=True),
        "baseline": base,
        "data": {k: data[k] for k in ("env", "steps", "checks")},
        "toy": toy["norms"],
        "training": {n: {k: t.get(k) for k in ("final_loss", "steps", "wall_time_s", "preset") if k in t}
                     for n, t in trained.items()},
        "leak": {"receptive_field": leak["receptive_field"], "comparison": leak["comparison"],
                 **{k: next(iter(leak["models"].values()))[k] for k in ("horizon", "trained_horizon")}},
        "planning": {n: {k: p[k] for k in ("episodes", "score_mean", "score_sem", "success_rate",
                                           "plan_in_wall_fraction", "plan_goal_jump_mean")} for n, p in planned.items()},
        "score_difference_vs_baseline": comparisons,
        "wall_time_s": {**timings, "total": round(sum(timings.values()), 1)},
    }


def _fmt(x: Any, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def _seeds(values: list) -> str:
    return ", ".join(str(v) for v in values)


# What to look at in each figure the study writes, by its path inside the run directory ("*" = any norm).
CAPTIONS = {
    "data/coverage.png": "Where the generated umaze data goes. Look for every free cell visited and no position "
                         "inside a wall.",
    "toy/fig1a_predictions.png": "Toy Fig. 1a: predicted against true position index on pure noise. Without a "
                                 "norm only indices within the receptive field of an edge are predicted; with "
                                 "InstanceNorm every index is.",
    "toy/fig1b_probes.png": "Toy Fig. 1b: indices localized by a probe on each layer (Welch's test). Look at how far "
                            "from the edges the localized band reaches per layer.",
    "leak/influence_heatmaps.png": "Influence |d output_i / d input_j| of one forward pass, per norm. Outside the "
                                   "dashed band lies what the receptive field cannot reach: `none` is exactly zero "
                                   "there, anything visible there is the side channel.",
    "leak/influence_profiles.png": "The same influence averaged by offset j - i (log scale). Look beyond the "
                                   "receptive-field lines: the norm's curve stays up, `none` drops to zero.",
    "leak/probe_localization.png": "Plan indices that a probe on each site localizes (dark cells; red lines: the "
                                   "receptive field from each end). Localized cells beyond the red lines would be "
                                   "a learned position code.",
    "leak/condition_leakage.png": "How much each plan index moves when only the goal (or start) changes, one "
                                  "forward pass. Indices that cannot see the goal move only through the norm.",
    "leak/chain_leakage.png": "How much the final plan moves when only the goal changes, through the whole "
                              "sampling chain (chain leakage): every denoising step lets each index see further, so "
                              "even `none` spreads the goal step by step.",
    "train/samples.png": "Plans sampled by each planner during training (rows: norms; columns: the first, middle "
                         "and last sampling step; start green, goal red, grey the data window). Look for plans that "
                         "join their start and goal through free cells.",
    "train/*/loss.png": "Training loss of the planner with this norm.",
    "plan/*/overview.png": "Every plan of this planner (left, coloured by plan step: dark start, light goal) and "
                           "every rollout (right, one colour per episode, green dot at its start); the goal's "
                           "reward circle in red.",
    "plan/*/episodes.png": "One panel per episode: the plan, the rollout that followed it, and the score.",
}


def caption(rel: str) -> str:
    """The caption of a study figure (``rel``: its path in the run directory)."""
    parts = rel.split("/")
    generic = "/".join([parts[0], "*", *parts[2:]]) if len(parts) > 2 else rel
    return CAPTIONS.get(rel) or CAPTIONS.get(generic) or "What this figure shows is described in its title and axes."


def sample_grid(out: Path, norms: list[str]) -> Path | None:
    """One figure of every planner's training sample plots (rows: norms, columns: steps)."""
    rows = {n: sorted((out / "train" / n / "samples").glob("step_*.png")) for n in norms}
    if not any(rows.values()):
        return None
    steps = sorted({p.stem for paths in rows.values() for p in paths})
    steps = sorted({steps[0], steps[len(steps) // 2], steps[-1]})  # first, middle, last: legible panels
    cells = [[next((p for p in rows[n] if p.stem == s), None) for s in steps] for n in norms]
    return image_grid(out / "train" / "samples.png", cells, row_labels=norms,
                      col_labels=[f"step {int(s.removeprefix('step_'))}" for s in steps])


def write_report(path: Path, r: dict[str, Any], out: Path) -> Path:
    """report.md: the question and the answer with its uncertainty, the terms, the evidence, every figure
    with a caption of what to look at."""
    base = r["baseline"]
    leak = r["leak"]["comparison"]
    planning = r["planning"]
    rf, h, h_trained = r["leak"]["receptive_field"], r["leak"]["horizon"], r["leak"]["trained_horizon"]
    env = r["data"]["env"]
    lines = [f"# diffnorm study: {env}, norms {', '.join(planning)}", "",
             "## Question and answer", "",
             "**Question.** Does the normalization layer of the Diffuser's temporal U-Net carry information beyond "
             "the network's receptive field, and does that change how well the planner plans?", "",
             "**Answer from this run:**", ""]
    for n, row in leak.items():
        lines.append(f"- **Leak, `{n}`**: {_fmt(row['beyond_rf_influence_fraction'])} of the influence mass lies "
                     f"beyond the receptive field; {row['localized_beyond_rf']} plan indices beyond it are "
                     f"probe-localized; one-pass goal leakage beyond it "
                     f"{_fmt(row.get('goal_one_pass_max_beyond_rf', 0.0))} (max).")
    for n, d in r["score_difference_vs_baseline"].items():
        p, b = planning[n], planning[base]
        detectable = 2.8 * (p["score_sem"] ** 2 + b["score_sem"] ** 2) ** 0.5
        verdict = ("The interval excludes zero." if d["ci_low"] > 0 or d["ci_high"] < 0 else
                   f"The interval includes zero: no detectable difference at {p['episodes']} episodes per planner "
                   f"(smallest detectable difference ≈ {detectable:.1f} points at 80 % power).")
        lines.append(
            f"- **Planning, `{n}` vs `{base}`**: normalized score {p['score_mean']:.1f} ± {p['score_sem']:.1f} vs "
            f"{b['score_mean']:.1f} ± {b['score_sem']:.1f} (mean ± s.e. over {p['episodes']} episodes, one planner "
            f"each); difference {d['difference']:+.1f}, Welch 95% CI [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}], "
            f"p = {_fmt(d['p_value'])}. {verdict}")
    lines += ["", "**What this run cannot answer.** "
              f"The planners plan {h_trained}-step windows of {env}, and every index of such a plan sees its start "
              f"and its goal in one forward pass (receptive field {rf['left']} left, {rf['right']} right), so the "
              "side channel has nothing to carry that the convolutions do not already see. Single-task "
              f"{env} therefore is not the stitching test: that is the stitching study (`scripts/stitching_study.py`, "
              "several seeds per norm), on data where no episode joins a "
              "task's start and goal. One planner per norm and one seed also cannot separate the norm from seed "
              "noise.", "",
              "## Terms", "",
              f"- **Receptive field**: the inputs one output index depends on in one forward pass without a norm: "
              f"output i sees inputs i - {rf['left']} .. i + {rf['right']} (computed, not assumed).",
              "- **Influence mass beyond the receptive field**: of the summed |d output_i / d input_j| over a plan, "
              "the fraction on pairs (i, j) outside that window. Convolutions alone give exactly 0; a norm that "
              "pools over the whole plan (GroupNorm) gives more.",
              "- **One-pass leakage**: how much output indices that cannot see the goal move when only the goal "
              "changes, in one network call: the mean absolute change of the denoised output, in the model's "
              "scaled units (every dimension in [-1, 1]); the table gives the largest over diffusion steps. **Chain leakage**: the same after the whole sampling chain; every "
              "denoising step widens what each index has seen, so even `none` shows it (it is not a leak).",
              "- **Probe-localized**: an index whose position a small probe reads from a layer's activations on "
              "pure-noise input better than chance (Welch's t-test, p < 0.05).",
              "- **Planned states in walls**: the fraction of planned positions inside a wall block. **Goal jump**: "
              "the mean length of a plan's last step; much longer than a typical step means the inpainted goal was "
              "pasted onto a plan that went elsewhere (not a connected plan).", "",
              "## Leak probe", "",
              "| norm | influence mass beyond the RF | probe-localized beyond the RF | one-pass goal leakage (max) | "
              "chain goal leakage (mean) |", "|---|---|---|---|---|"]
    for n, row in leak.items():
        lines.append(f"| {n} | {_fmt(row['beyond_rf_influence_fraction'])} | {row['localized_beyond_rf']} | "
                     f"{_fmt(row.get('goal_one_pass_max_beyond_rf', 0.0))} | {_fmt(row.get('goal_chain_mean_beyond_rf', 0.0))} |")
    first, last = rf["left"] + 1, h - 2 - rf["right"]
    blind = (f"indices {first}..{last} see neither the start nor the goal in one forward pass" if last >= first
             else "every index sees the start or the goal in one forward pass, so nothing lies beyond it")
    lines += ["", f"Measured on plans of H = {h} (the planners were trained at H = {h_trained}; the U-Net is fully "
              f"convolutional, so it runs on longer windows): {blind}.", "",
              "## Planning rollouts", "",
              "| norm | training steps (preset) | episodes | score (mean ± s.e.) | success | planned states in walls "
              "| goal jump (mean) |", "|---|---|---|---|---|---|---|"]
    for n, p in planning.items():
        t = r["training"].get(n, {})
        jump = p.get("plan_goal_jump_mean")
        lines.append(f"| {n} | {t.get('steps', '?')} ({t.get('preset', '?')}) | {p['episodes']} | "
                     f"{p['score_mean']:.1f} ± {p['score_sem']:.1f} | {p['success_rate']:.0%} | "
                     f"{p['plan_in_wall_fraction']:.1%} | {_fmt(jump) if jump is not None else 'n/a'} |")
    lines += ["", "The Diffuser's published single-task umaze score is 113.9 ± 3.1 (Janner et al. 2022).", "",
              "## Toy localization (Fig. 1)", "", "| norm | localization distance (per seed) | interior "
              "localized (per seed) |", "|---|---|---|"]
    for n, t in r["toy"].items():
        lines.append(f"| {n} | {_seeds(t['localization_distance'])} | {_seeds(t['localized_interior'])} of "
                     f"{t['interior_size']} |")
    this_run, reused = r.get("this_run_wall_time_s", r["wall_time_s"]), set(r.get("reused_stages", []))
    lines += ["", "## Wall time (s)", "", "Seconds the stage's work took (kept from the run that did it when a "
              "rerun reused it), and this run's seconds.", "", "| stage | work | this run |", "|---|---|---|"]
    lines += [f"| {k} | {v:.0f}{' (reused)' if k in reused else ''} | {this_run.get(k, v):.0f} |"
              for k, v in r["wall_time_s"].items()]
    lines += ["", "## Figures", ""]
    for png in sorted(out.rglob("*.png")):
        rel = str(png.relative_to(out))
        if "/samples/" in rel:  # drawn together in train/samples.png
            continue
        lines += [f"**{rel}.** {caption(rel)}", "", f"![{rel}]({rel})", ""]
    path.write_text("\n".join(lines) + "\n")
    return path
