"""The benchmark's plain reference computes the package's function, and the bench script runs end to end."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDPMScheduler

from diffnorm.bench.plain import PlainTemporalUnet, PlainTrainer, cosine_alphas_cumprod
from diffnorm.models.temporal_unet import TemporalUnet

pytestmark = pytest.mark.usefixtures("single_thread")


def test_plain_reference_is_the_published_network_with_the_same_weights():
    plain, package = PlainTemporalUnet(), TemporalUnet(128, 6)
    assert sum(p.numel() for p in plain.parameters()) == 3_682_118  # REFERENCE.md
    assert plain.state_dict().keys() == package.state_dict().keys()
    plain.load_state_dict(package.state_dict())
    x, t = torch.randn(3, 128, 6), torch.tensor([0, 17, 63])
    torch.testing.assert_close(plain(x, t), package(x, t), rtol=1e-4, atol=1e-5)


def test_plain_schedule_is_the_package_schedule():
    ours = cosine_alphas_cumprod(64)
    theirs = DDPMScheduler(num_train_timesteps=64, beta_schedule="squaredcos_cap_v2").alphas_cumprod
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-5, atol=1e-6)


def test_plain_trainer_step_learns():
    torch.manual_seed(0)
    net = PlainTemporalUnet(dim=8, dim_mults=(1, 2, 2))
    trainer = PlainTrainer(net, n_diffusion_steps=8, lr=1e-3)
    traj = torch.rand(16, 6) * 2 - 1
    items = [{"trajectory": traj.numpy(), "conditions": {0: traj[0, 2:].numpy(), 15: traj[15, 2:].numpy()}}] * 4
    first = float(trainer.step(items))
    for _ in range(30):
        last = float(trainer.step(items))
    assert last < 0.5 * first


def test_bench_script_smoke(tmp_path):
    from conftest import run_script

    proc = run_script("bench", "--tiny", "--repeats", "1", "--threads", "1", "--sections", "train,data",
                      "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "bench-cpu.json").read_text())
    train = [r for r in record["rows"] if r["section"] == "train"]
    assert train[0]["variant"].startswith("plain") and train[0]["vs_plain"] == 1.0
    assert {r["norm"] for r in train} == {"group", "none", "channel"}
    assert all(r["per_s"] > 0 and r["gflops"] > 0 for r in train)
    assert record["matmul_fp32_gflops"] > 0 and record["rows"][-1]["section"] == "data"
    assert "| train | plain reference" in proc.stdout and (tmp_path / "bench-cpu.png").stat().st_size > 0
