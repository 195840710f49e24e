"""MAC, memory as a context (paper §4.1, Eqs. 21-25, Fig. 2 and 3a; SPEC §3; notebook 08).

The stream is cut into segments of ``C`` tokens, counted from its start. For segment ``S^(t)``:

    h_t   = M*_{t-1}(q_t),  q_t = S^(t) W_Q     Eq. 21: read the memory left by earlier segments (no update)
    S~    = [p_1..p_Np] || h_t || S^(t)         Eq. 22: persistent tokens, memory tokens, the segment
    y_t   = Attn(S~)                            Eq. 23: causal attention inside that window
    M_t   = M_{t-1}(y_t)                        Eq. 24: write the memory from the attention output
    o_t   = y_t ⊗ M*_t(y_t)                     Eq. 25: gate y with a read of the updated memory

Glossary (paper symbol -> code name):

    C                   ``segment``
    M_{t-1}             ``state.segment_start``: the memory weights when the segment began
    q_t, h_t            ``read_queries``, ``h``: one memory token per segment token, read with M_{t-1}
    p                   ``persistent``: keys and values in every window, always visible, with no position
    y_t                 ``y``: the attention output at the segment positions
    M_t, M*_t(y_t)      ``self.memory(y, state.memory)``: writes (k, v) projected from y and reads with the
                        memory updated *through each token* (position i reads M after token i; SPEC §3 step 5)
    ⊗                   :class:`~titans_edu.blocks.MemoryGate`

CHOICEs (SPEC §3):

- Memory token ``h_j`` is read with ``q_j``, computed from segment token ``j``; segment token ``i`` sees ``h_j``
  only for ``j <= i`` (:func:`~titans_edu.attention.segment_mask`), otherwise position ``i`` would see token
  ``j > i``. ``h_j`` carries the position of token ``j``. Every segment token sees all persistent tokens.
- The memory tokens are mapped back to the model width by the memory's own output head (RMSNorm, gate from
  the segment input, W_O) before the attention projects them.
- The memory never sees the persistent tokens: in MAC they live in the attention window only.
- The read queries of Eq. 21 come from the segment input and the write keys of Eq. 24 from ``y``: two streams
  through one memory, each with its own convolution cache.

Streaming: the state keeps the memory now, the memory at the segment start, and the keys of the current
segment's ``[h || S]``; the cache is emptied at each segment boundary, so the cost per token grows within a
segment and falls back at the next one. Fed token by token, each new token reads its ``h`` with the saved
segment-start memory, so any split of the stream into calls gives what one call gives.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from .attention import KVCache
from .blocks import MemoryGate
from .model_config import ModelConfig
from .persistent import hybrid_parts
from .state import MemoryState, Weights, stream_pieces


@dataclass
class MACState:
    """``memory``: M after the last token seen (its conv cache is the write stream's).
    ``segment_start``: M_{t-1}, the weights the current segment reads its memory tokens with.
    ``read_conv``: the read stream's convolution cache ``(batch, heads * head_dim, kernel - 1)`` (None without
    convolutions). ``cache``: keys and values of ``[h || S]`` so far in this segment. ``position``: tokens seen.
    """

    memory: MemoryState
    segment_start: Weights
    read_conv: Tensor | None
    cache: KVCache
    position: int = 0

    def detach(self) -> "MACState":
        return MACState(
            self.memory.detach(), tuple(w.detach() for w in self.segment_start),
            None if self.read_conv is None else self.read_conv.detach(), self.cache.detach(), self.position,
        )


class MACMixer(nn.Module):
    """Memory as a context. ``forward(x (batch, seq, dim), state) -> (o (batch, seq, dim), state)``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.segment = config.segment
        self.memory, self.attention, self.persistent = hybrid_parts(config)
        self.gate = MemoryGate(config.dim, config.norm_eps)

    def init_state(self, batch: int) -> MACState:
        memory = self.memory.initial_state(batch)
        read_conv = None
        if self.memory.conv is not None:
            c = self.memory.config
            read_conv = memory.conv.new_zeros(batch, c.heads * c.head_dim, c.conv_kernel - 1)
        a = self.attention
        cache = KVCache.empty(batch, a.heads, a.head_dim, a.to_qkv.weight)
        return MACState(memory, memory.weights, read_conv, cache, 0)

    def read_queries(self, x: Tensor, conv_cache: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """``q_t = S^(t) W_Q`` of Eq. 21, through the memory's own q path (the q rows of its projection, its
        causal convolution, SiLU, l2-norm; §4.4): ``(batch, heads, n, head_dim)`` and the new read-conv cache."""
        return self.memory.project_queries(x, conv_cache)

    def forward(self, x: Tensor, state: MACState) -> tuple[Tensor, MACState]:
        """Cut ``x`` at the segment boundaries (counted from the stream start) and run each piece.

        The read queries depend on ``x`` alone, not on the memory, so they are computed for all of ``x`` at once.
        """
        q, read_conv = self.read_queries(x, state.read_conv)
        state = replace(state, read_conv=read_conv)
        sizes = stream_pieces(state.position, x.shape[1], self.segment)
        outputs = []
        for x_s, q_s in zip(x.split(sizes, dim=1), q.split(sizes, dim=2)):
            if state.position % self.segment == 0:  # a new segment: M_{t-1} is the memory now, the window empty
                state = replace(state, segment_start=state.memory.weights, cache=state.cache.cleared())
            out, state = self.segment_step(x_s, q_s, state)
            outputs.append(out)
        return (torch.cat(outputs, dim=1) if outputs else x), state

    def segment_step(self, x: Tensor, q: Tensor, state: MACState) -> tuple[Tensor, MACState]:
        """Eqs. 21-25 for ``x (batch, n, dim)``, the next ``n`` tokens of the current segment, and their read
        queries ``q`` (:meth:`read_queries`)."""
        positions = torch.arange(state.position, state.position + x.shape[1], device=x.device)
        # Eq. 21: h_t = M*_{t-1}(q_t), a read with the segment-start memory (no update)
        h = self.memory.output(self.memory.memory(state.segment_start, q), x)
        # Eqs. 22-23: y_t = Attn([p || h_t || S^(t)]), causal inside the window
        p = None if self.persistent is None else self.persistent.tokens
        y, cache = self.attention(x, positions, state.cache, window=None, persistent=p, extra=h)
        # Eq. 24: M_t = M_{t-1}(y_t); and M*_t(y_t), position i read with M after token i
        m, memory = self.memory(y, state.memory)
        # Eq. 25: o_t = y_t ⊗ M*_t(y_t)
        o = self.gate(y, m)
        return o, MACState(memory, state.segment_start, state.read_conv, cache, state.position + x.shape[1])
