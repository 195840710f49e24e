"""MAC, memory as a context (paper §4.1, Eqs. 21-25, Fig. 2 and 3a; notebook 08).

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
                        memory updated *through each token* (position i reads M after token i)
    ⊗                   :class:`~titans_edu.models.blocks.MemoryGate`

CHOICEs (docs/semantics.md §5):

- Memory token ``h_j`` is read with ``q_j``, computed from segment token ``j``; segment token ``i`` sees ``h_j``
  only for ``j <= i`` (:func:`~titans_edu.models.attention.segment_mask`), otherwise position ``i`` would see token
  ``j > i``. ``h_j`` carries the position of token ``j``. Every segment token sees all persistent tokens.
- The memory tokens are mapped back to the model width by the memory's own output head (RMSNorm, gate from
  the segment input, W_O) before the attention projects them.
- The memory never sees the persistent tokens: in MAC they live in the attention window only.
- The read queries of Eq. 21 come from the segment input and the write keys of Eq. 24 from ``y``: two streams
  through one memory, each with its own convolution cache.

Streaming: the state keeps the memory now, the memory at the segment start, and the keys of the current
segment's ``[h || S]``; the cache is emptied as each segment ends, so the cost per token grows within a
segment and falls back at its end. Fed token by token, each new token reads its ``h`` with the saved
segment-start memory, so any split of the stream into calls gives what one call gives.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from .attention import KVCache, Projected
from .blocks import MemoryGate
from .config import ModelConfig
from .persistent import hybrid_parts
from ..memory.state import MemoryState, Weights, stream_pieces


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

        What depends on ``x`` alone, not on the memory, is computed for all of ``x`` at once: the read queries,
        the read's output gate, the attention's queries, keys and values of the tokens, and the persistent keys.
        So is what no later segment needs: the memory's output head on the writes, and the gate of Eq. 25.
        Only the memory read, the attention and the memory write run segment by segment.
        """
        q, read_conv = self.read_queries(x, state.read_conv)
        read_gate = self.memory.out_gate(x)
        positions = torch.arange(state.position, state.position + x.shape[1], device=x.device)
        tokens = self.attention.project(x, positions)
        prefix = None
        if self.persistent is not None:
            prefix = self.attention.persistent_keys_values(self.persistent.tokens, x.shape[0])
        state = replace(state, read_conv=read_conv)
        sizes = stream_pieces(state.position, x.shape[1], self.segment)
        pieces = zip(q.split(sizes, dim=2), read_gate.split(sizes, dim=1), tokens.split(sizes), positions.split(sizes))
        ys, reads = [], []
        for q_s, gate_s, tokens_s, positions_s in pieces:  # split, not slices: each backward pass is one cat
            if state.position % self.segment == 0:  # a new segment: M_{t-1} is the memory now (the window was
                state = replace(state, segment_start=state.memory.weights)  # emptied as the last segment ended)
            y, read, state = self.segment_step(q_s, gate_s, tokens_s, positions_s, prefix, state)
            ys.append(y)
            reads.append(read)
        if not ys:
            return x, state
        y, read = torch.cat(ys, dim=1), torch.cat(reads, dim=2)
        # Eq. 25: o_t = y_t ⊗ M*_t(y_t), the memory's output head applied to the reads of every segment at once
        return self.gate(y, self.memory.output(read, y)), state

    def segment_step(
        self, q: Tensor, read_gate: Tensor, tokens: Projected, positions: Tensor,
        prefix: tuple[Tensor, Tensor] | None, state: MACState,
    ) -> tuple[Tensor, Tensor, MACState]:
        """Eqs. 21-24 for the next ``n`` tokens of the current segment, at ``positions (n,)``: their read queries
        ``q`` (:meth:`read_queries`), the output gate of that read, their attention projections and the
        persistent keys and values. Returns ``y_t (batch, n, dim)``, the per-head reads ``M*_t(y_t)`` before the
        memory's output head, and the state."""
        # Eq. 21: h_t = M*_{t-1}(q_t), a read with the segment-start memory (no update)
        h = self.memory.gated_output(self.memory.memory(state.segment_start, q), read_gate)
        # Eqs. 22-23: y_t = Attn([p || h_t || S^(t)]), causal inside the window; a window that this piece
        # completes is never read again, so it is not kept
        ends_segment = (state.position + len(positions)) % self.segment == 0
        y, cache = self.attention.attend_projected(tokens, positions, state.cache, None, prefix, extra=h,
                                                   keep=0 if ends_segment else None)
        # Eq. 24: M_t = M_{t-1}(y_t); and M*_t(y_t), position i read with M after token i
        read, memory = self.memory.write_read(y, state.memory)
        return y, read, MACState(memory, state.segment_start, state.read_conv, cache, state.position + len(positions))
