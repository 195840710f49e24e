"""The memory state carried between calls (docs/semantics.md §3).

Glossary:

    M_t        ``weights``   the memory now, a tuple over layers of ``(batch, heads, d_in, d_out)``
    M_{t'}     ``anchor``    the memory at the start of the current chunk; every gradient inside the chunk is
                             taken here (Eqs. 16-18)
    S_t        ``surprise``  the momentum, same shapes as ``weights``; ``S_0 = 0``
    t          ``seen``      tokens already written; the chunk position is ``seen % chunk_size``
               ``conv``      the last inputs of the causal convolutions (layer-level state; ``None`` in the core)

Chunks are counted from the start of the stream, so a stream split into any calls gives the same result as
one call: a call that ends inside a chunk leaves ``anchor`` behind for the next call to keep using.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import Tensor

Weights = tuple[Tensor, ...]



def stream_pieces(position: int, length: int, period: int) -> list[int]:
    """Sizes that cut ``length`` tokens, starting at stream ``position``, at every multiple of ``period`` counted
    from the stream start: the rest of a period an earlier call began, whole periods, then the start of the next.
    Chunks (of the memory) and segments (of MAC) are both cut this way."""
    sizes, done = [], 0
    while done < length:
        n = min(period - (position + done) % period, length - done)
        sizes.append(n)
        done += n
    return sizes

@dataclass
class MemoryState:
    weights: Weights
    anchor: Weights
    surprise: Weights
    seen: int = 0
    conv: Tensor | None = None

    @classmethod
    def fresh(cls, initial: Sequence[Tensor]) -> "MemoryState":
        """The state before any token: ``M = M_0``, ``S_0 = 0``."""
        initial = tuple(initial)
        return cls(weights=initial, anchor=initial, surprise=tuple(torch.zeros_like(w) for w in initial), seen=0)

    @property
    def batch(self) -> int:
        return self.weights[0].shape[0]

    def detach(self) -> "MemoryState":
        """Cut the autograd history (truncated backprop through time between calls)."""
        d = lambda ws: tuple(w.detach() for w in ws)  # noqa: E731
        conv = None if self.conv is None else self.conv.detach()
        return replace(self, weights=d(self.weights), anchor=d(self.anchor), surprise=d(self.surprise), conv=conv)

    def check(self, expected_shapes: Sequence[torch.Size], batch: int, where: str = "memory") -> None:
        """Raise a ``ValueError`` unless this state fits ``batch`` sequences of a memory with these shapes."""
        shapes = [tuple(s) for s in expected_shapes]
        for name in ("weights", "anchor", "surprise"):
            got = [tuple(w.shape) for w in getattr(self, name)]
            want = [(batch, *s) for s in shapes]
            if got != want:
                raise ValueError(
                    f"{where}: the state's {name} have shapes {got}, but this {where} with batch size {batch} "
                    f"expects {want}. Pass a state made by the same config and batch size, or state=None to "
                    f"start fresh."
                )
        if self.seen < 0:
            raise ValueError(f"{where}: state.seen must be >= 0, got {self.seen}")
