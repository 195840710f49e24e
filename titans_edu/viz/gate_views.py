"""What MAG's two branches contribute, and how MAG, MAL and the LMM see a stream: notebooks 09 and 10.

The task (its layout, far and near queries) is described in :mod:`titans_edu.course.recall`; its names
are re-exported here.

Glossary (paper symbol -> code name):

    x~ = [p] || x        Eq. 26; ``p`` is ``mixer.persistent.tokens`` (N_p, dim)
    y = SW-Attn*(x~)     Eq. 27; ``GateTrace.y``: the attention branch, before the gate
    M(x~)                Eq. 28; ``GateTrace.m``: the memory branch, before the gate
    ⊗                    Eq. 28 with the package's CHOICE ``RMSNorm_a(y) * sigmoid(RMSNorm_b(m))``;
                         ``GateTrace.gate`` is ``sigmoid(RMSNorm_b(m))``, a number in (0, 1) per channel
    W, N_p               ``window``, ``n_persistent``

Each explorer is a pure function of its slider values (``draw_*``, returning a figure and a readout line,
unit-tested) plus a thin function that wires ipywidgets to it (``*_explorer``).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..models.attention import rope, visibility
from ..models.mag import MAGMixer
from .explorer import build_explorer
from ..course.recall import (KINDS, N_KEYS, N_VALUES, VOCAB_SIZE, RecallStream, recall_loss, recall_scores,
                          recall_stream, train_recall)

__all__ = [
    "KINDS", "VOCAB_SIZE", "GateTrace", "RecallStream", "attention_weights", "branch_ablation", "draw_ablation",
    "draw_gates", "draw_position", "draw_visibility", "gate_by_answer", "gate_trace", "position_explorer",
    "recall_loss", "recall_scores", "recall_stream", "train_recall", "visibility_explorer", "visibility_masks",
]

KIND_COLORS = ("tab:red", "0.85", "tab:green", "tab:orange", "tab:blue")  # one per KINDS


# --- looking inside MAG: the two branches and the gate ---------------------------------------------------------


@dataclass(frozen=True)
class GateTrace:
    """The inputs of MAG's gate in one block, each ``(batch, seq, dim)``: ``x`` the mixer's input (after the
    block's RMSNorm), ``y`` the attention branch, ``m`` the memory branch, ``gate = sigmoid(RMSNorm_b(m))``."""

    x: Tensor
    y: Tensor
    m: Tensor
    gate: Tensor


def _mag_mixer(model: nn.Module, layer: int) -> MAGMixer:
    mixer = model.blocks[layer].mixer
    if not isinstance(mixer, MAGMixer):
        raise ValueError(f"block {layer} has a {type(mixer).__name__}, not a MAGMixer; trace a model built with "
                         f"build_model('mag', ...)")
    return mixer


@torch.no_grad()
def gate_trace(model: nn.Module, tokens: Tensor, layer: int = 0) -> GateTrace:
    """Run ``model`` on ``tokens (batch, seq)`` and catch what enters MAG's gate in block ``layer``.

    Forward hooks read the public modules (the mixer and its :class:`~titans_edu.models.blocks.MemoryGate`), so the
    model runs exactly as it does without them.
    """
    mixer = _mag_mixer(model, layer)
    caught: dict[str, Tensor] = {}
    hooks = [mixer.register_forward_hook(lambda mod, args, out: caught.update(x=args[0])),
             mixer.gate.register_forward_hook(lambda mod, args, out: caught.update(y=args[0], m=args[1]))]
    try:
        model(tokens)
    finally:
        for hook in hooks:
            hook.remove()
    gate = torch.sigmoid(mixer.gate.norm_m(caught["m"]))
    return GateTrace(caught["x"], caught["y"], caught["m"], gate)


@contextmanager
def branch_ablation(model: nn.Module, branch: str, layer: int = 0) -> Iterator[None]:
    """Inside the ``with`` block, one branch of MAG's gate in block ``layer`` is replaced by its mean.

    ``branch="memory"``: ``m`` becomes its average over the batch and the positions, so the gate is one fixed
    vector and carries nothing about the stream. ``branch="attention"``: the same for ``y``. (A mean ablation:
    the model still gets inputs of the usual size, only the information is gone.)
    """
    if branch not in ("memory", "attention"):
        raise ValueError(f"branch must be 'memory' or 'attention', got {branch!r}")
    index = 1 if branch == "memory" else 0

    def replace(module: nn.Module, args: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        args = list(args)
        args[index] = args[index].mean(dim=(0, 1), keepdim=True).expand_as(args[index])
        return tuple(args)

    hook = _mag_mixer(model, layer).gate.register_forward_pre_hook(replace)
    try:
        yield
    finally:
        hook.remove()


@torch.no_grad()
def attention_weights(mixer: MAGMixer, x: Tensor, start: int | None = None) -> Tensor:
    """SW-Attn* weights of a MAG mixer on its input ``x (batch, seq, dim)``: ``(batch, heads, seq, N_p + seq)``.

    The first ``N_p`` columns are the persistent keys (no position, scored with the query before RoPE), the
    others the tokens at stream positions ``start, start + 1, ...`` (default ``start = N_p``, a fresh stream).
    """
    att, p = mixer.attention, mixer.persistent
    n_p = 0 if p is None else p.n_tokens
    start = n_p if start is None else start
    positions = torch.arange(start, start + x.shape[1])
    q_raw, k, _ = (att.split_heads(t) for t in att.to_qkv(x).chunk(3, dim=-1))
    scores = rope(q_raw, positions, att.rope_base) @ rope(k, positions, att.rope_base).transpose(-1, -2)
    if n_p:
        k_p, _ = att.persistent_keys_values(p.tokens, x.shape[0])
        scores = torch.cat([q_raw @ k_p.transpose(-1, -2), scores], dim=-1)
    mask = visibility(positions, positions, mixer.window, n_p)
    return (scores * att.head_dim**-0.5).masked_fill(~mask, float("-inf")).softmax(-1)


def gate_by_answer(trace: GateTrace, stream: RecallStream, which: str = "far") -> tuple[Tensor, float, float]:
    """How much of the gate at the ``which`` query keys ("far" or "near") is explained by the answer.

    Returns ``means (N_VALUES, dim)``: the average gate for each answer value (NaN rows for values never asked),
    ``r2``: the share of the gate's variance across queries that lies between those averages (mean over
    channels; 0 = the gate ignores the answer, 1 = the gate names it), and ``r2_shuffled``: the same with the
    answers shuffled, the share that chance alone gives with this many queries.
    """
    if which not in ("far", "near"):
        raise ValueError(f"which must be 'far' or 'near', got {which!r}")
    at = stream.far if which == "far" else stream.near
    gates = trace.gate[:, at].reshape(-1, trace.gate.shape[-1]).double()
    answers = stream.tokens[:, at + 1].reshape(-1) - N_KEYS

    def share(labels: Tensor) -> tuple[Tensor, float]:
        means = torch.full((N_VALUES, gates.shape[-1]), float("nan"), dtype=gates.dtype)
        between = torch.zeros_like(gates)
        for value in labels.unique():
            rows = labels == value
            means[value] = gates[rows].mean(0)
            between[rows] = means[value]
        return means, float(between.var(0).sum() / gates.var(0).sum())

    means, r2 = share(answers)
    shuffled = answers[torch.randperm(answers.numel(), generator=torch.Generator().manual_seed(0))]
    return means.float(), r2, share(shuffled)[1]


# --- figures ----------------------------------------------------------------------------------------------------


def _kind_strip(ax: plt.Axes, kind: Tensor, window: tuple[int, int] | None = None) -> None:
    """One row of coloured cells, one per position, coloured by :data:`KINDS`; ``window`` is boxed."""
    ax.imshow(kind[None].numpy(), cmap=ListedColormap(KIND_COLORS), vmin=-0.5, vmax=len(KINDS) - 0.5,
              aspect="auto", interpolation="nearest", extent=(-0.5, kind.shape[0] - 0.5, 0, 1))
    if window is not None:
        ax.axvspan(window[0] - 0.5, window[1] + 0.5, fill=False, edgecolor="k", lw=2)
    ax.set_yticks([])
    ax.grid(False)


def draw_gates(trace: GateTrace, stream: RecallStream, sample: int = 0) -> Figure:
    """Left: the gate ``sigmoid(RMSNorm_b(M(x~)))`` of one stream, channels x positions, under the token kinds.
    Right: at far and at near query keys, the average gate for each answer value minus the average over all
    those queries (:func:`gate_by_answer`): rows that differ mean the gate tells the answers apart."""
    fig = plt.figure(figsize=(12, 4.8))
    grid = fig.add_gridspec(2, 3, height_ratios=[1, 14], width_ratios=[2.3, 1, 1], hspace=0.06, wspace=0.55,
                            left=0.06, right=0.92, top=0.86, bottom=0.2)
    strip, heat = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[1, 0])
    _kind_strip(strip, stream.kind[: trace.gate.shape[1]])
    strip.set_xticks([])
    strip.set_title(f"gate of stream {sample}, channel by position", fontsize=10)
    image = heat.imshow(trace.gate[sample].T.numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1,
                        interpolation="nearest")
    heat.set(xlabel="position t", ylabel="channel")
    heat.grid(False)
    fig.colorbar(image, ax=heat, fraction=0.04, pad=0.02, label="gate value")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in KIND_COLORS]
    heat.legend(handles, KINDS, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=len(KINDS), fontsize=8,
                frameon=False)
    axes = [fig.add_subplot(grid[:, 1]), fig.add_subplot(grid[:, 2])]
    for ax, which in zip(axes, ("far", "near")):
        means, r2, r2_null = gate_by_answer(trace, stream, which)
        at = stream.far if which == "far" else stream.near
        centred = means - trace.gate[:, at].mean(dim=(0, 1))
        image = ax.imshow(centred.numpy(), aspect="auto", cmap="RdBu_r", vmin=-0.3, vmax=0.3,
                          interpolation="nearest")
        ax.set(xlabel="channel", ylabel="answer value (index)",
               title=f"{which} query keys: share of the gate\nset by the answer {r2:.2f} (shuffled {r2_null:.2f})")
        ax.title.set_fontsize(9)
        ax.grid(False)
    fig.colorbar(image, ax=axes, fraction=0.04, pad=0.03, label="gate minus its average")
    return fig


