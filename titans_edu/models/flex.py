"""The optional block-sparse attention path for long sequences on GPU (FlexAttention).

It computes what :func:`titans_edu.models.attention.attend` computes with a dense mask, but from a ``mask_mod``
that FlexAttention evaluates per block, so the blocks a sliding window or a MAC segment hides are skipped.
It is used only on CUDA (:func:`titans_edu.models.attention.attention_backend`); on CPU it also runs, unfused and
slowly, which is how its agreement with the dense path is tested.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_compiled = {}


def _flex():
    """FlexAttention, compiled once when not already inside ``torch.compile`` (uncompiled it is slow)."""
    from torch.nn.attention.flex_attention import flex_attention

    if torch.compiler.is_compiling():
        return flex_attention
    if "flex" not in _compiled:
        _compiled["flex"] = torch.compile(flex_attention, dynamic=False)
    return _compiled["flex"]


def flex_attend(
    q: Tensor, k: Tensor, v: Tensor, q_pos: Tensor, k_pos: Tensor, window: int | None, n_persistent: int,
    scale: float, compiled: bool | None = None,
) -> Tensor:
    """FlexAttention under the mask of :func:`titans_edu.models.attention.visibility`.

    ``k`` and ``v`` hold ``n_persistent`` persistent entries first, then the tokens at ``k_pos``.
    ``compiled``: compile FlexAttention (default: on CUDA only).
    """
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    n, m = q.shape[2], k.shape[2]
    # persistent columns get a position no query can be behind, and are marked always visible
    key_pos = torch.cat([k_pos.new_zeros(n_persistent), k_pos])
    always = torch.arange(m, device=q.device) < n_persistent
    reach = window if window is not None else torch.iinfo(torch.int32).max

    def mask_mod(b, h, qi, ki):
        distance = q_pos[qi] - key_pos[ki]
        return always[ki] | ((distance >= 0) & (distance < reach))

    block_mask = create_block_mask(mask_mod, None, None, n, m, device=q.device)
    compiled = q.is_cuda if compiled is None else compiled
    fn = _flex() if compiled else flex_attention
    # with persistent keys, q and k are [rotated | raw] (twice the head dim); values are padded to match,
    # because not every FlexAttention kernel accepts a value head dim different from the query's
    dv = v.shape[-1]
    if dv != q.shape[-1]:
        v = F.pad(v, (0, q.shape[-1] - dv))
    return fn(q, k, v, block_mask=block_mask, scale=scale)[..., :dv]
