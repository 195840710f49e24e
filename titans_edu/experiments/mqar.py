"""Multi-query associative recall (MQAR, as in Zoology) at a chosen depth, on its own small vocabulary.

    f f f  k_1 v_1 ... k_n v_n  f f f ... f  |  k_3 v_3  k_1 v_1  ...        the query block: n_queries keys again,
    <------------------- length ------------>     ^       ^                  shuffled, each followed by its value
                                                  scored: every value after a query key

The ``n_pairs`` key-value pairs (distinct keys) form the needle and start at exactly ``round(depth * (length
- 2 n_pairs))``; random filler fills the rest of the ``length`` tokens. Unlike the other tasks, ``length``
counts the tokens before the query block, which starts with a key: the first scored token sits at
``length + 1`` and the block adds ``2 * n_queries`` tokens. The values of the query block are part of the input
too (teacher forcing): each query is scored on its own value, with the earlier queries' answers in view.

Token ids, in three disjoint ranges as in :class:`titans_edu.course.tasks.SegmentRecall`:

    [0, n_filler)                              filler
    [n_filler, n_filler + n_keys)              keys
    [n_filler + n_keys, vocab_size)            values: drawn independently, with repeats
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .base import Example, check_example, check_int, start_at


@dataclass(frozen=True)
class MQAR:
    """``n_pairs`` pairs at the asked depth, ``n_queries`` of their keys asked again at the end (default: all).

    ``n_keys``, ``n_values``, ``n_filler``: the sizes of the three token ranges. ``chance`` is the exact-match
    chance of the whole answer, ``(1 / n_values) ** n_queries``; ``per_query_chance`` that of one value.
    """

    n_pairs: int = 8
    n_keys: int = 64
    n_values: int = 64
    n_filler: int = 16
    n_queries: int | None = None
    name: str = field(default="mqar", init=False)
    level: str = field(default="token", init=False)

    def __post_init__(self) -> None:
        for option in ("n_pairs", "n_keys", "n_values", "n_filler"):
            check_int(option, getattr(self, option), 1)
        if self.n_pairs > self.n_keys:
            raise ValueError(f"n_pairs={self.n_pairs} needs at least that many distinct keys, got n_keys="
                             f"{self.n_keys}; raise n_keys or lower n_pairs")
        if self.n_queries is not None:
            check_int("n_queries", self.n_queries, 1)
            if self.n_queries > self.n_pairs:
                raise ValueError(f"n_queries asks for keys among the n_pairs={self.n_pairs} pairs, each once, so it "
                                 f"must be at most n_pairs; got {self.n_queries}")

    @property
    def queries(self) -> int:
        """How many keys the query block asks for."""
        return self.n_pairs if self.n_queries is None else self.n_queries

    @property
    def vocab_size(self) -> int:
        return self.n_filler + self.n_keys + self.n_values

    @property
    def per_query_chance(self) -> float:
        return 1.0 / self.n_values

    @property
    def chance(self) -> float:
        return self.per_query_chance**self.queries

    @property
    def min_length(self) -> int:
        return 2 * self.n_pairs

    def example(self, length: int, depth: float, seed: int) -> Example:
        length, depth, rng = check_example(self.name, length, depth, seed, self.min_length)
        n, q = self.n_pairs, self.queries
        room = length - 2 * n
        filler = rng.integers(0, self.n_filler, room)
        keys = rng.permutation(self.n_keys)[:n] + self.n_filler
        values = rng.integers(0, self.n_values, n) + self.n_filler + self.n_keys
        asked = rng.permutation(n)[:q]
        at = start_at(depth, room)
        pairs = np.stack([keys, values], 1).reshape(-1)
        queries = np.stack([keys[asked], values[asked]], 1).reshape(-1)
        tokens = np.concatenate([filler[:at], pairs, filler[at:], queries])
        scored = torch.zeros(len(tokens), dtype=torch.bool)
        scored[length + 1 :: 2] = True
        return Example(torch.from_numpy(tokens.astype(np.int64)), scored, (at, at + 2 * n), length,
                       question=length)
