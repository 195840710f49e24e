"""MAL, memory as a layer (paper §4.3, Eqs. 29-31, Fig. 5; notebook 10).

The memory and the attention are stacked, as in H3-style hybrids:

    x~ = [p_1..p_Np] || x           Eq. 29: persistent tokens in front
    y  = M(x~)                      Eq. 30: the memory compresses past and present
    o  = SW-Attn(RMSNorm(y))        Eq. 31: sliding-window attention over the memory's output

Glossary (paper symbol -> code name):

    W         ``window``
    M(x~)     ``self.memory(x, state.memory)``: position t reads M_t, the memory including token t
    SW-Attn   ``self.attention(..., window=W)``: plain SW-Attn, not SW-Attn* (Eq. 31)
    RMSNorm   ``self.norm_y``: the attention's input norm (the CHOICE below)

CHOICE: the stream of this layer is literally ``[p || x]``. The memory reads the persistent tokens
once, at the start of the stream, when the state is created; the attention receives ``M(p)`` as the first
``N_p`` tokens of its stream (positions 0 .. N_p-1) and, being plain SW-Attn, sees them only while they are
inside its window. Outputs are kept at the positions of ``x`` only.

CHOICE: ``y`` is RMS-normalised, with a learnable vector-valued weight, before the attention reads it. Every
other attention in the package reads a normalised stream (the pre-norm of its block, or RMSNorm_a in the gate),
and MAL's would otherwise read the output of the memory's projection ``W_O``, which the initialisation makes
small (root mean square about 0.04 at ``dim = 32``, against 1 for a normalised token): its scores start several
hundred times smaller than those of SWA, a uniform average over the window, and learn slowly. The norm changes the
scale of each ``y_t``, not its direction, so Eqs. 29-31 keep their meaning: the attention still sees the
memory's outputs only, ``M(p)`` included.

Streaming: the state is the memory (fixed size) and the last ``W - 1`` keys of the attention, so the cost per
token does not grow with the context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .attention import KVCache
from .config import ModelConfig
from .persistent import hybrid_parts, memory_reads_persistent
from ..memory.state import MemoryState


@dataclass
class MALState:
    """``memory``: the memory state; ``cache``: the last ``W - 1`` attention keys (of the memory's outputs);
    ``position``: the stream position of the next token, counting the persistent tokens (x_0 sits at N_p)."""

    memory: MemoryState
    cache: KVCache
    position: int

    def detach(self) -> "MALState":
        return MALState(self.memory.detach(), self.cache.detach(), self.position)


class MALMixer(nn.Module):
    """Memory as a layer. ``forward(x (batch, seq, dim), state) -> (o (batch, seq, dim), state)``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.window = config.window
        self.memory, self.attention, self.persistent = hybrid_parts(config)
        self.norm_y = nn.RMSNorm(config.dim, eps=config.norm_eps)

    def init_state(self, batch: int) -> MALState:
        """The memory after reading ``p``, and the attention's window holding ``M(p)`` (Eqs. 29-31)."""
        y_p, memory = memory_reads_persistent(self.memory, self.persistent, batch)
        a = self.attention
        cache = KVCache.empty(batch, a.heads, a.head_dim, a.to_qkv.weight)
        if y_p is None:
            return MALState(memory, cache, 0)
        n_p = y_p.shape[1]
        positions = torch.arange(n_p, device=y_p.device)
        _, cache = self.attention(self.norm_y(y_p), positions, cache, window=self.window, keep=self.window - 1)
        return MALState(memory, cache, n_p)

    def forward(self, x: Tensor, state: MALState) -> tuple[Tensor, MALState]:
        positions = torch.arange(state.position, state.position + x.shape[1], device=x.device)
        # Eq. 30: y = M(x~), the memory continuing its stream [p || x]
        y, memory = self.memory(x, state.memory)
        # Eq. 31: o = SW-Attn(y), reading RMSNorm(y) (CHOICE above)
        o, cache = self.attention(self.norm_y(y), positions, state.cache, window=self.window, keep=self.window - 1)
        return o, MALState(memory, cache, state.position + x.shape[1])
