"""Needle-in-a-haystack tasks: one fact hidden at a chosen depth of filler, asked for at the end.

    Passkey        byte   a five-digit pass key in repeated plain sentences (RULER's passkey retrieval)
    PasskeyTokens  token  the same on 20 ids: a periodic filler, a NEEDLE id, digit ids, a QUERY id
    NumberNeedle   byte   a seven-digit number for a named key in real prose (RULER's S-NIAH, numbers)
    UuidNeedle     byte   the same with a uuid-like code, ``8 hex - 4 hex`` (RULER's S-NIAH, uuids)

The haystack of the byte tasks is cut to exactly the bytes left once the needle and the question are counted,
and the needle goes in at the sentence start nearest ``depth * haystack`` (in prose, at a line start where no
sentence starts within :data:`REACH` bytes: code and grammar rules run long without one). The prose is
:func:`titans_edu.training.data.embedded_corpus` made ASCII (:func:`prose`), read as a loop so that any
length can be cut from it. The helpers :func:`prose_slice`, :class:`Boundaries` and :func:`insert` are shared
with the BABILong-style tasks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch

from ..training.data import embedded_corpus
from .base import BYTE_VOCAB, Example, check_example, check_int, start_at, text_example

# --- the prose haystack ---

_ASCII = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2026": "...",
                        "\u2014": "-", "\u2013": "-", "\u00df": "ss", "\u00b0": " degrees"})


@lru_cache(maxsize=1)
def prose() -> str:
    """The embedded English corpus (~0.46 MB) with its few non-ASCII characters replaced or dropped, and a
    blank line at the end that joins it to its own start when a slice runs past the end."""
    return embedded_corpus().translate(_ASCII).encode("ascii", "ignore").decode("ascii") + "\n\n"


@lru_cache(maxsize=1)
def _line_ends() -> np.ndarray:
    text = prose()
    return np.array([m.end() for m in re.finditer("\n", text)])


def prose_slice(rng: np.random.Generator, size: int, accept: Callable[[str], bool],
                tries: int = 100) -> str | None:
    """``size`` contiguous characters of :func:`prose` that end with a line, at a line end chosen by ``rng``,
    and for which ``accept(slice)`` holds: other ends are drawn until one does, at most ``tries`` times (then
    None). Ending on a newline, the slice ends where a needle can go, and the question starts a line."""
    text = prose()
    for _ in range(tries):
        end = int(rng.choice(_line_ends()))
        if size <= end:
            piece = text[end - size : end]
        else:  # wrap round: the corpus as a loop, as many times as the size needs
            laps = -(-(size - end) // len(text))
            piece = (text * (laps + 1))[laps * len(text) + end - size : laps * len(text) + end]
        if accept(piece):
            return piece
    return None


REACH = 100  # a needle goes at a sentence start at most this many bytes from its target, else at a line start
_SENTENCE = re.compile(r"[.:?!] |[.:?!]\n|\n\n")
_LINE = re.compile(r"\. |\n")


def nearest(starts: np.ndarray, target: float) -> int:
    """The element of the sorted ``starts`` nearest ``target`` (the lower one on a tie)."""
    i = int(np.searchsorted(starts, target))
    if i == 0:
        return int(starts[0])
    if i == len(starts):
        return int(starts[-1])
    below, above = int(starts[i - 1]), int(starts[i])
    return below if target - below <= above - target else above


class Boundaries:
    """Where a needle or a fact can go into ``text``: ``sentences``, the start and the positions after the end
    of a sentence or paragraph; ``lines``, those and every line start. Both are sorted arrays.

    Real prose has long stretches without a sentence end (code, grammar rules), so :meth:`near` falls back to a
    line start when no sentence start lies within :data:`REACH` of the target. Lines of the embedded corpus
    are under 150 bytes and a :func:`prose_slice` ends with a line, so either way the place is at most
    :data:`REACH` bytes from the target.
    """

    def __init__(self, text: str) -> None:
        self.sentences = np.array([0] + [m.end() for m in _SENTENCE.finditer(text)])
        self.lines = np.union1d(self.sentences, [m.end() for m in _LINE.finditer(text)]).astype(np.int64)

    def near(self, target: float) -> int:
        """The sentence start nearest ``target`` if it is within :data:`REACH`, else the nearest line start."""
        best = nearest(self.sentences, target)
        return best if abs(best - target) <= REACH else nearest(self.lines, target)

    def between(self, low: int, high: int) -> np.ndarray:
        """The sentence starts in ``[low, high]``, or the line starts there if there is no sentence start."""
        inside = self.sentences[(self.sentences >= low) & (self.sentences <= high)]
        return inside if len(inside) else self.lines[(self.lines >= low) & (self.lines <= high)]


def insert(text: str, items: Sequence[tuple[int, str]]) -> tuple[str, list[int]]:
    """``text`` with each ``(at, piece)`` inserted at position ``at`` of ``text`` (``items`` sorted by ``at``;
    pieces at one position keep their order). Returns the new text and where each piece starts in it."""
    parts, starts, previous, offset = [], [], 0, 0
    for at, piece in items:
        if at < previous:
            raise ValueError("insert needs its items sorted by position")
        parts.append(text[previous:at])
        offset += at - previous
        starts.append(offset)
        parts.append(piece)
        offset += len(piece)
        previous = at
    parts.append(text[previous:])
    return "".join(parts), starts


# --- passkey: repeated plain sentences ---

FILLER = (
    "The river bends twice before it reaches the old mill. ",
    "Swallows build their nests under the stone bridge each spring. ",
    "In the village square the baker sets out warm loaves. ",
    "A cold wind comes down from the hills in the evening. ",
    "Fishing boats wait in the harbour until the tide turns. ",
    "The church bell rings at noon and again at dusk. ",
    "Children walk along the riverbank on their way to school. ",
)  # no digits, so the pass key is the only number in the text
PASSKEY_QUESTION = "\nWhat is the pass key? The pass key is "


@dataclass(frozen=True)
class Passkey:
    """RULER's passkey retrieval on bytes: ``The pass key is 40617.`` among the :data:`FILLER` sentences,
    repeated in order from a sentence chosen by the seed; the answer is the ``n_digits`` digits (no leading
    zero) after :data:`PASSKEY_QUESTION`."""

    n_digits: int = 5
    name: str = field(default="passkey", init=False)
    level: str = field(default="byte", init=False)
    vocab_size: int = field(default=BYTE_VOCAB, init=False)

    def __post_init__(self) -> None:
        check_int("n_digits", self.n_digits, 1)

    @property
    def chance(self) -> float:
        return 1.0 / (9 * 10 ** (self.n_digits - 1))

    @property
    def min_length(self) -> int:
        return len(self._needle("0" * self.n_digits)) + 1 + len(PASSKEY_QUESTION)

    @staticmethod
    def _needle(key: str) -> str:
        return f"The pass key is {key}."

    def example(self, length: int, depth: float, seed: int) -> Example:
        length, depth, rng = check_example(self.name, length, depth, seed, self.min_length)
        key = str(rng.integers(10 ** (self.n_digits - 1), 10**self.n_digits))
        needle = self._needle(key)
        room = length - len(needle) - 1 - len(PASSKEY_QUESTION)
        phase = int(rng.integers(len(FILLER)))
        cycle = "".join(FILLER[phase:] + FILLER[:phase])
        filler = (cycle * (room // len(cycle) + 1))[:room]
        at = Boundaries(filler).near(depth * room)
        text, (start,) = insert(filler, [(at, needle + " ")])
        return text_example(text + PASSKEY_QUESTION, key, (start, start + len(needle)), length, PASSKEY_QUESTION)


# --- passkey on a small vocabulary ---

CYCLE = (0, 1, 2, 3, 4, 5, 6, 7, 0, 2, 4, 6)  # the filler: these ids over and over
DIGIT, NEEDLE, QUERY = 8, 18, 19  # digit d is id 8 + d


@dataclass(frozen=True)
class PasskeyTokens:
    """Passkey on 20 ids, quick to learn: the filler repeats :data:`CYCLE` from a phase chosen by the seed; the
    needle is ``NEEDLE d_1 ... d_n`` (digit ids 8-17) at exactly ``round(depth * haystack)``; the input ends
    with ``QUERY`` and the answer is ``d_1 ... d_n`` again.

        f f f f  NEEDLE d d d d d  f f f ... f  QUERY | d d d d d
    """

    n_digits: int = 5
    name: str = field(default="passkey_tokens", init=False)
    level: str = field(default="token", init=False)
    vocab_size: int = field(default=20, init=False)

    def __post_init__(self) -> None:
        check_int("n_digits", self.n_digits, 1)

    @property
    def chance(self) -> float:
        return 0.1**self.n_digits

    @property
    def min_length(self) -> int:
        return self.n_digits + 2

    def example(self, length: int, depth: float, seed: int) -> Example:
        length, depth, rng = check_example(self.name, length, depth, seed, self.min_length)
        n = self.n_digits
        room = length - n - 2
        phase = int(rng.integers(len(CYCLE)))
        digits = rng.integers(0, 10, n) + DIGIT
        filler = np.array(CYCLE)[(phase + np.arange(room)) % len(CYCLE)]
        at = start_at(depth, room)
        tokens = np.concatenate([filler[:at], [NEEDLE], digits, filler[at:], [QUERY], digits])
        scored = torch.zeros(len(tokens), dtype=torch.bool)
        scored[length:] = True
        return Example(torch.from_numpy(tokens.astype(np.int64)), scored, (at, at + n + 1), length,
                       question=length - 1)


# --- a keyed value in real prose ---

KEY_FIRST = ("amber", "silver", "copper", "quiet", "northern", "velvet", "crimson", "hollow", "misty", "golden")
KEY_SECOND = ("harbour", "lantern", "meadow", "orchard", "falcon", "willow", "beacon", "quarry", "thistle", "ferry")


@dataclass(frozen=True)
class _KeyedValue:
    """A value for a two-word key (``amber harbour``), hidden in a slice of :func:`prose` chosen by the seed:

        ... prose ... The hidden number for the amber harbour is 4061723. ... prose ...
        What is the hidden number for the amber harbour? The hidden number for the amber harbour is | 4061723

    The slice contains neither the key nor the value, so the value occurs once in the input, in the needle.
    """

    noun = "value"  # what the value is called in the needle and the question
    width = 0  # its length in characters
    name: str = field(default="", init=False)
    level: str = field(default="byte", init=False)
    vocab_size: int = field(default=BYTE_VOCAB, init=False)

    def _value(self, rng: np.random.Generator) -> str:
        raise NotImplementedError

    def _needle(self, key: str, value: str) -> str:
        return f"The hidden {self.noun} for the {key} is {value}."

    def _question(self, key: str) -> str:
        return f"\nWhat is the hidden {self.noun} for the {key}? The hidden {self.noun} for the {key} is "

    @property
    def min_length(self) -> int:
        key = max(KEY_FIRST, key=len) + " " + max(KEY_SECOND, key=len)
        return len(self._needle(key, "0" * self.width)) + 1 + len(self._question(key))

    def example(self, length: int, depth: float, seed: int) -> Example:
        length, depth, rng = check_example(self.name, length, depth, seed, self.min_length)
        for _ in range(100):
            key = f"{rng.choice(KEY_FIRST)} {rng.choice(KEY_SECOND)}"
            value = self._value(rng)
            needle, question = self._needle(key, value), self._question(key)
            room = length - len(needle) - 1 - len(question)
            filler = prose_slice(rng, room, lambda s: value not in s and key not in s.lower(), tries=10)
            if filler is None:  # the value (or key) is everywhere in slices this long: draw another
                continue
            at = Boundaries(filler).near(depth * room)
            text, (start,) = insert(filler, [(at, needle + " ")])
            prompt = text + question
            if prompt.count(value) == 1:
                return text_example(prompt, value, (start, start + len(needle)), length, question)
        raise RuntimeError(f"{self.name}: no value drawn was absent from a prose slice of {length} characters")


@dataclass(frozen=True)
class NumberNeedle(_KeyedValue):
    """RULER's S-NIAH with a number: a seven-digit value (no leading zero) for a two-word key, in prose."""

    noun, width = "number", 7
    name: str = field(default="number", init=False)

    @property
    def chance(self) -> float:
        return 1.0 / 9e6

    def _value(self, rng: np.random.Generator) -> str:
        return str(rng.integers(10**6, 10**7))


@dataclass(frozen=True)
class UuidNeedle(_KeyedValue):
    """RULER's S-NIAH with a uuid: a code of 8 and 4 lowercase hex digits (``3f9a2c1e-7b04``), in prose."""

    noun, width = "code", 13
    name: str = field(default="uuid", init=False)

    @property
    def chance(self) -> float:
        return 16.0**-12

    def _value(self, rng: np.random.Generator) -> str:
        digits = "".join("0123456789abcdef"[i] for i in rng.integers(0, 16, 12))
        return f"{digits[:8]}-{digits[8:]}"
