"""Writing a stream into a memory token by token, and measuring every step: the data behind notebooks 03-05.

The update rule, token by token (chunk size 1; paper §3.1):

    u_t = grad l(M_{t-1}; x_t)                   momentary surprise (Eq. 8), l of Eq. 12
    S_t = eta_t * S_{t-1} - theta_t * u_t        past surprise + momentary surprise (Eqs. 10 and 14)
    M_t = (1 - alpha_t) * M_{t-1} + S_t          forgetting (Eq. 13)

Glossary (paper symbol -> code name):

    l(M_{t-1}; x_t)  ``Trace.loss``: the loss of token t *before* it is written: how surprised the memory is
    ||u_t||          ``Trace.grad_norm``: the size of the momentary surprise (Frobenius norm over all layers)
    θ_t              ``theta``: momentary step size;  η_t ``eta``: surprise decay;  α_t ``alpha``: forgetting
    S_t              ``surprise``; ``Trace.surprise_norm`` is ||S_t||
    M_t              ``weights``; ``Trace.weight_norm`` is ||M_t||, ``Trace.update_norm`` is ||M_t - M_{t-1}||

Recall error of fact i under M_t is ``||M_t(k_i) - v_i||^2`` (``Trace.recall``): 0 is perfect, 1 is an empty
memory (values have unit length). The figures and explorers that show these traces are in
:mod:`titans_edu.viz.surprise_views`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..memory.networks import MLPMemory, associative_loss
from ..memory.naive import per_seq
from ..memory.state import MemoryState
from ..course.streams import FactStream
from .memory_views import one_thread

__all__ = ["Trace", "as_gate", "empty_linear_memory", "group_recall", "phase_recall", "theta_gate", "trace_memory"]


@dataclass(frozen=True)
class Trace:
    """Everything measured while a stream is written, token by token. Shapes ``(batch, T)`` unless noted."""

    loss: Tensor
    grad_norm: Tensor
    surprise_norm: Tensor
    weight_norm: Tensor
    update_norm: Tensor
    recall: Tensor  # (batch, T, n_facts): recall error of every fact of the table under M_t
    weights: Tensor | None  # (T, d_k, d_v): M_t of the first sequence (linear memory, keep_weights=True)
    state: MemoryState  # after the last token


def empty_linear_memory(dim: int, dtype: torch.dtype = torch.float64) -> MLPMemory:
    """A linear memory ``W (dim, dim)`` (``MLPMemory`` with ``depth=1``) whose ``M_0`` is all zeros."""
    memory = MLPMemory(dim, depth=1).to(dtype)
    with torch.no_grad():
        memory.initial[0].zero_()
    return memory


def as_gate(value: float | Tensor, stream: FactStream, name: str = "gate") -> Tensor:
    """A gate as ``(batch, 1, T)`` (one head): from a number, a ``(T,)`` or ``(batch, T)`` tensor."""
    shape = (stream.batch, 1, stream.length)
    gate = torch.as_tensor(value, dtype=stream.keys.dtype)
    if gate.dim() == 2:
        gate = gate.unsqueeze(1)
    try:
        return gate.expand(shape).clone()
    except RuntimeError:
        raise ValueError(
            f"{name} must be a number or a tensor of shape (T,) = ({stream.length},), (batch, T) = "
            f"({stream.batch}, {stream.length}) or (batch, 1, T); got shape {tuple(gate.shape)}"
        ) from None


def _norm(tensors) -> Tensor:
    return torch.sqrt(sum(t.pow(2).flatten(1).sum(-1) for t in tensors))


def trace_memory(memory: MLPMemory, stream: FactStream, theta: float | Tensor, eta: float | Tensor = 0.0,
                 alpha: float | Tensor = 0.0, keep_weights: bool = False) -> Trace:
    """Write ``stream`` into ``memory`` with the online rule (chunk size 1), measuring every step.

    The same computation as :func:`titans_edu.naive_memory` with ``chunk_size=1`` (the tests check that the final
    states agree), but it also records the surprise, the weights and the recall of every fact after each token.
    The gradient comes from the memory's manual backprop (:meth:`MLPMemory.gradient`), and the loop runs on one
    thread, so it is fast enough to rerun on every slider move. Gates: numbers or tensors, see :func:`as_gate`.
    """
    if not isinstance(memory, MLPMemory) or memory.heads != 1:
        raise ValueError(f"trace_memory needs a one-head MLPMemory, got {type(memory).__name__}")
    if (memory.dim_key, memory.dim_value) != (stream.dim, stream.values.shape[-1]):
        raise ValueError(
            f"the memory maps {memory.dim_key} -> {memory.dim_value} dims but the stream has keys of "
            f"{stream.dim} and values of {stream.values.shape[-1]}; build the memory with the stream's dims"
        )
    k, v, _ = stream.kvq()
    theta, eta, alpha = (as_gate(g, stream, n) for g, n in ((theta, "theta"), (eta, "eta"), (alpha, "alpha")))
    probe_k, probe_v = stream.fact_keys.unsqueeze(1), stream.fact_values.unsqueeze(1)
    batch, T = stream.batch, stream.length
    weights = tuple(w.detach().clone() for w in memory.initial_weights(batch))
    surprise = tuple(torch.zeros_like(w) for w in weights)
    rows: dict[str, list[Tensor]] = {n: [] for n in ("loss", "grad", "surprise", "weight", "update", "recall")}
    kept = []
    with torch.no_grad(), one_thread():
        for t in range(T):
            k_t, v_t = k[:, :, t : t + 1], v[:, :, t : t + 1]
            th, et, al = theta[:, :, t], eta[:, :, t], alpha[:, :, t]
            rows["loss"].append(associative_loss(memory(weights, k_t), v_t)[:, 0, 0])  # l(M_{t-1}; x_t)
            u = memory.gradient(weights, k_t, v_t)  # u_t, Eq. 8
            surprise = tuple(per_seq(et, s) * s - per_seq(th, g) * g for s, g in zip(surprise, u))  # Eq. 14
            new = tuple((1 - per_seq(al, w)) * w + s for w, s in zip(weights, surprise))  # Eq. 13
            rows["grad"].append(_norm(u))
            rows["surprise"].append(_norm(surprise))
            rows["update"].append(_norm([a - b for a, b in zip(new, weights)]))
            weights = new
            rows["weight"].append(_norm(weights))
            rows["recall"].append(associative_loss(memory(weights, probe_k), probe_v)[:, 0])
            if keep_weights:
                kept.append(weights[0][0, 0])
    stack = {n: torch.stack(r, dim=1) for n, r in rows.items()}
    state = MemoryState(weights=weights, anchor=weights, surprise=surprise, seen=T)
    return Trace(stack["loss"], stack["grad"], stack["surprise"], stack["weight"], stack["update"],
                 stack["recall"], torch.stack(kept) if keep_weights else None, state)


def group_recall(trace: Trace, stream: FactStream, name: str) -> Tensor:
    """``(batch, T)``: mean recall error over the facts of group ``name``, after every token."""
    return trace.recall[:, :, stream.facts_in(name)].mean(-1)


def phase_recall(trace: Trace, stream: FactStream) -> Tensor:
    """``(batch, T)``: mean recall error over the facts of the group that token t belongs to (its phase)."""
    current = stream.token_group()
    own = (stream.group.unsqueeze(0) == current.unsqueeze(1)).to(trace.recall.dtype)  # (T, n_facts)
    return (trace.recall * own).sum(-1) / own.sum(-1)


def theta_gate(feature: Tensor, max_lr: float, weight: float, bias: float = 0.0) -> Tensor:
    """The data-dependent step size ``theta_t = max_lr * sigmoid(weight * feature_t + bias)``.

    The form is a choice of the package (docs/semantics.md §1).
    """
    return max_lr * torch.sigmoid(weight * feature + bias)
