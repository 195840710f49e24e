"""The block that every model shares: a pre-norm residual mixer, then a gated MLP (docs/semantics.md §5).

    x = x + mixer(RMSNorm(x), state)      the sequence mixer: attention, the memory, or a Titans combination
    x = x + SwiGLU(RMSNorm(x))            the channel mixer (Transformer++ style)

Only the mixer differs between LMM, MAC, MAG, MAL and the two baselines; it takes ``(batch, seq, dim)`` and
its streaming state and returns ``(batch, seq, dim)`` and the new state.

Glossary:

    ⊗ (Eqs. 25, 28)   :class:`MemoryGate`: ``o = RMSNorm_a(y) * sigmoid(RMSNorm_b(m))``. The paper normalises
                      both branches "with learnable vector-valued weights" and then applies a non-linearity;
                      CHOICE: RMSNorm for the normalisation and a sigmoid on the memory branch.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch.nn.functional as F
from torch import Tensor, nn


class Mixer(Protocol):
    """What a block needs from its sequence mixer."""

    def init_state(self, batch: int) -> Any: ...

    def __call__(self, x: Tensor, state: Any) -> tuple[Tensor, Any]: ...


class SwiGLU(nn.Module):
    """The gated MLP of Transformer++: ``(silu(x W_1) * x W_3) W_2``. ``(batch, seq, dim) -> (batch, seq, dim)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(dim, 2 * hidden, bias=False)  # W_1 and W_3 side by side
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * value)


class MemoryGate(nn.Module):
    """``y ⊗ m`` of Eqs. 25 and 28: ``RMSNorm_a(y) * sigmoid(RMSNorm_b(m))``, each ``(batch, seq, dim)``."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm_y = nn.RMSNorm(dim, eps=eps)
        self.norm_m = nn.RMSNorm(dim, eps=eps)

    def forward(self, y: Tensor, m: Tensor) -> Tensor:
        return self.norm_y(y) * self.norm_m(m).sigmoid()


class Block(nn.Module):
    """One pre-norm residual block around any sequence mixer. ``forward(x, state) -> (x, state)``."""

    def __init__(self, dim: int, mixer: nn.Module, hidden: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.mixer_norm = nn.RMSNorm(dim, eps=eps)
        self.mixer = mixer
        self.mlp_norm = nn.RMSNorm(dim, eps=eps)
        self.mlp = SwiGLU(dim, hidden)

    def init_state(self, batch: int) -> Any:
        return self.mixer.init_state(batch)

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """``state=None`` starts from :meth:`init_state`."""
        if state is None:
            state = self.init_state(x.shape[0])
        mixed, state = self.mixer(self.mixer_norm(x), state)
        x = x + mixed
        return x + self.mlp(self.mlp_norm(x)), state
