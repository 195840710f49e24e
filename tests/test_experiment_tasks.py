"""The long-context tasks: exact lengths, the needle at its depth, one answer and no leak of it, determinism,
readable text, batches, argument errors, and the qa answers checked by a solver of their own."""

import math
import re

import pytest
import torch

from titans_edu.experiments.haystack import REACH
from titans_edu.experiments.tasks import (
    FILLER, IGNORE, MQAR, NEEDLE, OBJECTS, PEOPLE, PLACES, QUERY, QA1, Passkey, PasskeyTokens, TASKS, batch,
    decode, get_task, row_seed,
)

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = list(TASKS)
BYTE = [n for n in NAMES if TASKS[n]().level == "byte"]
DEPTHS = [0.0, 0.25, 0.5, 1.0]
LENGTH = 2000
PROSE_SLACK = REACH  # a prose needle lies at most one sentence (REACH bytes) from its target
PASSKEY_SLACK = max(map(len, FILLER))  # a passkey needle lies at most one filler sentence from its target


def first_scored(ex) -> int:
    return int(ex.scored.nonzero()[0, 0])


def count(haystack: list[int], needle: list[int]) -> list[int]:
    """Where the token sequence ``needle`` occurs in ``haystack``."""
    k = len(needle)
    return [i for i in range(len(haystack) - k + 1) if haystack[i : i + k] == needle]


def input_text(ex) -> str:
    return decode(ex.tokens[: ex.length])


def room_and_slack(name: str, ex) -> tuple[int, int]:
    """``length - needle - question`` (the span the needle can start in) and how far from ``depth * room`` the
    needle may start. Byte tasks: the question is the last line, and a space follows the needle."""
    start, end = ex.needle
    if name == "passkey_tokens":
        return ex.length - (end - start) - 1, 0  # the question is the QUERY id
    if name == "mqar":
        return ex.length - (end - start), 0  # the query block comes after `length`
    question = ex.length - input_text(ex).rindex("\n")
    return ex.length - (end - start) - 1 - question, PASSKEY_SLACK if name == "passkey" else PROSE_SLACK


def test_the_registry_names_its_tasks():
    assert NAMES == ["passkey", "passkey_tokens", "number", "uuid", "qa1", "qa2", "qa3", "mqar"]
    for name in NAMES:
        task = get_task(name)
        assert task.name == name and task.level in ("byte", "token")
        assert (task.vocab_size == 256) == (task.level == "byte")
        assert 0 < task.chance < 1
    assert get_task("mqar", n_pairs=4, n_values=8).chance == pytest.approx(8.0**-4)
    assert get_task("mqar", n_values=8).per_query_chance == pytest.approx(1 / 8)
    assert get_task("passkey_tokens", n_digits=3).chance == pytest.approx(1e-3)
    assert get_task("qa3").chance == pytest.approx(1 / 6)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("depth", DEPTHS)
def test_exact_length_and_the_needle_at_its_depth(name, depth):
    task = get_task(name)
    for seed in range(3):
        ex = task.example(LENGTH, depth, seed)
        n_answer = int(ex.scored.sum())
        assert ex.length == LENGTH and ex.tokens.dtype == torch.int64
        assert int(ex.tokens.max()) < task.vocab_size and int(ex.tokens.min()) >= 0
        if name == "mqar":  # the query block: key value key value ..., the values scored
            assert first_scored(ex) == LENGTH + 1 and len(ex.tokens) == LENGTH + 2 * n_answer
            assert ex.scored[LENGTH + 1 :: 2].all() and not ex.scored[LENGTH::2].any()
        else:  # the answer ends the sequence
            assert first_scored(ex) == LENGTH and ex.scored[LENGTH:].all()
            assert len(ex.tokens) == LENGTH + n_answer
        room, slack = room_and_slack(name, ex)
        if slack == 0:
            assert ex.needle[0] == math.floor(depth * room + 0.5)
        else:
            assert abs(ex.needle[0] - depth * room) <= slack, (ex.needle, depth * room)
        if depth == 0:
            assert ex.needle[0] == 0  # the very start


