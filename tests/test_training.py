"""Training loop, EMA, checkpoints and resume on a tiny in-memory dataset; the script end to end."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from diffnorm.bench.suite import synthetic_windows
from diffnorm.data.scaling import TrajectoryScaler
from diffnorm.experiments.common import ConfigError
from diffnorm.training import loop
from diffnorm.training.build import build_diffusion
from diffnorm.training.checkpoint import (
    CHECKPOINT,
    CONFIG,
    EMA_WEIGHTS,
    SCALER,
    list_snapshots,
    load_checkpoint,
    load_training_state,
    save_training_state,
    training_seconds,
    write_run_files,
)
from diffnorm.training.ema import EMA
from diffnorm.training.loop import METRICS, EpochOrder, step_generator, train_diffusion

H = 16


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_cfg(**train):
    cfg = OmegaConf.create({
        "env": {"name": "maze2d-umaze", "horizon": H, "n_diffusion_steps": 8},
        "norm": {"name": "group", "groups": 4},
        "model": {"name": "temporal_unet", "dim": 8, "dim_mults": [1, 2, 2], "kernel_size": 5},
        "diffusion": {"observation_dim": 4, "action_dim": 2, "clip_denoised": True, "sampler": "ddpm",
                      "num_steps": None},
        "train": {"steps": 6, "batch_size": 4, "grad_accumulation": 2, "lr": 1e-3, "ema_decay": 0.9,
                  "ema_every": 2, "ema_start": 2, "checkpoint_every": 3, "sample_every": 0, "n_samples": 2,
                  "log_every": 2, "resume": False, "bf16": False, "compile": False, "num_threads": None,
                  "progress": False},
        "seed": 0,
    })
    cfg.train.update(train)
    return cfg


def tiny_dataset(n: int = 10, seed: int = 0) -> list[dict]:
    return synthetic_windows(n, H, seed)


def tiny_scaler():
    rng = np.random.default_rng(0)
    return TrajectoryScaler.fit({"actions": rng.normal(size=(50, 2)), "observations": rng.normal(size=(50, 4))})


def run(cfg, out, dataset=None):
    torch.manual_seed(cfg.seed)
    diffusion = build_diffusion(cfg)
    if not cfg.train.resume:
        write_run_files(out, cfg, tiny_scaler())
    summary, ema = train_diffusion(diffusion, dataset or tiny_dataset(), cfg.train, cfg.seed, out,
                                   torch.device("cpu"), cfg)
    return diffusion, ema, summary


def state_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_epoch_order_is_a_permutation_per_epoch_and_a_function_of_position():
    order = EpochOrder(7, seed=3)
    first = order.indices(0, 7)
    assert sorted(first) == list(range(7))
    assert sorted(order.indices(7, 7)) == list(range(7)) and order.indices(7, 7) != first
    assert EpochOrder(7, seed=3).indices(5, 6) == order.indices(0, 14)[5:11]
    assert EpochOrder(7, seed=4).indices(0, 7) != first


def test_step_generators_depend_on_seed_and_step_only():
    draw = lambda s, k: torch.randn(3, generator=step_generator(s, k))
    assert torch.equal(draw(0, 5), draw(0, 5))
    assert not torch.equal(draw(0, 5), draw(0, 6)) and not torch.equal(draw(0, 5), draw(1, 5))


def test_ema_copies_before_start_then_averages_every_n_steps():
    model = torch.nn.Linear(2, 1, bias=False)
    ema = EMA(model, decay=0.5, every=2, start=4)
    for step, value in enumerate([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]):
        model.weight.data.fill_(value)
        ema.update(model, step)
    # steps 0, 2: copy (1, 3); step 4: 0.5*3 + 0.5*5 = 4; step 6: 0.5*4 + 0.5*7 = 5.5
    assert ema.average.weight.flatten().tolist() == [5.5, 5.5]
    assert not ema.average.training and not ema.average.weight.requires_grad


def test_checkpoint_round_trip_restores_everything(tmp_path):
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model, ema_model = build_diffusion(cfg).model, build_diffusion(cfg).model
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    for _ in range(2):
        model(torch.randn(2, H, 6), torch.tensor([1, 2])).square().mean().backward()
        optimizer.step()
    torch.manual_seed(123)
    save_training_state(tmp_path, cfg, model, ema_model, optimizer, step=2)
    expected_draw = torch.rand(3)
    assert {p.name for p in tmp_path.iterdir()} == {CHECKPOINT, EMA_WEIGHTS}, "atomic writes leave no temporaries"

    fresh, fresh_ema = build_diffusion(cfg).model, build_diffusion(cfg).model
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1.0)
    assert load_training_state(tmp_path, cfg, fresh, fresh_ema, fresh_opt) == 2
    assert torch.equal(torch.rand(3), expected_draw), "the torch RNG state is restored"
    assert state_equal(fresh, model) and state_equal(fresh_ema, ema_model)
    assert fresh_opt.param_groups[0]["lr"] == cfg.train.lr
    for p_new, p_old in zip(fresh.parameters(), model.parameters()):
        new, old = fresh_opt.state[p_new], optimizer.state[p_old]
        assert new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in old)


def test_resume_gives_the_uninterrupted_weights(tmp_path):
    straight, straight_ema, summary = run(tiny_cfg(steps=6), tmp_path / "a")
    run(tiny_cfg(steps=3), tmp_path / "b")  # stops with a checkpoint at step 3 ...
    resumed, resumed_ema, resumed_summary = run(tiny_cfg(steps=6, resume=True), tmp_path / "b")  # ... goes on
    assert resumed_summary["resumed_from"] == 3 and resumed_summary["steps"] == 6
    assert state_equal(resumed, straight) and state_equal(resumed_ema, straight_ema)
    assert [s for s, _ in resumed_summary["loss_curve"]] == [2, 3, 4, 6]
    assert dict(summary["loss_curve"])[6] == dict(resumed_summary["loss_curve"])[6]  # same window, same loss


def test_snapshots_are_kept_at_every_n_steps_and_at_the_end(tmp_path):
    _, ema, _ = run(tiny_cfg(steps=7, snapshot_every=3), tmp_path)
    snapshots = list_snapshots(tmp_path)
    assert [s for s, _ in snapshots] == [3, 6, 7]
    assert [p.name for _, p in snapshots] == ["step_0000003.safetensors", "step_0000006.safetensors",
                                              "step_0000007.safetensors"]
    seconds = [training_seconds(p) for _, p in snapshots]
    assert all(s > 0 for s in seconds) and seconds == sorted(seconds)
    final = load_checkpoint(snapshots[-1][1])
    assert final.step == 7 and final.train_seconds == seconds[-1] and state_equal(final.diffusion.model, ema.model)
    assert load_checkpoint(snapshots[0][1]).step == 3
    assert not list((tmp_path / "snapshots").glob("*.tmp")), "snapshots are written atomically"


def test_snapshots_and_training_seconds_survive_resume(tmp_path):
    run(tiny_cfg(steps=6, snapshot_every=2), tmp_path / "a")
    run(tiny_cfg(steps=3, snapshot_every=2), tmp_path / "b")  # snapshots 2 and 3 (the end of this start)
    before = training_seconds(tmp_path / "b" / CHECKPOINT)
    _, _, summary = run(tiny_cfg(steps=6, snapshot_every=2, resume=True), tmp_path / "b")
    assert [s for s, _ in list_snapshots(tmp_path / "b")] == [2, 3, 4, 6]
    for step in (2, 4, 6):  # the resumed run's snapshots hold the uninterrupted run's weights
        a = load_checkpoint(tmp_path / "a" / "snapshots" / f"step_{step:07d}.safetensors").diffusion.model
        b = load_checkpoint(tmp_path / "b" / "snapshots" / f"step_{step:07d}.safetensors").diffusion.model
        assert state_equal(a, b)
    assert training_seconds(tmp_path / "b" / "snapshots" / "step_0000004.safetensors") > before
    assert summary["train_seconds_total"] > before
    elapsed = [float(r.split(",")[3]) for r in (tmp_path / "b" / METRICS).read_text().strip().splitlines()[1:]]
    assert elapsed == sorted(elapsed), "metrics.csv counts wall time from the run's first start"


def test_cosine_schedule_with_warmup_sets_each_steps_learning_rate(tmp_path):
    from diffnorm.training.step import learning_rate

    assert [learning_rate(s, 1.0, 10, "cosine", 2) for s in (0, 1, 2, 6, 10)] == \
        pytest.approx([0.5, 1.0, 1.0, 0.5, 0.0])
    assert learning_rate(7, 2e-4, 10) == 2e-4
    assert [learning_rate(s, 1.0, 10, "wsd", decay_steps=4) for s in (0, 5, 6, 7, 9)] == \
        pytest.approx([1.0, 1.0, 0.8, 0.6, 0.2])
    run(tiny_cfg(steps=6, lr_schedule="cosine", warmup_steps=0, log_every=2), tmp_path)
    lrs = [float(r.split(",")[2]) for r in (tmp_path / METRICS).read_text().strip().splitlines()[1:]]
    assert lrs == pytest.approx([learning_rate(s, 1e-3, 6, "cosine") for s in (1, 3, 5)])
    with pytest.raises(ConfigError, match="train.lr_schedule='linear' is unknown"):
        run(tiny_cfg(lr_schedule="linear"), tmp_path / "bad")


def test_training_lowers_the_loss(tmp_path):
    """A single repeated window is learnt quickly: the loss must fall well below its starting value."""
    one = tiny_dataset(n=1)
    _, _, summary = run(tiny_cfg(steps=60, log_every=10, checkpoint_every=60), tmp_path, dataset=one)
    curve = [loss for _, loss in summary["loss_curve"]]
    assert curve[-1] < 0.5 * curve[0]


def test_load_checkpoint_returns_the_ema_network_ready_to_plan(tmp_path):
    cfg = tiny_cfg(steps=4)
    _, ema, _ = run(cfg, tmp_path)
    for target in (tmp_path, tmp_path / EMA_WEIGHTS, tmp_path / CHECKPOINT):
        loaded = load_checkpoint(target)
        assert loaded.step == 4 and not loaded.diffusion.training
        assert state_equal(loaded.diffusion.model, ema.model)
        assert isinstance(loaded.scaler, TrajectoryScaler)
        assert loaded.cfg.norm.name == "group"
    plans = loaded.diffusion.sample({0: torch.zeros(2, 4), H - 1: torch.ones(2, 4)},
                                    generator=torch.Generator().manual_seed(0))
    assert plans.shape == (2, H, 6)


def test_load_checkpoint_rejects_missing_paths(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="no ema.safetensors or checkpoint.safetensors"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("edit,named", [
    (lambda c: c.norm.update({"name": "none", "groups": None}), "norm"),
    (lambda c: c.model.update({"dim": 16}), "model"),
])
def test_load_checkpoint_rejects_another_architecture_or_norm(tmp_path, edit, named):
    cfg = tiny_cfg(steps=1)
    run(cfg, tmp_path)
    other = cfg.copy()
    edit(other)
    (tmp_path / CONFIG).write_text(OmegaConf.to_yaml(other))
    with pytest.raises(ConfigError, match=f"does not match the config: {named}"):
        load_checkpoint(tmp_path)


def test_load_checkpoint_rejects_weights_that_do_not_fit(tmp_path):
    """Even with matching metadata, tensors of another shape are refused by the strict load."""
    cfg = tiny_cfg(steps=1)
    run(cfg, tmp_path / "a")
    wide = tiny_cfg(steps=1)
    wide.model.dim = 16
    run(wide, tmp_path / "b")
    (tmp_path / "b" / CONFIG).write_bytes((tmp_path / "a" / CONFIG).read_bytes())
    (tmp_path / "b" / EMA_WEIGHTS).unlink()
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(tmp_path / "b" / CHECKPOINT), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    with safe_open(str(tmp_path / "a" / CHECKPOINT), framework="pt") as f:
        meta = f.metadata()
    save_file(tensors, str(tmp_path / "b" / CHECKPOINT), metadata=meta)
    with pytest.raises(ConfigError, match="does not fit the network"):
        load_checkpoint(tmp_path / "b")


def test_resume_refuses_a_checkpoint_of_another_norm(tmp_path):
    run(tiny_cfg(steps=2), tmp_path)
    other = tiny_cfg(steps=4, resume=True)
    other.norm = {"name": "none"}
    with pytest.raises(ConfigError, match="norm"):
        run(other, tmp_path)


def test_bad_train_settings(tmp_path):
    with pytest.raises(ConfigError, match="train.batch_size=0"):
        run(tiny_cfg(batch_size=0), tmp_path)
    with pytest.raises(ConfigError, match="train.resume=true but"):
        run(tiny_cfg(resume=True), tmp_path / "empty")


def test_metrics_csv_has_one_row_per_log_interval(tmp_path):
    run(tiny_cfg(steps=6, log_every=2), tmp_path)
    rows = (tmp_path / METRICS).read_text().strip().splitlines()
    assert rows[0] == "step,loss,lr,elapsed_s,steps_per_s"
    assert [int(r.split(",")[0]) for r in rows[1:]] == [2, 4, 6]
    assert json.loads((tmp_path / SCALER).read_text()).keys() == {"actions", "observations"}


def test_tensorboard_events_follow_metrics_csv_across_a_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    run(tiny_cfg(steps=4, log_every=2, checkpoint_every=2, tensorboard=True), tmp_path)
    with SummaryWriter(str(tmp_path / "tensorboard")) as stale:  # logged after the checkpoint, then killed
        stale.add_scalar("train/loss", 99.0, 5)
    run(tiny_cfg(steps=6, log_every=2, checkpoint_every=2, tensorboard=True, resume=True), tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    rows = [r.split(",") for r in (tmp_path / METRICS).read_text().strip().splitlines()[1:]]
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in loss] == [2, 4, 6], "the stale step-5 point is purged on resume"
    assert [v for _, v in loss] == pytest.approx([float(r[1]) for r in rows], rel=1e-6)
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([1e-3] * 3)
    run(tiny_cfg(steps=2, log_every=2, checkpoint_every=2, tensorboard=True), tmp_path)  # afresh, same directory
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [2], "a fresh start purges the earlier run's events"


# ---- the job in-process on composed configs, and the script end to end in subprocesses ----

TINY = ["experiment=tiny"]
KILL_RUN = ["train.steps=60", "train.checkpoint_every=3", "train.sample_every=0", "train.log_every=3"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def compose(data_dir, *overrides):
    """The job's config as the script would see it (same defaults list, same overrides)."""
    from diffnorm.experiments.common import compose_job

    return compose_job("train_diffuser", [*TINY, f"data_dir={data_dir}", *overrides])


