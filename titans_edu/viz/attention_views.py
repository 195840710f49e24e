"""Attention weights in the open, persistent tokens as a sink, and MAC step by step: the figures and explorers
of notebooks 07 and 08 (paper §3.3 Eq. 19, §4.1 Eqs. 21-25, Fig. 3). The masks of Fig. 3 and their explorer
live in :mod:`titans_edu.viz.mask_views` and are re-exported here.

Glossary (paper symbol -> code name):

    p_1..p_Np      persistent tokens (Eq. 19): the first ``n_persistent`` key columns of a mask or an attention
                   map, group ``"p"``
    h_j            MAC's memory token of segment token j (Eq. 21): group ``"h"``
    S^(t), x       the tokens themselves: group ``"x"``
    mask           ``(queries, keys)`` bool, True where the query may attend (:mod:`titans_edu.models.attention`)
    weights        an attention map ``(batch, heads, queries, keys)``: softmax probabilities, rows sum to 1
    sink mass      the share of a row's probability on the persistent columns (:func:`persistent_mass`)
    y_t, M*_t(y_t), o_t   ``y``, ``m``, ``o`` of :class:`SegmentTrace` (Eqs. 23-25)

Every explorer is a pure function of its slider values plus thin ipywidgets wiring; the box it returns has a
``render()`` that redraws from the current values and returns what it drew, so tests drive it without a
browser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..models.attention import Attention, rope, visibility
from ..models.mac import MACMixer
from ..models.persistent import PersistentMemory
from .explorer import build_explorer
from .mask_views import _group_image, _mark_groups  # noqa: F401  (_group_image: re-exported for the tests)
from .mask_views import (GROUP_COLORS, GROUP_NAMES, MaskView, draw_masks, figure3_masks, mac_sequence_mask,
                         mask_explorer, visible_keys)

__all__ = [
    "GROUP_COLORS", "GROUP_NAMES", "AttentionView", "MaskView", "SegmentTrace", "SinkExample", "SinkProbe",
    "draw_attention_map", "draw_histories", "draw_mac_segment", "draw_masks", "draw_sink_example",
    "explain_attention", "figure3_masks", "group_mass", "mac_explorer", "mac_sequence_mask", "mask_explorer",
    "persistent_mass", "sink_example", "sink_explorer", "trace_mac", "visible_keys",
]


# --- attention weights in the open (notebooks 07 and 08) -------------------------------------------------


class AttentionView(NamedTuple):
    """``output (batch, n, dim)`` recomputed from ``weights (batch, heads, n, N_p + keys)``."""

    output: Tensor
    weights: Tensor


def explain_attention(
    attention: Attention, x: Tensor, positions: Tensor, window: int | None = None,
    persistent: Tensor | None = None, extra: Tensor | None = None,
) -> AttentionView:
    """What ``attention(x, positions, window=..., persistent=..., extra=...)`` computes with no cache, with
    the softmax weights kept. Keys: ``[p | extra | x]``; ``p`` unrotated and scored against the unrotated
    query, ``extra`` (MAC's ``h``) and ``x`` rotated at ``positions``."""
    batch, base = x.shape[0], attention.rope_base
    q_raw, k, v = (attention.split_heads(t) for t in attention.to_qkv(x).chunk(3, dim=-1))
    q, k = rope(q_raw, positions, base), rope(k, positions, base)
    k_pos = positions
    if extra is not None:
        _, k_h, v_h = (attention.split_heads(t) for t in attention.to_qkv(extra).chunk(3, dim=-1))
        k, v = torch.cat([rope(k_h, positions, base), k], dim=2), torch.cat([v_h, v], dim=2)
        k_pos = torch.cat([positions, positions])
    scores = q @ k.transpose(-1, -2)  # (batch, heads, n, keys)
    n_p = 0
    if persistent is not None:
        k_p, v_p = attention.persistent_keys_values(persistent, batch)
        n_p = k_p.shape[2]
        scores = torch.cat([q_raw @ k_p.transpose(-1, -2), scores], dim=-1)
        v = torch.cat([v_p, v], dim=2)
    scores = scores * attention.head_dim**-0.5
    weights = scores.masked_fill(~visibility(positions, k_pos, window, n_p), float("-inf")).softmax(-1)
    return AttentionView(attention.to_out((weights @ v).transpose(1, 2).flatten(2)), weights)


def persistent_mass(weights: Tensor, n_persistent: int) -> Tensor:
    """The sink mass: ``(..., queries, keys) -> (..., queries)``, the probability on the first N_p keys."""
    return weights[..., :n_persistent].sum(-1)


def draw_attention_map(weights: np.ndarray, groups: Sequence[tuple[str, int]], ax=None, title: str = "",
                       marked_rows: Sequence[int] = ()) -> Figure:
    """One attention map ``(queries, keys)`` with the key groups labelled; ``marked_rows`` get a tick mark."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    # hidden keys (weight exactly 0) stay white, apart from visible keys with little weight
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    shown = np.ma.masked_where(weights == 0, weights)
    image = ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
    _mark_groups(ax, groups)
    for row in marked_rows:
        ax.plot(-0.9, row, marker=">", color="tab:green", markersize=5, clip_on=False)
    ax.set_xlim(-0.5, weights.shape[1] - 0.5)
    ax.set_title(title, fontsize=10, pad=18)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    ax.grid(False)
    ax.figure.colorbar(image, ax=ax, shrink=0.8, label="attention weight")
    return ax.figure


# --- the sink, by hand and trained (notebook 07) ---------------------------------------------------------


class SinkExample(NamedTuple):
    """One query over ``n`` token keys plus one sink key with value 0. ``weights (n + 1,)``: sink first."""

    weights: np.ndarray
    output_norm: float
    output_norm_without_sink: float


def sink_example(sink_score: float, n_keys: int = 6, dim: int = 4, seed: int = 0) -> SinkExample:
    """Softmax over fixed token scores and one extra key scoring ``sink_score`` whose value is zero.

    The token scores are standard normal and the token values random unit vectors (seeded, float64). Without
    the sink the output is a convex mix of the token values; with it, mass moved to the sink adds nothing.
    """
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(n_keys, generator=gen, dtype=torch.float64)
    values = torch.nn.functional.normalize(torch.randn(n_keys, dim, generator=gen, dtype=torch.float64), dim=-1)
    with_sink = torch.cat([scores.new_tensor([sink_score]), scores]).softmax(0)
    without = scores.softmax(0)
    return SinkExample(with_sink.numpy(), float((with_sink[1:] @ values).norm()), float((without @ values).norm()))


def draw_sink_example(sink_score: float, fig: Figure | None = None) -> tuple[Figure, str]:
    """Bars of the weights, and the output norm against the sink score. Returns the figure and a readout."""
    ex = sink_example(sink_score)
    if fig is None:
        fig = plt.figure(figsize=(10, 3.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    colors = [GROUP_COLORS["p"]] + [GROUP_COLORS["x"]] * (len(ex.weights) - 1)
    left.bar(["sink"] + [f"x{j}" for j in range(len(ex.weights) - 1)], ex.weights, color=colors)
    left.set_ylim(0, 1)
    left.set_ylabel("attention weight")
    left.set_title(f"sink score {sink_score:+.1f}: {ex.weights[0]:.0%} of the mass on the sink")
    grid = np.linspace(-4, 8, 61)
    right.plot(grid, [sink_example(s).output_norm for s in grid], color=GROUP_COLORS["p"], label="with a sink")
    right.axhline(ex.output_norm_without_sink, color=GROUP_COLORS["x"], linestyle="--", label="without a sink")
    right.plot([sink_score], [ex.output_norm], "o", color="black")
    right.set_xlabel("sink score (logit)")
    right.set_ylabel("||output||")
    right.set_title("the head can turn itself down only with a sink")
    right.legend(fontsize=8)
    text = f"output norm {ex.output_norm:.3f} (without a sink it is {ex.output_norm_without_sink:.3f})"
    return fig, text


def sink_explorer(sink_score: float = 0.0):
    """A slider for the sink score wired to :func:`draw_sink_example`; ``render()`` returns the readout."""
    import ipywidgets as widgets

    slider = widgets.FloatSlider(value=sink_score, min=-4.0, max=8.0, step=0.5, description="sink score")
    return build_explorer(draw_sink_example, {"sink_score": slider})


class SinkProbe(nn.Module):
    """The smallest model with persistent tokens: one SW-Attn* layer (Eq. 27, Fig. 3b) on token embeddings.

        e = embed(tokens);  logits = readout(RMSNorm(e + SW-Attn*([p || e])))

    The attention is the package's :class:`~titans_edu.models.attention.Attention`; ``p`` is a
    :class:`~titans_edu.models.persistent.PersistentMemory` (``n_persistent=0``: none). ``tokens (batch, n)``.
    """

    def __init__(self, vocab_size: int, dim: int = 32, heads: int = 2, window: int = 8, n_persistent: int = 4) -> None:
        super().__init__()
        self.window = window
        self.embed = nn.Embedding(vocab_size, dim)
        self.attention = Attention(dim, heads)
        self.persistent = PersistentMemory(n_persistent, dim) if n_persistent else None
        self.norm = nn.RMSNorm(dim)
        self.readout = nn.Linear(dim, vocab_size)

    @property
    def n_persistent(self) -> int:
        return 0 if self.persistent is None else self.persistent.n_tokens

    def _p(self) -> Tensor | None:
        return None if self.persistent is None else self.persistent.tokens

    def forward(self, tokens: Tensor) -> Tensor:
        """``(batch, n) -> logits (batch, n, vocab)``."""
        e = self.embed(tokens)
        y, _ = self.attention(e, torch.arange(tokens.shape[1]), window=self.window, persistent=self._p())
        return self.readout(self.norm(e + y))

    def attention_view(self, tokens: Tensor) -> AttentionView:
        """The attention layer's output and weights ``(batch, heads, n, N_p + n)`` on ``tokens``."""
        return explain_attention(self.attention, self.embed(tokens), torch.arange(tokens.shape[1]), self.window,
                                 self._p())


# --- MAC, one segment at a time (notebook 08) --------------------------------------------------------------


@dataclass
class SegmentTrace:
    """Eqs. 21-25 for segment ``index`` (tokens ``start .. start + C - 1``), recomputed from public pieces.

    ``q``: the read queries ``(batch, heads, C, hd)``. ``h``: memory tokens ``(batch, C, dim)`` (Eq. 21).
    ``weights``: the attention map ``(batch, heads, C, N_p + 2C)`` over ``[p | h | S]`` (Eqs. 22-23).
    ``y``: attention output; ``m``: M*_t(y), read through each position (Eq. 24); ``o``: the gated output
    (Eq. 25). All ``(batch, C, dim)``.
    """

    index: int
    start: int
    q: Tensor
    h: Tensor
    weights: Tensor
    y: Tensor
    m: Tensor
    o: Tensor

    def groups(self, n_persistent: int) -> tuple[tuple[str, int], ...]:
        c = self.h.shape[1]
        return (("p", n_persistent), ("h", c), ("x", c))


@torch.no_grad()
def trace_mac(mixer: MACMixer, x: Tensor) -> list[SegmentTrace]:
    """Run ``mixer`` over ``x (batch, seq, dim)`` from a fresh state, one segment at a time, keeping what
    Eqs. 21-25 compute. The state is advanced by the mixer itself; the intermediates are recomputed from that
    same state, so ``torch.cat([t.o for t in traces], 1)`` must equal ``mixer(x)`` (the tests check it)."""
    state, traces = mixer.init_state(x.shape[0]), []
    p = None if mixer.persistent is None else mixer.persistent.tokens
    for index, start in enumerate(range(0, x.shape[1], mixer.segment)):
        xs = x[:, start : start + mixer.segment]
        positions = torch.arange(start, start + xs.shape[1])
        segment_start = state.memory.weights  # M_{t-1}: the memory as this segment begins
        q, _ = mixer.read_queries(xs, state.read_conv)
        h = mixer.memory.output(mixer.memory.memory(segment_start, q), xs)  # Eq. 21
        view = explain_attention(mixer.attention, xs, positions, None, p, h)  # Eqs. 22-23
        m, _ = mixer.memory(view.output, state.memory)  # Eq. 24, and the read of Eq. 25
        o = mixer.gate(view.output, m)  # Eq. 25
        traces.append(SegmentTrace(index, start, q, h, view.weights, view.output, m, o))
        _, state = mixer(xs, state)
    return traces


def group_mass(weights: Tensor, groups: Sequence[tuple[str, int]]) -> dict[str, Tensor]:
    """``{kind: (..., queries)}``: the attention probability each query puts on each kind of key."""
    out, edge = {}, 0
    for kind, count in groups:
        out[kind] = weights[..., edge : edge + count].sum(-1)
        edge += count
    return out


def draw_mac_segment(trace: SegmentTrace, n_persistent: int, head: int = 0, sequence: int = 0,
                     marked_rows: Sequence[int] = (), fig: Figure | None = None) -> tuple[Figure, str]:
    """One segment of a MAC layer: its attention map over ``[p | h | S]`` and the mass on each kind of key
    per query. Returns the figure and a one-line readout."""
    if fig is None:
        fig = plt.figure(figsize=(11, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1]})
    groups = trace.groups(n_persistent)
    w = trace.weights[sequence, head].double()
    last = trace.start + w.shape[0] - 1
    draw_attention_map(w.numpy(), groups, ax=left, marked_rows=marked_rows,
                       title=f"segment {trace.index} (tokens {trace.start}-{last}), head {head}")
    mass = {k: v.numpy() for k, v in group_mass(w, groups).items()}
    bottom, rows = np.zeros(w.shape[0]), np.arange(w.shape[0])
    for kind, share in mass.items():
        right.barh(rows, share, left=bottom, color=GROUP_COLORS[kind], label=GROUP_NAMES[kind])
        bottom += share
    right.set_ylim(w.shape[0] - 0.5, -0.5)  # query 0 on top, as in the map
    right.set_xlim(0, 1)
    right.set_xlabel("share of the attention")
    right.set_ylabel("query (position in segment)")
    right.set_title("where each query looks")
    right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    text = f"segment {trace.index}, head {head}: mean share " + ", ".join(
        f"{GROUP_NAMES[k]} {float(v.mean()):.2f}" for k, v in mass.items())
    return fig, text


