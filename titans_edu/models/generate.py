"""Streaming generation with a carried state (notebooks 07-10).

The prompt goes through the model in one call; then each new token is sampled, fed back alone, and the state
carries everything the model keeps about the past. What it keeps, and so the cost of one step:

    LMM            the memory weights                               constant
    MAG, MAL       the memory weights + the last W - 1 keys         constant
    SWA            the last W - 1 keys                              constant
    MAC            the memory weights + the current segment's keys  grows within a segment, resets as it ends
    Transformer++  every past key                                   grows with the context
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:  # for the annotations only: the model module imports this one
    from .lm import ModelState, TitansLM


def sample(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
           generator: torch.Generator | None = None) -> Tensor:
    """One token per row from ``logits (batch, vocab)``: ``(batch, 1)``. ``temperature=0`` is greedy."""
    check_sampling(temperature, top_k)
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)


def check_sampling(temperature: float, top_k: int | None) -> None:
    """A ``ValueError`` unless ``temperature`` is a finite number >= 0 and ``top_k`` an integer >= 1 or None."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not 0 <= temperature < math.inf:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 or None (keep the k likeliest tokens), got {top_k!r}")


@torch.no_grad()
def generate(
    model: TitansLM,
    prompt: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    state: ModelState | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, ModelState]:
    """Continue ``prompt (batch, n)`` by ``max_new_tokens`` tokens.

    ``state``: continue a stream the model has already read (``prompt`` then follows it). Returns the prompt
    with the new tokens appended, ``(batch, n + max_new_tokens)``, and the state after all of them, ready to
    continue.
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0 (how many tokens to add), got {max_new_tokens!r}")
    check_sampling(temperature, top_k)
    if not isinstance(prompt, Tensor):
        raise ValueError(f"prompt must be a tensor of token ids (batch, n), got {type(prompt).__name__}; e.g. "
                         f"torch.tensor([ids])")
    if prompt.dim() != 2 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must be (batch, n) token ids with n >= 1, got shape {tuple(prompt.shape)}")
    logits, state = model(prompt, state)
    tokens = [prompt]
    for _ in range(max_new_tokens):
        token = sample(logits[:, -1], temperature, top_k, generator)
        tokens.append(token)
        logits, state = model(token, state)
    return torch.cat(tokens, dim=1), state