def job(data_dir, out, *overrides):
    from diffnorm.experiments.diffuser import train_diffuser

    return train_diffuser(compose(data_dir, *overrides), out)


def checkpoint_tensors(run_dir):
    from safetensors import safe_open
    with safe_open(str(run_dir / CHECKPOINT), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("rng.")}  # noqa: SIM118
        return tensors, f.metadata()


def test_config_defaults_are_the_published_settings():
    from diffnorm.experiments.common import compose_job

    cfg = compose_job("train_diffuser", [])
    quick = compose_job("train_diffuser", ["experiment=quick", "env=maze2d_large"])
    assert (cfg.env.name, cfg.env.horizon, cfg.env.n_diffusion_steps, cfg.norm.name) == ("maze2d-umaze", 128, 64, "group")
    # Null settings belong to the other registered networks (Eq-Net's depth and kernel growth).
    assert {k: v for k, v in cfg.model.items() if v is not None} == {
        "name": "temporal_unet", "dim": 32, "dim_mults": [1, 4, 8], "kernel_size": 5}
    t = cfg.train
    assert (t.steps, t.batch_size, t.grad_accumulation, t.lr, t.ema_decay, t.ema_every, t.ema_start) == \
        (2_000_000, 32, 2, 2e-4, 0.995, 10, 2000)
    assert (cfg.diffusion.sampler, cfg.diffusion.clip_denoised, cfg.device) == ("ddpm", True, "auto")
    assert quick.env.horizon == 384 and quick.model.dim < 32 and quick.train.steps < 10_000


