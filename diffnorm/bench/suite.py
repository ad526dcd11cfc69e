"""The speed benchmark: one table, every speed-up a ratio against a plain reference timed in
the same run (``diffnorm.bench.plain``), and achieved GFLOP/s against a large fp32 matmul, also measured
in the same run (so a loaded machine lowers both, and the ratios stay meaningful).

Rows: training throughput (trajectories/s) of the published network (dim 32, mults 1,4,8, transition
dim 6) per norm, eager vs torch.compile, fp32 vs bf16 autocast (where the device has native bf16);
planning latency for a batch of 64 plans with the published step count and with a fast sampler (plus
CUDA graphs on GPU); probe training and influence-map time; dataset generation steps/s.

This is a benchmark, not a test: it asserts nothing, it reports. ``scripts/bench.py`` is the entry point.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from diffnorm.analysis.influence import influence_map
from diffnorm.bench.plain import PlainTemporalUnet, PlainTrainer
from diffnorm.devices import bf16_supported, resolve_device
from diffnorm.diffusion.gaussian import GaussianDiffusion
from diffnorm.models.norms import norm_factory
from diffnorm.models.temporal_unet import TemporalUnet
from diffnorm.probing.hooks import record_activations
from diffnorm.probing.probes import SiteProbes
from diffnorm.training.ema import EMA
from diffnorm.training.loop import step_generator
from diffnorm.training.step import GradientStep, make_optimizer

log = logging.getLogger(__name__)

TRANSITION_DIM, ACTION_DIM = 6, 2
PUBLISHED_STEPS = {128: 64, 384: 256}  # diffusion steps of umaze (H=128) and large (H=384)
PUBLISHED_BUDGET = (2_000_000, 64)  # umaze training: optimizer steps x trajectories per step (32 x accum 2)


@dataclass
class BenchSettings:
    """What to run. CPU defaults fit in ~10 minutes on 2 loaded cores; ``full`` adds the big rows."""

    device: str = "auto"
    threads: int = 2
    repeats: int = 5            # timed steps per training row (median reported)
    warmup: int = 2
    full: bool = False          # CPU: also H=384 and batch 256, and full-step planning at H=384
    compile: bool | None = None  # None = on for CUDA, off for CPU (inductor compiles for minutes there)
    norms: tuple[str, ...] = ("group", "none", "channel")
    matmul_size: int = 2048
    planning_batch: int = 64
    fast_sampler: tuple[str, int] = ("ddpm", 8)
    sections: tuple[str, ...] = ("train", "plan", "probe", "data")
    tiny: bool = False          # smoke-test sizes (dim 8, H=16): checks the code path, measures nothing


@dataclass
class Row:
    section: str
    variant: str
    horizon: int | None = None
    batch: int | None = None
    norm: str | None = None
    seconds: float | None = None       # median per step / per call
    per_s: float | None = None         # trajectories/s (train), plans/s (plan), steps/s (data)
    gflops: float | None = None        # achieved GFLOP/s
    vs_plain: float | None = None      # throughput / plain reference's throughput (same H, B)
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def load() -> str:
    """The 1-, 5- and 15-minute load averages: every timing here is reported with them."""
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int, device: torch.device) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (device synchronized)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def matmul_gflops(n: int, device: torch.device, repeats: int = 5) -> float:
    """Achieved GFLOP/s of an fp32 n x n matmul: the roofline the network rows are compared with."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    times = time_calls(lambda: a @ b, repeats, 2, device)
    return 2 * n ** 3 / min(times) / 1e9


def network_kwargs(tiny: bool) -> dict[str, Any]:
    return {"dim": 8, "dim_mults": (1, 2, 2)} if tiny else {"dim": 32, "dim_mults": (1, 4, 8)}


