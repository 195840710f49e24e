"""Small synthetic tasks and a short training loop for them (notebooks 07 and 08).

    SegmentRecall   key-value recall whose answers lie further back than an attention window (notebook 08)
    SparseCopy      a copy that is needed at rare trigger tokens only (notebook 07: the attention sink)
    fit             train a model on a task, with a fixed evaluation batch; returns a :class:`History`

Every task has ``vocab_size``, ``sample(batch, generator) -> (tokens, targets)`` (both ``(batch, seq_len)``
long; ``targets`` is ``IGNORE`` where nothing is scored) and ``answer_mask(tokens, targets)``, the positions
whose answer is determined by the sequence, where accuracy is measured.

:class:`SegmentRecall` is a small multi-query associative recall (MQAR) laid out on MAC's segment
grid so that the answer lies further back than any attention window of the models it is meant to compare:

    segment 0            k_1 v_1 k_2 v_2 ... k_n v_n  f f f ... f      n key-value pairs, then filler
    segments 1..gap      f f f ... f                                   filler only
    last segment         k_3 v_3 k_1 v_1 ...          f f ... f        the same keys again, shuffled; after each
                                                                        key the model must predict its value

Only the predictions made *at the repeated keys* are scored (``targets`` is ``IGNORE`` elsewhere): the value
that follows. Keys are distinct within a sequence; values are drawn independently, with repeats, so a model
that cannot see the first segment guesses right with probability ``1 / n_values`` no matter which answers it
has already seen. The tokens are integers in three disjoint ranges:

    [0, n_filler)                                 filler ``f``: random noise
    [n_filler, n_filler + n_keys)                 keys ``k``
    [n_filler + n_keys, vocab_size)               values ``v``

How far back the answer is: the first query sits at position ``(1 + gap) * segment`` and the last pair ends at
``2 * n_pairs - 1``. A stack of ``depth`` sliding-window layers of window ``W`` sees at most ``depth * (W - 1)``
tokens back (:meth:`SegmentRecall.out_of_reach`), so with enough gap attention alone cannot reach the pairs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE = -100  # the ``ignore_index`` of ``F.cross_entropy``: positions that are not scored


@dataclass(frozen=True)
class SegmentRecall:
    """Key-value pairs in the first segment, queries in the last, ``gap`` filler segments between.

    ``n_pairs``: pairs per sequence. ``n_keys``, ``n_values``, ``n_filler``: sizes of the three token ranges.
    ``segment``: tokens per segment (MAC's ``C``). ``gap``: whole filler segments between pairs and queries.
    """

    n_pairs: int = 4
    n_keys: int = 16
    n_values: int = 16
    n_filler: int = 16
    segment: int = 16
    gap: int = 1

    def __post_init__(self) -> None:
        for name in ("n_pairs", "n_keys", "n_values", "n_filler", "segment"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gap < 0:
            raise ValueError(f"gap (filler segments between pairs and queries) must be >= 0, got {self.gap}")
        if self.n_pairs > self.n_keys:
            raise ValueError(
                f"n_pairs={self.n_pairs} needs at least that many distinct keys, got n_keys={self.n_keys}; "
                f"raise n_keys or lower n_pairs"
            )
        if 2 * self.n_pairs > self.segment:
            raise ValueError(
                f"{self.n_pairs} pairs take {2 * self.n_pairs} tokens and must fit in one segment of "
                f"{self.segment}; lower n_pairs or raise segment"
            )

    @property
    def vocab_size(self) -> int:
        return self.n_filler + self.n_keys + self.n_values

    @property
    def seq_len(self) -> int:
        """Pair segment, ``gap`` filler segments, query segment: ``(gap + 2) * segment`` tokens."""
        return (self.gap + 2) * self.segment

    @property
    def query_start(self) -> int:
        """Position of the first repeated key: the start of the last segment."""
        return (self.gap + 1) * self.segment

    @property
    def distance(self) -> int:
        """The shortest distance from a query back to the value it asks for."""
        return self.query_start - (2 * self.n_pairs - 1)

    @property
    def chance(self) -> float:
        """Accuracy of a model that cannot see the pairs: a uniform guess among the values."""
        return 1.0 / self.n_values

    def out_of_reach(self, window: int, depth: int) -> bool:
        """True when ``depth`` stacked sliding windows of ``window`` tokens cannot carry a pair to a query."""
        return depth * (window - 1) < self.distance

    def sample(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``tokens, targets``, both ``(batch, seq_len)`` long. ``targets`` is the value to predict at each
        repeated key, ``IGNORE`` elsewhere. Only ``generator`` supplies the randomness."""
        n = self.n_pairs
        tokens = torch.randint(0, self.n_filler, (batch, self.seq_len), generator=generator)
        keys = torch.rand(batch, self.n_keys, generator=generator).argsort(dim=1)[:, :n] + self.n_filler
        values = torch.randint(0, self.n_values, (batch, n), generator=generator) + self.n_filler + self.n_keys
        tokens[:, 0 : 2 * n : 2], tokens[:, 1 : 2 * n : 2] = keys, values
        order = torch.rand(batch, n, generator=generator).argsort(dim=1)
        q = self.query_start
        tokens[:, q : q + 2 * n : 2] = keys.gather(1, order)
        tokens[:, q + 1 : q + 2 * n : 2] = values.gather(1, order)
        targets = torch.full_like(tokens, IGNORE)
        targets[:, q : q + 2 * n : 2] = values.gather(1, order)
        return tokens, targets

    def answer_mask(self, tokens: Tensor, targets: Tensor) -> Tensor:
        """The repeated keys: the only scored positions. ``(batch, seq_len)`` bool."""
        return targets != IGNORE


@dataclass(frozen=True)
class SparseCopy:
    """Random tokens with rare triggers; the token after a trigger repeats the token before it.

        ... a b c T c d e f g T g h ...          (T: the trigger, ``n_data``; the rest in [0, n_data))

    Every next token is scored. Only the one after a trigger is predictable (copy the token two back), so an
    attention head has a job at the triggers and nothing useful to read anywhere else: the situation in
    which a head learns to park its attention on a sink (notebook 07). Triggers are at least three apart, so
    the token before a trigger is never itself a copy or a trigger.

    ``n_data``: data tokens. ``seq_len``: tokens per sequence. ``rate``: chance that a position is a trigger,
    before triggers too close to an earlier one are dropped.
    """

    n_data: int = 16
    seq_len: int = 64
    rate: float = 0.15

    def __post_init__(self) -> None:
        if self.n_data < 1 or self.seq_len < 3:
            raise ValueError(f"need n_data >= 1 and seq_len >= 3, got n_data={self.n_data}, seq_len={self.seq_len}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate is a probability in [0, 1], got {self.rate}")

    @property
    def trigger(self) -> int:
        return self.n_data

    @property
    def vocab_size(self) -> int:
        return self.n_data + 1

    def sample(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``tokens, targets`` ``(batch, seq_len)``: the targets are the next tokens, all scored."""
        stream = torch.randint(0, self.n_data, (batch, self.seq_len + 1), generator=generator)
        trig = torch.rand(batch, self.seq_len + 1, generator=generator) < self.rate
        trig[:, 0] = trig[:, -1] = False  # a trigger needs a token before it and a copy after it
        trig[:, 1:] &= ~trig[:, :-1].clone()  # no trigger right after another ...
        trig[:, 2:] &= ~trig[:, :-2].clone()  # ... nor two after: the token before a trigger is plain data
        stream[trig] = self.trigger
        after = torch.zeros_like(trig)
        after[:, 1:] = trig[:, :-1]
        stream[after] = stream[:, :-2][trig[:, 1:-1]]  # position i+1 copies position i-1
        return stream[:, :-1], stream[:, 1:]

    def answer_mask(self, tokens: Tensor, targets: Tensor) -> Tensor:
        """The triggers: the positions whose next token is determined. ``(batch, seq_len)`` bool."""
        return tokens == self.trigger


class Task(Protocol):
    vocab_size: int

    def sample(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]: ...

    def answer_mask(self, tokens: Tensor, targets: Tensor) -> Tensor: ...


# --- training ---


@dataclass
class History:
    """What :func:`fit` measured. ``loss``: training loss per step. ``eval_steps``, ``eval_loss``,
    ``eval_accuracy``: on the fixed evaluation batch, after those many steps (accuracy at the answer mask).
    ``seconds``: wall time of the whole run (it varies between machines; the rest does not)."""

    loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    eval_accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final_loss(self) -> float:
        return self.eval_loss[-1]

    @property
    def final_accuracy(self) -> float:
        return self.eval_accuracy[-1]


def logits_of(model: nn.Module, tokens: Tensor) -> Tensor:
    """``(batch, seq, vocab)`` from a model that returns logits, or ``(logits, state)`` like TitansLM."""
    out = model(tokens)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, tokens: Tensor, targets: Tensor) -> tuple[float, float]:
    """Mean loss over the scored positions and accuracy at the answer mask."""
    logits = logits_of(model, tokens)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
    mask = task.answer_mask(tokens, targets)
    accuracy = (logits.argmax(-1)[mask] == targets[mask]).float().mean()
    return loss.item(), accuracy.item()


def fit(
    model: nn.Module, task: Task, steps: int, batch: int = 32, lr: float = 3e-3, seed: int = 0,
    eval_every: int = 25, eval_batch: int = 128, clip: float = 1.0,
) -> History:
    """Train ``model`` on fresh batches of ``task`` with AdamW (no weight decay) and gradient clipping.

    The data come from generators seeded with ``seed`` (training) and ``seed + 1`` (the one evaluation
    batch), so two models trained with the same ``seed`` see exactly the same sequences.
    """
    if steps < 1 or batch < 1 or eval_every < 1:
        raise ValueError(f"steps, batch and eval_every must be >= 1, got {steps}, {batch}, {eval_every}")
    history = History()
    train_gen = torch.Generator().manual_seed(seed)
    eval_tokens, eval_targets = task.sample(eval_batch, torch.Generator().manual_seed(seed + 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        tokens, targets = task.sample(batch, train_gen)
        logits = logits_of(model, tokens)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        history.loss.append(loss.item())
        if step % eval_every == 0 or step == steps:
            eval_loss, eval_acc = evaluate(model, task, eval_tokens, eval_targets)
            history.eval_steps.append(step)
            history.eval_loss.append(eval_loss)
            history.eval_accuracy.append(eval_acc)
    history.seconds = time.perf_counter() - start
    return history