def draw_ablation(results: dict[str, dict[str, float]], chance: float = 1 / N_VALUES,
                  ax: plt.Axes | None = None) -> Figure:
    """Grouped bars: far and near accuracy for each entry of ``results`` (name -> :func:`recall_scores`), on
    ``ax`` or a new figure."""
    own = ax is None
    if own:
        _, ax = plt.subplots(figsize=(7, 3.2))
    fig = ax.figure
    names = list(results)
    x = np.arange(len(names))
    for offset, which, color in ((-0.2, "far", KIND_COLORS[3]), (0.2, "near", KIND_COLORS[4])):
        values = [results[n][which] for n in names]
        bars = ax.bar(x + offset, values, 0.38, color=color, label=f"{which} queries")
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.axhline(chance, color="k", ls=":", lw=1, label=f"chance (1/{N_VALUES})")
    ax.set(xticks=x, xticklabels=names, ylabel="accuracy", ylim=(0, 1.32), yticks=np.linspace(0, 1, 6))
    ax.legend(fontsize=8, ncol=3, loc="upper center")
    if own:
        fig.tight_layout()
    return fig


def draw_position(model: nn.Module, stream: RecallStream, position: int, sample: int = 0,
                  ablate: str = "none") -> tuple[Figure, str]:
    """What MAG's two branches hold at one ``position`` of stream ``sample`` (the model's first block).

    Top: the stream by token kind, the attention window ``[t - W + 1, t]`` boxed. Middle: SW-Attn* weights of
    the query at ``t`` (mean over heads) over the persistent keys and the tokens. Bottom: the gate at ``t`` per
    channel against its average over the batch and positions. ``ablate``: "none", "memory" or "attention"
    (:func:`branch_ablation`) for the prediction in the readout.
    """
    length = stream.inputs.shape[1]
    if not 0 <= position < length or not 0 <= sample < stream.tokens.shape[0]:
        raise ValueError(f"position must be in [0, {length}) and sample in [0, {stream.tokens.shape[0]}), "
                         f"got position={position}, sample={sample}")
    if ablate not in ("none", "memory", "attention"):
        raise ValueError(f"ablate must be 'none', 'memory' or 'attention', got {ablate!r}")
    mixer = _mag_mixer(model, 0)
    trace = gate_trace(model, stream.inputs)
    weights = attention_weights(mixer, trace.x[sample : sample + 1])[0, :, position].mean(0)  # (N_p + seq,)
    n_p, window = weights.shape[0] - length, mixer.window
    with torch.no_grad(), (branch_ablation(model, ablate) if ablate != "none" else _nothing()):
        probs = model(stream.inputs)[0][sample, position].softmax(-1)

    asked = None
    if position in stream.far.tolist():
        asked = int(stream.far_source[sample, stream.far.tolist().index(position)])

    fig = plt.figure(figsize=(11, 5.4))
    outer = fig.add_gridspec(2, 1, height_ratios=[2.45, 2], hspace=0.35, top=0.92, bottom=0.1)
    top = outer[0].subgridspec(2, 1, height_ratios=[0.45, 2], hspace=0.08)
    strip = fig.add_subplot(top[0])
    _kind_strip(strip, stream.kind[:length], (max(position - window + 1, 0), position))
    strip.add_patch(plt.Rectangle((-n_p - 0.5, 0), n_p, 1, color="tab:purple"))
    if asked is not None:
        strip.plot([asked, asked + 1], [0.5, 0.5], "w*", ms=9)
    strip.set(xlim=(-n_p - 1, length), xticks=[], title=f"stream {sample}: p, then the tokens; the window of "
              f"t = {position} is boxed" + ("; the asked pair is starred" if asked is not None else ""))
    strip.title.set_fontsize(10)
    ax = fig.add_subplot(top[1])
    ax.bar(np.arange(-n_p, 0), weights[:n_p].numpy(), color="tab:purple", label="persistent p (always visible)")
    ax.bar(np.arange(length), weights[n_p:].numpy(), color="0.3", label="tokens (inside the window)")
    ax.set(xlim=(-n_p - 1, length), ylim=(0, 1), ylabel="attention weight",
           xlabel="key position (p to the left of 0)")
    ax.legend(fontsize=8, loc="upper left")
    ax = fig.add_subplot(outer[1])
    mean_gate = trace.gate.mean(dim=(0, 1))
    channels = np.arange(mean_gate.shape[0])
    ax.bar(channels, trace.gate[sample, position].numpy(), color="tab:olive", label=f"gate at t = {position}")
    ax.plot(channels, mean_gate.numpy(), "k_", ms=10, mew=2, label="average gate")
    ax.set(ylim=(0, 1), xlabel="channel", ylabel="sigmoid(RMSNorm_b(m))")
    ax.legend(fontsize=8, loc="upper left", ncol=2)

    kind = KINDS[int(stream.kind[position])]
    target = int(stream.tokens[sample, position + 1])
    guess = int(probs.argmax())
    text = (f"t = {position} ({kind}); next token {target}, predicted {guess} (p = {probs[target]:.2f})"
            f"{'' if ablate == 'none' else f' with the {ablate} branch averaged'}; attention on p: "
            f"{weights[:n_p].sum():.2f}" + ("" if asked is None else f"; the asked pair is {position - asked} "
                                            f"tokens back, the window is {window}"))
    return fig, text


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def position_explorer(model: nn.Module, stream: RecallStream, position: int | None = None):
    """Sliders for the position and the stream, and a choice of branch to average, driving :func:`draw_position`."""
    import ipywidgets as widgets

    position = int(stream.far[0]) if position is None else position
    controls = {
        "position": widgets.IntSlider(value=position, min=0, max=stream.inputs.shape[1] - 1, description="position t"),
        "sample": widgets.IntSlider(value=0, min=0, max=stream.tokens.shape[0] - 1, description="stream"),
        "ablate": widgets.Dropdown(options=["none", "memory", "attention"], value="none", description="average"),
    }
    return build_explorer(lambda **v: draw_position(model, stream, **v), controls,
                     "<small>Move to a far query (orange) and average the memory branch: the prediction fails. "
                     "At a near query (blue), average the attention branch instead.</small>")


