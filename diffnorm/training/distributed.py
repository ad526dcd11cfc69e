"""Multi-process data parallelism with PyTorch DDP, started by ``torchrun`` (WORLD_SIZE, RANK, LOCAL_RANK)
or as SLURM tasks (SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID, with MASTER_ADDR/MASTER_PORT exported).

    torchrun --nproc_per_node=4 scripts/train_diffuser.py env=maze2d_large hydra.run.dir=runs/large_group

``train.batch_size`` stays the *global* batch: each of the N ranks computes its 1/N block of it (see
``training.step``), so the loss curve does not depend on N. Only rank 0 writes files (run files,
metrics, checkpoints, sample plots, results.json); every rank reads the same checkpoint on resume.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from diffnorm.errors import require

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: ``rank`` of ``world_size``, GPU ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """From the initialised process group if there is one, else from torchrun's environment."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    env = os.environ
    if "WORLD_SIZE" not in env and int(env.get("SLURM_NTASKS", 1)) > 1 and "MASTER_ADDR" in env:
        # SLURM tasks (e.g. hydra/launcher=submitit_slurm with tasks_per_node > 1) instead of torchrun.
        return DistInfo(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return DistInfo(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched with WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU).

    Returns this process's DistInfo and its device: on CUDA, GPU ``LOCAL_RANK``. A single process
    (no WORLD_SIZE) is returned unchanged, without a process group.
    """
    info = dist_info()
    if info.world_size == 1 or dist.is_initialized():
        return info, device
    require(dist.is_available(), "WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if device.type == "cuda":
        require(info.local_rank < torch.cuda.device_count(),
                f"LOCAL_RANK={info.local_rank} but only {torch.cuda.device_count()} GPUs are visible")
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=info.rank,
                            world_size=info.world_size)  # MASTER_ADDR / MASTER_PORT from the environment
    info = dist_info()
    log.info("DDP rank %d of %d on %s", info.rank, info.world_size, device)
    return info, device


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when a process group with more than one rank exists."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """The average of a scalar tensor over all ranks (itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / dist.get_world_size()


def barrier() -> None:
    """Wait for every rank (no-op without a process group), e.g. while rank 0 writes the dataset."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