@pytest.mark.parametrize("name", NAMES)
def test_the_answer_occurs_once_in_the_input_inside_the_needle(name):
    task = get_task(name)
    for seed in range(8):
        ex = task.example(1200, seed / 7, seed)
        start, end = ex.needle
        tokens = ex.tokens[: ex.length].tolist()
        if name == "mqar":  # no key or value outside the pairs: the filler has ids of its own
            outside = tokens[:start] + tokens[end:]
            assert max(outside) < task.n_filler and min(tokens[start:end]) >= task.n_filler
            pairs = dict(zip(tokens[start:end:2], tokens[start + 1 : end : 2]))
            queries = ex.tokens[ex.length :: 2].tolist()
            assert len(pairs) == task.n_pairs and ex.answer.tolist() == [pairs[k] for k in queries]
        elif task.level == "token":
            found = count(tokens, ex.answer.tolist())
            assert len(found) == 1 and start <= found[0] and found[0] + len(ex.answer) <= end
        else:
            text = input_text(ex)
            assert ex.answer_text == decode(ex.answer)
            pattern = rf"\b{re.escape(ex.answer_text)}\b" if name.startswith("qa") else re.escape(ex.answer_text)
            found = [m.start() for m in re.finditer(pattern, text)]
            assert len(found) == 1 and start <= found[0] and found[0] + len(ex.answer_text) <= end, (found, start)


@pytest.mark.parametrize("name", NAMES)
def test_a_seed_fixes_the_example_and_other_seeds_vary_it(name):
    task = get_task(name)
    ex = task.example(900, 0.3, 11)
    again = task.example(900, 0.3, 11)
    assert torch.equal(ex.tokens, again.tokens) and torch.equal(ex.scored, again.scored)
    assert ex.needle == again.needle and ex.answer_text == again.answer_text
    others = [task.example(900, 0.3, seed) for seed in range(6)]
    assert len({tuple(o.tokens.tolist()) for o in others}) == 6
    assert len({tuple(o.tokens[o.needle[0] : o.needle[1]].tolist()) for o in others}) == 6  # other needles
    outside = {tuple(o.tokens[: o.needle[0]].tolist() + o.tokens[o.needle[1] : o.length].tolist()) for o in others}
    assert len(outside) >= (3 if name == "passkey_tokens" else 6)  # another haystack (passkey_tokens: 12 phases)
    # the seed fixes the question and the answer; the depth moves the needle
    assert all(torch.equal(task.example(900, d, 11).answer, ex.answer) for d in (0.0, 0.7, 1.0))
    assert task.example(900, 0.0, 11).needle != task.example(900, 1.0, 11).needle


def test_a_value_found_in_the_haystack_is_drawn_again(monkeypatch):
    """The prose holds "1234567890": a slice longer than the whole corpus always contains 1234567, so a needle
    with that value must give way to another. The slice runs past the end of the corpus and wraps round."""
    from titans_edu.experiments.haystack import NumberNeedle, prose

    draws = iter(["1234567", "7654321"])
    monkeypatch.setattr(NumberNeedle, "_value", lambda self, rng: next(draws))
    length = len(prose()) + 20_000
    ex = NumberNeedle().example(length, 0.5, 0)
    text = input_text(ex)
    assert ex.answer_text == "7654321" and text.count("7654321") == 1 and "1234567" in text
    assert ex.length == length and abs(ex.needle[0] - length / 2) < 200


def test_a_known_passkey_reads_right():
    ex = Passkey().example(160, 0.5, 7)
    assert decode(ex.tokens) == (
        "Fishing boats wait in the harbour until the tide turns. The pass key is 95041. The church bell rings at "
        "noon and again at\nWhat is the pass key? The pass key is 95041")
    assert decode(ex.tokens[ex.needle[0] : ex.needle[1]]) == "The pass key is 95041."
    assert ex.answer_text == "95041" and ex.needle == (56, 78)


