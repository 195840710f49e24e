"""The configuration of a whole model, and the paper's sizes as presets (paper §5.1; docs/semantics.md §5).

Glossary (paper symbol -> field):

    N_p     ``persistent``      persistent tokens per layer (Eq. 19); 0 in the baselines
    C       ``segment``         MAC's segment length (Eq. 21)
    W       ``window``          sliding-window size of SW-Attn (MAG, MAL, the SWA baseline)
    L_M     ``memory_depth``    layers of the memory MLP
    b       ``chunk_size``      tokens per chunk of the memory's parallel update (Eqs. 16-18)
            ``depth``           blocks in the model; ``dim``: model width; ``heads``: attention heads

Presets (``ModelConfig.preset(variant, size)``): ``tiny`` runs on a laptop CPU; ``170m``, ``340m``, ``400m`` and
``760m`` are the paper's sizes (§5.1) at its vocabulary (32K, the Llama-2 tokenizer) and context (4K). The
paper gives totals, not shapes; CHOICE: the shapes below, with the number of blocks set per variant so that
each model lands within 10% of its nominal size. Parameter counts include the token embedding once (the
output head shares its weights). CHOICE: C = W = 512 at the paper's scale.

CHOICE: the largest memory step ``max_lr`` (theta_t <= max_lr) defaults to the memory's own default,
``min(0.1, 0.5 / chunk_size)`` (see :mod:`titans_edu.memory.layer`): a chunk sums gradients taken at the same
weights, so for similar keys it acts like one step ``chunk_size`` times larger. Much smaller steps let
forgetting pull a deep memory to all-zero weights, where its gradient vanishes.
"""

from __future__ import annotations

import math
import numbers
import types
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from .attention import Backend, check_backend
from ..memory.layer import MemoryConfig, default_max_lr

VARIANTS = ("lmm", "mac", "mag", "mal", "transformer", "swa")
TITANS_VARIANTS = ("lmm", "mac", "mag", "mal")
SIZES = ("tiny", "170m", "340m", "400m", "760m")


