"""Chunked parallel training of the memory (paper §3.2, Eqs. 16-18; notebook 06).

Inside a chunk every gradient is taken at the chunk-start weights ``M_{t'}``, so all of a chunk's gradients
``u_j`` come from one batched forward and backward pass. The recurrences of Eqs. 13-14 are linear in ``u``,
so the memory after token ``i`` of the chunk is a fixed linear combination (``i, j`` count from the chunk
start; ``M``, ``S`` are the weights and momentum when the chunk, or this part of it, began):

    S_i = e_i S - sum_{j<=i} D_ij u_j              e_i = prod_{r<=i} eta_r,   D_ij = theta_j prod_{j<r<=i} eta_r
    M_i = beta_i M + g_i S - sum_{j<=i} C_ij u_j   beta_i = prod_{r<=i} (1 - alpha_r)           (Eq. 16)
                                                   g = B e,   C = (B E) diag(theta)             (Eqs. 17-18)

with ``E_ij = prod_{j<r<=i} eta_r`` and ``B_ij = prod_{j<r<=i} (1 - alpha_r)`` the lower-triangular decay
matrices of momentum and forgetting (:func:`decay_matrix`).

Reading ``y_i = M_i(q_i)`` then needs no per-token weights. Each layer's gradient is a sum of outer products
``a_j^T delta_j``, so the pre-activation of layer ``l`` for query row ``h_i`` is

    h_i M_{l,i} = beta_i (h_i M_l) + g_i (h_i S_l) - sum_{j<=i} C_ij (h_i . a_j) delta_j

an attention-like matmul under a causal mask: the "dual form" (Sun et al. 2024). Row ``i`` depends on
tokens ``<= i`` only, and every token is read with ``M_i`` itself, never with the chunk-start or chunk-end
weights. Autograd differentiates through all of it, so the outer loss sees the exact second-order gradients.

Glossary: ``theta``, ``eta``, ``alpha`` are θ_t, η_t, α_t; ``surprise`` is S_t; ``weights`` is M_t;
``anchor`` is M_{t'}; ``inputs``/``deltas`` are the a_{l-1} and δ_l of :meth:`MLPMemory.grad_terms`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, vmap

from .coefficients import ChunkCoefficients, chunk_coefficients
from .fused_chunk import fused_chunk
from .networks import MLPMemory, ModuleMemory, associative_loss
from .stability import PLAIN, Stability
from .state import MemoryState, Weights, stream_pieces


def dual_layer(
    h: Tensor, M: Tensor, S: Tensor, a: Tensor, delta: Tensor, beta: Tensor, g: Tensor, e: Tensor, C: Tensor,
    D: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """One memory layer of one chunk: the read pre-activations ``z_i = h_i M_i`` and the chunk-end ``M_n, S_n``.

    ``h`` ``(..., n, d_in)``: the rows read through this layer; ``a, delta``: this layer's anchor-pass inputs and
    errors; ``beta, g, e`` ``(..., n)`` and ``C, D`` ``(..., n, n)``: the chunk coefficients. Written for autograd.
    """
    # h_i M_i = beta_i h_i M + g_i h_i S - sum_j C_ij (h_i . a_j) delta_j
    z = beta.unsqueeze(-1) * (h @ M) + g.unsqueeze(-1) * (h @ S) - (C * (h @ a.transpose(-1, -2))) @ delta
    # M_n = beta_n M + g_n S - sum_j C_nj a_j^T delta_j ;  S_n = e_n S - sum_j D_nj a_j^T delta_j
    # (under autocast the products run in low precision and are added to the float32 state, which stays float32)
    beta_n, g_n, e_n = (x[..., -1, None, None] for x in (beta, g, e))
    a_T = a.transpose(-1, -2)
    M_n = beta_n * M + g_n * S - a_T @ (C[..., -1, :, None] * delta)
    S_n = e_n * S - a_T @ (D[..., -1, :, None] * delta)
    return z, M_n, S_n


def dual_form_chunk(
    memory: MLPMemory, weights: Weights, anchor: Weights, surprise: Weights, k: Tensor, v: Tensor, q: Tensor,
    coef: ChunkCoefficients,
) -> tuple[Tensor, Weights, Weights]:
    """One chunk for an :class:`MLPMemory`, all tokens at once. Returns ``(y, M, S)`` after the chunk.

    The plain form, written for autograd: the anchor pass of :meth:`MLPMemory.grad_terms`, then one
    :func:`dual_layer` per memory layer. Its fast twin, one autograd node with a hand-written backward pass, is
    :func:`titans_edu.memory.fused_chunk.fused_chunk`; :func:`chunked_memory` runs this plain form under autocast, so
    that autocast picks the precisions.
    """
    inputs, deltas = memory.grad_terms(anchor, k, v)  # u_j = a_j^T delta_j at M_{t'}, for every j
    h, new_weights, new_surprise = q, [], []
    for layer, (M, S, a, delta) in enumerate(zip(weights, surprise, inputs, deltas)):
        z, M_n, S_n = dual_layer(h, M, S, a, delta, coef.beta, coef.g, coef.e, coef.C, coef.D)
        h = memory.act(z) if layer < memory.depth - 1 else z
        new_weights.append(M_n)
        new_surprise.append(S_n)
    y = q + h if memory.residual else h
    return y, tuple(new_weights), tuple(new_surprise)


def _autocast_on(t: Tensor) -> bool:
    """Whether autocast is on for ``t``'s device (the meta device, used to count sizes, has no autocast)."""
    return t.device.type != "meta" and torch.is_autocast_enabled(t.device.type)


