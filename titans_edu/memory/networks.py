"""Memory models: the small networks whose weights are the long-term memory (notebooks 01 and 02).

Glossary (paper symbol -> code name):

    M_t            ``weights``: a tuple of tensors, one per memory layer, each ``(batch, heads, d_in, d_out)``
    M_0            ``MLPMemory.initial`` / ``ModuleMemory.initial``: learned by the outer loop
    M(k)           ``memory(weights, k)``: a forward pass, ``(batch, heads, n, d_k) -> (batch, heads, n, d_v)``
    l(M; x_t)      ``associative_loss``: ||M(k_t) - v_t||^2, Eq. 12, summed over features, no factor 1/2
    grad l         ``MLPMemory.grad_terms``: per layer, the inputs a_{l-1} and the errors delta_l whose outer
                   product a_{l-1}^T delta_l is token t's gradient (manual backprop, no autograd)
    L_M            ``depth``: the number of memory layers. ``depth=1`` with no activation is the linear memory.

Vectors are rows, as in the paper: ``k_t = x_t W_K`` and a layer reads ``z = a W``. A linear memory is
therefore the matrix ``W`` of shape ``(d_k, d_v)`` and reads ``y = q W``.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

Weights = tuple[Tensor, ...]


def associative_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Eq. 12: ``||M(k_t) - v_t||^2``, summed over the feature dim. Shape ``(..., d_v) -> (...)``.

    titans_edu uses the loss exactly as the paper writes it, without a factor 1/2, so the gradient of a
    linear memory is ``2 k_t^T (k_t W - v_t)``.
    """
    return (prediction - target).pow(2).sum(-1)


# --- activations, each with its first and second derivatives written out: the first for the manual backprop of
# grad_terms, the second for the hand-written backward pass of fused_chunk (autograd differentiates the first) ---


class Activation(NamedTuple):
    fn: Callable[[Tensor], Tensor]
    grad: Callable[[Tensor], Tensor]  # d fn / dz
    grad2: Callable[[Tensor], Tensor]  # d^2 fn / dz^2
    chain: Callable[[Tensor, Tensor], Tensor]  # (g, z) -> g * grad(z), in one kernel where PyTorch has one


