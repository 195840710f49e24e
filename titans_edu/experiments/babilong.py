"""BABILong-style reasoning in a haystack: bAbI-like facts spread, in the order they happen, through prose.

    QA1   qa1, one supporting fact     "Where is Mary?"                      her last move
    QA2   qa2, two supporting facts    "Where is the apple?"                 where its holder went after taking it
    QA3   qa3, three supporting facts  "Where was the apple before the X?"   the holder went to A, then to X: A

The facts are sentences of two forms only, ``Mary went to the kitchen.`` and ``Mary picked up the apple.``,
made from :data:`PEOPLE`, :data:`PLACES` and :data:`OBJECTS`. The supporting facts stand together, one after
the other, and their span (the ``needle``) starts at the asked depth; ``facts`` distractor facts are scattered
over the rest of the haystack. The haystack is a slice of :func:`~.haystack.prose` that contains none of the
names, places or objects as a word, so every mention of them is a fact.

What the distractors may say is what keeps the answer unique: the answer's place occurs in one fact only (the
supporting one); the person asked about moves only before the supporting facts; nobody else touches the object
asked about. Before the facts, as in bAbI, the person may already have gone elsewhere, so the answer is the
*last* move, not the only one.

Every place has seven letters, so every answer has the same length and examples of one length batch together.
The answer is the place alone, after a question that ends ``... is in the ``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from .base import BYTE_VOCAB, Example, check_example, check_int, text_example
from .haystack import Boundaries, insert, prose_slice

PEOPLE = ("Mary", "John", "Sandra", "Daniel", "Fred", "Julie", "Lucy", "Peter")
PLACES = ("kitchen", "hallway", "bedroom", "balcony", "terrace", "parlour")  # all seven letters long
OBJECTS = ("apple", "football", "milk", "kite", "violin", "umbrella")
_NAMED = re.compile(r"\b(?:" + "|".join(PEOPLE + PLACES + OBJECTS) + r")\b", re.IGNORECASE)


def went(person: str, place: str) -> str:
    return f"{person} went to the {place}."


def took(person: str, thing: str) -> str:
    return f"{person} picked up the {thing}."


@dataclass(frozen=True)
class _Story:
    """What one example says. ``support``: the supporting facts, in order; ``before``, ``after``: distractor
    facts placed before and after them; ``question`` ends the input and ``answer`` follows it."""

    support: list[str]
    before: list[str]
    after: list[str]
    question: str
    answer: str


def _distractors(rng: np.random.Generator, n: int, person: str, places: list[str], objects: list[str],
                 own_places: list[str] | None = None) -> list[str]:
    """``n`` facts: moves to ``places`` and pickups of the people other than ``person``, and, when ``own_places``
    is given, moves of ``person`` to ``own_places`` (about one fact in three). A pickup takes an object out of
    ``objects``, so that nobody picks up an object twice."""
    facts = []
    for _ in range(n):
        roll = rng.random()
        if own_places and roll < 1 / 3:
            facts.append(went(person, str(rng.choice(own_places))))
            continue
        other = str(rng.choice([p for p in PEOPLE if p != person]))
        if objects and roll > 0.75:
            facts.append(took(other, objects.pop(int(rng.integers(len(objects))))))
        else:
            facts.append(went(other, str(rng.choice(places))))
    return facts


@dataclass(frozen=True)
class _QA:
    """The common layout: ``before`` distractors, the supporting facts at the asked depth, ``after``
    distractors, each at a sentence boundary of the prose slice, then the question.

        ... prose ... Fred went to the hallway. ... prose ... Mary went to the kitchen. ... prose ...
        ... John went to the balcony. ... prose ...
        Where is Mary? Mary is in the | kitchen

    ``facts``: how many distractor facts. Each falls before the supporting facts with probability ``depth``.
    The question and the answer depend on the seed only; the depth moves the supporting facts (and changes
    the distractors, which must fit around them).
    """

    facts: int = 4
    name: str = field(default="", init=False)
    level: str = field(default="byte", init=False)
    vocab_size: int = field(default=BYTE_VOCAB, init=False)

    def __post_init__(self) -> None:
        check_int("facts", self.facts, 0)

    @property
    def chance(self) -> float:
        """A uniform guess among the places."""
        return 1.0 / len(PLACES)

    @property
    def min_length(self) -> int:
        """Room for the longest story this task can tell: the longest name and object everywhere."""
        person, thing = max(PEOPLE, key=len), max(OBJECTS, key=len)
        fact = max(len(went(person, PLACES[0])), len(took(person, thing))) + 1
        story = self._longest(person, thing)
        return len(" ".join(story.support)) + 1 + self.facts * fact + len(story.question)

    def _longest(self, person: str, thing: str) -> _Story:
        raise NotImplementedError

    def _story(self, rng: np.random.Generator, n_before: int) -> _Story:
        raise NotImplementedError

    def example(self, length: int, depth: float, seed: int) -> Example:
        length, depth, rng = check_example(self.name, length, depth, seed, self.min_length)
        story = self._story(rng, int((rng.random(self.facts) < depth).sum()))
        block = " ".join(story.support)
        before = [fact + " " for fact in story.before]
        after = [fact + " " for fact in story.after]
        room = length - len(block) - 1 - sum(map(len, before + after)) - len(story.question)
        filler = prose_slice(rng, room, lambda s: _NAMED.search(s) is None)
        if filler is None:
            raise RuntimeError(f"{self.name}: no prose slice of {room} characters is free of the story's words")
        spots = Boundaries(filler)
        # the block starts at depth * (length - block - question) of the input, after the distractors before it
        shift = sum(map(len, before))
        target = depth * (length - len(block) - 1 - len(story.question)) - shift
        at = spots.near(min(max(target, 0.0), room))
        where = [*np.sort(rng.choice(spots.between(0, at), len(before))), at,
                 *np.sort(rng.choice(spots.between(at, room), len(after)))]
        text, placed = insert(filler, list(zip(map(int, where), before + [block + " "] + after)))
        start = placed[len(before)]
        return text_example(text + story.question, story.answer, (start, start + len(block)), length,
                            story.question)


@dataclass(frozen=True)
class QA1(_QA):
    """bAbI qa1, single supporting fact: several people move; where is one of them? The supporting fact is
    that person's last move; earlier moves of theirs may come before it, none after."""

    name: str = field(default="qa1", init=False)

    def _longest(self, person: str, thing: str) -> _Story:
        return _Story([went(person, PLACES[0])], [], [], self._question(person), PLACES[0])

    @staticmethod
    def _question(person: str) -> str:
        return f"\nWhere is {person}? {person} is in the "

    def _story(self, rng: np.random.Generator, n_before: int) -> _Story:
        person, place = str(rng.choice(PEOPLE)), str(rng.choice(PLACES))
        elsewhere = [p for p in PLACES if p != place]
        before = _distractors(rng, n_before, person, elsewhere, [], own_places=elsewhere)
        after = _distractors(rng, self.facts - n_before, person, elsewhere, [])
        return _Story([went(person, place)], before, after, self._question(person), place)