def _per_token(coef: Tensor, base: Tensor) -> Tensor:
    """``coef (batch, heads, n)`` times ``base (batch, heads, *shape)``: one copy per token, ``(batch, heads, n, *shape)``."""
    return coef.reshape(*coef.shape, *[1] * (base.dim() - 2)) * base.unsqueeze(2)


def generic_chunk(
    memory: ModuleMemory, weights: Weights, anchor: Weights, surprise: Weights, k: Tensor, v: Tensor, q: Tensor,
    coef: ChunkCoefficients,
) -> tuple[Tensor, Weights, Weights]:
    """One chunk for any :class:`ModuleMemory`: per-token gradients by ``vmap(grad)``, then per-token weights.

    It holds ``n`` copies of the memory's weights per sequence, so it suits small user memories; the dual form
    above is the fast path for MLP memories.
    """
    def loss(w, k_j, v_j):
        return associative_loss(memory._call_one(w, k_j.unsqueeze(0)), v_j.unsqueeze(0)).sum()

    per_token_grad = vmap(grad(loss), in_dims=(None, 0, 0))  # over the chunk's tokens
    u = vmap(vmap(per_token_grad))(anchor, k, v)  # over batch, heads: each (batch, heads, n, *shape)

    M_i, S_i = [], []
    for M, S, u_l in zip(weights, surprise, u):
        flat = u_l.flatten(3)  # (batch, heads, n, P)
        M_i.append(_per_token(coef.beta, M) + _per_token(coef.g, S) - (coef.C @ flat).reshape(u_l.shape))
        S_i.append(_per_token(coef.e, S) - (coef.D @ flat).reshape(u_l.shape))
    y = memory(tuple(M_i), q.unsqueeze(-2)).squeeze(-2)  # token i reads with its own M_i
    take_last = lambda ws: tuple(w[:, :, -1] for w in ws)  # noqa: E731
    return y, take_last(M_i), take_last(S_i)


