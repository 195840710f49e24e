"""LMM: the neural long-term memory alone as the sequence mixer (paper §4, §5; notebook 07).

The block is the shared pre-norm residual block with :class:`~titans_edu.memory.layer.NeuralMemory` as its
mixer and no attention. The memory reads ``[p || x]`` (Eq. 19; the ablations of Table 5 remove ``p`` from the
LMM): the persistent tokens are written once, at the start of the stream
(:func:`~titans_edu.models.persistent.memory_reads_persistent`), and their outputs are dropped.

Streaming: the state is the memory's :class:`~titans_edu.memory.state.MemoryState`, of fixed size, so the cost per
token does not grow with the context.
"""

from __future__ import annotations

from torch import Tensor, nn

from .config import ModelConfig
from ..memory.layer import NeuralMemory
from .persistent import PersistentMemory, memory_reads_persistent
from ..memory.state import MemoryState


class LMMMixer(nn.Module):
    """``forward(x (batch, seq, dim), state) -> (M(x) (batch, seq, dim), state)``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.memory = NeuralMemory(config.memory_config())
        self.persistent = PersistentMemory(config.persistent, config.dim) if config.persistent else None

    def init_state(self, batch: int) -> MemoryState:
        """The memory after reading the persistent tokens."""
        return memory_reads_persistent(self.memory, self.persistent, batch)[1]

    def forward(self, x: Tensor, state: MemoryState) -> tuple[Tensor, MemoryState]:
        return self.memory(x, state)
