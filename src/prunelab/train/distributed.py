"""torch.distributed for the training loop: set-up from torchrun's environment, reductions.

`torchrun --nproc_per_node N -m prunelab train ...` sets RANK, WORLD_SIZE and
LOCAL_RANK (plus MASTER_ADDR/PORT); `init_distributed()` reads them and joins
the group with NCCL on CUDA, gloo on CPU. Without those variables everything
here degrades to single-process no-ops, so the loop has no separate code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from prunelab.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    """This process's place in the group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, logs and progress."""
        return self.rank == 0


def context() -> DistContext:
    """The current context: from the initialised process group, else single-process."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(),
                           int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return DistContext()


def init_distributed(backend: str | None = None, timeout_minutes: float = 30.0) -> DistContext:
    """Join the process group described by torchrun's environment variables, if any.

    Idempotent; returns the single-process context when WORLD_SIZE is unset or 1.
    """
    if dist.is_available() and dist.is_initialized():
        return context()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world} but {', '.join(missing)} not set; "
                          f"launch with torchrun --nproc_per_node N")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method="env://",
                            timeout=timedelta(minutes=timeout_minutes))
    return context()


def cleanup() -> None:
    """Leave the process group (call once at the very end of a distributed run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over all ranks (no-op when not distributed); returns the tensor."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order ([obj] when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank."""
    if dist.is_available() and dist.is_initialized():
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s buffers (BatchNorm running statistics) to all ranks."""
    if dist.is_available() and dist.is_initialized():
        for b in module.buffers():
            dist.broadcast(b.data, src=src)


def wrap_ddp(
    model: torch.nn.Module,
    device: torch.device,
    *,
    sync_bn: bool = False,
    find_unused_parameters: bool = False,
) -> torch.nn.Module:
    """DistributedDataParallel around `model` when distributed, else `model` itself.

    With `sync_bn`, BatchNorm layers are converted in place first (statistics
    over the global batch, slower, useful for small per-GPU batches).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        _convert_sync_bn_in_place(model)
    ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids,
                                   find_unused_parameters=find_unused_parameters)


def _convert_sync_bn_in_place(model: torch.nn.Module) -> None:
    """Replace BatchNorm children by SyncBatchNorm without changing the root object."""
    for name, child in list(model.named_children()):
        converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(child)
        if converted is not child:
            setattr(model, name, converted)
