"""Attention, the short-term memory of Titans (paper §4, Fig. 3; notebook 07).

Glossary (paper symbol -> code name):

    p_1..p_Np      ``persistent``: learned tokens in front of the sequence (Eq. 19). As keys they carry no
                   position (see below) and every query may attend to them.
    Attn           full causal attention; Transformer++ uses it, and MAC uses it inside a segment (Eq. 23)
    SW-Attn        ``window``: sliding-window attention; a query at position i sees keys i-W+1 .. i
                   (Eq. 31, and the SWA baseline)
    SW-Attn*       sliding-window attention whose persistent prefix is always visible (Eq. 27, Fig. 3b)
    [p || h || S]  MAC's attention window (Eq. 22, Fig. 3a): persistent tokens, the memory tokens h_t of the
                   segment, then the segment S^(t); :func:`segment_mask`
    mask           boolean ``(queries, keys)``; True where the query may attend (the convention of
                   ``F.scaled_dot_product_attention``)

Every token carries its stream position, and masks are built from positions (:func:`visibility`). A call
that brings a :class:`KVCache` of earlier keys therefore computes exactly what one long call computes.

Positions (CHOICE): queries and keys are rotated with RoPE at their stream positions. Persistent keys are not
rotated and are scored against the *unrotated* query, so a persistent token looks the same from every
position, at any distance: it is independent of the input and of the position.

Three ways to compute one masked attention (:func:`attention_backend`), tested equal:

    "sdpa"   ``F.scaled_dot_product_attention`` with an explicit mask (PyTorch's fused kernels). With persistent
             keys, q and k are the stacked ``[q_rot | q]`` and ``[k_rot | 0]``, ``[0 | k_p]``.
    "math"   CPU with persistent keys: the softmax written out, ``[q . k_p | q_rot . k_rot]``, the persistent
             scores in columns of their own. SDPA's fused CPU kernel needs values as wide as the queries, so on the
             stacked form it falls back to this same computation at twice the width.
    "flex"   CUDA, long sequences: FlexAttention skips the blocks the mask hides.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Backend = Literal["auto", "math", "sdpa", "flex"]
BACKENDS: tuple[str, ...] = get_args(Backend)
HAS_FLEX = importlib.util.find_spec("torch.nn.attention.flex_attention") is not None
FLEX_MIN_KEYS = 2048  # below this many keys a dense masked SDPA call costs about what skipping blocks saves


# --- masks ---


def visibility(q_pos: Tensor, k_pos: Tensor, window: int | None = None, n_persistent: int = 0) -> Tensor:
    """Which key each query may attend to: ``(n,)`` and ``(m,)`` positions -> ``(n, n_persistent + m)`` bool.

    Key ``j`` is visible to query ``i`` when ``k_pos[j] <= q_pos[i]`` (causal) and, with a window,
    ``q_pos[i] - k_pos[j] < window``. The first ``n_persistent`` columns are persistent keys: always visible.
    """
    distance = q_pos[:, None] - k_pos[None, :]
    mask = distance >= 0
    if window is not None:
        mask = mask & (distance < window)
    if n_persistent:
        mask = torch.cat([mask.new_ones(mask.shape[0], n_persistent), mask], dim=1)
    return mask


def causal_mask(n: int, device: torch.device | str | None = None) -> Tensor:
    """Full causal attention over ``n`` tokens: ``(n, n)``, lower-triangular."""
    pos = torch.arange(n, device=device)
    return visibility(pos, pos)


def sliding_window_mask(n: int, window: int, n_persistent: int = 0, device: torch.device | str | None = None) -> Tensor:
    """SW-Attn (``n_persistent=0``) or SW-Attn* (Eq. 27, Fig. 3b): ``(n, n_persistent + n)``.

    Keys are ``[p_1..p_Np || x_1..x_n]``; the persistent columns are always visible, token keys only within
    the last ``window`` positions.
    """
    _check_positive(window=window)
    pos = torch.arange(n, device=device)
    return visibility(pos, pos, window, n_persistent)


def segment_mask(n: int, n_persistent: int = 0, device: torch.device | str | None = None) -> Tensor:
    """MAC's window ``[p || h || S]`` for a segment of ``n`` tokens (Eq. 22, Fig. 3a): ``(n, n_persistent + 2n)``.

    Queries are the segment tokens ``s_0..s_{n-1}``. Keys are the persistent tokens (always visible), the
    memory tokens ``h_0..h_{n-1}``, then ``s_0..s_{n-1}``. CHOICE: ``h_j`` is read with ``q_j``, a function of
    token ``j``, so it is visible to ``s_i`` only when ``j <= i``, exactly like ``s_j``; anything more would
    show token ``j`` to earlier positions.
    """
    pos = torch.arange(n, device=device)
    return visibility(pos, torch.cat([pos, pos]), None, n_persistent)


def _check_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1 (a query always sees at least itself), got {value}")


# --- rotary position embedding ---


def rope(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """Rotate ``x (..., n, head_dim)`` by its positions ``(n,)`` (RoPE, rotate-half form).

    The angles are computed in float64 (float32 on MPS): in float32, ``position * frequency`` loses about
    0.1 rad at position 2M. The rotation itself runs in float32 or wider, also under bf16 autocast.
    """
    half = x.shape[-1] // 2
    wide = torch.float32 if x.device.type == "mps" else torch.float64
    inv_freq = base ** (-torch.arange(half, device=x.device, dtype=wide) / half)
    angles = positions.to(wide)[:, None] * inv_freq  # (n, half)
    work = torch.promote_types(x.dtype, torch.float32)
    cos, sin = angles.cos().to(work), angles.sin().to(work)
    x1, x2 = x.to(work)[..., :half], x.to(work)[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


# --- the key-value cache carried between calls ---


@dataclass
class KVCache:
    """Keys (already rotated) and values of earlier tokens, with their stream positions.

    ``keys, values``: ``(batch, heads, m, head_dim)``; ``positions``: ``(m,)``.
    """

    keys: Tensor
    values: Tensor
    positions: Tensor

    @classmethod
    def empty(cls, batch: int, heads: int, head_dim: int, like: Tensor) -> "KVCache":
        kv = like.new_zeros(batch, heads, 0, head_dim)
        return cls(kv, kv, torch.zeros(0, dtype=torch.long, device=like.device))

    def __len__(self) -> int:
        return self.positions.shape[0]

    def extend(self, keys: Tensor, values: Tensor, positions: Tensor, keep: int | None = None) -> "KVCache":
        """Append new entries; with ``keep``, only the last ``keep`` entries stay (a sliding window)."""
        if keep == 0:
            return self.cleared()
        k = torch.cat([self.keys, keys.to(self.keys.dtype)], dim=2)
        v = torch.cat([self.values, values.to(self.values.dtype)], dim=2)
        p = torch.cat([self.positions, positions])
        if keep is not None:
            start = max(p.shape[0] - keep, 0)
            k, v, p = k[:, :, start:], v[:, :, start:], p[start:]
        return KVCache(k, v, p)

    def cleared(self) -> "KVCache":
        """An empty cache of the same batch, heads, head dim, dtype and device."""
        return KVCache(self.keys[:, :, :0], self.values[:, :, :0], self.positions[:0])

    def detach(self) -> "KVCache":
        return replace(self, keys=self.keys.detach(), values=self.values.detach())


# --- the attention call ---


def check_backend(backend: str, name: str = "attention backend") -> None:
    """A ``ValueError`` that names ``name`` unless ``backend`` is one of :data:`BACKENDS`."""
    if backend not in BACKENDS:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")


def attention_backend(q: Tensor, n_keys: int, backend: Backend = "auto", persistent: bool = False) -> str:
    """``"sdpa"`` (dense, explicit mask), ``"math"`` (the softmax written out) or ``"flex"`` (block-sparse
    FlexAttention, CUDA only) for ``n_keys`` keys, ``persistent`` telling whether some are persistent.

    ``"auto"`` picks, off CUDA, ``"math"`` with persistent keys and ``"sdpa"`` without; on CUDA, FlexAttention
    when it is importable and there are at least ``FLEX_MIN_KEYS`` keys, else ``"sdpa"``.
    """
    check_backend(backend)
    if backend == "auto":
        if not q.is_cuda:
            return "math" if persistent else "sdpa"
        return "flex" if HAS_FLEX and n_keys >= FLEX_MIN_KEYS else "sdpa"
    if backend == "flex" and not HAS_FLEX:
        raise ValueError("backend='flex' needs torch.nn.attention.flex_attention (torch >= 2.5); use 'sdpa'")
    return backend


def attend(
    q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor, k_pos: Tensor, window: int | None = None,
    persistent: tuple[Tensor, Tensor] | None = None, q_raw: Tensor | None = None, backend: Backend = "auto",
    same_tokens: bool = False,
) -> Tensor:
    """Masked softmax attention. ``q (batch, heads, n, hd)`` at ``q_pos (n,)``; ``k, v (batch, heads, m, hd)``.

    ``persistent``: keys and values ``(batch, heads, N_p, hd)`` with no position, always visible, scored
    against ``q_raw``, the query before RoPE. ``same_tokens``: the keys are the queries' own tokens, in
    order; with no window and no persistent keys the mask is then plain causal, and SDPA's ``is_causal``
    (which can use a fused kernel) replaces the explicit mask. Returns ``(batch, heads, n, hd)``.
    """
    scale = q.shape[-1] ** -0.5
    if same_tokens and window is None and persistent is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    n_persistent = 0 if persistent is None else persistent[0].shape[2]
    path = attention_backend(q, n_persistent + k.shape[2], backend, persistent is not None)
    if path == "math":
        return _attend_math(q, k, v, visibility(q_pos, k_pos, window), persistent, q_raw, scale)
    if persistent is not None:
        k_p, v_p = persistent
        # scores: q_rot . k_rot for tokens, q . k_p for persistent keys (no position), in one product of
        # [q_rot | q] with [k_rot | 0] and [0 | k_p]
        q = torch.cat([q, q_raw], dim=-1)
        k = torch.cat([torch.cat([torch.zeros_like(k_p), k_p], -1), torch.cat([k, torch.zeros_like(k)], -1)], 2)
        v = torch.cat([v_p, v], dim=2)
    if path == "flex":
        from .flex import flex_attend

        return flex_attend(q, k, v, q_pos, k_pos, window, n_persistent, scale)
    mask = visibility(q_pos, k_pos, window, n_persistent)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def _attend_math(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor, persistent: tuple[Tensor, Tensor] | None, q_raw: Tensor | None,
    scale: float,
) -> Tensor:
    """``softmax([q . k_p | q_rot . k_rot] * scale) @ [v_p; v]``, token keys masked by ``mask (n, m)``.

    Every query sees at least itself, so no row is all masked."""
    hidden = torch.where(mask, 0.0, float("-inf"))  # added, not filled in: its backward pass is free
    scores = torch.matmul(q * scale, k.transpose(-1, -2)).add_(hidden)
    if persistent is not None:
        k_p, v_p = persistent  # always visible, scored against the query before RoPE
        scores = torch.cat([torch.matmul(q_raw * scale, k_p.transpose(-1, -2)), scores], dim=-1)
        v = torch.cat([v_p, v], dim=2)
    return torch.matmul(torch.softmax(scores, dim=-1), v)


class Attention(nn.Module):
    """Multi-head attention with RoPE, an optional persistent prefix and a KV cache.

    ``forward(x, positions, cache)`` attends from the tokens of ``x (batch, n, dim)`` to the cache, to
    ``extra`` tokens (MAC's memory tokens) and to ``x`` itself, under the mask that ``window`` and the
    positions define. Returns ``(batch, n, dim)`` and the cache extended with the new keys.
    """

    def __init__(self, dim: int, heads: int, rope_base: float = 10000.0, backend: Backend = "auto") -> None:
        super().__init__()
        if heads < 1 or dim % heads:
            raise ValueError(f"attention heads must divide dim; got dim={dim}, heads={heads}. Choose heads "
                             f"among the divisors of dim.")
        if (dim // heads) % 2:
            raise ValueError(f"RoPE needs an even head dim; got dim // heads = {dim // heads}. Change heads or dim.")
        self.heads, self.head_dim, self.rope_base, self.backend = heads, dim // heads, rope_base, backend
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)

    def split_heads(self, x: Tensor) -> Tensor:
        """``(batch, n, heads * hd) -> (batch, heads, n, hd)``."""
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def _keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Keys (not yet rotated) and values of ``x (..., n, dim)``: only the k and v rows of W_QKV are used."""
        k, v = F.linear(x, self.to_qkv.weight[x.shape[-1] :]).chunk(2, dim=-1)
        return self.split_heads(k), self.split_heads(v)

    def persistent_keys_values(self, p: Tensor, batch: int) -> tuple[Tensor, Tensor]:
        """Keys and values of the persistent tokens ``p (N_p, dim)``, not rotated: ``(batch, heads, N_p, hd)``."""
        k, v = self._keys_values(p.unsqueeze(0))
        return k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)

    def project(self, x: Tensor, positions: Tensor) -> "Projected":
        """Queries, keys and values of the tokens ``x (batch, n, dim)`` at ``positions (n,)``: rotated and raw."""
        q_raw, k, v = (self.split_heads(t) for t in self.to_qkv(x).chunk(3, dim=-1))
        q, k = rope(torch.stack([q_raw, k]), positions, self.rope_base).unbind(0)  # both share the positions
        return Projected(q, q_raw, k, v)

    def forward(
        self, x: Tensor, positions: Tensor, cache: KVCache | None = None, window: int | None = None,
        persistent: Tensor | None = None, extra: Tensor | None = None, keep: int | None = None,
    ) -> tuple[Tensor, KVCache]:
        """``x (batch, n, dim)`` at stream ``positions (n,)``.

        ``cache``: keys of earlier tokens. ``window``: SW-Attn's W (None = full causal). ``persistent``:
        ``(N_p, dim)`` tokens, always visible. ``extra``: ``(batch, n, dim)`` tokens that are keys only and
        share the positions of ``x`` (MAC's memory tokens h). ``keep``: how many cache entries to keep
        (None = all).
        """
        prefix = None if persistent is None else self.persistent_keys_values(persistent, x.shape[0])
        return self.attend_projected(self.project(x, positions), positions, cache, window, prefix, extra, keep)

    def attend_projected(
        self, tokens: "Projected", positions: Tensor, cache: KVCache | None = None, window: int | None = None,
        prefix: tuple[Tensor, Tensor] | None = None, extra: Tensor | None = None, keep: int | None = None,
    ) -> tuple[Tensor, KVCache]:
        """:meth:`forward` from tokens already projected (:meth:`project`) and persistent keys and values already
        computed (:meth:`persistent_keys_values`): MAC projects a whole call at once and attends segment by segment."""
        q, k, v = tokens.q, tokens.k, tokens.v
        batch = q.shape[0]
        k_pos = positions
        if extra is not None:
            k_extra, v_extra = self._keys_values(extra)
            k = torch.cat([rope(k_extra, positions, self.rope_base), k], dim=2)
            v = torch.cat([v_extra, v], dim=2)
            k_pos = torch.cat([positions, positions])
        if cache is None:
            cache = KVCache.empty(batch, self.heads, self.head_dim, k)
        new_cache = cache.extend(k, v, k_pos, keep)
        if len(cache):  # the cached keys come first (a length, not a value: no sync, no recompile)
            k = torch.cat([cache.keys, k.to(cache.keys.dtype)], dim=2)
            v = torch.cat([cache.values, v.to(cache.values.dtype)], dim=2)
            k_pos = torch.cat([cache.positions, k_pos])
        same_tokens = len(cache) == 0 and extra is None
        y = attend(q, k.to(q.dtype), v.to(q.dtype), positions, k_pos, window, prefix, tokens.q_raw,
                   self.backend, same_tokens)
        return self.to_out(y.transpose(1, 2).flatten(2)), new_cache


class Projected(NamedTuple):
    """What :meth:`Attention.project` gives: ``(batch, heads, n, hd)`` each; ``q`` and ``k`` rotated, ``q_raw`` not
    (persistent keys are scored against it)."""

    q: Tensor
    q_raw: Tensor
    k: Tensor
    v: Tensor

    def split(self, sizes: list[int]) -> list["Projected"]:
        """Consecutive pieces of ``sizes`` tokens (``split``, not slicing: its backward pass is one ``cat``)."""
        return [Projected(*parts) for parts in zip(*(t.split(sizes, dim=2) for t in self))]