def chunked_memory(
    memory: MLPMemory | ModuleMemory,
    k: Tensor,
    v: Tensor,
    q: Tensor,
    theta: Tensor,
    eta: Tensor,
    alpha: Tensor,
    chunk_size: int = 64,
    state: MemoryState | None = None,
    stability: Stability = PLAIN,
) -> tuple[Tensor, MemoryState]:
    """The fast twin of :func:`titans_edu.memory.naive.naive_memory`: same arguments, same results.

    Loops over chunks only; all tokens inside a chunk are handled by matmuls. A call may start or end inside a
    chunk (the state remembers where), so any split of a stream into calls gives the same outputs.
    Shapes: ``k, q`` ``(batch, heads, seq, d_k)``, ``v`` ``(batch, heads, seq, d_v)``, gates ``(batch, heads, seq)``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    state = state or MemoryState.fresh(memory.initial_weights(k.shape[0]))
    weights, anchor, surprise, seen = state.weights, state.anchor, state.surprise, state.seen
    theta = stability.step_size(theta, eta)  # from here on, the factor of u_j in S (Eq. 14)
    lead = k.shape[:2]  # (batch, heads)
    if isinstance(memory, MLPMemory):  # the fused twin, or the plain form under autocast
        step = dual_form_chunk if _autocast_on(q) else fused_chunk
        # these run with batch and heads merged into one dim, once for the whole call rather than once per chunk
        k, v, q, theta, eta, alpha = (t.flatten(0, 1) for t in (k, v, q, theta, eta, alpha))
        weights, anchor, surprise = _relayout((weights, anchor, surprise), lambda t: t.flatten(0, 1))
    else:
        step = generic_chunk
    lead_dims = 1 if step is not generic_chunk else 2  # the dims that index sequences and heads
    axis = theta.dim() - 1  # where the chunk index goes in the gates: after the batch (and heads) dims
    sizes = stream_pieces(seen, k.shape[axis], chunk_size)
    head = sizes[0] if sizes and seen % chunk_size else 0  # the rest of a chunk an earlier call began
    whole = sum(n == chunk_size for n in sizes)  # (a head is always shorter than a chunk)

    # the coefficients of all whole chunks in one batched call: (..., chunks, b[, b]), then one per chunk
    body = slice(head, head + whole * chunk_size)
    gates = [g[..., body].unflatten(-1, (whole, chunk_size)) for g in (theta, eta, alpha)]
    body_coef = iter(zip(*(x.unbind(axis) for x in chunk_coefficients(*gates)))) if whole else None

    parts = zip(*(t.split(sizes, dim=axis) for t in (k, v, q, theta, eta, alpha)))  # split: one cat in backward
    ys = []
    for n, (k_c, v_c, q_c, theta_c, eta_c, alpha_c) in zip(sizes, parts):
        if seen % chunk_size == 0:  # a new chunk: bound M (if asked); its gradients are taken at M_{t'}
            weights = stability.bound(weights, lead_dims)
            anchor = weights
        if n == chunk_size:  # a whole chunk: its coefficients are already computed
            coef = ChunkCoefficients(*next(body_coef))
        else:
            coef = chunk_coefficients(theta_c, eta_c, alpha_c)
        y, weights, surprise = step(memory, weights, anchor, surprise, k_c, v_c, q_c, coef)
        ys.append(y)
        seen += n
    y = torch.cat(ys, dim=axis) if ys else q.new_zeros(*q.shape[:-1], v.shape[-1])
    if step is not generic_chunk:  # batch and heads apart again
        y = y.unflatten(0, lead)
        weights, anchor, surprise = _relayout((weights, anchor, surprise), lambda t: t.unflatten(0, lead))
    return y, MemoryState(weights=weights, anchor=anchor, surprise=surprise, seen=seen, conv=state.conv)


def _relayout(states: tuple[Weights, Weights, Weights], change) -> tuple[Weights, Weights, Weights]:
    """``change`` every tensor of ``(weights, anchor, surprise)``, keeping an anchor that *is* the weights so:
    the fused step tells a chunk that starts at these weights by that identity."""
    weights, anchor, surprise = states
    new = tuple(map(change, weights))
    return new, tuple(n if a is w else change(a) for a, w, n in zip(anchor, weights, new)), tuple(map(change, surprise))