def mac_explorer(traces: Sequence[SegmentTrace], n_persistent: int, heads: int,
                 marked: dict[int, list[int]] | None = None):
    """A segment slider and a head slider wired to :func:`draw_mac_segment`; ``render()`` returns the readout.
    ``marked``: rows to flag per segment index (for example the positions of the queries)."""
    import ipywidgets as widgets

    marked = marked or {}
    style = {"description_width": "initial"}
    sliders = {
        "segment": widgets.IntSlider(value=len(traces) - 1, min=0, max=len(traces) - 1, description="segment t",
                                     style=style),
        "head": widgets.IntSlider(value=0, min=0, max=heads - 1, description="head", style=style),
    }

    def draw(segment, head):
        return draw_mac_segment(traces[segment], n_persistent, head, marked_rows=marked.get(segment, ()))

    return build_explorer(draw, sliders)


def draw_histories(histories: dict, chance: float, fig: Figure | None = None) -> Figure:
    """Evaluation accuracy against training steps for each model of a :func:`~titans_edu.course.tasks.fit` run."""
    if fig is None:
        fig = plt.figure(figsize=(7, 3.4), layout="constrained")
    ax = fig.subplots()
    for name, history in histories.items():
        ax.plot(history.eval_steps, history.eval_accuracy, marker="o", markersize=3, label=name)
    ax.axhline(chance, color="gray", linestyle=":", label=f"chance ({chance:.3f})")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy at the queries")
    ax.legend(fontsize=8)
    return fig
