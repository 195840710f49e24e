"""The recall task of notebooks 09 and 10: streams, their loss and scores, and a short training loop.

A small key-value recall task where some answers lie beyond the attention window and others inside it:

    k1 v1 k2 v2 k3 v3 | filler x gap | [k' v'  k_i v_i  .  k' v']  x n_pairs rounds
    far pairs           longer than W   new     far         near
                                        pair    query       query

A *far query* repeats one of the first pairs, at least ``gap + 3`` tokens after its value: with a window
``W <= gap + 3`` only the long-term memory can hold it. A *near query* repeats the pair of its round, whose value
is four tokens back: local attention with ``W > 4`` sees it, while the memory's causal convolution (kernel 4,
tokens t-3..t) does not, so the memory can only answer it from what it stored. The model is scored at the key
of each query, where it must predict the value.

The views of what MAG does on this task are in :mod:`titans_edu.viz.gate_views`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["KINDS", "N_KEYS", "N_VALUES", "VOCAB_SIZE", "RecallStream", "recall_loss", "recall_scores",
           "recall_stream", "train_recall"]

N_KEYS, N_VALUES, N_FILLER = 16, 16, 16
VOCAB_SIZE = N_KEYS + N_VALUES + N_FILLER  # keys 0-15, values 16-31, filler 32-47
KINDS = ("far pair", "filler", "new pair", "far query", "near query")


# --- the task -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecallStream:
    """A batch of recall streams sharing one timeline.

    ``tokens (batch, length)``; ``kind (length,)``: an index into :data:`KINDS` per position; ``far``, ``near``
    ``(n_pairs,)``: the positions of the query keys, where the next token is the answer; ``far_source
    (batch, n_pairs)``: where the pair asked by each far query was first shown (its key).
    """

    tokens: Tensor
    kind: Tensor
    far: Tensor
    near: Tensor
    far_source: Tensor

    @property
    def inputs(self) -> Tensor:
        """What the model reads: every token but the last, ``(batch, length - 1)``."""
        return self.tokens[:, :-1]

    @property
    def answers(self) -> Tensor:
        """Positions scored by the loss: the far and the near query keys, ``(2 n_pairs,)``."""
        return torch.cat([self.far, self.near])

    @property
    def far_distance(self) -> int:
        """The fewest tokens between a far query key and the nearer token (the value) of the pair it asks for.

        A window ``W <= far_distance`` shows a far query no token of its pair."""
        return int((self.far - self.far_source - 1).min())


def recall_stream(batch: int = 32, n_pairs: int = 3, gap: int = 16,
                  generator: torch.Generator | int = 0) -> RecallStream:
    """Random streams of the layout above: ``9 * n_pairs + gap`` tokens each (see the module docstring).

    ``generator``: a ``torch.Generator`` (a training loop draws fresh batches from it) or a seed.
    Each sequence has its own keys (distinct), values, filler and query order.
    """
    if batch < 1 or n_pairs < 1 or gap < 0 or 2 * n_pairs > N_KEYS:
        raise ValueError(f"need batch >= 1, 1 <= n_pairs <= {N_KEYS // 2} and gap >= 0; got batch={batch}, "
                         f"n_pairs={n_pairs}, gap={gap}")
    gen = torch.Generator().manual_seed(generator) if isinstance(generator, int) else generator
    keys = torch.stack([torch.randperm(N_KEYS, generator=gen) for _ in range(batch)])
    far_k, near_k = keys[:, :n_pairs], keys[:, n_pairs : 2 * n_pairs]  # no key is reused for another pair
    far_v, near_v = (N_KEYS + torch.randint(N_VALUES, (2, batch, n_pairs), generator=gen)).unbind(0)
    order = torch.stack([torch.randperm(n_pairs, generator=gen) for _ in range(batch)])
    filler = N_KEYS + N_VALUES + torch.randint(N_FILLER, (batch, gap), generator=gen)

    def pair(k: Tensor, v: Tensor) -> Tensor:  # (batch, n) keys and values -> (batch, 2n) k v k v ...
        return torch.stack([k, v], -1).flatten(1)

    parts, kind = [pair(far_k, far_v), filler], [0] * 2 * n_pairs + [1] * gap
    spacer = N_KEYS + N_VALUES + torch.randint(N_FILLER, (batch, n_pairs), generator=gen)
    for r in range(n_pairs):
        asked = order[:, r : r + 1]
        new = pair(near_k[:, r : r + 1], near_v[:, r : r + 1])
        parts += [new, pair(far_k.gather(1, asked), far_v.gather(1, asked)), spacer[:, r : r + 1], new]
        kind += [2, 2, 3, 3, 1, 4, 4]
    far = 2 * n_pairs + gap + 2 + 7 * torch.arange(n_pairs)
    return RecallStream(torch.cat(parts, 1), torch.tensor(kind), far, far + 3, 2 * order)


def recall_loss(model: nn.Module, stream: RecallStream) -> Tensor:
    """Cross-entropy of the answers only: the logits at each query key against the value that follows."""
    logits, _ = model(stream.inputs)
    at = stream.answers
    return F.cross_entropy(logits[:, at].flatten(0, 1), stream.tokens[:, at + 1].flatten())


@torch.no_grad()
def recall_scores(model: nn.Module, stream: RecallStream) -> dict[str, float]:
    """``loss`` on the answers, and the accuracy of the far and of the near answers (greedy)."""
    logits, _ = model(stream.inputs)
    right = logits.argmax(-1) == stream.tokens[:, 1:]
    at = stream.answers
    loss = F.cross_entropy(logits[:, at].flatten(0, 1), stream.tokens[:, at + 1].flatten())
    return {"loss": loss.item(), "far": right[:, stream.far].float().mean().item(),
            "near": right[:, stream.near].float().mean().item()}


def train_recall(model: nn.Module, steps: int, batch: int = 32, lr: float = 3e-3, seed: int = 0,
                 **task) -> dict[str, list[float] | float]:
    """AdamW on fresh :func:`recall_stream` batches; the gradient norm is clipped at 1.

    Returns ``{"loss": [loss of every step], "seconds": wall time}``. ``task``: ``n_pairs``, ``gap``.
    """
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses, start = [], time.perf_counter()
    model.train()
    for _ in range(steps):
        loss = recall_loss(model, recall_stream(batch, generator=gen, **task))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    return {"loss": losses, "seconds": time.perf_counter() - start}