QUESTIONS = {
    "passkey": (r"The pass key is (\d{5})\.", r"\nWhat is the pass key\? The pass key is $"),
    "number": (r"The hidden number for the (\w+ \w+) is (\d{7})\.",
               r"\nWhat is the hidden number for the (\w+ \w+)\? The hidden number for the \1 is $"),
    "uuid": (r"The hidden code for the (\w+ \w+) is ([0-9a-f]{8}-[0-9a-f]{4})\.",
             r"\nWhat is the hidden code for the (\w+ \w+)\? The hidden code for the \1 is $"),
    "qa1": (r"[A-Z][a-z]+ went to the [a-z]+\.", r"\nWhere is ([A-Z][a-z]+)\? \1 is in the $"),
    "qa2": (r"([A-Z][a-z]+) picked up the [a-z]+\. \1 went to the [a-z]+\.",
            r"\nWhere is the ([a-z]+)\? The \1 is in the $"),
    "qa3": (r"([A-Z][a-z]+) picked up the [a-z]+\. \1 went to the [a-z]+\. \1 went to the [a-z]+\.",
            r"\nWhere was the ([a-z]+) before the ([a-z]+)\? Before the \2 the \1 was in the $"),
}


@pytest.mark.parametrize("name", BYTE)
def test_byte_tasks_are_ascii_with_the_needle_and_the_question_in_place(name):
    task = get_task(name)
    for seed in range(4):
        ex = task.example(1000, 0.5, seed)
        raw = bytes(ex.tokens.tolist())
        text = raw.decode("ascii")  # raises on any byte >= 128
        prompt, needle = text[: ex.length], text[ex.needle[0] : ex.needle[1]]
        needle_pattern, question_pattern = QUESTIONS[name]
        assert re.fullmatch(needle_pattern, needle), needle
        question = re.search(question_pattern, prompt)
        assert question, prompt[-120:]
        assert prompt.endswith(question.group(0)) and question.start() >= ex.needle[1]
        if name in ("number", "uuid"):  # the question asks for the needle's key
            assert question.group(1) == re.fullmatch(needle_pattern, needle).group(1)
        assert text == prompt + ex.answer_text


@pytest.mark.parametrize("name", NAMES)
def test_batch_is_teacher_forced_and_scored_at_the_answers_only(name):
    task = get_task(name)
    x, y, depths = batch(task, 3, 500, seed=5)
    assert x.shape == y.shape and x.shape[0] == 3 and depths.shape == (3,)
    assert ((depths >= 0) & (depths <= 1)).all() and len(set(depths.tolist())) == 3
    for i in range(3):
        ex = task.example(500, float(depths[i]), row_seed(5, i))
        assert x.shape[1] == len(ex.tokens) - 1
        assert torch.equal(x[i], ex.tokens[:-1]) and torch.equal(y[i][y[i] != IGNORE], ex.answer)
        assert torch.equal(y[i] != IGNORE, ex.scored[1:])  # IGNORE everywhere else
    assert len({tuple(row.tolist()) for row in x}) == 3  # the rows differ
    x2, y2, d2 = batch(task, 3, 500, seed=5)
    assert torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(depths, d2)
    assert not torch.equal(batch(task, 3, 500, seed=6)[0], x)
    _, _, fixed = batch(task, 2, 500, seed=5, depth=0.25)
    assert fixed.tolist() == [0.25, 0.25]


def test_a_passkey_tokens_batch_by_hand():
    x, y, _ = batch(PasskeyTokens(), 4, 20, seed=0, depth=0.5)
    # 13 filler ids with the needle at round(0.5 * 13) = 7: f*7 NEEDLE d*5 f*6 QUERY | d*5
    assert x.shape == y.shape == (4, 24)
    assert (x[:, 7] == NEEDLE).all() and (x[:, 19] == QUERY).all()
    assert ((x[:, 8:13] >= 8) & (x[:, 8:13] < 18)).all() and (x[:, :7] < 8).all() and (x[:, 13:19] < 8).all()
    assert (y[:, :19] == IGNORE).all() and torch.equal(y[:, 19:], x[:, 8:13])
    assert torch.equal(x[:, 20:], x[:, 8:12])  # teacher forcing: the answer digits are read as they are scored


