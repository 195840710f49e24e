"""What every long-context task shares: the :class:`Example` it makes, the :class:`Task` protocol, the checks
of ``example(length, depth, seed)`` and the helpers that turn text into byte tokens and back.

The task generators live in ``haystack`` (passkey, number, uuid), ``babilong`` (qa1-qa3) and ``mqar``;
``tasks`` gathers them in one registry.
"""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

IGNORE = -100  # the ``ignore_index`` of ``F.cross_entropy``: targets that are not scored
BYTE_VOCAB = 256  # byte-level tasks: one token per byte of ASCII text, the vocabulary of ``titans_edu.train``


@dataclass(frozen=True)
class Example:
    """One sequence of a task, with what is scored in it.

    ``tokens``  ``(n,)`` int64: the input the model reads, then the answer tokens.
    ``scored``  ``(n,)`` bool: True at the answer tokens, each predicted from all the tokens before it.
    ``needle``  ``(start, end)``: the span ``tokens[start:end]`` holding what the answer needs (the needle, or
                the supporting facts).
    ``length``  tokens of input before the first scored token, exactly the ``length`` asked for (mqar: the
                tokens before its query block, which starts with a key, so its first scored token is at
                ``length + 1``).
    ``answer_text``  byte tasks: the answer as text; token tasks: None.
    ``question``  where the question starts (the query token, or mqar's query block): everything before it is
                the haystack and the needle. The memory-reset control resets the memory there.
    """

    tokens: Tensor
    scored: Tensor
    needle: tuple[int, int]
    length: int
    answer_text: str | None = None
    question: int | None = None

    def __post_init__(self) -> None:
        if self.tokens.dim() != 1 or self.tokens.dtype != torch.int64:
            raise ValueError(f"tokens must be a 1-D int64 tensor, got {tuple(self.tokens.shape)} {self.tokens.dtype}")
        if self.scored.shape != self.tokens.shape or self.scored.dtype != torch.bool:
            raise ValueError(f"scored must be a bool tensor shaped like tokens {tuple(self.tokens.shape)}, got "
                             f"{tuple(self.scored.shape)} {self.scored.dtype}")
        start, end = self.needle
        if not 0 <= start <= end <= len(self.tokens):
            raise ValueError(f"needle {self.needle} is not a span of the {len(self.tokens)} tokens")

    @property
    def answer(self) -> Tensor:
        """The scored tokens, ``tokens[scored]``: ``(answer_len,)`` int64."""
        return self.tokens[self.scored]


class Task(Protocol):
    """A generator of examples. ``name``: its key in ``TASKS``. ``level``: ``"byte"`` (vocabulary 256, the bytes
    of ASCII text) or ``"token"`` (its own small vocabulary). ``chance``: the exact-match accuracy of a uniform
    guess of the whole answer."""

    name: str
    level: str
    vocab_size: int
    chance: float

    def example(self, length: int, depth: float, seed: int) -> Example: ...


# --- argument checks ---


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int, or a ValueError saying that ``name`` must be an integer >= ``minimum``."""
    try:
        as_int = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if isinstance(value, bool) or as_int < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return as_int


def check_depth(depth: object) -> float:
    """``depth`` as a float in [0, 1], or a ValueError that says what depth means."""
    if isinstance(depth, bool) or not isinstance(depth, numbers.Real) or math.isnan(depth) or not 0 <= depth <= 1:
        raise ValueError(f"depth is where the needle starts, as a fraction of the haystack, in [0, 1] (0: at the "
                         f"start, 1: right before the question), got {depth!r}")
    return float(depth)


def check_example(task: str, length: object, depth: object, seed: object,
                  min_length: int) -> tuple[int, float, np.random.Generator]:
    """Check the arguments of ``example`` and return ``length, depth`` and the random generator of ``seed``."""
    try:
        length = check_int("length", length, min_length)
    except ValueError:
        raise ValueError(f"{task}: length is the number of input tokens before the answer and must be an integer "
                         f">= {min_length}, enough to hold the needle and the question; got {length!r}") from None
    return length, check_depth(depth), np.random.default_rng(check_int("seed", seed, 0))


def start_at(depth: float, room: int) -> int:
    """Where a needle starts at ``depth`` when it can start anywhere in ``[0, room]``: ``round(depth * room)``,
    halves rounded up."""
    return min(room, math.floor(depth * room + 0.5))


# --- bytes ---


def byte_tokens(text: str) -> Tensor:
    """The bytes of ASCII ``text`` as token ids: ``(len(text),)`` int64."""
    return torch.frombuffer(bytearray(text.encode("ascii")), dtype=torch.uint8).to(torch.int64)


def decode(tokens: Tensor) -> str:
    """Byte tokens ``(n,)`` back to text (the inverse of :func:`byte_tokens`)."""
    return bytes(tokens.to(torch.uint8).tolist()).decode("ascii")


def text_example(prompt: str, answer: str, needle: tuple[int, int], length: int, question: str) -> Example:
    """The byte-level example ``prompt + answer``, scored at the answer. ``prompt`` must be ``length`` bytes and
    end with ``question``."""
    if len(prompt) != length:
        raise RuntimeError(f"the prompt has {len(prompt)} bytes instead of the {length} asked for")
    tokens = byte_tokens(prompt + answer)
    scored = torch.zeros(len(tokens), dtype=torch.bool)
    scored[length:] = True
    if not prompt.endswith(question):
        raise RuntimeError("the prompt does not end with its question")
    return Example(tokens, scored, needle, length, answer, question=length - len(question))
