"""The neural long-term memory as a layer (paper §3.1 and §4.4; docs/semantics.md §1-4).

    x (batch, seq, dim)
      -> q, k, v = x W_Q, x W_K, x W_V            Eqs. 11 and 15, one projection per head
      -> causal depthwise conv (kernel 4), SiLU    §4.4; with the projection it is a depthwise-separable conv
      -> l2-normalise q and k                      §4.4 (and v, a CHOICE below)
      -> theta_t, eta_t, alpha_t = gates(x_t)      per token and per head (§3.2, "functions of tokens")
      -> y_t = M_t(q_t) after writing (k_t, v_t)   Eqs. 12-15, chunked (Eqs. 16-18), kept bounded (below)
      -> RMSNorm(y) * sigmoid(x W_G), then W_O     §4.4: normalisation and a linear gate before the output

Gates (CHOICE): ``theta_t = max_lr * sigmoid(x_t w_theta + b_theta)``, ``eta_t = sigmoid(x_t w_eta +
b_eta)``, ``alpha_t = sigmoid(x_t w_alpha + b_alpha)``. ``momentum=False`` fixes ``eta = 0`` and
``forgetting=False`` fixes ``alpha = 0``; with both off the rule is plain online gradient descent (Eq. 8).

CHOICE: the convolutions' biases start at zero. PyTorch's default draws them from ``U(-1/sqrt(K), 1/sqrt(K))``,
``+-0.5`` for ``K = 4``, which at small widths outweighs the projected token (``x W`` has entries of about
``init_std * sqrt(dim)``): every q, k and v would then point nearly the same way, whatever the token, and the
memory would start unable to tell tokens apart (neighbouring outputs of a fresh MAL layer at ``dim = 32`` had
cosine 0.96; with zero biases 0.07). The biases are still learned.

CHOICE: ``max_lr`` defaults to ``min(0.1, 0.5 / chunk_size)`` (:func:`default_max_lr`). After SiLU and
l2-normalisation the keys are unit vectors whose entries are mostly positive (SiLU is never below -0.28), so the
keys of one chunk point in similar directions; the chunk's update adds up ``b`` gradients
taken at the same weights ``M_{t'}``, and along that shared direction it acts like one step of size ``b * theta``.
A step that is safe online (``b = 1``) therefore overshoots and diverges at large ``b``: with the default gates,
``max_lr = 0.1`` diverges at ``b = 16`` and ``0.02`` at ``b = 64``. Scaling the largest step by ``1 / b`` keeps
a fresh layer stable at every chunk size; the cap of 0.1 covers small ``b``. The learned gate ``theta_t`` can
still lower it per token.

CHOICE: the rule is kept bounded for every gate value the outer loop can learn (:mod:`titans_edu.memory.stability`
tells why it is needed, with the failure it prevents): momentum is dampened, ``S_t = eta_t S_{t-1} - (1 - eta_t)
theta_t u_t``, so that learning ``eta_t`` near 1 cannot multiply a chunk's step (``dampening``), and each memory
layer is scaled into ``||M_l||_F <= max_norm * sqrt(d_out)`` as each chunk starts (``max_norm``). ``dampening=False,
max_norm=None`` is the rule exactly as Eqs. 13-14 write it.

CHOICE: the values are l2-normalised like the keys (``normalize_values``). The read ``M_t(q_t)`` goes through
RMSNorm before the output projection, so the scale of the values never reaches the output; normalised, it cannot
grow either, and the gradients of Eq. 12 stay of the size the bound above expects.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .chunked import chunked_memory
from .naive import naive_memory
from .networks import ACTIVATIONS, MLPMemory, ModuleMemory
from .stability import Stability
from .state import MemoryState


def causal_depthwise_conv(h: Tensor, weight: Tensor, bias: Tensor, cache: Tensor) -> tuple[Tensor, Tensor]:
    """A causal depthwise convolution along the sequence (§4.4), in the ``(batch, seq, channels)`` layout.

    ``y_t = bias + sum_j weight[:, j] * h_{t - K + 1 + j}``: the same numbers as ``nn.Conv1d(groups=channels)``
    on the left-padded sequence, with ``weight`` ``(channels, K)``. ``cache`` ``(batch, channels, K - 1)`` holds
    the inputs before ``h`` (zeros at the stream start); the new cache is returned with the output. A sum of
    ``K`` shifted products is several times faster on CPU than the grouped convolution, backward included.
    """
    K = weight.shape[-1]
    padded = torch.cat([cache.transpose(1, 2).to(h.dtype), h], dim=1)  # (batch, K - 1 + seq, channels)
    T = h.shape[1]
    y = torch.addcmul(bias.to(h.dtype), padded[:, K - 1 :], weight[:, K - 1].to(h.dtype))
    for j in range(K - 1):
        y = torch.addcmul(y, padded[:, j : j + T], weight[:, j].to(h.dtype))
    return y, padded[:, T:].transpose(1, 2)


def default_max_lr(chunk_size: int) -> float:
    """The largest memory step that keeps a fresh layer stable at this chunk size (see the module docstring)."""
    return min(0.1, 0.5 / chunk_size)


@dataclass
class MemoryConfig:
    """Everything that shapes a :class:`NeuralMemory`. Validates itself on creation.

    ``dim``: model width. ``heads``: independent memories. ``head_dim``: width of q, k, v per head
    (default ``dim // heads``). ``depth``: L_M, memory layers (1 = linear). ``expansion``: hidden width of
    the memory MLP as a multiple of ``head_dim``. ``chunk_size``: b, tokens per chunk (1 = fully online).
    ``max_lr``: the largest theta (default :func:`default_max_lr`, see above). ``conv_kernel``: width of the causal convolutions (0 = none).
    ``impl``: ``"chunked"`` (fast) or ``"naive"`` (the per-token reference; same results, slow).
    ``dampening``, ``max_norm``: what keeps the rule bounded (:class:`~titans_edu.memory.stability.Stability`).
    ``normalize_values``: l2-normalise v like q and k.
    """

    dim: int
    heads: int = 1
    head_dim: int | None = None
    depth: int = 2
    expansion: float = 4.0
    activation: str = "silu"
    residual: bool = False
    chunk_size: int = 64
    momentum: bool = True
    forgetting: bool = True
    max_lr: float | None = None  # default_max_lr(chunk_size)
    theta_bias: float = 0.0
    eta_bias: float = 1.0
    alpha_bias: float = -5.0  # sigmoid(-5) ~ 0.007: the memory starts with little forgetting
    conv_kernel: int = 4
    impl: Literal["chunked", "naive"] = "chunked"
    dampening: bool = True
    max_norm: float | None = 2.0
    normalize_values: bool = True

    def __post_init__(self) -> None:
        for name in ("dim", "heads", "head_dim", "depth", "chunk_size", "conv_kernel"):
            value = getattr(self, name)
            if (value is not None or name != "head_dim") and (
                    isinstance(value, bool) or not isinstance(value, numbers.Integral)):
                raise ValueError(f"MemoryConfig: {name} must be an integer, got {value!r} ({type(value).__name__})")
        if self.dim < 1 or self.heads < 1:
            raise ValueError(f"dim and heads must be >= 1, got dim={self.dim}, heads={self.heads}")
        if self.head_dim is None:
            if self.dim % self.heads:
                raise ValueError(
                    f"dim={self.dim} is not divisible by heads={self.heads}; choose heads that divide dim, "
                    f"or set head_dim explicitly"
                )
            self.head_dim = self.dim // self.heads
        if self.head_dim < 1:
            raise ValueError(f"head_dim must be >= 1, got {self.head_dim}")
        if self.depth < 1:
            raise ValueError(f"depth (L_M) must be >= 1, got {self.depth}; depth=1 is the linear memory")
        if self.expansion <= 0:
            raise ValueError(f"expansion must be > 0, got {self.expansion}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 (1 means fully online), got {self.chunk_size}")
        if self.max_lr is None:
            self.max_lr = default_max_lr(self.chunk_size)
        lr = self.max_lr
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"max_lr must be a finite number > 0 (theta_t = max_lr * sigmoid(...)), got {lr!r}")
        if self.conv_kernel < 0:
            raise ValueError(f"conv_kernel must be >= 0 (0 turns the convolutions off), got {self.conv_kernel}")
        if self.impl not in ("chunked", "naive"):
            raise ValueError(f"impl must be 'chunked' or 'naive', got {self.impl!r}")
        Stability(self.dampening, self.max_norm)  # raises on a max_norm that is not a positive number

    @property
    def stability(self) -> Stability:
        return Stability(dampening=self.dampening, max_norm=self.max_norm)


class NeuralMemory(nn.Module):
    """The long-term memory module (LMM). ``forward(x, state) -> (output, state)``.

    ``memory``: an optional user ``nn.Module`` mapping ``(n, head_dim) -> (n, head_dim)`` to use as the
    memory model instead of the MLP (it then runs through the generic ``torch.func`` path).
    """

    def __init__(self, config: MemoryConfig, memory: nn.Module | None = None) -> None:
        super().__init__()
        self.config = c = config
        inner = c.heads * c.head_dim
        self.to_qkv = nn.Linear(c.dim, 3 * inner, bias=False)
        self.conv = nn.Conv1d(3 * inner, 3 * inner, c.conv_kernel, groups=3 * inner) if c.conv_kernel else None
        if self.conv is not None:  # CHOICE: no bias at init (see the module docstring)
            nn.init.zeros_(self.conv.bias)
        self.to_gates = nn.Linear(c.dim, 3 * c.heads)  # theta, eta, alpha logits
        with torch.no_grad():
            self.to_gates.bias.copy_(
                torch.tensor([c.theta_bias, c.eta_bias, c.alpha_bias]).repeat_interleave(c.heads)
            )
        if memory is None:
            self.memory = MLPMemory(c.head_dim, c.head_dim, c.depth, c.expansion, c.activation, c.residual, c.heads)
        else:
            self.memory = ModuleMemory(memory, c.heads)
        self.norm = nn.RMSNorm(c.head_dim)
        self.to_out_gate = nn.Linear(c.dim, inner)
        self.to_out = nn.Linear(inner, c.dim, bias=False)

    # --- pieces, each usable on its own (the architectures in notebook 07+ reuse them) ---

    def initial_state(self, batch: int) -> MemoryState:
        """``M_0`` for ``batch`` sequences, ``S_0 = 0``, an empty convolution cache."""
        state = MemoryState.fresh(self.memory.initial_weights(batch))
        if self.conv is not None:
            ref = self.to_qkv.weight
            state.conv = ref.new_zeros(batch, self.conv.in_channels, self.config.conv_kernel - 1)
        return state

    def gates(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``theta, eta, alpha``, each ``(batch, heads, seq)``, in float32 or wider (they multiply the state)."""
        c = self.config
        logits = self.to_gates(x).transpose(1, 2)  # (batch, 3 * heads, seq)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 under autocast -> fp32
        th, et, al = logits.unflatten(1, (3, c.heads)).unbind(1)
        theta = c.max_lr * torch.sigmoid(th)
        eta = torch.sigmoid(et) if c.momentum else torch.zeros_like(et)
        alpha = torch.sigmoid(al) if c.forgetting else torch.zeros_like(al)
        return theta, eta, alpha

    def project(self, x: Tensor, conv_cache: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``q, k, v`` as ``(batch, heads, seq, head_dim)``, and the new convolution cache."""
        h, conv_cache = self._projected(x, conv_cache, rows=3)
        q, k, v = h.unbind(0)
        v = F.normalize(v, dim=-1) if self.config.normalize_values else v
        return F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, conv_cache

    def project_queries(self, x: Tensor, conv_cache: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """``q`` alone, through the same path (the q rows of every weight), for reads that write nothing (MAC,
        Eq. 21); its own convolution cache has ``heads * head_dim`` channels."""
        h, conv_cache = self._projected(x, conv_cache, rows=1)
        return F.normalize(h[0], dim=-1), conv_cache

    def _projected(self, x: Tensor, conv_cache: Tensor | None, rows: int) -> tuple[Tensor, Tensor | None]:
        """The first ``rows`` of q, k, v after projection, convolution and SiLU: ``(rows, batch, heads, seq, hd)``."""
        c = self.config
        channels = rows * c.heads * c.head_dim
        h = F.linear(x, self.to_qkv.weight[:channels])  # (batch, seq, channels)
        if self.conv is not None:
            h, conv_cache = causal_depthwise_conv(
                h, self.conv.weight[:channels, 0], self.conv.bias[:channels], conv_cache
            )
        return F.silu(h).unflatten(-1, (rows, c.heads, c.head_dim)).permute(2, 0, 3, 1, 4), conv_cache

    def output(self, y: Tensor, x: Tensor) -> Tensor:
        """RMSNorm, the linear gate and the output projection: ``(batch, heads, seq, hd) -> (batch, seq, dim)``."""
        return self.gated_output(y, self.out_gate(x))

    def out_gate(self, x: Tensor) -> Tensor:
        """The linear gate of §4.4, ``sigmoid(x W_G)``: ``(batch, seq, dim) -> (batch, seq, heads * hd)``."""
        return torch.sigmoid(self.to_out_gate(x))

    def gated_output(self, y: Tensor, gate: Tensor) -> Tensor:
        """:meth:`output` with its gate already computed (MAC computes the gates of a whole call at once)."""
        return self.to_out(self.norm(y).transpose(1, 2).flatten(2) * gate)

    # --- the whole layer ---

    def forward(self, x: Tensor, state: MemoryState | None = None) -> tuple[Tensor, MemoryState]:
        """Write every token of ``x`` into the memory and read it back. ``x``: ``(batch, seq, dim)``."""
        y, state = self.write_read(x, state)
        return self.output(y, x), state

    def write_read(self, x: Tensor, state: MemoryState | None = None) -> tuple[Tensor, MemoryState]:
        """:meth:`forward` without the output head: the reads ``M_t(q_t)`` per head, ``(batch, heads, seq, hd)``."""
        c = self.config
        if x.dim() != 3 or x.shape[-1] != c.dim:
            raise ValueError(
                f"NeuralMemory expects x of shape (batch, seq, dim={c.dim}), got {tuple(x.shape)}. "
                f"Add a batch dim with x.unsqueeze(0) or project the features to {c.dim}."
            )
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor of features, got dtype {x.dtype}")
        dtype = self.to_qkv.weight.dtype  # under autocast, mixed dtypes are expected: autocast picks each op's
        if x.dtype != dtype and not (x.device.type != "meta" and torch.is_autocast_enabled(x.device.type)):
            raise ValueError(
                f"NeuralMemory: x has dtype {x.dtype}, but the layer's parameters are {dtype}. Pass x.to({dtype}), "
                f"convert the layer with .to({x.dtype}), or run it under torch.autocast."
            )
        if state is None:
            state = self.initial_state(x.shape[0])
        else:
            self.check_state(state, x.shape[0])
        q, k, v, conv = self.project(x, state.conv)
        theta, eta, alpha = self.gates(x)
        rule = chunked_memory if c.impl == "chunked" else naive_memory
        y, new_state = rule(self.memory, k, v, q, theta, eta, alpha, c.chunk_size, state, c.stability)
        return y, replace(new_state, conv=conv)

    def check_state(self, state: MemoryState, batch: int) -> None:
        if not isinstance(state, MemoryState):
            raise ValueError(f"state must be a MemoryState (from a previous call or initial_state), got {type(state)}")
        state.check([w.shape for w in self.memory.initial], batch, where="NeuralMemory")
        if self.conv is not None:
            want = (batch, self.conv.in_channels, self.config.conv_kernel - 1)
            if state.conv is None or tuple(state.conv.shape) != want:
                got = None if state.conv is None else tuple(state.conv.shape)
                raise ValueError(
                    f"NeuralMemory: the state's conv cache has shape {got}, expected {want}. Pass a state made by "
                    f"this layer for the same batch size, or state=None."
                )
