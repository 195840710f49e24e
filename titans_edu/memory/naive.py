"""The naive reference: the update rule as a per-token loop, written as plainly as the equations.

This is the ground truth that every fast path in titans_edu is tested against (notebooks 03-06).
For token ``t`` in a chunk that started at ``t'`` (with ``chunk_size=1`` it is Eqs. 13-15 exactly):

    u_t = grad l(M_{t'}; k_t, v_t)                 Eq. 12, gradient at the chunk-start weights
    S_t = eta_t * S_{t-1} - theta_t * u_t          Eq. 14, surprise with momentum
    M_t = (1 - alpha_t) * M_{t-1} + S_t            Eq. 13, forgetting
    y_t = M_t(q_t)                                 Eq. 15, retrieval (reads the memory that includes token t)

The gradient comes from ``torch.func.grad`` (autograd), not from the manual backprop the fast path uses, so
the two are independent. Works for any memory in :mod:`titans_edu.memory.networks`.

``stability`` (:mod:`titans_edu.memory.stability`) adds what bounds the rule: with dampening the step of
``u_t`` is ``(1 - eta_t) theta_t``, and with ``max_norm`` every layer of ``M`` is scaled into its bound as each
chunk starts. The default, ``PLAIN``, is the rule exactly as written above.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad

from .networks import associative_loss
from .stability import PLAIN, Stability
from .state import MemoryState


def per_seq(gate: Tensor, weight: Tensor) -> Tensor:
    """Broadcast a per-sequence gate ``(batch, heads)`` against one weight ``(batch, heads, ...)``."""
    return gate.reshape(*gate.shape, *[1] * (weight.dim() - 2))


def naive_memory(
    memory,
    k: Tensor,
    v: Tensor,
    q: Tensor,
    theta: Tensor,
    eta: Tensor,
    alpha: Tensor,
    chunk_size: int = 1,
    state: MemoryState | None = None,
    stability: Stability = PLAIN,
) -> tuple[Tensor, MemoryState]:
    """Write ``(k_t, v_t)`` and read ``q_t`` token by token.

    Shapes: ``k, q`` ``(batch, heads, seq, d_k)``, ``v`` ``(batch, heads, seq, d_v)``, gates
    ``(batch, heads, seq)``. Returns ``y`` ``(batch, heads, seq, d_v)`` and the state after the last token.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    state = state or MemoryState.fresh(memory.initial_weights(k.shape[0]))

    def loss(weights, k_t, v_t):  # summed over batch and heads: each sequence's weights see only its own loss
        return associative_loss(memory(weights, k_t), v_t).sum()

    memory_now, anchor, surprise, seen = state.weights, state.anchor, state.surprise, state.seen
    step = stability.step_size(theta, eta)  # theta_t, or (1 - eta_t) theta_t with dampening
    ys = []
    for t in range(k.shape[2]):
        if seen % chunk_size == 0:  # a new chunk starts: bound M (if asked), then freeze it as M_{t'}
            memory_now = stability.bound(memory_now)
            anchor = memory_now
        k_t, v_t, q_t = k[:, :, t : t + 1], v[:, :, t : t + 1], q[:, :, t : t + 1]
        th, et, al = step[:, :, t], eta[:, :, t], alpha[:, :, t]

        u = grad(loss)(anchor, k_t, v_t)
        surprise = tuple(per_seq(et, s) * s - per_seq(th, u_l) * u_l for s, u_l in zip(surprise, u))
        memory_now = tuple((1 - per_seq(al, m)) * m + s for m, s in zip(memory_now, surprise))
        ys.append(memory(memory_now, q_t))
        seen += 1

    y = torch.cat(ys, dim=2) if ys else q.new_zeros(*q.shape[:-1], v.shape[-1])
    return y, MemoryState(weights=memory_now, anchor=anchor, surprise=surprise, seen=seen, conv=state.conv)
