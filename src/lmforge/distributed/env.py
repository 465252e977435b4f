"""The process group, from the environment torchrun sets.

torchrun (or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT) starts one process per device; each calls `init(...)`, which joins the group
with NCCL on GPUs and gloo on CPUs, binds the process to its GPU, and builds the device
mesh: one data-parallel dimension, and a tensor-parallel one when asked for. A process
started without those variables is a world of one and touches nothing of
torch.distributed, so single-process runs pay nothing for any of this.

Every collective has a timeout (`parallel.timeout_s`): a peer that died or hangs ends the
run with an error instead of a silent wait.
"""

from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from lmforge.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    dp_rank: int = 0
    dp_size: int = 1
    tp_rank: int = 0
    tp_size: int = 1
    mesh: Any = None  # DeviceMesh with dims ("dp",) or ("dp", "tp"); None in one process

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def restart_count() -> int:
    """How many times torchrun has restarted this group (elastic runs); 0 otherwise."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def tp_degree(strategy: str, tp: int, world_size: int) -> int:
    """The tensor-parallel degree a strategy asks for, checked against the world size."""
    if strategy == "tp":
        tp = tp or world_size
        if tp != world_size:
            raise ConfigError(f"parallel.strategy=tp uses every rank for tensor parallelism, but "
                              f"parallel.tp={tp} and there are {world_size} ranks; use "
                              "parallel.strategy=fsdp+tp to combine it with data parallelism")
    elif strategy == "fsdp+tp":
        tp = tp or 2
    else:
        return 1
    if tp < 1 or world_size % tp:
        raise ConfigError(f"parallel.tp={tp} does not divide the {world_size} ranks; pick a "
                          "divisor of the number of processes")
    return tp


def init(*, device_type: str, strategy: str, tp: int, timeout_s: float) -> DistInfo:
    """Join the process group torchrun set up (a no-op in a single process)."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        tp_degree(strategy, tp, 1)
        return SINGLE
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    tp = tp_degree(strategy, tp, world)
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    from torch.distributed.device_mesh import init_device_mesh

    dp = world // tp
    if tp > 1:
        mesh = init_device_mesh(device_type, (dp, tp), mesh_dim_names=("dp", "tp"))
        dp_rank, tp_rank = mesh.get_local_rank("dp"), mesh.get_local_rank("tp")
    else:
        mesh = init_device_mesh(device_type, (dp,), mesh_dim_names=("dp",))
        dp_rank, tp_rank = rank, 0
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, dp_rank=dp_rank,
                    dp_size=dp, tp_rank=tp_rank, tp_size=tp, mesh=mesh)


def is_peer_failure(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, dist.DistError) or any(
        word in text for word in ("gloo", "nccl", "connection", "timed out", "timeout", "peer"))


def lost_peer_message(err: Exception, info: DistInfo) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (f"rank {info.rank} lost contact with another process ({first[:200]}); a peer "
            "died, hung past parallel.timeout_s or was killed. Continue from the last "
            "checkpoint with `lmforge train --resume RUN` (torchrun --max-restarts does it "
            "by itself)")


def teardown() -> None:
    """Leave the group. Whatever held it (DDP's reducer, FSDP's state) must be collected
    first: gloo's destructor joins its worker threads while holding the GIL, and a worker
    still freeing a finished collective's tensors needs the GIL too."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of a scalar over all ranks (every rank gets it)."""
    if not info.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / info.world_size


def all_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if not info.distributed:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's `obj`, on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
