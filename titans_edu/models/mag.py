"""MAG, memory as a gate (paper §4.2, Eqs. 26-28, Fig. 3b and 4; notebook 09).

Two branches read the same input side by side, with no segmentation:

    x~ = [p_1..p_Np] || x           Eq. 26: persistent tokens in front
    y  = SW-Attn*(x~)               Eq. 27: sliding-window attention; the persistent prefix is always visible
    o  = y ⊗ M(x~)                  Eq. 28: the memory's output gates the attention's

Glossary (paper symbol -> code name):

    W            ``window``
    p            ``persistent``: in the attention, keys and values with no position (always visible); in the
                 memory, the first tokens of its stream
    M(x~)        ``self.memory(x, state.memory)``: position t reads M_t, the memory including token t
    ⊗            :class:`~titans_edu.models.blocks.MemoryGate`: ``RMSNorm_a(y) * sigmoid(RMSNorm_b(M(x~)))``

Outputs are kept at the positions of ``x`` only. CHOICE: the memory reads the persistent tokens once,
at the start of the stream, when the state is created; a stream split into calls gives what one call gives.

Streaming: the state is the memory (fixed size) and the last ``W - 1`` keys of the attention, so the cost per
token does not grow with the context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .attention import KVCache
from .blocks import MemoryGate
from .config import ModelConfig
from .persistent import hybrid_parts, memory_reads_persistent
from ..memory.state import MemoryState


@dataclass
class MAGState:
    """``memory``: the memory state; ``cache``: the last ``W - 1`` attention keys; ``position``: the stream
    position of the next token, counting the persistent tokens (x_0 sits at N_p)."""

    memory: MemoryState
    cache: KVCache
    position: int

    def detach(self) -> "MAGState":
        return MAGState(self.memory.detach(), self.cache.detach(), self.position)


class MAGMixer(nn.Module):
    """Memory as a gate. ``forward(x (batch, seq, dim), state) -> (o (batch, seq, dim), state)``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.window = config.window
        self.memory, self.attention, self.persistent = hybrid_parts(config)
        self.gate = MemoryGate(config.dim, config.norm_eps)

    def init_state(self, batch: int) -> MAGState:
        """The memory after reading ``p`` (Eq. 26), and an empty window."""
        _, memory = memory_reads_persistent(self.memory, self.persistent, batch)
        a = self.attention
        cache = KVCache.empty(batch, a.heads, a.head_dim, a.to_qkv.weight)
        return MAGState(memory, cache, 0 if self.persistent is None else self.persistent.n_tokens)

    def forward(self, x: Tensor, state: MAGState) -> tuple[Tensor, MAGState]:
        positions = torch.arange(state.position, state.position + x.shape[1], device=x.device)
        # Eq. 27: y = SW-Attn*([p] || x), the persistent prefix always visible
        p = None if self.persistent is None else self.persistent.tokens
        y, cache = self.attention(x, positions, state.cache, window=self.window, persistent=p, keep=self.window - 1)
        # Eq. 28: M(x~), the memory continuing its stream [p || x]
        m, memory = self.memory(x, state.memory)
        # Eq. 28: o = y ⊗ M(x~)
        return self.gate(y, m), MAGState(memory, cache, state.position + x.shape[1])
