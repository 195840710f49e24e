"""Synthetic key-value streams for notebooks 03-05: surprise, momentum and forgetting.

Every stream is drawn from a table of *facts*: key-value pairs ``(k_i, v_i)`` with unit-length keys and
values (the layer of §4.4 l2-normalises its keys). Token ``t`` shows fact ``fact[t]``, so it asks the memory to
write ``(k_t, v_t)``. Because the table is known, we can ask at any time how well the memory recalls any fact:

    recall error of fact i under M  =  ||M(k_i) - v_i||^2        the loss of Eq. 12 at that pair

0 is perfect recall; 1 is what an empty memory (``M(k) = 0``) scores, since ``||v_i|| = 1``.

    event_stream     03  familiar facts that repeat, and a few surprising new facts (plus optional noise)
    episode_stream   04  familiar facts, then an episode of new facts right after a surprising onset
    shift_stream     05  phases, each with its own facts: the distribution shifts at every phase boundary

Every sequence in a batch has its own random facts but the same timeline (event times, episode, phases), so a
batch averages an experiment over independent draws, like running it with several seeds at once.

Glossary: ``keys``/``values`` are k_t, v_t (Eq. 11, here drawn directly instead of projected from x_t);
``feature`` is a per-token number that a data-dependent gate can read (θ_t, η_t, α_t are "functions of
tokens", §3.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FactStream", "episode_stream", "event_stream", "shift_stream"]


@dataclass(frozen=True)
class FactStream:
    """A stream of ``length`` tokens drawn from a table of ``n_facts`` facts.

    ``keys`` ``(batch, length, d_k)`` and ``values`` ``(batch, length, d_v)``: what token t writes.
    ``fact`` ``(length,)``: which fact each token shows (shared by the batch).
    ``fact_keys`` ``(batch, n_facts, d_k)``, ``fact_values`` ``(batch, n_facts, d_v)``: the table.
    ``group`` ``(n_facts,)``: the group of each fact, an index into ``groups`` (names such as ``"event"``).
    ``feature`` ``(length,)``: a per-token signal a gate can read (its meaning depends on the stream).
    """

    keys: Tensor
    values: Tensor
    fact: Tensor
    fact_keys: Tensor
    fact_values: Tensor
    group: Tensor
    groups: tuple[str, ...]
    feature: Tensor

    @property
    def batch(self) -> int:
        return self.keys.shape[0]

    @property
    def length(self) -> int:
        return self.keys.shape[1]

    @property
    def dim(self) -> int:
        return self.keys.shape[2]

    def kvq(self) -> tuple[Tensor, Tensor, Tensor]:
        """``k, v, q`` shaped ``(batch, 1, length, d)`` (one head) for :func:`titans_edu.naive_memory`.

        The query of token t is its own key, so ``y_t = M_t(k_t)`` reads back what was just written.
        """
        k, v = self.keys.unsqueeze(1), self.values.unsqueeze(1)
        return k, v, k

    def facts_in(self, name: str) -> Tensor:
        """Indices into the fact table of the facts in group ``name``."""
        if name not in self.groups:
            raise ValueError(f"this stream has fact groups {self.groups}, not {name!r}")
        return (self.group == self.groups.index(name)).nonzero().flatten()

    def tokens_of(self, name: str) -> Tensor:
        """``(length,)`` bool: the tokens that show a fact of group ``name``."""
        return torch.isin(self.fact, self.facts_in(name))

    def token_group(self) -> Tensor:
        """``(length,)``: the group index of the fact each token shows."""
        return self.group[self.fact]


def _unit(shape: Sequence[int], gen: torch.Generator, dtype: torch.dtype) -> Tensor:
    return F.normalize(torch.randn(*shape, generator=gen, dtype=dtype), dim=-1)


def _check_positive(**named: int) -> None:
    for name, value in named.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _build(fact: Tensor, group: Tensor, groups: tuple[str, ...], feature: Tensor, dim: int, batch: int,
           gen: torch.Generator, dtype: torch.dtype, value_noise: float = 0.0) -> FactStream:
    n_facts = group.numel()
    fact_keys = _unit((batch, n_facts, dim), gen, dtype)
    fact_values = _unit((batch, n_facts, dim), gen, dtype)
    values = fact_values[:, fact]
    if value_noise:
        # each observation of a value is off by a random vector of expected length value_noise
        values = values + value_noise * torch.randn(values.shape, generator=gen, dtype=dtype) / dim**0.5
    return FactStream(fact_keys[:, fact], values, fact, fact_keys, fact_values, group, groups, feature.to(dtype))


def event_stream(length: int = 240, dim: int = 32, n_familiar: int = 4,
                 events: Sequence[int] = (60, 110, 160, 200), n_noise: int = 0, warmup: int = 40,
                 batch: int = 1, seed: int = 0, dtype: torch.dtype = torch.float64) -> FactStream:
    """Familiar facts in random order, with a new fact at each time in ``events`` (notebook 03).

    Each event shows a fact never seen before, once: a surprise. ``n_noise`` further one-off new facts appear at
    random times after ``warmup``: they are just as surprising, but the ``feature`` marks them as noise.

    Groups: ``("familiar", "event", "noise")``. ``feature``: +1 at events, -1 at noise tokens, 0 otherwise.
    """
    _check_positive(length=length, dim=dim, n_familiar=n_familiar, batch=batch)
    events = sorted(int(t) for t in events)
    if len(set(events)) != len(events) or any(not 0 <= t < length for t in events):
        raise ValueError(f"events must be distinct times in [0, {length}), got {events}; pick them inside the stream")
    free = [t for t in range(warmup, length) if t not in events]
    if n_noise < 0 or n_noise > len(free):
        raise ValueError(
            f"n_noise must be in [0, {len(free)}] (the tokens after warmup={warmup} that are not events), "
            f"got {n_noise}; lower n_noise or warmup, or make the stream longer"
        )
    gen = torch.Generator().manual_seed(seed)
    fact = torch.randint(0, n_familiar, (length,), generator=gen)
    noise = sorted(free[i] for i in torch.randperm(len(free), generator=gen)[:n_noise].tolist())
    n_events = len(events)
    fact[events] = n_familiar + torch.arange(n_events)
    fact[noise] = n_familiar + n_events + torch.arange(n_noise)
    group = torch.tensor([0] * n_familiar + [1] * n_events + [2] * n_noise)
    feature = torch.zeros(length)
    feature[events], feature[noise] = 1.0, -1.0
    return _build(fact, group, ("familiar", "event", "noise"), feature, dim, batch, gen, dtype)


def episode_stream(length: int = 300, dim: int = 32, n_familiar: int = 6, start: int = 150,
                   episode_length: int = 16, n_episode: int = 4, value_noise: float = 0.0, batch: int = 1,
                   seed: int = 0, dtype: torch.dtype = torch.float64) -> FactStream:
    """Familiar facts in random order, interrupted at ``start`` by an episode of new facts (notebook 04).

    The episode lasts ``episode_length`` tokens and cycles through ``n_episode`` new facts in order: its first
    token is the surprising event, the rest are the tokens right after it. ``value_noise`` adds a random vector
    of about that length to every observed value (the facts themselves stay unit length).

    Groups: ``("familiar", "episode")``. ``feature``: 1 inside the episode, 0 outside.
    """
    _check_positive(length=length, dim=dim, n_familiar=n_familiar, episode_length=episode_length,
                    n_episode=n_episode, batch=batch)
    if start < 0 or start + episode_length > length:
        raise ValueError(
            f"the episode [{start}, {start + episode_length}) must fit in the stream [0, {length}); "
            f"lower start or episode_length, or raise length"
        )
    if value_noise < 0:
        raise ValueError(f"value_noise must be >= 0, got {value_noise}")
    gen = torch.Generator().manual_seed(seed)
    fact = torch.randint(0, n_familiar, (length,), generator=gen)
    window = slice(start, start + episode_length)
    fact[window] = n_familiar + torch.arange(episode_length) % n_episode
    group = torch.tensor([0] * n_familiar + [1] * n_episode)
    feature = torch.zeros(length)
    feature[window] = 1.0
    return _build(fact, group, ("familiar", "episode"), feature, dim, batch, gen, dtype, value_noise)


def shift_stream(n_phases: int = 10, phase_length: int = 32, facts_per_phase: int = 6, dim: int = 16,
                 batch: int = 1, seed: int = 0, dtype: torch.dtype = torch.float64) -> FactStream:
    """``n_phases`` phases of ``phase_length`` tokens; phase p shows its own ``facts_per_phase`` facts in random
    order (notebook 05). At every phase boundary the distribution of tokens shifts to brand-new facts.

    Groups: ``("phase 1", ..., "phase P")``. ``feature``: 1 at the first token of every phase after the first
    (the boundary a forgetting gate could learn to notice), 0 otherwise.
    """
    _check_positive(n_phases=n_phases, phase_length=phase_length, facts_per_phase=facts_per_phase, dim=dim,
                    batch=batch)
    gen = torch.Generator().manual_seed(seed)
    length = n_phases * phase_length
    phase = torch.arange(length) // phase_length
    fact = phase * facts_per_phase + torch.randint(0, facts_per_phase, (length,), generator=gen)
    group = torch.arange(n_phases).repeat_interleave(facts_per_phase)
    feature = torch.zeros(length)
    feature[phase_length::phase_length] = 1.0
    names = tuple(f"phase {p + 1}" for p in range(n_phases))
    return _build(fact, group, names, feature, dim, batch, gen, dtype)
