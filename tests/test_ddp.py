"""Data parallelism: 2 DDP processes on gloo and 2 CPU shards give the single-process training run."""

from __future__ import annotations

import csv
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from diffnorm.bench.suite import synthetic_windows
from diffnorm.data.scaling import TrajectoryScaler
from diffnorm.experiments.common import ConfigError
from diffnorm.training.build import build_diffusion
from diffnorm.training.checkpoint import write_run_files
from diffnorm.training.loop import METRICS, step_generator, train_diffusion
from diffnorm.training.step import GradientStep

H = 16


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_cfg(norm: str = "group", **train) -> OmegaConf:
    cfg = OmegaConf.create({
        "env": {"name": "maze2d-umaze", "horizon": H, "n_diffusion_steps": 8},
        "norm": {"name": norm, "groups": 4} if norm == "group" else {"name": norm},
        "model": {"name": "temporal_unet", "dim": 8, "dim_mults": [1, 2, 2], "kernel_size": 5},
        "diffusion": {"observation_dim": 4, "action_dim": 2, "clip_denoised": True, "sampler": "ddpm",
                      "num_steps": None},
        "train": {"steps": 8, "batch_size": 8, "grad_accumulation": 2, "lr": 1e-3, "ema_decay": 0.9,
                  "ema_every": 2, "ema_start": 2, "checkpoint_every": 4, "sample_every": 0, "n_samples": 2,
                  "log_every": 1, "resume": False, "bf16": False, "compile": False, "num_threads": 1,
                  "progress": False, "shards": 1},
        "seed": 0,
    })
    cfg.train.update(train)
    return cfg


def tiny_dataset(n: int = 24, seed: int = 0) -> list[dict]:
    return synthetic_windows(n, H, seed)


def train(cfg, out):
    torch.manual_seed(cfg.seed)
    diffusion = build_diffusion(cfg)
    rng = np.random.default_rng(0)
    write_run_files(out, cfg, TrajectoryScaler.fit({"actions": rng.normal(size=(50, 2)),
                                                    "observations": rng.normal(size=(50, 4))}))
    summary, ema = train_diffusion(diffusion, tiny_dataset(), cfg.train, cfg.seed, out, torch.device("cpu"), cfg)
    return diffusion, summary


def losses(out):
    with open(out / METRICS, newline="") as f:
        return np.array([float(r["loss"]) for r in csv.DictReader(f)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, root: str) -> None:
    """One DDP rank: join the gloo group, train into root/rank<r>, save the final weights."""
    import pathlib

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out = pathlib.Path(root) / f"rank{rank}"
        out.mkdir()
        diffusion, _ = train(tiny_cfg(), out)
        torch.save(diffusion.state_dict(), pathlib.Path(root) / f"weights{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_give_the_one_process_loss_curve_and_weights(tmp_path):
    single = tmp_path / "single"
    single.mkdir()
    diffusion, _ = train(tiny_cfg(), single)
    mp.start_processes(_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, start_method="spawn")

    expected, got = losses(single), losses(tmp_path / "rank0")
    assert len(got) == len(expected) == 8
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert np.ptp(expected) > 1e-3  # the curve moves, so equality is not trivial
    ref = diffusion.state_dict()
    # Adam divides each gradient entry by its running RMS, so an entry whose gradient is near zero can turn
    # a rounding-level difference between the two reduction orders into a visible step (seen: 1e-5 on one
    # weight, against 8e-3 = lr x steps of possible movement). The tolerance allows that and no more.
    for rank in (0, 1):
        weights = torch.load(tmp_path / f"weights{rank}.pt")
        assert all(torch.allclose(weights[k], ref[k], rtol=1e-4, atol=5e-5) for k in ref)
    # Only rank 0 writes: rank 1's run directory holds what the test itself wrote (run files), no training output.
    assert (tmp_path / "rank0" / "checkpoint.safetensors").is_file()
    assert not (tmp_path / "rank1" / METRICS).exists()
    assert not (tmp_path / "rank1" / "checkpoint.safetensors").exists()


def _grads(cfg, shards: int, dataset, indices, seed: int = 0):
    torch.manual_seed(cfg.seed)
    diffusion = build_diffusion(cfg)
    step = GradientStep(diffusion, accum=1, device=torch.device("cpu"), shards=shards)
    try:
        loss = step(dataset, indices, step_generator(seed, 0))
    finally:
        step.close()
    # Fused Adam walks .grad in the parameter's memory order: a grad laid out otherwise trains wrongly.
    assert all(p.grad.stride() == p.stride() for p in diffusion.parameters())
    return loss, [p.grad.clone() for p in diffusion.parameters()]


@pytest.mark.parametrize("norm", ["group", "channel", "none"])
def test_cpu_shards_give_the_unsplit_gradient(norm):
    cfg, data = tiny_cfg(norm), tiny_dataset()
    loss1, g1 = _grads(cfg, 1, data, list(range(7)))  # 7 rows: shards of 3 and 4, weighted by size
    torch.set_num_threads(2)
    try:
        loss2, g2 = _grads(cfg, 2, data, list(range(7)))
        assert torch.get_num_threads() == 2  # the shard threads ran with 1; the caller's setting is back
    finally:
        torch.set_num_threads(1)
    loss2b, g2b = _grads(cfg, 2, data, list(range(7)))
    assert torch.allclose(loss1, loss2, rtol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(g1, g2))
    assert torch.equal(loss2, loss2b) and all(torch.equal(a, b) for a, b in zip(g2, g2b))  # reproducible


def test_cpu_shards_train_like_one_thread(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    train(tiny_cfg(), tmp_path / "a")
    train(tiny_cfg(shards=3), tmp_path / "b")
    np.testing.assert_allclose(losses(tmp_path / "b"), losses(tmp_path / "a"), rtol=1e-4)


def test_shards_refuse_batch_statistics_and_gpu_and_ddp():
    with pytest.raises(ConfigError, match="batch-statistics"):
        GradientStep(build_diffusion(tiny_cfg("batch")), 1, torch.device("cpu"), shards=2)
    with pytest.raises(ConfigError, match="CPU option"):
        GradientStep(build_diffusion(tiny_cfg()), 1, torch.device("meta"), shards=2)
    from diffnorm.training.distributed import DistInfo

    with pytest.raises(ConfigError, match="DDP"):
        GradientStep(build_diffusion(tiny_cfg()), 1, torch.device("cpu"), shards=2, dist=DistInfo(0, 2, 0))
    step = GradientStep(build_diffusion(tiny_cfg()), 1, torch.device("cpu"), dist=DistInfo(0, 2, 0))
    with pytest.raises(ConfigError, match="divide evenly"):
        step(tiny_dataset(), [0, 1, 2], step_generator(0, 0))


def test_torchrun_two_ranks_train_diffuser_script(tmp_path):
    """The real entry point under torchrun: rank 0 generates the data and writes one run directory."""
    import subprocess
    import sys

    from conftest import ROOT

    tiny = ["experiment=tiny", "train.grad_accumulation=1", "train.steps=3", "train.log_every=1"]
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "scripts" / "train_diffuser.py"), *tiny, f"data_dir={tmp_path / 'data'}", f"hydra.run.dir={run}"]
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    res = json.loads((run / "results.json").read_text())
    assert res["world_size"] == 2 and res["steps"] == 3 and np.isfinite(res["final_loss"])
    assert len(losses(run)) == 3
    assert len(list((tmp_path / "data").glob("*.hdf5"))) == 1
