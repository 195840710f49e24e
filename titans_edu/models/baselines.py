"""The two baselines of the paper's tables: Transformer++ and sliding-window attention (§5.1; notebook 07).

Transformer++: RMSNorm, SwiGLU and RoPE around full causal attention. Its KV cache keeps every past token,
so the cost per generated token grows with the context.

SWA: the same block with SW-Attn, each query seeing the last ``window`` tokens. Its cache keeps the last
``window - 1`` tokens, so the cost per token stays flat. It is the short-term memory that MAG and MAL combine
with the neural memory.

Both are sequence mixers for :class:`titans_edu.models.blocks.Block`: ``forward(x, state) -> (out, state)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from .attention import Attention, KVCache
from .config import ModelConfig


@dataclass
class AttentionState:
    """``cache``: keys and values of the tokens a future query may still see. ``position``: tokens seen."""

    cache: KVCache
    position: int = 0

    def detach(self) -> "AttentionState":
        return replace(self, cache=self.cache.detach())


class AttentionMixer(nn.Module):
    """Full causal attention (``window=None``, Transformer++) or SW-Attn (the SWA baseline)."""

    def __init__(self, config: ModelConfig, window: int | None) -> None:
        super().__init__()
        self.attention = Attention(config.dim, config.heads, config.rope_base, config.attention_backend)
        self.window = window

    def init_state(self, batch: int) -> AttentionState:
        a = self.attention
        return AttentionState(KVCache.empty(batch, a.heads, a.head_dim, a.to_qkv.weight))

    def forward(self, x: Tensor, state: AttentionState) -> tuple[Tensor, AttentionState]:
        """``x (batch, seq, dim) -> (batch, seq, dim)``."""
        n = x.shape[1]
        positions = torch.arange(state.position, state.position + n, device=x.device)
        keep = None if self.window is None else self.window - 1  # what the next query can still see
        y, cache = self.attention(x, positions, state.cache, window=self.window, keep=keep)
        return y, AttentionState(cache, state.position + n)