def test_script_smoke_run(script, tmp_path, data_dir):
    proc = script("train_diffuser", *TINY, f"data_dir={data_dir}", "train.steps=4", "train.sample_every=2",
                  "norm=none", run_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(tmp_path)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["steps"] == 4 and res["norm"] == {"name": "none"} and np.isfinite(res["final_loss"])
    assert sorted(p.name for p in (tmp_path / "samples").glob("*.png")) == ["step_0000002.png", "step_0000004.png"]
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert [h["step"] for h in res["samples_over_time"]] == [2, 4]
    assert res["samples"]["data_windows"]["in_wall_fraction"] == 0.0
    assert res["samples"]["data_windows"]["joined_fraction"] == 1.0
    loaded = load_checkpoint(tmp_path)
    assert loaded.step == 4 and loaded.cfg.env.horizon == 32
    plans = loaded.diffusion.sample({0: torch.zeros(1, 4), 31: torch.zeros(1, 4)}, sampler="ddim", num_steps=4)
    xy = loaded.scaler.unnormalize_observations(plans[..., 2:])[..., :2]
    assert xy.shape == (1, 32, 2)


def test_killed_run_resumes_to_the_uninterrupted_weights(tmp_path, data_dir):
    """SIGKILL the script after its first checkpoints, resume: same final step, bit-identical weights (CPU)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    killed = tmp_path / "killed"
    args = [sys.executable, str(ROOT / "scripts" / "train_diffuser.py"), *TINY, f"data_dir={data_dir}", *KILL_RUN,
            f"hydra.run.dir={killed}"]
    proc = subprocess.Popen(args, cwd=ROOT, env=dict(os.environ, MPLBACKEND="Agg"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (killed / CHECKPOINT).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert (killed / CHECKPOINT).exists(), err
    _, meta = checkpoint_tensors(killed)
    assert 3 <= int(meta["step"]) < 60, "the run must be killed mid-way"

    straight = tmp_path / "straight"
    job(data_dir, straight, *KILL_RUN)
    res = job(data_dir, killed, *KILL_RUN, "train.resume=true")
    assert res["steps"] == 60 and res["resumed_from"] == int(meta["step"])
    (a, meta_a), (b, meta_b) = checkpoint_tensors(straight), checkpoint_tensors(killed)
    assert meta_a["step"] == meta_b["step"] == "60"
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = (killed / METRICS).read_text().strip().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(3, 61, 3))


@pytest.mark.parametrize("overrides,message", [
    (["env.horizon=30"], "horizon=30 must be a positive multiple of 4"),
    (["env.horizon=4000"], "env.horizon=4000 is longer than an episode of maze2d-umaze"),
    (["dataset=/nonexistent/maze.hdf5"], "dataset=/nonexistent/maze.hdf5 does not exist"),
    (["train.resume=true"], "train.resume=true but"),
    (["norm=group", "norm.groups=3"], "norm.groups=3"),
])
def test_bad_input_raises_config_error(tmp_path, data_dir, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        job(data_dir, tmp_path, "train.steps=2", *overrides)


def test_bad_input_is_one_line_and_nonzero_exit_from_the_script(script, tmp_path):
    proc = script("train_diffuser", *TINY, "env.horizon=30", run_dir=tmp_path)
    assert proc.returncode != 0
    expected = "error: env.horizon=30 must be a positive multiple of 4 (the U-Net halves it 2 times with model.dim_mults=[1, 2, 2])"
    assert proc.stderr.strip().splitlines() == [expected]


def test_resume_with_another_norm_is_refused(tmp_path, data_dir):
    job(data_dir, tmp_path, "train.steps=2")
    with pytest.raises(ConfigError, match=re.escape("norm: run {'name': 'group', 'groups': 8} vs now {'name': 'none'}")):
        job(data_dir, tmp_path, "train.steps=4", "train.resume=true", "norm=none")


def test_bf16_is_ignored_with_a_log_line_where_the_device_lacks_it(tmp_path, data_dir, caplog, monkeypatch):
    monkeypatch.setattr(loop, "bf16_supported", lambda device: False)
    with caplog.at_level(logging.WARNING):
        job(data_dir, tmp_path, "train.steps=1", "train.bf16=true", "device=cpu")
    assert "train.bf16=true ignored: cpu has no native bf16 support" in caplog.text


def test_bf16_autocast_trains_where_the_device_has_it(tmp_path, data_dir, monkeypatch):
    seen = []
    real = loop._precision_and_compile

    def spy(cfg, device, model):
        autocast, denoiser = real(cfg, device, model)
        seen.append(autocast)
        return autocast, denoiser

    monkeypatch.setattr(loop, "bf16_supported", lambda device: True)
    monkeypatch.setattr(loop, "_precision_and_compile", spy)
    job(data_dir, tmp_path, "train.steps=2", "train.bf16=true", "device=cpu")
    assert isinstance(seen[0], torch.autocast) and seen[0].fast_dtype == torch.bfloat16
    assert (tmp_path / "ema.safetensors").exists()


def test_compile_refuses_shard_threads(tmp_path, data_dir):
    with pytest.raises(ConfigError, match="train.compile=true needs train.shards=1"):
        job(data_dir, tmp_path, "train.steps=1", "train.compile=true", "train.shards=2", "device=cpu")


# ---- presets by device, and resume from the printed command alone ----

def test_cpu_default_is_the_mazes_cpu_preset_under_the_callers_settings(caplog):
    from diffnorm.experiments.common import compose_job
    from diffnorm.experiments.diffuser import with_device_default

    cfg = compose_job("train_diffuser", ["env=maze2d_medium", "norm=none", "train.steps=77"])
    with caplog.at_level(logging.WARNING):
        cpu = with_device_default(cfg, torch.device("cpu"))
    preset = compose_job("train_diffuser", ["env=maze2d_medium", "experiment=cpu_medium"])
    assert cpu.preset == "cpu_medium" and "CPU: training with experiment=cpu_medium" in caplog.text
    assert cpu.norm.name == "none" and cpu.train.steps == 77, "the caller's own settings win"
    assert (cpu.model.dim, cpu.train.lr, cpu.env.n_diffusion_steps) == \
        (preset.model.dim, preset.train.lr, preset.env.n_diffusion_steps)
    gpu = with_device_default(cfg, torch.device("cuda"))
    assert gpu.preset == "published" and gpu.train.steps == 77 and gpu.model.dim == 32
    published = compose_job("train_diffuser", ["experiment=published"])
    assert with_device_default(published, torch.device("cpu")).train.steps == 2_000_000


def test_cpu_default_from_the_command_line_is_as_if_the_preset_were_named(caplog):
    """`train_diffuser.py env=maze2d_medium ...` on a CPU trains exactly `experiment=cpu_medium ...`: a
    group named on the command line (even at its default) does not bring back the group's own settings
    over the preset's, and a key named there wins over the preset."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from diffnorm.experiments.common import compose_job
    from diffnorm.experiments.diffuser import with_device_default

    line = ["env=maze2d_medium", "model=temporal_unet", "norm=none", "train.lr=2e-4"]
    configs = Path(__file__).resolve().parents[1] / "configs"
    try:
        with initialize_config_dir(config_dir=str(configs), version_base=None):
            HydraConfig.instance().set_config(compose("train_diffuser", overrides=line, return_hydra_config=True))
            with caplog.at_level(logging.WARNING):
                cpu = with_device_default(compose_job("train_diffuser", line), torch.device("cpu"))
            named = compose_job("train_diffuser", [*line, "experiment=cpu_medium"])
    finally:
        HydraConfig.instance().cfg = None  # no other test may see this command line
    assert "CPU: training with experiment=cpu_medium" in caplog.text
    assert OmegaConf.to_container(cpu) == OmegaConf.to_container(named)
    assert (cpu.env.n_diffusion_steps, cpu.env.dataset_steps, cpu.model.dim) == (32, 150_000, 16)
    assert (cpu.norm.name, cpu.train.lr) == ("none", 2e-4)


def test_resume_as_printed_continues_the_run_with_its_own_config(script, tmp_path, data_dir):
    """Ctrl-C prints `continue with train.resume=true hydra.run.dir=...`; exactly that, without the
    original overrides, continues the run; an override may extend it; changing the run is refused."""
    run = tmp_path / "run"
    first = script("train_diffuser", "experiment=tiny", f"data_dir={data_dir}", "norm=none", "train.steps=3",
                   "train.log_every=1", run_dir=run)
    assert first.returncode == 0, first.stderr
    # A run saved before env carried observation_dim (its diffusion.observation_dim has the value) resumes.
    saved = OmegaConf.load(run / "config.yaml")
    del saved.env["observation_dim"]
    OmegaConf.save(saved, run / "config.yaml")
    again = script("train_diffuser", "train.resume=true", "train.steps=5", "train.log_every=1", run_dir=run)
    assert again.returncode == 0, again.stderr
    res = json.loads((run / "results.json").read_text())
    assert res["steps"] == 5 and res["resumed_from"] == 3 and res["norm"] == {"name": "none"}
    assert res["preset"] == "tiny"
    rows = [r.split(",") for r in (run / METRICS).read_text().strip().splitlines()[1:]]
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 5]
    elapsed = [float(r[3]) for r in rows]
    assert elapsed == sorted(elapsed) and elapsed[3] > elapsed[2], "wall time counts from the first start"
    refused = script("train_diffuser", "train.resume=true", "norm=group", "train.steps=6", run_dir=run)
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("error: train.resume=true in") and "norm: run {'name': 'none'} vs now" in line