# --- notebook 10: what the attention of MAG and of MAL can see -------------------------------------------------


def visibility_masks(window: int, n_persistent: int, length: int) -> dict[str, Tensor]:
    """The attention masks of MAG and MAL over a stream ``[p_1..p_Np || x_1..x_n]``, ``(n, N_p + n)`` bool.

    Rows are the queries of ``x`` (stream positions ``N_p .. N_p + n - 1``); the first ``N_p`` columns are
    the persistent slots. MAG (Eq. 27, SW-Attn*): ``p`` as position-free keys, always visible. MAL (Eq. 31,
    plain SW-Attn over ``M([p || x])``): ``M(p)`` are ordinary keys at positions ``0 .. N_p - 1``.
    """
    if window < 1 or n_persistent < 0 or length < 1:
        raise ValueError(f"need window >= 1, n_persistent >= 0 and length >= 1; got window={window}, "
                         f"n_persistent={n_persistent}, length={length}")
    queries = torch.arange(n_persistent, n_persistent + length)
    mag = visibility(queries, queries, window, n_persistent)
    mal = visibility(queries, torch.arange(n_persistent + length), window)
    return {"MAG: SW-Attn* over [p || x] (Eq. 27)": mag, "MAL: SW-Attn over M([p || x]) (Eq. 31)": mal}


