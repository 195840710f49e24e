"""What keeps the memory's update bounded for every gate value the outer loop can learn (notebook 06).

The paper does not say what keeps the inner update stable. Written as Eqs. 13-14, with gates the outer loop
learns freely, it is not stable: a chunk takes all of its ``b`` gradients at the same weights ``M_{t'}``, and
momentum sums them again at every later token, so with ``eta`` near 1 a chunk's gradients enter the memory with a
total weight of up to ``b (b + 1) / 2 * theta`` instead of ``b * theta``. Past the stable step, each chunk
overshoots further, and in an MLP memory a larger first layer makes the second layer's curvature larger still:
the weights grow super-exponentially, to ``inf`` within a few chunks. Trained on a periodic stream, a tiny LMM
learns ``eta ~ 0.95`` and reaches that point after 132 optimizer steps.

Two parts bound it, each a documented choice of titans_edu, in the naive rule and the chunked rule alike:

    dampening     S_t = eta_t S_{t-1} - (1 - eta_t) theta_t u_t
                  momentum as a running average of the surprise, as ``torch.optim.SGD(dampening=momentum)``
                  does: a gradient's weights over all later tokens sum to at most ``theta_t``, whatever
                  ``eta_t`` is, so a chunk's gradients enter ``M`` with a total weight of at most
                  ``b * max_lr``. It is Eq. 14 with the step ``(1 - eta_t) theta_t``: the same family of rules,
                  in which ``theta_t`` is the whole step a token's surprise can make.
    max_norm      ||M_l||_F <= max_norm * sqrt(d_out) for every memory layer l, applied as each chunk starts
                  (``sqrt(d_out)`` is the norm of a freshly initialised layer). It caps the curvature that the
                  weights feed back into the next step. Applied where a chunk starts, it is causal and the same
                  for any split of the stream into calls, because chunks are counted from the stream start.

Together they bound every weight the memory reads: with dampening, ``||S_t|| <= max_lr U`` (each step is a
convex combination of the old surprise and the new gradient), so inside a chunk ``||M_i|| <= R + 2 b max_lr U``,
for every ``theta_t <= max_lr`` and every ``eta_t``, ``alpha_t`` in [0, 1]. ``R`` is the bound and ``U`` the
largest gradient at weights inside it, finite for the layer's unit keys and unit values.

:data:`PLAIN` turns both off: the rule exactly as Eqs. 13-14 write it, which the notebooks derive and which
the functional rules (:func:`~titans_edu.memory.naive.naive_memory`, :func:`~titans_edu.memory.chunked.chunked_memory`)
use unless told otherwise. :class:`~titans_edu.memory.layer.NeuralMemory` uses :class:`Stability` ``()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .state import Weights


@dataclass(frozen=True)
class Stability:
    """How the update rule is kept bounded; see the module docstring. ``Stability()`` is the layer's default."""

    dampening: bool = True  # S_t = eta S_{t-1} - (1 - eta) theta u_t
    max_norm: float | None = 2.0  # ||M_l||_F <= max_norm * sqrt(d_out) as each chunk starts; None: no bound

    def __post_init__(self) -> None:
        if self.max_norm is not None and not (math.isfinite(self.max_norm) and self.max_norm > 0):
            raise ValueError(
                f"max_norm must be a positive number (the bound is max_norm * sqrt(d_out) per memory layer) or "
                f"None for no bound, got {self.max_norm}"
            )

    def step_size(self, theta: Tensor, eta: Tensor) -> Tensor:
        """The factor of ``u_t`` in ``S_t``: ``(1 - eta) theta`` with dampening, ``theta`` without (Eq. 14)."""
        return theta * (1 - eta) if self.dampening else theta

    def bound(self, weights: Weights, lead: int = 2) -> Weights:
        """Each layer scaled down, per sequence and head, so that ``||M_l||_F <= max_norm * sqrt(d_out)``.

        Each weight is ``(*lead dims, *shape)``: ``lead`` leading dims index the sequences and heads (2 for
        ``(batch, heads, ...)``, 1 when they are merged), the norm is taken over the rest, and ``d_out`` is the
        last dim. A layer inside the bound keeps scale 1, so its gradient passes as with the bound off.
        """
        if self.max_norm is None:
            return weights
        return tuple(_scaled_into(w, self.max_norm * math.sqrt(w.shape[-1]), lead) for w in weights)


PLAIN = Stability(dampening=False, max_norm=None)


def _scaled_into(w: Tensor, radius: float, lead: int) -> Tensor:
    norm = torch.linalg.vector_norm(w, dim=tuple(range(lead, w.dim())), keepdim=True)
    # min(1, R / ||w||), written so that a zero layer (norm 0) keeps scale 1 and a finite gradient
    scale = radius / torch.maximum(norm, torch.full_like(norm, radius))
    return w * scale


def layer_norms(weights: Weights, lead: int = 2) -> list[Tensor]:
    """``||M_l||_F`` of each layer per sequence and head, ``(batch, heads)``: what :meth:`Stability.bound` caps."""
    return [torch.linalg.vector_norm(w, dim=tuple(range(lead, w.dim()))) for w in weights]