def test_train_or_reuse_judges_the_run_by_its_saved_config(tmp_path):
    # the job layer, imported by this test only
    from diffnorm.experiments.common import compose_job
    from diffnorm.experiments.diffuser import train_diffuser, train_or_reuse

    base = ["experiment=tiny", "train.checkpoint_every=2", f"data_dir={tmp_path / 'data'}"]
    run = tmp_path / "run"
    # A run that stopped at its step-2 checkpoint (a session ended) is the 4-step run part-way: it continues.
    train_diffuser(compose_job("train_diffuser", [*base, "train.steps=2"]), run)
    (run / "results.json").unlink()
    resumed, reused = train_or_reuse([*base, "train.steps=4"], run)
    assert not reused and resumed["resumed_from"] == 2 and resumed["steps"] == 4
    again, reused = train_or_reuse([*base, "train.steps=4"], run)
    assert reused and again == json.loads((run / "results.json").read_text()) and again["resumed_from"] == 2
    # Threads are not part of a run.
    assert train_or_reuse([*base, "train.steps=4", "train.num_threads=2"], run)[1]
    # A finished run kept as a planner (its optimizer state deleted) is still reused; not a longer one.
    state = (run / "checkpoint.safetensors").read_bytes()
    (run / "checkpoint.safetensors").unlink()
    assert train_or_reuse([*base, "train.steps=4"], run)[1]
    kept = sorted(p.name for p in run.iterdir())
    (run / "checkpoint.safetensors").write_bytes(state)
    assert "checkpoint.safetensors" not in kept
    # A preset that now decays the constant rate continues the finished run into the decay ...
    decayed, reused = train_or_reuse([*base, "train.steps=6", "train.lr_schedule=wsd", "train.decay_steps=2"], run)
    assert not reused and decayed["resumed_from"] == 4 and decayed["steps"] == 6
    # ... and one that changes a rate already taken, or what the run is, trains afresh, without the old
    # run's snapshots or sample figures.
    (run / "snapshots").mkdir(exist_ok=True)
    (run / "snapshots" / "step_0000006.safetensors").write_bytes(b"the replaced run's")
    for changed in (["train.lr=1e-3"], ["seed=1"]):
        other, reused = train_or_reuse([*base, "train.steps=6", "train.lr_schedule=wsd", "train.decay_steps=2",
                                        *changed], run)
        assert not reused and other["resumed_from"] is None
        assert not (run / "snapshots").exists()
