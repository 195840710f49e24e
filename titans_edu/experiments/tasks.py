"""The long-context tasks, under one interface: ``task.example(length, depth, seed) -> Example``.

    name            level  what it is                                      modelled on
    passkey         byte   a 5-digit pass key in repeated plain sentences   RULER's passkey retrieval
    passkey_tokens  token  the same on 20 ids (periodic filler, digit ids)  RULER's passkey, on a small vocabulary
    number          byte   a 7-digit number for a named key, in prose       RULER's S-NIAH (single needle, numbers)
    uuid            byte   a uuid-like code for a named key, in prose       RULER's S-NIAH (single needle, uuids)
    qa1             byte   where is a person: one supporting fact           BABILong qa1 (bAbI facts in long text)
    qa2             byte   where is an object: two supporting facts         BABILong qa2
    qa3             byte   where was an object before a place: three facts  BABILong qa3
    mqar            token  many key-value pairs, many queries               Zoology's multi-query associative recall

Byte tasks are ASCII text read one byte per token (vocabulary 256), so any model that ``titans_edu.train``
makes can read them; the prose is the embedded English corpus (``titans_edu.training.data.embedded_corpus``).
Token tasks have their own small vocabulary (``task.vocab_size``), quick to train on from scratch.

Every example is the input and then the answer. ``length`` is the number of input tokens before the first
scored token (mqar: before its query block; see ``mqar``), exactly as asked, and ``depth`` in [0, 1] says
where the needle starts, as in RULER: at about ``depth * (length - needle - question)``, so 0 puts it at the
very start and 1 right before the question. Byte tasks put it at the sentence boundary nearest that point
(see ``haystack``); token tasks put it exactly there (rounded). A seed fixes everything: the same ``(length,
depth, seed)`` gives the same example, another seed another needle and another haystack. One seed asks the
same question, with the same answer, at every depth: the depth moves the needle.

Scoring. :func:`batch` gives teacher-forced pairs ``x = tokens[:-1]``, ``y = tokens[1:]`` with ``y`` set to
``IGNORE`` except at the answer. An answer counts as right (exact match) when the argmax is right at every one
of its scored positions. This is the same verdict as greedy decoding of the answer: if every argmax is right
given the right prefix, greedy decoding writes the answer token by token; and if greedy decoding writes the
answer, each of its steps had the right prefix and chose the right token (for mqar, with the query keys
supplied between the values, as the input has them). So one forward pass scores a batch, with no generation
loop. The ``chance`` of a task is the exact-match accuracy of a uniform guess of the whole
answer.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .babilong import OBJECTS, PEOPLE, PLACES, QA1, QA2, QA3
from .base import IGNORE, Example, Task, check_depth, check_int, decode
from .haystack import CYCLE, DIGIT, FILLER, NEEDLE, QUERY, NumberNeedle, Passkey, PasskeyTokens, UuidNeedle
from .mqar import MQAR

__all__ = [
    "IGNORE", "Example", "Task", "TASKS", "get_task", "batch", "row_seed", "decode",
    "Passkey", "PasskeyTokens", "NumberNeedle", "UuidNeedle", "QA1", "QA2", "QA3", "MQAR",
    "FILLER", "CYCLE", "DIGIT", "NEEDLE", "QUERY", "PEOPLE", "PLACES", "OBJECTS",
]

TASKS: dict[str, Callable[..., Task]] = {
    "passkey": Passkey,
    "passkey_tokens": PasskeyTokens,
    "number": NumberNeedle,
    "uuid": UuidNeedle,
    "qa1": QA1,
    "qa2": QA2,
    "qa3": QA3,
    "mqar": MQAR,
}


def get_task(name: str, **options: object) -> Task:
    """The task registered as ``name``, made with ``options`` (e.g. ``get_task("mqar", n_pairs=16)``)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; the tasks are: {', '.join(TASKS)}")
    make = TASKS[name]
    allowed = [f.name for f in dataclasses.fields(make) if f.init] if dataclasses.is_dataclass(make) else None
    if allowed is not None and set(options) - set(allowed):
        raise ValueError(f"task {name!r} has no option {', '.join(sorted(set(options) - set(allowed)))}; its "
                         f"options are: {', '.join(allowed) or 'none'}")
    return make(**options)


def row_seed(seed: int, row: int) -> int:
    """The seed of row ``row`` of a batch drawn with ``seed``: a 63-bit hash of the pair."""
    return int(np.random.SeedSequence([seed, row]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def batch(task: Task, size: int, length: int, seed: int,
          depth: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """A training or evaluation batch of ``size`` examples of ``length``.

    Returns ``x, y, depths``: ``x`` ``(size, n - 1)`` int64, the tokens but the last; ``y`` ``(size, n - 1)``
    int64, the next tokens, ``IGNORE`` except where the next token is scored (teacher forcing: ``x =
    tokens[:-1]``, ``y = tokens[1:]`` masked); ``depths`` ``(size,)`` float64, the depth of each row. With
    ``depth`` None each row draws its depth uniformly in [0, 1] from ``seed``. Row ``i`` is
    ``task.example(length, depth_i, seed_i)`` with ``seed_i`` derived from ``(seed, i)``, so rows differ and
    a batch is a pure function of its arguments. ``n`` is the same for every row.
    """
    size = check_int("size", size, 1)
    seed = check_int("seed", seed, 0)
    if depth is None:
        depths = np.random.default_rng(np.random.SeedSequence([seed, 2**32])).random(size)
    else:
        depths = np.full(size, check_depth(depth))
    rows = [task.example(length, float(d), row_seed(seed, i)) for i, d in enumerate(depths)]
    if len({len(ex.tokens) for ex in rows}) != 1:
        raise RuntimeError(f"{task.name}: examples of length {length} differ in size")
    tokens = torch.stack([ex.tokens for ex in rows])
    scored = torch.stack([ex.scored for ex in rows])
    x, y = tokens[:, :-1], tokens[:, 1:].clone()
    y[~scored[:, 1:]] = IGNORE
    return x, y, torch.from_numpy(depths)