@pytest.mark.parametrize("name", NAMES)
def test_bad_arguments_say_what_was_expected(name):
    task = get_task(name)
    task.example(task.min_length, 0.0, 0), task.example(task.min_length, 1.0, 0)  # the shortest length works
    with pytest.raises(ValueError, match=f"length .* >= {task.min_length}"):
        task.example(task.min_length - 1, 0.5, 0)
    for depth in (-0.1, 1.5, float("nan"), "half"):
        with pytest.raises(ValueError, match=r"depth .*\[0, 1\]"):
            task.example(500, depth, 0)
    for seed in (-1, 1.5):
        with pytest.raises(ValueError, match="seed must be an integer >= 0"):
            task.example(500, 0.5, seed)
    with pytest.raises(ValueError, match="length"):
        task.example(500.0, 0.5, 0)
    with pytest.raises(ValueError, match="size must be an integer >= 1"):
        batch(task, 0, 500, 0)


@pytest.mark.parametrize("make, message", [
    (lambda: get_task("needle"), "unknown task 'needle'; the tasks are: passkey, passkey_tokens, number"),
    (lambda: get_task("mqar", pairs=4), "no option pairs; its options are: n_pairs, n_keys"),
    (lambda: MQAR(n_pairs=9, n_keys=8), "distinct keys"),
    (lambda: MQAR(n_pairs=4, n_queries=5), "n_queries .* at most n_pairs"),
    (lambda: MQAR(n_filler=0), "n_filler must be an integer >= 1"),
    (lambda: QA1(facts=-1), "facts must be an integer >= 0"),
    (lambda: Passkey(n_digits=0), "n_digits"),
])
def test_bad_options_say_what_was_expected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# --- the qa answers, from the facts alone ---

FACT = re.compile(r"\b([A-Z][a-z]+) (went to|picked up) the ([a-z]+)\.")


def solve(text: str) -> str:
    """Answer a qa question by reading the facts of ``text`` in order: where each person is, who holds each
    object, and every place each object has been."""
    story, question = text.rsplit("\n", 1)
    where: dict[str, str] = {}
    holder: dict[str, str] = {}
    trail: dict[str, list[str]] = {}
    for person, verb, word in FACT.findall(story):
        if verb == "went to":
            where[person] = word
            for thing, owner in holder.items():
                if owner == person:
                    trail[thing].append(word)
        else:
            holder[word] = person
            trail[word] = [where[person]] if person in where else []
    if m := re.match(r"Where is ([A-Z][a-z]+)\?", question):
        return where[m[1]]
    if m := re.match(r"Where is the ([a-z]+)\?", question):
        return trail[m[1]][-1]
    m = re.match(r"Where was the ([a-z]+) before the ([a-z]+)\?", question)
    places = trail[m[1]]
    last = len(places) - 1 - places[::-1].index(m[2])
    return places[last - 1]


@pytest.mark.parametrize("name", ["qa1", "qa2", "qa3"])
def test_an_independent_solver_agrees_with_the_qa_answers(name):
    task = get_task(name, facts=6)
    named = re.compile(r"\b(?:" + "|".join(PEOPLE + PLACES + OBJECTS) + r")\b", re.IGNORECASE)
    moves = 0
    for seed in range(150):
        ex = task.example(700, (seed % 11) / 10, seed)
        text = input_text(ex)
        assert solve(text) == ex.answer_text, text
        facts = FACT.findall(text)
        assert len(facts) == {"qa1": 1, "qa2": 2, "qa3": 3}[name] + 6
        assert sum(ex.answer_text == place for _, _, place in facts) == 1  # the answer's place: one fact only
        # the names occur only in the facts and the question: never in the filler
        assert not named.search(FACT.sub("", text.rsplit("\n", 1)[0]))
        asked = text.rsplit("\n", 1)[1]
        person = re.match(r"Where is ([A-Z][a-z]+)\?", asked)
        moves += bool(person) and sum(p == person[1] for p, _, _ in facts) > 1
    if name == "qa1":
        assert moves > 10  # the person often moved before the last move: the answer is not the only fact about them