def draw_visibility(window: int = 4, n_persistent: int = 3, length: int = 12,
                    query: int | None = None) -> tuple[Figure, str]:
    """The two masks of :func:`visibility_masks` side by side; ``query`` (an index into x) is outlined."""
    masks = visibility_masks(window, n_persistent, length)
    query = length - 1 if query is None else min(max(query, 0), length - 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, (name, mask) in zip(axes, masks.items()):
        shown = mask.float().numpy().copy()
        shown[:, :n_persistent] *= 2  # persistent columns in their own colour
        ax.imshow(shown, cmap=ListedColormap(["white", "0.35", "tab:purple"]), vmin=0, vmax=2,
                  interpolation="nearest")
        ax.axvline(n_persistent - 0.5, color="tab:purple", lw=1.5)
        ax.add_patch(plt.Rectangle((-0.5, query - 0.5), mask.shape[1], 1, fill=False, edgecolor="tab:orange", lw=2))
        labels = [f"p{j + 1}" if "MAG" in name else f"M(p{j + 1})" for j in range(n_persistent)]
        ticks = list(range(0, mask.shape[1], max(1, mask.shape[1] // 12)))
        ax.set_xticks(ticks, [labels[t] if t < n_persistent else f"x{t - n_persistent + 1}" for t in ticks],
                      rotation=90, fontsize=8)
        rows = list(range(0, length, max(1, length // 12)))
        ax.set_yticks(rows, [f"x{r + 1}" for r in rows], fontsize=8)
        ax.set(title=name, xlabel="keys", ylabel="queries")
        ax.title.set_fontsize(10)
        ax.grid(False)
    fig.tight_layout()
    mal = masks["MAL: SW-Attn over M([p || x]) (Eq. 31)"]
    reach = int(mal[:, :n_persistent].any(dim=1).sum())
    seen = int(mal[query, :n_persistent].sum())
    text = (f"W = {window}, N_p = {n_persistent}: in MAG every query sees all {n_persistent} persistent keys; in "
            f"MAL only the first {reach} of {length} queries see any M(p), and x{query + 1} sees {seen}")
    return fig, text


def visibility_explorer(window: int = 4, n_persistent: int = 3, length: int = 12):
    """Sliders for W, N_p, the stream length and one query, driving :func:`draw_visibility`."""
    import ipywidgets as widgets

    controls = {
        "window": widgets.IntSlider(value=window, min=1, max=16, description="window W"),
        "n_persistent": widgets.IntSlider(value=n_persistent, min=0, max=8, description="N_p"),
        "length": widgets.IntSlider(value=length, min=4, max=32, description="tokens n"),
        "query": widgets.IntSlider(value=length - 1, min=0, max=length - 1, description="query (index)"),
    }
    controls["length"].observe(lambda change: setattr(controls["query"], "max", change["new"] - 1), "value")
    return build_explorer(draw_visibility, controls,
                     "<small>Purple: persistent slots. In MAL they slide out of the window like any token; in "
                     "MAG they never do.</small>")