def _silu_grad(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def _silu_grad2(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1 - s) * (2 + z * (1 - 2 * s))


def _gelu_pdf(z: Tensor) -> Tensor:
    return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _gelu_grad(z: Tensor) -> Tensor:
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    return cdf + z * _gelu_pdf(z)


def _tanh_grad2(z: Tensor) -> Tensor:
    t = torch.tanh(z)
    return -2 * t * (1 - t * t)


ACTIVATIONS: dict[str, Activation] = {
    "silu": Activation(F.silu, _silu_grad, _silu_grad2, torch.ops.aten.silu_backward),
    "gelu": Activation(F.gelu, _gelu_grad, lambda z: _gelu_pdf(z) * (2 - z * z), torch.ops.aten.gelu_backward),
    "tanh": Activation(torch.tanh, lambda z: 1 - torch.tanh(z) ** 2, _tanh_grad2,
                       lambda g, z: torch.ops.aten.tanh_backward(g, torch.tanh(z))),
}


class MLPMemory(nn.Module):
    """An MLP memory ``M`` with ``depth`` layers, one independent copy per head.

    ``depth=1`` is the linear memory of notebook 01: one matrix ``(d_k, d_v)`` and no activation. With
    ``depth >= 2`` the hidden width is ``expansion * d_k`` and ``activation`` sits between layers.
    ``residual=True`` reads ``k + MLP(k)`` (needs ``d_k == d_v``).

    The module holds only ``M_0``, the learned initial weights. The memory *state* is a tuple of tensors
    passed in and out explicitly, because it changes with every token while ``M_0`` changes only with the
    outer optimizer.
    """

    def __init__(
        self,
        dim_key: int,
        dim_value: int | None = None,
        depth: int = 2,
        expansion: float = 4.0,
        activation: str = "silu",
        residual: bool = False,
        heads: int = 1,
    ) -> None:
        super().__init__()
        dim_value = dim_key if dim_value is None else dim_value
        if depth < 1:
            raise ValueError(f"memory depth L_M must be >= 1, got {depth}; use depth=1 for a linear memory")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if residual and dim_key != dim_value:
            raise ValueError(
                f"a residual memory reads k + MLP(k), so it needs dim_key == dim_value; got {dim_key} and "
                f"{dim_value}. Set residual=False or make the dims equal."
            )
        if expansion <= 0 or heads < 1 or dim_key < 1 or dim_value < 1:
            raise ValueError(
                f"dims, heads and expansion must be positive; got dim_key={dim_key}, dim_value={dim_value}, "
                f"heads={heads}, expansion={expansion}"
            )
        hidden = max(1, int(round(expansion * dim_key)))
        dims = [dim_key] + [hidden] * (depth - 1) + [dim_value]
        self.dims = tuple(dims)
        self.depth, self.heads, self.residual = depth, heads, residual
        self.activation = activation
        self.act, self.act_grad = ACTIVATIONS[activation].fn, ACTIVATIONS[activation].grad
        self.initial = nn.ParameterList(
            nn.Parameter(torch.randn(heads, d_in, d_out) / math.sqrt(d_in)) for d_in, d_out in zip(dims, dims[1:])
        )

    @property
    def dim_key(self) -> int:
        return self.dims[0]

    @property
    def dim_value(self) -> int:
        return self.dims[-1]

    def initial_weights(self, batch: int) -> Weights:
        """``M_0`` repeated for every sequence: each ``(batch, heads, d_in, d_out)``. Differentiable."""
        return tuple(w.unsqueeze(0).expand(batch, *w.shape) for w in self.initial)

    def forward(self, weights: Sequence[Tensor], x: Tensor) -> Tensor:
        """Read the memory: ``M(x)``. ``x`` is ``(..., n, d_k)``, each weight ``(..., d_in, d_out)``."""
        h = x
        for layer, w in enumerate(weights):
            h = h @ w
            if layer < self.depth - 1:
                h = self.act(h)
        return x + h if self.residual else h

    def grad_terms(self, weights: Sequence[Tensor], k: Tensor, v: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Manual backprop of Eq. 12 for every token at once.

        Returns ``(inputs, deltas)``, lists over layers: ``inputs[l]`` is ``a_{l-1}``, ``(..., n, d_in)``,
        and ``deltas[l]`` is ``delta_l = dl/dz_l``, ``(..., n, d_out)``. Token ``t``'s gradient for layer ``l``
        is the outer product ``inputs[l][t]^T deltas[l][t]``; :meth:`gradient` sums them.
        """
        inputs, pre = [], []
        h = k
        for layer, w in enumerate(weights):
            inputs.append(h)
            z = h @ w
            pre.append(z)
            h = self.act(z) if layer < self.depth - 1 else z
        prediction = k + h if self.residual else h
        delta = 2 * (prediction - v)  # d/dprediction of ||prediction - v||^2
        deltas = [delta]
        for layer in range(self.depth - 1, 0, -1):
            delta = (delta @ weights[layer].transpose(-1, -2)) * self.act_grad(pre[layer - 1])
            deltas.append(delta)
        return inputs, deltas[::-1]

    def gradient(self, weights: Sequence[Tensor], k: Tensor, v: Tensor) -> Weights:
        """``grad_M sum_t l(M; k_t, v_t)`` from :meth:`grad_terms`. For one token (n=1) it is token t's gradient."""
        inputs, deltas = self.grad_terms(weights, k, v)
        return tuple(a.transpose(-1, -2) @ d for a, d in zip(inputs, deltas))

    def extra_repr(self) -> str:
        return f"dims={self.dims}, heads={self.heads}, activation={self.activation}, residual={self.residual}"


class ModuleMemory(nn.Module):
    """Any user ``nn.Module`` as the memory, through ``torch.func``.

    ``module`` maps ``(n, d_k) -> (n, d_v)``. Its parameters become ``M_0``, copied once per head (each head
    starts from the same values but they are separate learned parameters). The state is a tuple of tensors
    ``(batch, heads, *param.shape)`` in the order of ``module.named_parameters()``.
    """

    def __init__(self, module: nn.Module, heads: int = 1) -> None:
        super().__init__()
        if heads < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        named = list(module.named_parameters())
        if not named:
            raise ValueError("the memory module has no parameters, so there is nothing for it to learn")
        self.heads = heads
        self.names = tuple(name for name, _ in named)
        self.initial = nn.ParameterList(
            nn.Parameter(p.detach().clone().unsqueeze(0).repeat(heads, *[1] * p.dim())) for _, p in named
        )
        self._module = [module]  # kept out of the parameter tree: only the stacked copies are trained

    @property
    def module(self) -> nn.Module:
        return self._module[0]

    def initial_weights(self, batch: int) -> Weights:
        return tuple(w.unsqueeze(0).expand(batch, *w.shape) for w in self.initial)

    def _call_one(self, weights: Sequence[Tensor], x: Tensor) -> Tensor:
        return functional_call(self.module, dict(zip(self.names, weights)), (x,))

    def forward(self, weights: Sequence[Tensor], x: Tensor) -> Tensor:
        """``M(x)`` for weights ``(*lead, ...)`` and ``x`` ``(*lead, n, d_k)``: vmap over the leading dims."""
        lead = x.dim() - 2
        fn = self._call_one
        for _ in range(lead):
            fn = vmap(fn)
        return fn(tuple(weights), x)
