"""One memory layer of one chunk with a hand-written backward: the fast twin of :func:`chunked.dual_layer`.

The chunk step of :mod:`titans_edu.chunked` is linear in the state ``M, S`` of each layer. Left to autograd it
makes many passes over those ``(d_in, d_out)`` matrices: a scaled copy for every coefficient in the forward
pass, then, in the backward pass, a product and a sum for the gradient of every coefficient, a scaled copy for
every path into ``M`` and ``S``, and one accumulation per path. Here the forward pass writes each new matrix in
place (scale, add, then the matmul adds on top), and the backward pass writes ``dM`` and ``dS`` once each, lets
the matmuls accumulate into them, and gets the coefficient gradients as dot products through one reused scratch
matrix. Same numbers as the plain version (tested in float64, outputs and gradients).

Notation as in :mod:`titans_edu.chunked`, for one layer with input rows ``h`` (the read path), anchor-pass
inputs ``a`` and errors ``delta`` (so that ``u_j = a_j^T delta_j``), and ``P = h a^T``:

    z   = beta * (h M) + g * (h S) - (C * P) delta           the read pre-activations, row i with M_i
    M_n = beta_n M + g_n S - a^T (C_n * delta)               the chunk-end weights (C_n: last row of C)
    S_n = e_n S - a^T (D_n * delta)                          the chunk-end momentum (D_n: last row of D)
"""

from __future__ import annotations

import torch
from torch import Tensor


def _flat(t: Tensor) -> Tensor:
    """Merge the leading ``(batch, heads)`` dims: ``(..., r, c) -> (N, r, c)``."""
    return t.reshape(-1, *t.shape[-2:])


def _dot(x: Tensor, y: Tensor, scratch: Tensor) -> Tensor:
    """``<x_b, y_b>`` for each of the ``N`` matrices, ``(N, r, c), (N, r, c) -> (N,)``, the product written into
    ``scratch`` (reused, so no fresh allocation per dot)."""
    return torch.mul(x, y, out=scratch).sum((1, 2))


class FusedDualLayer(torch.autograd.Function):
    """``(h, M, S, a, delta, beta, g, e, C, D) -> (z, M_n, S_n)``, shapes as in :func:`chunked.dual_layer`."""

    @staticmethod
    def forward(ctx, h, M, S, a, delta, beta, g, e, C, D):
        n = h.shape[-2]
        h3, M3, S3, a3, d3 = map(_flat, (h, M, S, a, delta))
        beta3, g3, e3 = (x.reshape(-1, n, 1) for x in (beta, g, e))
        C3, D3 = _flat(C), _flat(D)
        P = torch.bmm(h3, a3.transpose(1, 2))
        hM, hS = torch.bmm(h3, M3), torch.bmm(h3, S3)
        z = hM * beta3
        z.addcmul_(hS, g3).baddbmm_(C3 * P, d3, alpha=-1)

        Cn, Dn = C3[:, -1, :, None], D3[:, -1, :, None]  # (N, n, 1)
        a3T = a3.transpose(1, 2)
        M_n = M3 * beta3[:, -1:]
        M_n.addcmul_(S3, g3[:, -1:]).baddbmm_(a3T, Cn * d3, alpha=-1)
        S_n = S3 * e3[:, -1:]
        S_n.baddbmm_(a3T, Dn * d3, alpha=-1)

        ctx.save_for_backward(h3, M3, S3, a3, d3, beta3, g3, e3, C3, D3, P, hM, hS)
        ctx.shapes = (h.shape, M.shape, S.shape, a.shape, delta.shape, beta.shape, C.shape)
        return z.view(*h.shape[:-1], M.shape[-1]), M_n.view(M.shape), S_n.view(S.shape)

    @staticmethod
    def backward(ctx, dz, dM_n, dS_n):
        h3, M3, S3, a3, d3, beta3, g3, e3, C3, D3, P, hM, hS = ctx.saved_tensors
        h_shape, M_shape, S_shape, a_shape, d_shape, gate_shape, C_shape = ctx.shapes
        dz, dM_n, dS_n = _flat(dz), _flat(dM_n), _flat(dS_n)
        Cn, Dn = C3[:, -1, :, None], D3[:, -1, :, None]
        h3T = h3.transpose(1, 2)

        # the state: one write each, the read path's matmuls accumulate on top
        beta_dz, g_dz = dz * beta3, dz * g3
        dM = dM_n * beta3[:, -1:]
        dM.baddbmm_(h3T, beta_dz)
        dS = dS_n * e3[:, -1:]
        dS.addcmul_(dM_n, g3[:, -1:]).baddbmm_(h3T, g_dz)

        # the read: z = beta * hM + g * hS + A delta, with A = -(C * P)
        d_beta = (dz * hM).sum(-1)
        d_g = (dz * hS).sum(-1)
        dA = torch.bmm(dz, d3.transpose(1, 2))
        dP = -(dA * C3)
        dC = -(dA * P)
        dh = torch.bmm(beta_dz, M3.transpose(1, 2))
        dh.baddbmm_(g_dz, S3.transpose(1, 2)).baddbmm_(dP, a3)
        da = torch.bmm(dP.transpose(1, 2), h3)
        d_delta = torch.bmm((C3 * P).transpose(1, 2), dz).neg_()

        # the chunk end: M_n and S_n
        a_dM, a_dS = torch.bmm(a3, dM_n), torch.bmm(a3, dS_n)  # (N, n, d_out)
        d_delta.addcmul_(a_dM, Cn, value=-1).addcmul_(a_dS, Dn, value=-1)
        da.baddbmm_(Cn * d3, dM_n.transpose(1, 2), alpha=-1).baddbmm_(Dn * d3, dS_n.transpose(1, 2), alpha=-1)
        dC[:, -1] -= (a_dM * d3).sum(-1)
        dD = torch.zeros_like(D3)
        dD[:, -1] = -(a_dS * d3).sum(-1)
        scratch = torch.empty_like(M3)
        d_beta[:, -1] += _dot(dM_n, M3, scratch)
        d_g[:, -1] += _dot(dM_n, S3, scratch)
        d_e = torch.zeros_like(d_beta)
        d_e[:, -1] = _dot(dS_n, S3, scratch)

        return (dh.view(h_shape), dM.view(M_shape), dS.view(S_shape), da.view(a_shape), d_delta.view(d_shape),
                d_beta.view(gate_shape), d_g.view(gate_shape), d_e.view(gate_shape), dC.view(C_shape),
                dD.view(C_shape))