@dataclass(frozen=True)
class QA2(_QA):
    """bAbI qa2, two supporting facts: where is an object? Its holder picked it up, then went somewhere:

        Mary picked up the apple. Mary went to the kitchen.      ->   Where is the apple? ... | kitchen

    Other people move and pick up other objects; the holder moves only before taking the object."""

    name: str = field(default="qa2", init=False)

    def _longest(self, person: str, thing: str) -> _Story:
        return _Story([took(person, thing), went(person, PLACES[0])], [], [], self._question(thing), PLACES[0])

    @staticmethod
    def _question(thing: str) -> str:
        return f"\nWhere is the {thing}? The {thing} is in the "

    def _story(self, rng: np.random.Generator, n_before: int) -> _Story:
        person, thing, place = str(rng.choice(PEOPLE)), str(rng.choice(OBJECTS)), str(rng.choice(PLACES))
        elsewhere = [p for p in PLACES if p != place]
        objects = [o for o in OBJECTS if o != thing]
        before = _distractors(rng, n_before, person, elsewhere, objects, own_places=elsewhere)
        after = _distractors(rng, self.facts - n_before, person, elsewhere, objects)
        return _Story([took(person, thing), went(person, place)], before, after, self._question(thing), place)


@dataclass(frozen=True)
class QA3(_QA):
    """bAbI qa3, three supporting facts: where was an object before a place? Its holder picked it up and went
    to A, then to B:

        Mary picked up the apple. Mary went to the kitchen. Mary went to the terrace.
        ->   Where was the apple before the terrace? ... | kitchen

    Other people move (never to A) and pick up other objects; the holder moves, to neither A nor B, only
    before taking the object."""

    name: str = field(default="qa3", init=False)

    def _longest(self, person: str, thing: str) -> _Story:
        support = [took(person, thing), went(person, PLACES[0]), went(person, PLACES[1])]
        return _Story(support, [], [], self._question(thing, PLACES[1]), PLACES[0])

    @staticmethod
    def _question(thing: str, last: str) -> str:
        return f"\nWhere was the {thing} before the {last}? Before the {last} the {thing} was in the "

    def _story(self, rng: np.random.Generator, n_before: int) -> _Story:
        person, thing = str(rng.choice(PEOPLE)), str(rng.choice(OBJECTS))
        first, last = (str(p) for p in rng.choice(PLACES, 2, replace=False))
        elsewhere = [p for p in PLACES if p != first]
        objects = [o for o in OBJECTS if o != thing]
        before = _distractors(rng, n_before, person, elsewhere, objects,
                              own_places=[p for p in elsewhere if p != last])
        after = _distractors(rng, self.facts - n_before, person, elsewhere, objects)
        support = [took(person, thing), went(person, first), went(person, last)]
        return _Story(support, before, after, self._question(thing, last), first)
