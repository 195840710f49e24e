"""Persistent memory: learned, input-independent tokens in front of the sequence (paper §3.3, Eq. 19; notebook 07).

Glossary:

    N_p                ``n_tokens``: how many persistent tokens
    P = [p_1..p_Np]    ``tokens``: a parameter ``(N_p, dim)``, learned by the outer optimizer, fixed at test time
    x_new = P || x     Eq. 19: the tokens are prepended to the sequence

They store knowledge about the task rather than about the input. Where they enter differs by architecture:

    MAC   keys and values of every segment's attention window ``[p || h || S]`` (Eq. 22)
    MAG   the memory reads ``[p || x]`` (Eq. 26); the attention sees them as an always-visible prefix (Eq. 27)
    MAL   the memory reads ``[p || x]`` (Eq. 29); the attention sees ``M(p)`` at the start of its stream
    LMM   the memory reads ``[p || x]``

CHOICE: when a stream is processed in several calls, the memory reads the persistent tokens once,
at the very start of the stream: :func:`memory_reads_persistent` builds that initial state, and every later
call continues from it. One call on ``[p || x]`` and any split of ``x`` into calls give the same result.

:func:`hybrid_parts` builds what MAC, MAG and MAL are made of: the neural memory, the attention and ``p``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import Attention
from .config import ModelConfig
from ..memory.layer import NeuralMemory
from ..memory.state import MemoryState


class PersistentMemory(nn.Module):
    """``N_p`` learned tokens of width ``dim`` (Eq. 19). ``forward(batch) -> (batch, N_p, dim)``.

    CHOICE: initialised with unit-variance entries, the scale of the RMS-normalised tokens they sit beside.
    """

    def __init__(self, n_tokens: int, dim: int) -> None:
        super().__init__()
        if n_tokens < 0 or dim < 1:
            raise ValueError(f"persistent memory needs n_tokens >= 0 and dim >= 1, got n_tokens={n_tokens}, dim={dim}")
        self.tokens = nn.Parameter(torch.randn(n_tokens, dim))

    @property
    def n_tokens(self) -> int:
        return self.tokens.shape[0]

    def forward(self, batch: int) -> Tensor:
        """The same tokens for every sequence: ``(batch, N_p, dim)``."""
        return self.tokens.unsqueeze(0).expand(batch, -1, -1)

    def prepend(self, x: Tensor) -> Tensor:
        """Eq. 19: ``[p_1..p_Np] || x`` for ``x (batch, seq, dim)`` -> ``(batch, N_p + seq, dim)``."""
        return torch.cat([self(x.shape[0]).to(x.dtype), x], dim=1)

    def extra_repr(self) -> str:
        return f"n_tokens={self.n_tokens}, dim={self.tokens.shape[1]}"


def memory_reads_persistent(
    memory: NeuralMemory, persistent: PersistentMemory | None, batch: int
) -> tuple[Tensor | None, MemoryState]:
    """The memory's state at the start of a stream ``[p || x]``: ``M_0`` after writing the persistent tokens.

    Returns ``(M(p), state)``: the memory's output at the persistent positions, ``(batch, N_p, dim)`` (None
    without persistent tokens), and the state the first real token continues from.
    """
    state = memory.initial_state(batch)
    if persistent is None or persistent.n_tokens == 0:
        return None, state
    return memory(persistent(batch), state)


def hybrid_parts(config: ModelConfig) -> tuple[NeuralMemory, Attention, PersistentMemory | None]:
    """The three parts of a Titans hybrid (MAC, MAG, MAL): the neural memory ``M``, the attention, and the
    persistent tokens ``p`` (None when ``N_p = 0``).

    The mixers assign them to ``self.memory``, ``self.attention`` and ``self.persistent``, in this order: the
    ``state_dict`` keys that checkpoints store, and the order of the random initial draws (so the values a seed
    gives), depend on it.
    """
    memory = NeuralMemory(config.memory_config())
    attention = Attention(config.dim, config.heads, config.rope_base, config.attention_backend)
    persistent = PersistentMemory(config.persistent, config.dim) if config.persistent else None
    return memory, attention, persistent
