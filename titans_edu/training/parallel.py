"""Where training runs: the device, the process group, and the model wrappers PyTorch provides for them.

    one process       CPU or one GPU; ``python -m titans_edu.train``
    several           ``torchrun --nproc_per_node N -m titans_edu.train``: torchrun sets RANK, LOCAL_RANK and
                      WORLD_SIZE, and each process joins the group (NCCL on GPUs, gloo on CPUs)
    DDP               PyTorch's DistributedDataParallel: a full copy of the model per process, gradients
                      averaged in the backward pass
    FSDP              PyTorch's ``fully_shard``: parameters, gradients and optimizer state split across the
                      processes, each block gathered just in time. For the larger presets.

Options applied here, in this order: activation checkpointing (recompute each block's activations in the
backward pass instead of storing them), then DDP or FSDP, then ``torch.compile``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.checkpoint import checkpoint

from ..models.blocks import Block


@dataclass
class Runtime:
    """This process's place in the run. ``autocast``: the dtype of ``torch.autocast`` or None for full fp32."""

    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    autocast: torch.dtype | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def autocast_context(self):
        if self.autocast is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast)


def init_runtime(device: str = "auto", dtype: str = "auto") -> Runtime:
    """Pick the device and join the process group if torchrun started several processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but PyTorch sees no CUDA GPU; use --device=cpu (or auto)")
        if world > 1 or dev.index is None:
            dev = torch.device("cuda", local_rank if world > 1 else 0)
        count = torch.cuda.device_count()
        if dev.index >= count:
            raise ValueError(f"device={str(dev)!r}, but PyTorch sees {count} CUDA GPU(s), with indices 0 to "
                             f"{count - 1}; pass --device=cuda (the first) or an index below {count}")
        torch.cuda.set_device(dev)
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device='mps' but PyTorch sees no Apple GPU (MPS); use --device=cpu (or auto)")
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            dist.init_process_group(backend="nccl", device_id=dev)
        else:
            dist.init_process_group(backend="gloo")
    if dtype == "auto":
        dtype = "bfloat16" if dev.type == "cuda" else "float32"
    if dtype == "bfloat16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU does not support bfloat16; use --dtype=float32")
    return Runtime(dev, rank, local_rank, world, torch.bfloat16 if dtype == "bfloat16" else None)


def shutdown(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        # Every process reaches here before any tears the group down: a process that leaves while another
        # still has collective work in flight aborts it ("terminate called without an active exception").
        dist.barrier()
        dist.destroy_process_group()


def mean_across_processes(value: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """The average of a tensor over all processes (itself when there is one)."""
    if runtime.distributed:
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)  # SUM, not AVG: gloo has no AVG
        value /= runtime.world
    return value


def broadcast_from_main(value: Any, runtime: Runtime) -> Any:
    """Rank 0's ``value`` in every process (any picklable object), so that all processes make one decision."""
    if runtime.distributed:
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        value = holder[0]
    return value


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The repeated residual blocks: the units of activation checkpointing and of FSDP sharding."""
    return [m for m in model.modules() if isinstance(m, Block)]


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block in the backward pass. Parameter names and results are unchanged."""
    blocks = blocks_of(model)
    if not blocks:
        raise ValueError(f"activation checkpointing found no blocks in {type(model).__name__}")
    for block in blocks:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def wrap_model(model: nn.Module, runtime: Runtime, fsdp: bool = False, compile: bool = False,
               activation_checkpointing: bool = False, carried_state: bool = False) -> nn.Module:
    """Apply the options above to ``model`` (already on ``runtime.device``) and return what to train.

    ``carried_state``: the training calls carry a state from one window to the next. Such a call does not use
    the parameters that only build a fresh state (``M_0``, and the persistent tokens the memory reads at the
    stream start), so DDP must look for unused parameters, or it would leave their gradient buckets, and every
    other gradient in them, unaveraged.
    """
    if activation_checkpointing:
        enable_activation_checkpointing(model)
    if fsdp:
        if not runtime.distributed:
            raise ValueError("FSDP shards a model across processes; start several with torchrun, or use --fsdp=off")
        from torch.distributed.fsdp import fully_shard

        # One FSDP unit per block, then the rest (embedding, final norm): parameters, gradients and optimizer
        # state are sharded at rest, and each block's parameters are gathered only while that block runs, so
        # the peak holds one block's full weights rather than the whole model's.
        for block in blocks_of(model):
            fully_shard(block)
        fully_shard(model)
    elif runtime.distributed:
        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        model = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=carried_state)
    if compile:
        model = torch.compile(model)
    return model


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside ``torch.compile`` and DDP (an FSDP model is its own module)."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, DistributedDataParallel) else model


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Make ``dtype`` torch's default dtype inside the block and give the caller's back after it. The trainer and
    the memory estimates of ``scaling`` run in float32 this way, also when called from a notebook's float64."""
    caller = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(caller)