def step_flops(model: torch.nn.Module, horizon: int, batch: int, device: torch.device) -> float:
    """FLOPs of one forward + backward of ``model`` on a [batch, horizon, 6] input (FlopCounterMode)."""
    x = torch.randn(batch, horizon, TRANSITION_DIM, device=device)
    t = torch.randint(0, 64, (batch,), device=device)
    with FlopCounterMode(display=False) as counter:
        model(x, t).square().mean().backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def synthetic_windows(n: int, horizon: int, seed: int = 0) -> list[dict[str, Any]]:
    """Dataset items shaped like SequenceDataset's (scaled [H, 6] windows with start/goal states)."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(n):
        traj = rng.uniform(-1, 1, (horizon, TRANSITION_DIM)).astype(np.float32)
        items.append({"trajectory": traj, "conditions": {0: traj[0, ACTION_DIM:], horizon - 1: traj[-1, ACTION_DIM:]}})
    return items


def _package_step(diffusion: GaussianDiffusion, data: list[dict], batch: int, device: torch.device, shards: int,
                  compile_model: bool, bf16: bool) -> tuple[Callable[[], Any], Callable[[], None]]:
    """The package's training step exactly as ``train_diffusion`` runs it: GradientStep (collate, whole-batch
    draw, loss, backward), fused Adam, zero_grad, EMA update (every 10 steps, as published)."""
    optimizer = make_optimizer(diffusion.parameters(), 2e-4, device)
    ema = EMA(diffusion, decay=0.995, every=10, start=0)
    denoiser = torch.compile(diffusion.model) if compile_model else diffusion.model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    grads = GradientStep(diffusion, 1, device, denoiser, autocast, shards=shards)
    counter = {"step": 0}

    def step() -> None:
        k = counter["step"]
        first = (k * batch) % (len(data) - batch + 1)
        grads(data, range(first, first + batch), step_generator(0, k))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(diffusion, k)
        counter["step"] += 1

    return step, grads.close


def _plain_step(net: PlainTemporalUnet, data: list[dict], batch: int, n_steps: int) -> Callable[[], Any]:
    trainer = PlainTrainer(net, n_diffusion_steps=n_steps)
    counter = {"step": 0}

    def step() -> None:
        k = counter["step"]
        first = (k * batch) % (len(data) - batch + 1)
        trainer.step(data[first:first + batch])
        counter["step"] += 1

    return step


@dataclass
class _Variant:
    label: str
    norm: str
    make: Callable[[], tuple[Callable[[], Any], Callable[[], None]]]
    threads: int
    warmup: int
    note: str = ""


def train_rows(s: BenchSettings, device: torch.device, matmul: float) -> list[Row]:
    """Training throughput rows; the plain reference first at each (H, B).

    The variants of one (H, B) are timed round-robin (one step of each, then again), so a change in the
    machine's load during the run hits all of them alike instead of whichever was running at the time.
    """
    sizes = [(16, 8)] if s.tiny else [(128, 32)]
    if s.full or device.type == "cuda":
        sizes += [(128, 256), (384, 32), (384, 256)]
    use_compile = (device.type == "cuda") if s.compile is None else s.compile
    shards = s.threads if device.type == "cpu" else 1
    kwargs = network_kwargs(s.tiny)
    rows: list[Row] = []
    for horizon, batch in sizes:
        data = synthetic_windows(max(4 * batch, 64), horizon)
        n_steps = PUBLISHED_STEPS.get(horizon, 64)
        torch.manual_seed(0)
        flops = step_flops(TemporalUnet(horizon, TRANSITION_DIM, **kwargs).to(device), horizon, batch, device)

        def plain() -> tuple[Callable, Callable]:
            torch.manual_seed(0)
            net = PlainTemporalUnet(TRANSITION_DIM, **kwargs).to(device)
            return _plain_step(net, data, batch, n_steps), lambda: None

        def package(norm: str, shards_: int, compiled: bool = False, bf16: bool = False
                    ) -> Callable[[], tuple[Callable, Callable]]:
            def make() -> tuple[Callable, Callable]:
                torch.manual_seed(0)
                net = TemporalUnet(horizon, TRANSITION_DIM, norm_layer=norm_factory(norm), **kwargs)
                diffusion = GaussianDiffusion(net, horizon, n_diffusion_steps=n_steps).to(device).train()
                return _package_step(diffusion, data, batch, device, shards_, compiled, bf16)
            return make

        cpu = device.type == "cpu"
        variants = [_Variant("plain reference (eager fp32" + (f", {s.threads} intra-op threads)" if cpu else ")"),
                     "group", plain, s.threads, s.warmup)]
        label = f"package eager fp32, {s.threads} intra-op threads" if cpu else "package eager fp32"
        variants += [_Variant(label, norm, package(norm, 1), s.threads, s.warmup) for norm in s.norms]
        if shards > 1:
            variants.append(_Variant(f"package eager fp32, {shards} shard threads (train.shards={shards})", "group",
                                     package("group", shards), s.threads, s.warmup,
                                     "the other CPU threading; faster when cores are shared"))
            variants.append(_Variant("plain reference on 1 thread", "group", plain, 1, s.warmup,
                                     "context: what one core gives the plain code"))
        if use_compile:
            variants += [_Variant("package torch.compile fp32", norm, package(norm, 1, compiled=True), s.threads, 3,
                                  "first steps compile (warmup_s)") for norm in s.norms]
        if bf16_supported(device):  # a CUDA GPU, or a CPU with AVX512-BF16/AMX
            for norm in s.norms:
                variants.append(_Variant("package eager bf16 autocast", norm, package(norm, 1, bf16=True),
                                         s.threads, s.warmup))
                if use_compile and device.type == "cuda":  # on a CPU each compile takes minutes
                    variants.append(_Variant("package torch.compile bf16", norm,
                                             package(norm, 1, compiled=True, bf16=True), s.threads, 3))
        built = []
        try:
            for v in variants:
                log.info("building and warming up %s H=%d B=%d norm=%s (load %s)", v.label, horizon, batch, v.norm,
                         load())
                torch.set_num_threads(v.threads)
                step, close = v.make()
                built.append((v, step, close))
                start = time.perf_counter()
                time_calls(step, 0, v.warmup, device)
                v.note = v.note.replace("(warmup_s)", f"(warmup {time.perf_counter() - start:.0f} s)")
            times: dict[int, list[float]] = {i: [] for i in range(len(built))}
            for rep in range(s.repeats):
                log.info("round %d of %d (load %s)", rep + 1, s.repeats, load())
                for i, (v, step, _) in enumerate(built):
                    torch.set_num_threads(v.threads)
                    times[i] += time_calls(step, 1, 0, device)
        finally:
            for _, _, close in built:
                close()
            torch.set_num_threads(s.threads)
        first = len(rows)
        for i, (v, _, _) in enumerate(built):
            med = statistics.median(times[i])
            rows.append(Row("train", v.label, horizon, batch, v.norm, med, batch / med, flops / med / 1e9, note=v.note,
                            extra={"threads": v.threads, "times_s": [round(t, 4) for t in times[i]], "load": load(),
                                   "gflop_per_step": round(flops / 1e9, 3),
                                   "matmul_fraction": flops / med / 1e9 / matmul}))
        for i, row in enumerate(rows[first:]):
            row.vs_plain = row.per_s / rows[first].per_s
            # Rounds are interleaved, so each round's plain/variant time ratio is a paired comparison that
            # machine-wide slowdowns cancel out of; its median is the steadier estimate of the speed-up.
            row.extra["vs_plain_paired_median"] = statistics.median(
                p / t for p, t in zip(times[0], times[i], strict=True))
    return rows


def plan_rows(s: BenchSettings, device: torch.device) -> list[Row]:
    """Latency of one batched sampling call: 64 plans, published step count vs the fast sampler.

    Weights are random (latency does not depend on them). On CUDA the fast sampler is also timed with
    the network compiled in ``reduce-overhead`` mode, which captures it in CUDA graphs.
    """
    kwargs = network_kwargs(s.tiny)
    horizons = [16] if s.tiny else [128, 384]
    batch = 4 if s.tiny else s.planning_batch
    fast_sampler, fast_steps = s.fast_sampler
    # CPU: plan_maze's default of 1 thread (configs/plan_maze.yaml: fastest for batched small convolutions
    # on shared cores); CUDA: the setting is irrelevant.
    threads = 1 if device.type == "cpu" else s.threads
    rows = []
    for horizon in horizons:
        n_steps = 8 if s.tiny else PUBLISHED_STEPS[horizon]
        torch.manual_seed(0)
        net = TemporalUnet(horizon, TRANSITION_DIM, **kwargs).to(device).eval()
        conditions = {0: torch.rand(batch, 4, device=device) * 2 - 1,
                      horizon - 1: torch.rand(batch, 4, device=device) * 2 - 1}
        variants = [(f"{fast_sampler} x{min(fast_steps, n_steps)} (fast)", fast_sampler, min(fast_steps, n_steps), net)]
        # The published loop at H=384 runs 256 network calls: minutes on CPU, so only with --full there.
        if device.type == "cuda" or s.full or horizon == min(horizons):
            variants.insert(0, (f"ddpm x{n_steps} (published)", "ddpm", n_steps, net))
        if device.type == "cuda" and (s.compile is None or s.compile):
            graphed = torch.compile(net, mode="reduce-overhead")
            variants.append((f"{fast_sampler} x{fast_steps} + CUDA graphs", fast_sampler, fast_steps, graphed))
        for label, sampler, steps, model in variants:
            diffusion = GaussianDiffusion(model, horizon, n_diffusion_steps=n_steps)
            log.info("timing planning %s H=%d (load %s)", label, horizon, load())
            torch.set_num_threads(threads)
            times = time_calls(lambda d=diffusion, sm=sampler, st=steps: d.sample(
                conditions, sampler=sm, num_steps=st, generator=torch.Generator().manual_seed(0)),
                repeats=1 if device.type == "cpu" else 5, warmup=1 if device.type == "cuda" or s.tiny else 0,
                device=device)
            med = statistics.median(times)
            rows.append(Row("plan", label, horizon, batch, "group", med, batch / med, note=f"{threads} thread(s)",
                            extra={"diffusion_steps": n_steps, "sampler_steps": steps, "load": load(),
                                   "threads": threads}))
    return rows


def probe_rows(s: BenchSettings, device: torch.device) -> list[Row]:
    """The leak-probe job's two costly parts at its configured sizes (configs/probe, configs/leak_probe),
    on one thread as the job runs them: probes for every site trained together (batch 1024 columns; the
    job runs 1000 steps, this row 50) and one influence map (jacrev over output rows 0, 5, 10, ... of one
    H=128 sample)."""
    horizon = 16 if s.tiny else 128
    steps, n_inputs = (20, 4) if s.tiny else (50, 32)  # the job runs 1000 steps: ~20x this row
    torch.manual_seed(0)
    net = TemporalUnet(horizon, TRANSITION_DIM, **network_kwargs(s.tiny)).eval()
    sites = net.probe_sites()
    x = torch.randn(n_inputs, horizon, TRANSITION_DIM)
    t = torch.zeros(n_inputs, dtype=torch.long)
    torch.set_num_threads(1)  # leak_probe.yaml's default (num_threads: 1), as the job runs it
    start = time.perf_counter()
    with torch.no_grad(), record_activations(net, sites) as acts:
        net(x, t)
    activations = [acts[site] for site in sites]
    forward_s = time.perf_counter() - start
    rows = []
    by_length: dict[int, list[torch.Tensor]] = {}
    for a in activations:
        by_length.setdefault(a.shape[2], []).append(a)
    start = time.perf_counter()
    for length, group in by_length.items():
        SiteProbes([a.shape[1] for a in group], seed=0).fit(group, torch.linspace(-1, 1, length), steps=steps)
    fit_s = time.perf_counter() - start
    rows.append(Row("probe", f"probe training: {len(sites)} sites, {steps} Adam steps of 1024 columns", horizon,
                    n_inputs, "group", fit_s, per_s=steps / fit_s,
                    note=f"activations of {n_inputs} inputs: forward {forward_s:.2f} s", extra={"load": load()}))
    start = time.perf_counter()
    influence_map(net, x[:1], t[:1], rows=range(0, horizon, 5), chunk_size=96)
    rows.append(Row("probe", "influence map: 1 sample, rows 0,5,10,... (jacrev)", horizon, 1, "group",
                    time.perf_counter() - start, extra={"load": load()}))
    return rows


def data_rows(s: BenchSettings) -> list[Row]:
    """D4RL-recipe generation speed (waypoint controller + point-mass simulator), steps per second."""
    from diffnorm.data.generate import generate_maze2d  # MuJoCo loads only for the data bench

    steps = 2000 if s.tiny else 20000
    start = time.perf_counter()
    generate_maze2d("maze2d-umaze", steps=steps, seed=0, progress=False)
    seconds = time.perf_counter() - start
    return [Row("data", f"generate maze2d-umaze, {steps} steps", seconds=seconds, per_s=steps / seconds,
                extra={"load": load()})]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_bench(s: BenchSettings) -> dict[str, Any]:
    """Run the selected sections; returns the JSON-able record (settings, machine, load, rows)."""
    device = resolve_device(s.device)
    torch.set_num_threads(s.threads)
    started, load_before = time.perf_counter(), load()
    matmul = matmul_gflops(256 if s.tiny else s.matmul_size, device)
    log.info("fp32 matmul %.1f GFLOP/s on %s, %d threads (load %s)", matmul, device, s.threads, load_before)
    torch.set_num_threads(1)
    matmul_1 = matmul_gflops(256 if s.tiny else s.matmul_size, device) if device.type == "cpu" else None
    torch.set_num_threads(s.threads)
    rows: list[Row] = []
    if "train" in s.sections:
        rows += train_rows(s, device, matmul)
    if "plan" in s.sections:
        rows += plan_rows(s, device)
    if "probe" in s.sections:
        rows += probe_rows(s, device if device.type == "cpu" else torch.device("cpu"))
    if "data" in s.sections:
        rows += data_rows(s)
    record = {
        "device": str(device), "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                                               else _cpu_name()),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": s.threads,
        "settings": asdict(s), "matmul_fp32_gflops": matmul, "matmul_fp32_gflops_1_thread": matmul_1, "load_before": load_before, "load_after": load(),
        "wall_s": round(time.perf_counter() - started, 1), "rows": [asdict(r) for r in rows],
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    record["published_budget"] = _budget(rows)
    return record


def _budget(rows: list[Row]) -> dict[str, Any] | None:
    """Time the published umaze training (2e6 steps x 64 trajectories) would take at the best measured
    package rate at H=128 (the rate at batch 32 is used when batch 256 was not measured)."""
    best = [r for r in rows if r.section == "train" and r.horizon == 128 and r.variant.startswith("package")]
    if not best:
        return None
    row = max(best, key=lambda r: r.per_s)
    steps, per_step = PUBLISHED_BUDGET
    hours = steps * per_step / row.per_s / 3600
    return {"variant": row.variant, "norm": row.norm, "batch": row.batch, "trajectories_per_s": row.per_s,
            "hours": round(hours, 2)}


def format_table(record: dict[str, Any]) -> str:
    """The one table: a Markdown table, also what the script prints."""
    lines = [f"device {record['device']} ({record['device_name']}), torch {record['torch']}, "
             f"{record['threads']} threads, fp32 matmul {record['matmul_fp32_gflops']:.1f} GFLOP/s"
             + (f" ({record['matmul_fp32_gflops_1_thread']:.1f} on 1 thread)"
                if record.get("matmul_fp32_gflops_1_thread") else "") + ", "
             f"load before/after {record['load_before']} / {record['load_after']}, wall {record['wall_s']} s",
             "",
             "| section | variant | H | B | norm | time (s) | per s | GFLOP/s (% matmul) | x plain |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in record["rows"]:
        unit = {"train": "traj/s", "plan": "plans/s", "data": "steps/s", "probe": "steps/s"}.get(r["section"], "")
        gf = (f"{r['gflops']:.1f} ({100 * r['extra']['matmul_fraction']:.0f} %)" if r["gflops"] is not None else "")
        lines.append("| " + " | ".join([
            r["section"], r["variant"] + (f" — {r['note']}" if r["note"] else ""),
            "" if r["horizon"] is None else str(r["horizon"]), "" if r["batch"] is None else str(r["batch"]),
            r["norm"] or "", f"{r['seconds']:.3f}" if r["seconds"] is not None else "",
            f"{r['per_s']:.1f} {unit}" if r["per_s"] is not None else "", gf,
            f"{r['vs_plain']:.2f}x" if r["vs_plain"] is not None else ""]) + " |")
    b = record.get("published_budget")
    if b:
        lines += ["", f"Published umaze budget (2e6 steps x 64 trajectories) at {b['trajectories_per_s']:.1f} traj/s "
                  f"({b['variant']}, norm={b['norm']}, B={b['batch']}): {b['hours']:.1f} h"]
    return "\n".join(lines)


def write_outputs(record: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """bench-<device>.json, bench-<device>.md (the table) and bench-<device>.png (training bars)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = "cuda" if record["device"].startswith("cuda") else "cpu"
    paths = {"json": out_dir / f"bench-{kind}.json", "table": out_dir / f"bench-{kind}-table.md"}
    paths["json"].write_text(json.dumps(record, indent=2) + "\n")
    paths["table"].write_text(format_table(record) + "\n")
    train = [r for r in record["rows"] if r["section"] == "train"]
    if train:
        from diffnorm.plotting.bench import throughput_bars  # matplotlib loads only when a figure is drawn

        paths["png"] = throughput_bars(out_dir / f"bench-{kind}.png", train,
                                       title=f"training throughput, {record['device_name']}, {record['threads']} threads "
                                             f"(load {record['load_before']})")
    return paths
