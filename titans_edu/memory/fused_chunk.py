"""One chunk of an MLP memory with a hand-written backward pass: the fast twin of :func:`chunked.dual_form_chunk`.

:func:`~titans_edu.memory.chunked.dual_form_chunk` is written for autograd: the anchor pass of
:meth:`MLPMemory.grad_terms`, then one :func:`~titans_edu.memory.chunked.dual_layer` per memory layer. Left to autograd,
a chunk becomes some forty graph nodes, and the weights ``M_{t'}`` of a new chunk receive two gradients (one as
the anchor of the gradients ``u_j``, one as the weights the chunk starts from) that autograd adds up in a pass of
their own over every ``(d_in, d_out)`` matrix. Here the whole chunk is one node. Its forward pass builds each new
state matrix in one buffer (scaled, added to, then a matmul accumulates into it); its backward pass does the same
for ``dM`` and ``dS``, and every matmul that contributes to them (the read, the chunk end and the anchor pass)
accumulates on top. The numbers are the plain version's: tests compare outputs and every gradient in float64,
and run ``gradcheck``.

Notation, for memory layer ``l`` with weights ``M_l`` ``(d_{l-1}, d_l)`` (rows are vectors, as in the paper):

    anchor pass at A = M_{t'}   a_0 = k,  z_l = a_{l-1} A_l,  a_l = act(z_l),  pred = z_L (+ k if residual)
    (Eq. 12, manual backprop)   delta_L = 2 (pred - v),  G_l = delta_{l+1} A_{l+1}^T,  delta_l = G_l * act'(z_l)
    read (dual form)            h_0 = q,  P_l = h_{l-1} a_{l-1}^T
                                r_l = beta * (h_{l-1} M_l) + g * (h_{l-1} S_l) - (C * P_l) delta_l
                                h_l = act(r_l),  y = r_L (+ q if residual)
    chunk end (Eqs. 16-18)      M_l' = beta_n M_l + g_n S_l - a_{l-1}^T (c * delta_l)      c = C[n-1, :]
                                S_l' = e_n S_l - a_{l-1}^T (d * delta_l)                   d = D[n-1, :]

``beta, g, e, C, D`` are :class:`~titans_edu.memory.coefficients.ChunkCoefficients`. All tensors here have the batch and head
dims merged into one leading dim ``N``: ``q, k`` ``(N, n, d_0)``, ``v`` ``(N, n, d_L)``, gates ``(N, n)``, ``C, D``
``(N, n, n)``, every state matrix ``(N, d_{l-1}, d_l)``.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from .coefficients import ChunkCoefficients
from .networks import ACTIVATIONS, MLPMemory


class Layout(NamedTuple):
    """The static shape of the computation: what autograd cannot see in the tensors."""

    depth: int  # L_M
    activation: str  # a key of memories.ACTIVATIONS
    residual: bool  # pred = k + MLP(k), y = q + MLP(q)
    shared_anchor: bool  # the anchor is the weights themselves (a chunk that starts here)


def _dots(x: Tensor, y: Tensor) -> Tensor:
    """``<x_b, y_b>`` for each of the ``N`` matrices: ``(N, r, c), (N, r, c) -> (N,)``."""
    return torch.linalg.vecdot(x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1))


def _add(term: Tensor, total: Tensor | None) -> Tensor:
    """``total + term``, written into ``term`` (a fresh tensor); the first term of a sum is the sum."""
    return term if total is None else term.add_(total)


class FusedChunk(torch.autograd.Function):
    """``(layout, q, k, v, beta, g, e, C, D, *M, *S[, *A]) -> (y, *M', *S')``; see the module docstring.

    ``A`` (the anchor ``M_{t'}``) is passed only when ``layout.shared_anchor`` is False; otherwise the anchor is
    ``M`` and both of its gradients go into one buffer.
    """

    @staticmethod
    def forward(ctx, layout: Layout, q, k, v, beta, g, e, C, D, *state):
        L, residual = layout.depth, layout.residual
        act = ACTIVATIONS[layout.activation]
        M, S = state[:L], state[L : 2 * L]
        A = M if layout.shared_anchor else state[2 * L :]

        # the anchor pass: every token's gradient u_j = a_j^T delta_j at M_{t'} (Eq. 12, manual backprop)
        a, z = [k], []
        for i in range(L):
            z.append(torch.bmm(a[i], A[i]))
            if i < L - 1:
                a.append(act.fn(z[i]))
        pred = z[-1] + k if residual else z[-1]
        delta = [None] * L
        delta[-1] = 2 * (pred - v)
        G = [None] * (L - 1)
        for i in range(L - 2, -1, -1):
            G[i] = torch.bmm(delta[i + 1], A[i + 1].transpose(1, 2))
            delta[i] = act.chain(G[i], z[i])  # G_i * act'(z_i)

        # the read, row i with M_i (dual form), and the chunk-end state
        beta_, g_ = beta.unsqueeze(-1), g.unsqueeze(-1)
        beta_n, g_n, e_n = (x[:, -1, None, None] for x in (beta, g, e))
        c, d = C[:, -1, :, None], D[:, -1, :, None]  # (N, n, 1)
        h, P, r, M_new, S_new = [q], [], [], [], []
        for i in range(L):
            P.append(torch.bmm(h[i], a[i].transpose(1, 2)))
            # r_i = beta * (h M) + g * (h S) - (C * P) delta
            r_i = torch.bmm(h[i], M[i]).mul_(beta_)
            r_i.addcmul_(torch.bmm(h[i], S[i]), g_).baddbmm_(C * P[i], delta[i], alpha=-1)
            r.append(r_i)
            # M' = beta_n M + g_n S - a^T (c * delta);   S' = e_n S - a^T (d * delta)
            a_T = a[i].transpose(1, 2)
            M_i = torch.mul(M[i], beta_n)
            M_new.append(M_i.addcmul_(S[i], g_n).baddbmm_(a_T, c * delta[i], alpha=-1))
            S_new.append(torch.mul(S[i], e_n).baddbmm_(a_T, d * delta[i], alpha=-1))
            if i < L - 1:
                h.append(act.fn(r_i))
        y = r[-1] + q if residual else r[-1]

        ctx.layout = layout
        ctx.save_for_backward(q, k, beta, g, e, C, D, *M, *S, *(() if layout.shared_anchor else A),
                              *a[1:], *z[:-1], *delta, *G, *h[1:], *r[:-1], *P)
        return (y, *M_new, *S_new)

    @staticmethod
    def backward(ctx, dy, *d_state):
        layout = ctx.layout
        L, residual = layout.depth, layout.residual
        act = ACTIVATIONS[layout.activation]
        saved = list(ctx.saved_tensors)
        take = lambda count: [saved.pop(0) for _ in range(count)]  # noqa: E731
        q, k, beta, g, e, C, D = take(7)
        M, S = take(L), take(L)
        A = M if layout.shared_anchor else take(L)
        a = [k, *take(L - 1)]
        z = take(L - 1)
        delta, G = take(L), take(L - 1)
        h = [q, *take(L - 1)]
        r, P = take(L - 1), take(L)
        dM_new, dS_new = d_state[:L], d_state[L:]

        beta_, g_ = beta.unsqueeze(-1), g.unsqueeze(-1)
        beta_n, g_n, e_n = (x[:, -1, None, None] for x in (beta, g, e))
        c, d = C[:, -1, :, None], D[:, -1, :, None]
        d_beta = d_g = dC = None  # sums over the layers, started by the last layer's term
        d_e, dD = torch.zeros_like(e), torch.zeros_like(D)  # only their last row is reached
        dM, dS, da, d_delta = [None] * L, [None] * L, [None] * L, [None] * L

        # the read and the chunk end, last layer first
        dh = dy
        for i in range(L - 1, -1, -1):
            dr = dh if i == L - 1 else act.chain(dh, r[i])
            X, Y = torch.bmm(dr, M[i].transpose(1, 2)), torch.bmm(dr, S[i].transpose(1, 2))  # (N, n, d_{i})
            d_beta = _add((X * h[i]).sum(-1), d_beta)
            d_g = _add((Y * h[i]).sum(-1), d_g)
            # the causal term -(C * P) delta, with P = h a^T
            dK = torch.bmm(dr, delta[i].transpose(1, 2)).neg_()
            d_delta[i] = torch.bmm((C * P[i]).transpose(1, 2), dr).neg_()
            dP = dK * C
            dC = _add(dK * P[i], dC)
            dh_prev = X.mul_(beta_).addcmul_(Y, g_).baddbmm_(dP, a[i])
            da[i] = torch.bmm(dP.transpose(1, 2), h[i])
            # the state: dM = beta_n dM' + h^T (beta * dr),  dS = e_n dS' + g_n dM' + h^T (g * dr)
            h_T = h[i].transpose(1, 2)
            dM[i] = torch.mul(dM_new[i], beta_n).baddbmm_(h_T, dr * beta_)
            dS[i] = torch.mul(dS_new[i], e_n).addcmul_(dM_new[i], g_n).baddbmm_(h_T, dr * g_)
            # the chunk end: M' and S' through a^T (c * delta) and a^T (d * delta)
            a_dM, a_dS = torch.bmm(a[i], dM_new[i]), torch.bmm(a[i], dS_new[i])  # (N, n, d_{i+1})
            d_delta[i].addcmul_(a_dM, c, value=-1).addcmul_(a_dS, d, value=-1)
            da[i].baddbmm_(c * delta[i], dM_new[i].transpose(1, 2), alpha=-1)
            da[i].baddbmm_(d * delta[i], dS_new[i].transpose(1, 2), alpha=-1)
            dC[:, -1] -= (a_dM * delta[i]).sum(-1)
            dD[:, -1] -= (a_dS * delta[i]).sum(-1)
            d_beta[:, -1] += _dots(dM_new[i], M[i])
            d_g[:, -1] += _dots(dM_new[i], S[i])
            d_e[:, -1] += _dots(dS_new[i], S[i])
            dh = dh_prev
        dq = dh + dy if residual else dh

        # the anchor pass, backwards. Its weight gradients go into dM when the anchor is M itself.
        dA = dM if layout.shared_anchor else [torch.zeros_like(w) for w in A]
        dz_from_delta = [None] * (L - 1)
        for i in range(L - 1):  # delta_i = G_i * act'(z_i),  G_i = delta_{i+1} A_{i+1}^T
            dG = act.chain(d_delta[i], z[i])
            dz_from_delta[i] = d_delta[i] * G[i] * act.grad2(z[i])
            d_delta[i + 1].baddbmm_(dG, A[i + 1])
            dA[i + 1].baddbmm_(dG.transpose(1, 2), delta[i + 1])
        d_pred = 2 * d_delta[-1]  # delta_L = 2 (pred - v)
        dv = -d_pred
        dk = d_pred.clone() if residual else torch.zeros_like(k)
        dz = d_pred
        for i in range(L - 1, -1, -1):  # z_i = a_{i-1} A_i,  a_i = act(z_i)
            dA[i].baddbmm_(a[i].transpose(1, 2), dz)
            da_i = da[i].baddbmm_(dz, A[i].transpose(1, 2))
            if i > 0:
                dz = act.chain(da_i, z[i - 1]).add_(dz_from_delta[i - 1])
            else:
                dk += da_i
        return (None, dq, dk, dv, d_beta, d_g, d_e, dC, dD, *dM, *dS,
                *(() if layout.shared_anchor else dA))


def fused_chunk(
    memory: MLPMemory, weights: Sequence[Tensor], anchor: Sequence[Tensor], surprise: Sequence[Tensor], k: Tensor,
    v: Tensor, q: Tensor, coef: ChunkCoefficients,
) -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...]]:
    """:func:`chunked.dual_form_chunk` through :class:`FusedChunk`: same arguments, shapes and results."""
    lead = q.shape[:-2]  # (N,) when the caller merged batch and heads already (chunked_memory does), else (batch, heads)
    flat = (lambda t: t) if len(lead) == 1 else (lambda t: t.reshape(-1, *t.shape[len(lead):]))  # noqa: E731
    shared = all(w is m for w, m in zip(anchor, weights))
    layout = Layout(memory.depth, memory.activation, memory.residual, shared)
    state = (*weights, *surprise, *(() if shared else anchor))
    out = FusedChunk.apply(layout, *map(flat, (q, k, v, coef.beta, coef.g, coef.e, coef.C, coef.D, *state)))
    unflat = (lambda t: t) if len(lead) == 1 else (lambda t: t.view(*lead, *t.shape[1:]))  # noqa: E731
    L = memory.depth
    return unflat(out[0]), tuple(map(unflat, out[1 : 1 + L])), tuple(map(unflat, out[1 + L :]))
