"""Sizes, FLOPs and memory of the presets, counted from the code itself (notebook 11; paper §5).

Nothing here is a formula to trust on faith. Each number comes from running the real model on PyTorch's
``meta`` device, where tensors have shapes and dtypes but no data, so a 760M model at 4K context "runs" on a
laptop in seconds:

    parameters        ``sum(p.numel())`` of the built model (the tied embedding counted once)
    FLOPs             ``torch.utils.flop_counter.FlopCounterMode`` over one forward and backward pass: every
                      matmul, batched matmul and attention call, as executed (element-wise work is not
                      counted; it is small beside the matmuls)
    activations       the bytes autograd keeps for the backward pass, read with ``saved_tensors_hooks``; views
                      of one tensor count once, parameters not at all

Blocks are identical, so a model of depth L costs ``outside + L * per_block``: we run depth 1 and depth 2 and
take the difference, which makes the full presets cheap to count.

Memory of training, per process, in float32 parameters with AdamW:

    weights 4N + gradients 4N + AdamW moments 8N bytes (N parameters); FSDP divides all three by the
    number of processes; activations as above, times the micro-batch. Activation checkpointing keeps only
    each block's input ((batch, seq, dim) per block) plus one block's activations during its recompute.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, bmm_flop

from ..models.lm import build_model
from .parallel import default_dtype

GiB = 2**30


@dataclass
class BlockCosts:
    """Costs of one forward+backward on ``(batch, seq)`` tokens: ``outside`` the blocks and ``per_block``."""

    flops_outside: int
    flops_per_block: int
    activations_outside: int  # bytes
    activations_per_block: int  # bytes

    def flops(self, depth: int) -> int:
        return self.flops_outside + depth * self.flops_per_block

    def activations(self, depth: int) -> int:
        return self.activations_outside + depth * self.activations_per_block


def count_parameters(variant: str, size: str, **overrides) -> int:
    """Parameters of a preset, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(variant, size, **overrides).parameters())


@default_dtype(torch.float32)  # the figures are float32 ones, whatever the caller's default
def _one_pass(variant: str, size: str, depth: int, batch: int, seq: int, overrides: dict) -> tuple[int, int]:
    """FLOPs of forward+backward, and the bytes autograd saves, for a model of ``depth`` blocks (float32)."""
    with torch.device("meta"):  # attention as a GPU runs it: SDPA (on CPU, persistent keys take the "math" path)
        model = build_model(variant, size, **{"attention_backend": "sdpa", **overrides, "depth": depth})
        tokens = torch.zeros(batch, seq, dtype=torch.long)
    # storage -> (storage, bytes); views of one storage share it. The storage itself is held until the count is
    # done: a storage freed mid-pass (a discarded branch) would otherwise hand its key to a later one.
    saved: dict[int, tuple[torch.UntypedStorage, int]] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        saved[storage._cdata] = (storage, storage.nbytes())
        return t

    # the counter knows baddbmm but not its in-place form, which fused_chunk uses: count it as its matmul
    inplace = {torch.ops.aten.baddbmm_: lambda _, a, b, *args, out_shape=None, **kwargs: bmm_flop(a, b)}
    counter = FlopCounterMode(display=False, custom_mapping=inplace)
    with counter, torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        logits, _ = model(tokens)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())
        loss.backward()
    parameters = {p.untyped_storage()._cdata for p in model.parameters()}
    return counter.get_total_flops(), sum(n for key, (_, n) in saved.items() if key not in parameters)


def block_costs(variant: str, size: str, batch: int = 1, seq: int | None = None, **overrides) -> BlockCosts:
    """FLOPs and activation bytes of one training pass, split into outside-the-blocks and per block."""
    if seq is None:
        with torch.device("meta"):
            seq = build_model(variant, size, **{**overrides, "depth": 1}).config.context
    f1, a1 = _one_pass(variant, size, 1, batch, seq, overrides)
    f2, a2 = _one_pass(variant, size, 2, batch, seq, overrides)
    return BlockCosts(f1 - (f2 - f1), f2 - f1, a1 - (a2 - a1), a2 - a1)


def training_memory(parameters: int, costs: BlockCosts, depth: int, dim: int, seq: int, micro_batch: int,
                    processes: int = 1, fsdp: bool = False, checkpointing: bool = False) -> dict[str, float]:
    """GiB per process for weights, gradients, AdamW state and activations (float32; see the module docstring).

    ``costs`` must be measured at ``batch=1`` and this ``seq``.
    """
    share = processes if fsdp else 1
    if checkpointing:  # each block's input is kept; one block is recomputed at a time
        activations = depth * seq * dim * 4 + costs.activations(1)
    else:
        activations = costs.activations(depth)
    out = {"weights": 4 * parameters / share, "gradients": 4 * parameters / share, "adamw": 8 * parameters / share,
           "activations": activations * micro_batch}
    out = {k: v / GiB for k, v in out.items()}
    out["total"] = sum(out.values())
    return out
