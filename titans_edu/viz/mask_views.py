"""The attention masks of Fig. 3 side by side, and the explorer of notebook 07 that redraws them (paper §3.3
Eq. 19, §4.1, Fig. 3).

Glossary (paper symbol -> code name):

    p_1..p_Np      persistent tokens (Eq. 19): the first ``n_persistent`` key columns of a mask, group ``"p"``
    h_j            MAC's memory token of segment token j (Eq. 21): group ``"h"``
    S^(t), x       the tokens themselves: group ``"x"``
    mask           ``(queries, keys)`` bool, True where the query may attend (:mod:`titans_edu.models.attention`)

The colours and names of the groups are shared with the attention maps of
:mod:`titans_edu.viz.attention_views`, which re-exports everything here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from torch import Tensor

from ..models.attention import causal_mask, segment_mask, sliding_window_mask
from .explorer import build_explorer

__all__ = ["GROUP_COLORS", "GROUP_NAMES", "MaskView", "draw_masks", "figure3_masks", "mac_sequence_mask",
           "mask_explorer", "visible_keys"]

GROUP_COLORS = {"p": "tab:purple", "h": "tab:orange", "x": "tab:blue"}
GROUP_NAMES = {"p": "persistent p", "h": "memory h", "x": "tokens"}


@dataclass(frozen=True)
class MaskView:
    """One mask and what its key columns are: ``groups`` lists ``(kind, count)`` left to right."""

    title: str
    mask: Tensor
    groups: tuple[tuple[str, int], ...]


def mac_sequence_mask(n: int, segment: int, n_persistent: int = 0) -> Tensor:
    """MAC's visibility over a whole stream of ``n`` tokens (Fig. 3a): ``(n, n_persistent + 2n)`` bool.

    Key columns are ``[p | h_0..h_{n-1} | x_0..x_{n-1}]``. Token ``i`` of a segment sees every ``p`` and the
    ``h_j``, ``x_j`` of its own segment with ``j <= i``; it is :func:`~titans_edu.models.attention.segment_mask`
    placed block by block on the diagonal.
    """
    if n < 1 or segment < 1 or n_persistent < 0:
        raise ValueError(f"need n >= 1, segment >= 1, n_persistent >= 0; got {n}, {segment}, {n_persistent}")
    mask = torch.zeros(n, n_persistent + 2 * n, dtype=torch.bool)
    mask[:, :n_persistent] = True
    for start in range(0, n, segment):
        c = min(segment, n - start)
        window = segment_mask(c, n_persistent)  # (c, N_p + 2c): [p | h | S] of this segment
        rows, h0, x0 = slice(start, start + c), n_persistent + start, n_persistent + n + start
        mask[rows, h0 : h0 + c] = window[:, n_persistent : n_persistent + c]
        mask[rows, x0 : x0 + c] = window[:, n_persistent + c :]
    return mask


def figure3_masks(n: int = 24, window: int = 6, segment: int = 8, n_persistent: int = 3) -> list[MaskView]:
    """The three masks of Fig. 3 for ``n`` tokens, from the package's own mask functions."""
    return [
        MaskView("full causal (Transformer++)", causal_mask(n), (("x", n),)),
        MaskView(f"SW-Attn*, W = {window} (MAG, Fig. 3b)", sliding_window_mask(n, window, n_persistent),
                 (("p", n_persistent), ("x", n))),
        MaskView(f"MAC, C = {segment} (Fig. 3a)", mac_sequence_mask(n, segment, n_persistent),
                 (("p", n_persistent), ("h", n), ("x", n))),
    ]


def _group_image(mask: Tensor, groups: Sequence[tuple[str, int]]) -> np.ndarray:
    """0 where hidden, else 1 + the index of the column's kind in ``GROUP_COLORS``."""
    kinds = list(GROUP_COLORS)
    codes = np.concatenate([np.full(count, kinds.index(kind) + 1) for kind, count in groups])
    return np.where(mask.numpy(), codes[None, :], 0)


def _mark_groups(ax, groups: Sequence[tuple[str, int]], every: int = 4) -> None:
    """Separators between the kinds of key, the kind's name above the axes, ticks numbered within each kind."""
    import matplotlib.transforms as mtransforms

    above = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
    ticks, labels, edge = [], [], 0
    for kind, count in groups:
        if count and edge:
            ax.axvline(edge - 0.5, color="black", linewidth=0.8)
        if count:
            ax.text(edge + count / 2 - 0.5, 1.01, GROUP_NAMES[kind], transform=above, ha="center", va="bottom",
                    color=GROUP_COLORS[kind], fontsize=9, fontweight="bold")
            step = every if count > every else max(count, 1)
            for j in range(0, count, step):
                ticks.append(edge + j)
                labels.append(f"{kind}{j + (1 if kind == 'p' else 0)}")
        edge += count
    ax.set_xticks(ticks, labels, fontsize=7, rotation=90)


def draw_masks(views: Sequence[MaskView], fig: Figure | None = None) -> Figure:
    """The masks side by side, one colour per kind of key, white where hidden. Rows: queries; columns: keys."""
    if fig is None:
        fig = plt.figure(figsize=(12, 4.4), layout="constrained")
    widths = [v.mask.shape[1] for v in views]
    axes = fig.subplots(1, len(views), gridspec_kw={"width_ratios": widths})
    cmap = ListedColormap(["white", *GROUP_COLORS.values()])
    for ax, view in zip(np.atleast_1d(axes), views):
        ax.imshow(_group_image(view.mask, view.groups), cmap=cmap, vmin=0, vmax=len(GROUP_COLORS),
                  interpolation="nearest")
        _mark_groups(ax, view.groups)
        ax.set_title(view.title, fontsize=10, pad=18)
        ax.set_xlabel("key")
        ax.set_ylabel("query (token i)")
        ax.grid(False)
    return fig


def visible_keys(view: MaskView) -> dict[str, int]:
    """The largest number of keys of each kind that one query sees."""
    counts, edge = {}, 0
    for kind, count in view.groups:
        counts[kind] = int(view.mask[:, edge : edge + count].sum(1).max()) if count else 0
        edge += count
    return counts


def mask_explorer(n: int = 24, window: int = 6, segment: int = 8, n_persistent: int = 3):
    """Sliders for ``n``, ``W``, ``C`` and ``N_p`` wired to :func:`figure3_masks` and :func:`draw_masks`;
    ``render()`` returns the :class:`MaskView` list it drew."""
    import ipywidgets as widgets

    style = {"description_width": "initial"}
    sliders = {
        "n": widgets.IntSlider(value=n, min=4, max=48, description="tokens n", style=style),
        "window": widgets.IntSlider(value=window, min=1, max=24, description="window W", style=style),
        "segment": widgets.IntSlider(value=segment, min=1, max=24, description="segment C", style=style),
        "n_persistent": widgets.IntSlider(value=n_persistent, min=0, max=8, description="N_p", style=style),
    }

    def draw(**values):
        views = figure3_masks(**values)
        text = "most keys one query sees: " + "; ".join(
            f"{v.title.split(' (')[0]}: " + ", ".join(f"{k} {c}" for k, c in visible_keys(v).items()) for v in views)
        return draw_masks(views), text, views

    return build_explorer(draw, sliders)