@dataclass
class ModelConfig:
    """Everything that shapes a model built by :func:`titans_edu.models.lm.build_model`. Validates itself."""

    variant: str = "mac"
    vocab_size: int = 256
    dim: int = 64
    depth: int = 2
    heads: int = 2
    context: int = 256  # the training sequence length (streaming may go past it)
    mlp_hidden: int | None = None  # SwiGLU width; default 8/3 * dim rounded up to a multiple of 64
    segment: int = 32
    window: int = 32
    persistent: int = 4
    memory_heads: int | None = None  # default: heads
    memory_depth: int = 2
    memory_expansion: float = 4.0
    memory_activation: str = "silu"
    chunk_size: int = 16
    momentum: bool = True
    forgetting: bool = True
    max_lr: float | None = None  # default min(0.1, 0.5 / chunk_size), see the module docstring
    conv_kernel: int = 4
    memory_impl: Literal["chunked", "naive"] = "chunked"
    dampening: bool = True  # the memory's momentum as a running average (titans_edu.memory.stability)
    memory_max_norm: float | None = 2.0  # ||M_l||_F <= memory_max_norm * sqrt(d_out) as each chunk starts
    normalize_values: bool = True  # l2-normalise the memory's values like its keys
    rope_base: float = 10000.0
    attention_backend: Backend = "auto"
    norm_eps: float = 1e-6
    init_std: float = 0.02
    size: str = field(default="custom", compare=False)  # the preset it came from, for the record

    def __post_init__(self) -> None:
        check_types(self)
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        for name in ("vocab_size", "dim", "depth", "heads", "context", "memory_depth", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.segment < 1:
            raise ValueError(f"segment (MAC's C) must be >= 1 token, got {self.segment}; the paper's scale uses 512")
        if self.window < 1:
            raise ValueError(f"window (SW-Attn's W) must be >= 1 token, got {self.window}; the paper's scale uses 512")
        if self.persistent < 0:
            raise ValueError(f"persistent (N_p) must be >= 0, got {self.persistent}")
        if self.variant not in TITANS_VARIANTS and self.persistent:
            raise ValueError(
                f"the {self.variant!r} baseline has no persistent memory, got persistent={self.persistent}; "
                f"set persistent=0 (or use a Titans variant: {', '.join(TITANS_VARIANTS)})"
            )
        if self.dim % self.heads:
            raise ValueError(
                f"heads={self.heads} does not divide dim={self.dim}; choose heads among the divisors of dim "
                f"(head_dim = dim // heads)"
            )
        if (self.dim // self.heads) % 2:
            raise ValueError(f"RoPE needs an even head dim, got dim // heads = {self.dim // self.heads}")
        if self.memory_heads is None:
            self.memory_heads = self.heads
        if self.memory_heads < 1 or self.dim % self.memory_heads:
            raise ValueError(f"memory_heads={self.memory_heads} must be >= 1 and divide dim={self.dim}")
        if self.max_lr is None:
            self.max_lr = default_max_lr(self.chunk_size)
        if self.mlp_hidden is None:
            self.mlp_hidden = 64 * math.ceil(8 * self.dim / 3 / 64)
        if self.mlp_hidden < 1:
            raise ValueError(f"mlp_hidden must be >= 1, got {self.mlp_hidden}")
        if self.rope_base <= 0 or self.norm_eps <= 0 or self.init_std <= 0:
            raise ValueError("rope_base, norm_eps and init_std must be > 0, got "
                             f"{self.rope_base}, {self.norm_eps}, {self.init_std}")
        check_backend(self.attention_backend, "attention_backend")
        self.memory_config()  # the memory validates its own fields (activation, max_lr, conv_kernel, impl)

    @property
    def is_titans(self) -> bool:
        return self.variant in TITANS_VARIANTS

    def memory_config(self) -> MemoryConfig:
        """The config of each layer's :class:`~titans_edu.memory.layer.NeuralMemory`."""
        return MemoryConfig(
            dim=self.dim, heads=self.memory_heads, depth=self.memory_depth, expansion=self.memory_expansion,
            activation=self.memory_activation, chunk_size=self.chunk_size, momentum=self.momentum,
            forgetting=self.forgetting, max_lr=self.max_lr, conv_kernel=self.conv_kernel, impl=self.memory_impl,
            dampening=self.dampening, max_norm=self.memory_max_norm, normalize_values=self.normalize_values,
        )

    @classmethod
    def preset(cls, variant: str, size: str = "tiny", **overrides) -> "ModelConfig":
        """The preset ``size`` for ``variant``, with any field replaced by ``overrides``."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if size not in PRESETS:
            raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
        valid = {f.name for f in fields(cls)} - {"variant", "size"}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; valid fields are {sorted(valid)}")
        shape = dict(PRESETS[size])
        depth = shape.pop("depths")[_family(variant)]
        if variant not in TITANS_VARIANTS:
            shape["persistent"] = 0
        return cls(**{**shape, "depth": depth, **overrides, "variant": variant, "size": size})

    def replace(self, **changes) -> "ModelConfig":
        return replace(self, **changes)


# --- the declared type of a config field, and checking a value against it ---


def field_kind(hint: Any) -> tuple[type | None, bool]:
    """``(base type, may be None)`` of a field's type hint: ``int -> (int, False)``, ``float | None -> (float,
    True)``, ``Literal["a", "b"] -> (str, False)`` (the field checks its choices itself). Types other than
    ``int``, ``float``, ``bool`` and ``str`` (a ``dict``, say) give ``None``: they are not checked here."""
    optional = False
    if get_origin(hint) in (Union, types.UnionType):
        args = get_args(hint)
        optional = type(None) in args
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            return None, optional
        hint = rest[0]
    if get_origin(hint) is Literal:
        return str, optional
    return (hint if hint in (int, float, bool, str) else None), optional


def describe_kind(kind: type, optional: bool = False) -> str:
    """How an error message names a type: ``int -> "an integer"``, ``float | None -> "a finite number or none"``."""
    names = {int: "an integer", float: "a finite number", bool: "a bool (true or false)", str: "a string"}
    return names[kind] + (" or none" if optional else "")


def type_problem(value: Any, kind: type | None, optional: bool) -> str | None:
    """Why ``value`` is not a value of ``kind`` (``None`` when it is). An int stands for a float; a bool is
    never an int or a float; a float must be finite."""
    if kind is None or (value is None and optional):
        return None
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = isinstance(value, kind)
    if ok:
        return None
    return f"must be {describe_kind(kind, optional)}, got {value!r} ({type(value).__name__})"


def check_types(config: Any) -> None:
    """A ``ValueError`` naming the first field of the dataclass ``config`` whose value is not of its declared
    type (e.g. ``heads=2.0``, ``norm_eps=nan``, ``momentum="abc"``)."""
    hints = get_type_hints(type(config))
    for f in fields(config):
        kind, optional = field_kind(hints[f.name])
        value = getattr(config, f.name)
        problem = type_problem(value, kind, optional)
        if problem:
            whole = kind is int and isinstance(value, float) and value.is_integer()
            hint = f"; write {f.name}={int(value)}" if whole else ""
            raise ValueError(f"{type(config).__name__}: {f.name} {problem}{hint}")


def _family(variant: str) -> str:
    """Variants with the same block layout share a depth in the presets."""
    return {"lmm": "memory", "transformer": "attention", "swa": "attention"}.get(variant, "hybrid")


# depths: blocks for the hybrids (MAC, MAG, MAL: attention + memory), the LMM (memory only) and the baselines
PRESETS: dict[str, dict] = {
    "tiny": dict(vocab_size=256, dim=64, heads=2, context=256, segment=32, window=32, persistent=4,
                 chunk_size=16, depths=dict(hybrid=2, memory=2, attention=2)),
    "170m": dict(vocab_size=32000, dim=768, heads=12, context=4096, segment=512, window=512, persistent=8,
                 chunk_size=64, depths=dict(hybrid=14, memory=18, attention=20)),
    "340m": dict(vocab_size=32000, dim=1024, heads=16, context=4096, segment=512, window=512, persistent=16,
                 chunk_size=64, depths=dict(hybrid=17, memory=22, attention=24)),
    "400m": dict(vocab_size=32000, dim=1024, heads=16, context=4096, segment=512, window=512, persistent=16,
                 chunk_size=64, depths=dict(hybrid=20, memory=26, attention=28)),
    "760m": dict(vocab_size=32000, dim=1536, heads=24, context=4096, segment=512, window=512, persistent=16,
                 chunk_size=64, depths=dict(hybrid=17, memory=22, attention=24)),
}
NOMINAL_PARAMS = {"170m": 170e6, "340m": 340e6, "400m": 400e6, "760m": 760e6}
