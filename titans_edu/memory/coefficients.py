"""The scalars of one chunk: how the memory and momentum after token i mix ``M``, ``S`` and the gradients ``u_j``
(paper §3.2, Eqs. 16-18; notebook 06).

For a chunk (or part of one) whose gates are ``theta``, ``eta``, ``alpha`` (``i, j`` count from its start):

    S_i = e_i S - sum_{j<=i} D_ij u_j              e_i = prod_{r<=i} eta_r,   D_ij = theta_j prod_{j<r<=i} eta_r
    M_i = beta_i M + g_i S - sum_{j<=i} C_ij u_j   beta_i = prod_{r<=i} (1 - alpha_r)           (Eq. 16)
                                                   g = B e,   C = (B E) diag(theta)             (Eqs. 17-18)

with ``E_ij = prod_{j<r<=i} eta_r`` and ``B_ij = prod_{j<r<=i} (1 - alpha_r)`` the lower-triangular decay matrices
of momentum and forgetting (:func:`decay_matrix`). Both the plain chunk step (:mod:`.chunked`) and its fused twin
(:mod:`.fused_chunk`) take these coefficients as inputs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class ChunkCoefficients(NamedTuple):
    """The scalars that mix ``M``, ``S`` and the ``u_j`` inside one chunk; shapes ``(..., n)`` or ``(..., n, n)``."""

    beta: Tensor  # prod (1 - alpha) up to i: weight of M in M_i (Eq. 16)
    e: Tensor  # prod eta up to i: weight of S in S_i
    g: Tensor  # weight of S in M_i
    C: Tensor  # weight of u_j in M_i (with a minus sign)
    D: Tensor  # weight of u_j in S_i (with a minus sign)


def decay_matrix(a: Tensor) -> Tensor:
    """``P[..., i, j] = prod_{j < r <= i} a[..., r]`` for ``i >= j`` and 0 above the diagonal.

    Built with a cumulative product down the columns, so it has no division and no log: it stays exact when
    a gate is 0 (momentum off) or 1. Shape ``(..., n) -> (..., n, n)``.
    """
    n = a.shape[-1]
    below = torch.ones(n, n, dtype=torch.bool, device=a.device).tril(-1)  # r > j
    factors = torch.where(below, a.unsqueeze(-1), torch.ones((), dtype=a.dtype, device=a.device))
    return factors.cumprod(dim=-2).tril()


def chunk_coefficients(theta: Tensor, eta: Tensor, alpha: Tensor) -> ChunkCoefficients:
    """Eqs. 16-18 for one chunk (or part of one). Gates ``(..., n)``; see the module docstring."""
    keep = 1 - alpha
    E, B = decay_matrix(eta), decay_matrix(keep)
    e, beta = eta.cumprod(-1), keep.cumprod(-1)
    g = (B @ e.unsqueeze(-1)).squeeze(-1)
    C = (B @ E) * theta.unsqueeze(-2)
    D = E * theta.unsqueeze(-2)
    return ChunkCoefficients(beta, e, g, C, D)
