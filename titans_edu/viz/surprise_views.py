"""Surprise, momentum and forgetting on a stream: the figures and explorers of notebooks 03-05.

The update rule, token by token (chunk size 1; paper §3.1):

    u_t = grad l(M_{t-1}; x_t)                   momentary surprise (Eq. 8), l of Eq. 12
    S_t = eta_t * S_{t-1} - theta_t * u_t        past surprise + momentary surprise (Eqs. 10 and 14)
    M_t = (1 - alpha_t) * M_{t-1} + S_t          forgetting (Eq. 13)

The traces these figures draw (``Trace``, :func:`trace_memory` and the recall helpers, with the glossary of
paper symbols) live in :mod:`titans_edu.viz.stream_trace` and are re-exported here. Recall error 0 is perfect,
1 is an empty memory. Each explorer is a pure function of its slider values (``draw_*``, returning a figure and
a readout line, unit-tested) plus a thin function that wires ipywidgets sliders to it.
"""

from __future__ import annotations

from functools import lru_cache

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from ..course.streams import FactStream, episode_stream, event_stream, shift_stream
from .explorer import build_explorer
from .stream_trace import Trace, as_gate, empty_linear_memory, group_recall, phase_recall, theta_gate, trace_memory

__all__ = [
    "Trace", "as_gate", "draw_forgetting", "draw_momentum", "draw_surprise", "empty_linear_memory",
    "forgetting_explorer", "group_recall", "momentum_explorer", "phase_recall", "surprise_explorer",
    "theta_gate", "trace_memory",
]

EVENT, NOISE, FAMILIAR, EPISODE = "tab:red", "0.55", "tab:blue", "tab:orange"


def _finite(x: Tensor, cap: float) -> np.ndarray:
    return np.clip(np.nan_to_num(x.numpy(), nan=cap, posinf=cap), 0.0, cap)


def _heatmap(ax, matrix: Tensor, title: str, fig: Figure, limit: float | None = None) -> None:
    m = np.nan_to_num(matrix.numpy())
    limit = max(float(np.abs(m).max()) if limit is None else limit, 1e-6)
    image = ax.imshow(m, cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax.set(title=title, xlabel="value dim", ylabel="key dim")
    ax.grid(False)
    fig.colorbar(image, ax=ax, fraction=0.046)


# --- notebook 03: surprise -------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _event_stream() -> FactStream:
    return event_stream(length=240, dim=32, n_familiar=4, events=(60, 110, 160, 200), n_noise=12, seed=0)


@lru_cache(maxsize=8)
def _surprise_trace(theta: float, gate: float) -> Trace:
    stream = _event_stream()
    return trace_memory(empty_linear_memory(stream.dim), stream, theta_gate(stream.feature, 2 * theta, gate),
                        keep_weights=True)


def draw_surprise(theta: float = 0.25, gate: float = 0.0, t: int = 160, fig: Figure | None = None,
                  stream: FactStream | None = None) -> tuple[Figure, str]:
    """Write an :func:`event_stream` into an empty linear memory with ``theta_t = 2 theta sigmoid(gate s_t)``.

    ``s_t`` is the stream's feature (+1 event, -1 noise, 0 familiar), so ``gate = 0`` is a constant step
    ``theta`` and a large ``gate`` writes events harder and noise hardly at all. Top: the surprise
    ``l(M_{t-1}; x_t)`` of every token. Bottom: recall error of each group of facts over the stream, and the
    write of token ``t``, ``M_t - M_{t-1}``, on one colour scale for the whole stream.
    """
    if not 0 < theta <= 0.5:
        raise ValueError(f"theta must be in (0, 0.5] (2 theta <= 1 keeps the rule stable for unit keys), got {theta}")
    stream = stream or _event_stream()
    if not 0 <= t < stream.length:
        raise ValueError(f"t must be a token index in [0, {stream.length}), got {t}")
    if stream is _event_stream():
        trace = _surprise_trace(float(theta), float(gate))
    else:
        thetas = theta_gate(stream.feature, 2 * theta, gate)
        trace = trace_memory(empty_linear_memory(stream.dim), stream, thetas, keep_weights=True)
    steps = np.arange(stream.length)
    fig = fig or plt.figure(figsize=(11, 6.2))
    fig.clear()
    grid = fig.add_gridspec(2, 2, width_ratios=[1.6, 1], height_ratios=[1, 1.1])
    top, left, right = fig.add_subplot(grid[0, :]), fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
    loss = trace.loss[0].numpy()
    top.plot(steps, loss, color="black", lw=1, label=r"surprise $\ell(M_{t-1}; x_t)$")
    for name, color, marker in (("event", EVENT, "v"), ("noise", NOISE, "x")):
        mask = stream.tokens_of(name).numpy()
        top.scatter(steps[mask], loss[mask], color=color, marker=marker, s=40, zorder=3, label=f"{name} token")
    top.axvline(t, color="tab:green", ls="--", lw=1)
    top.set(xlabel="token t", ylabel="loss before writing", title="Momentary surprise along the stream",
            xlim=(0, stream.length))
    top.legend(loc="upper right", fontsize=8, ncol=3)
    for name, color in (("familiar", FAMILIAR), ("event", EVENT), ("noise", NOISE)):
        left.plot(steps, group_recall(trace, stream, name)[0].numpy(), color=color, label=f"{name} facts")
    left.axvline(t, color="tab:green", ls="--", lw=1)
    left.set(xlabel="token t", ylabel="mean recall error", ylim=(-0.05, 2.0), title="What the memory holds")
    left.legend(loc="upper right", fontsize=8)
    writes = torch.diff(trace.weights, dim=0, prepend=torch.zeros_like(trace.weights[:1]))  # M_t - M_{t-1}
    _heatmap(right, writes[t], f"the write of token {t}: $M_t - M_{{t-1}}$", fig, float(writes.abs().max()))
    fig.suptitle(rf"$\theta$ = {theta:.2f},  gate weight on the salience feature = {gate:.1f}")
    fig.tight_layout()
    end = {n: float(group_recall(trace, stream, n)[0, -1]) for n in ("event", "noise", "familiar")}
    text = (f"theta = {theta:.2f}, gate = {gate:.1f}: recall error at the end: event facts {end['event']:.2f}, "
            f"noise {end['noise']:.2f}, familiar {end['familiar']:.3f}; surprise of token {t}: {loss[t]:.2f}")
    return fig, text


def _slider(value: float, low: float, high: float, step: float, label: str):
    import ipywidgets as widgets

    return widgets.FloatSlider(value=value, min=low, max=high, step=step, description=label,
                               style={"description_width": "initial"}, continuous_update=False)


def surprise_explorer(theta: float = 0.25, gate: float = 0.0, t: int = 160):
    """Sliders for ``theta``, the gate weight and the time ``t`` of the heatmap, driving :func:`draw_surprise`."""
    import ipywidgets as widgets

    controls = {
        "theta": _slider(theta, 0.05, 0.5, 0.05, "θ (step)"),
        "gate": _slider(gate, 0.0, 8.0, 0.5, "gate weight"),
        "t": widgets.IntSlider(value=t, min=0, max=239, description="heatmap at t", continuous_update=False,
                               style={"description_width": "initial"}),  # the default width cuts the label
    }
    return build_explorer(draw_surprise, controls,
                     "<small>Red triangles are the surprising new facts, gray crosses the noise. Raise the gate "
                     "weight: events get a bigger step, noise a smaller one.</small>")


# --- notebook 04: momentum -------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _episode_stream() -> FactStream:
    return episode_stream(length=300, dim=32, n_familiar=6, start=150, episode_length=16, n_episode=4,
                          value_noise=0.5, batch=8, seed=0)


@lru_cache(maxsize=8)
def _momentum_trace(theta: float, eta: float, gated: bool) -> Trace:
    stream = _episode_stream()
    etas = eta * stream.feature if gated else eta
    return trace_memory(empty_linear_memory(stream.dim), stream, theta, etas)


def draw_momentum(theta: float = 0.05, eta: float = 0.8, gated: bool = False,
                  fig: Figure | None = None) -> tuple[Figure, str]:
    """An :func:`episode_stream` (8 draws, noisy values) written with step ``theta`` and momentum ``eta``.

    ``gated=True`` makes ``eta_t`` data-dependent: ``eta`` inside the episode, 0 outside. Top: the size of what
    momentary surprise alone would write, ``theta ||u_t||``, against the size of the write with momentum,
    ``||S_t||`` (first draw). Bottom: recall error of the episode's facts and of the familiar ones (mean of 8).
    """
    if not 0 < theta <= 0.5 or not 0 <= eta < 1:
        raise ValueError(f"need 0 < theta <= 0.5 and 0 <= eta < 1, got theta={theta}, eta={eta}")
    stream = _episode_stream()
    trace, plain = _momentum_trace(theta, eta, gated), _momentum_trace(theta, 0.0, False)
    steps = np.arange(stream.length)
    episode = stream.feature.nonzero().flatten()
    fig = fig or plt.figure(figsize=(11, 6.0))
    fig.clear()
    top, bottom = fig.subplots(2, 1, sharex=True)
    cap = 3.0
    top.plot(steps, _finite(theta * trace.grad_norm[0], cap), color="black", lw=1,
             label=r"momentary: $\theta\,\|u_t\|$")
    top.plot(steps, _finite(trace.surprise_norm[0], cap), color=EPISODE, lw=1.5, label=r"with momentum: $\|S_t\|$")
    top.set(ylabel="size of the write", title="Momentary surprise against surprise with momentum (one draw)")
    series = [(trace, "episode", EPISODE, "-"), (trace, "familiar", FAMILIAR, "-"),
              (plain, "episode", EPISODE, ":"), (plain, "familiar", FAMILIAR, ":")]
    for tr, name, color, style in series:
        label = f"{name} facts" + ("" if tr is trace else r" ($\eta$ = 0)")
        bottom.plot(steps, _finite(group_recall(tr, stream, name).mean(0), cap), color=color, ls=style, label=label)
    bottom.set(xlabel="token t", ylabel="mean recall error", ylim=(-0.05, 1.6), title="What the memory holds")
    for ax in (top, bottom):
        ax.axvspan(int(episode[0]) - 0.5, int(episode[-1]) + 0.5, color=EPISODE, alpha=0.12)
        ax.legend(loc="upper right", fontsize=8, ncol=2)
    top.set_ylim(bottom=0)
    end = {n: float(group_recall(trace, stream, n).mean(0)[-1]) for n in ("episode", "familiar")}
    ref = float(group_recall(plain, stream, "episode").mean(0)[-1])
    diverged = not all(np.isfinite(list(end.values()))) or max(end.values()) > 10
    kind = "inside the episode only" if gated else "everywhere"
    fig.suptitle(rf"$\theta$ = {theta:.2f},  $\eta$ = {eta:.2f} ({kind})"
                 + ("   DIVERGED: lower θ or η" if diverged else ""), color="darkred" if diverged else "black")
    fig.tight_layout()
    if diverged:
        text = f"theta = {theta:.2f}, eta = {eta:.2f} ({kind}): DIVERGED, the memory blew up; lower theta or eta"
    else:
        text = (f"theta = {theta:.2f}, eta = {eta:.2f} ({kind}): recall error at the end: episode "
                f"{end['episode']:.2f} (eta = 0: {ref:.2f}), familiar {end['familiar']:.3f}")
    return fig, text


def momentum_explorer(theta: float = 0.05, eta: float = 0.8, gated: bool = False):
    """Sliders for ``theta`` and ``eta`` and a switch for the episode-gated ``eta_t``: :func:`draw_momentum`."""
    import ipywidgets as widgets

    controls = {
        "theta": _slider(theta, 0.01, 0.3, 0.01, "θ (step)"),
        "eta": _slider(eta, 0.0, 0.95, 0.05, "η (momentum)"),
        "gated": widgets.Checkbox(value=gated, description="η only inside the episode"),
    }
    return build_explorer(draw_momentum, controls,
                     "<small>The shaded band is the episode. Dotted lines: the same stream with η = 0.</small>")


# --- notebook 05: forgetting -----------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _shift_stream() -> FactStream:
    return shift_stream(n_phases=10, phase_length=32, facts_per_phase=6, dim=16, batch=8, seed=0)


@lru_cache(maxsize=8)
def _forgetting_trace(theta: float, eta: float, alpha: float, alpha_shift: float) -> Trace:
    stream = _shift_stream()
    alphas = alpha + (alpha_shift - alpha) * stream.feature  # alpha_shift on the first token of each phase
    return trace_memory(empty_linear_memory(stream.dim), stream, theta, eta, alphas)


def draw_forgetting(theta: float = 0.05, eta: float = 0.8, alpha: float = 0.0, alpha_shift: float = 0.0,
                    fig: Figure | None = None) -> tuple[Figure, str]:
    """A :func:`shift_stream` (10 phases, 8 draws) written with forgetting ``alpha`` on every token and
    ``alpha_shift`` on the first token of each phase (a gate that notices the shift).

    Top left: recall error of the current phase's facts. Top right: ``||M_t||``. Bottom left: recall error of
    every phase's facts at the end. Gray: the same stream without forgetting. Bottom right: the final ``M_T``.
    """
    for name, value in (("alpha", alpha), ("alpha_shift", alpha_shift), ("eta", eta)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if not 0 < theta <= 0.5:
        raise ValueError(f"theta must be in (0, 0.5], got {theta}")
    stream = _shift_stream()
    trace, keep = _forgetting_trace(theta, eta, alpha, alpha_shift), _forgetting_trace(theta, eta, 0.0, 0.0)
    steps, n_phases = np.arange(stream.length), len(stream.groups)
    fig = fig or plt.figure(figsize=(11, 6.4))
    fig.clear()
    (a, b), (c, d) = fig.subplots(2, 2, gridspec_kw={"width_ratios": [1.6, 1]})
    cap = 3.0
    for tr, color, label in ((keep, "0.6", "no forgetting"), (trace, "tab:purple", "this setting")):
        a.plot(steps, _finite(phase_recall(tr, stream).mean(0), cap), color=color, lw=1.2, label=label)
        b.plot(steps, _finite(tr.weight_norm.mean(0), 50.0), color=color, lw=1.2, label=label)
    for ax in (a, b):
        for start in stream.feature.nonzero().flatten().tolist():
            ax.axvline(start - 0.5, color="gray", lw=0.5, alpha=0.5)
    a.set(xlabel="token t (gray lines: the distribution shifts)", ylabel="recall error, current phase",
          ylim=(-0.05, 1.6), title="Recall of the facts now in play")
    a.legend(loc="upper left", fontsize=8)
    b.set(xlabel="token t", ylabel=r"$\|M_t\|$", title="Size of the memory")
    b.set_ylim(bottom=0)
    final = _finite(torch.stack([trace.recall[:, -1, stream.facts_in(g)].mean() for g in stream.groups]), cap)
    final_keep = _finite(torch.stack([keep.recall[:, -1, stream.facts_in(g)].mean() for g in stream.groups]), cap)
    phases = np.arange(1, n_phases + 1)
    c.bar(phases, final, color="tab:purple", alpha=0.8, label="this setting")
    c.step(phases, final_keep, where="mid", color="0.4", label="no forgetting")
    c.axhline(1.0, color="black", ls=":", lw=1, label="empty memory")
    c.set(xlabel="phase (10 = the current one)", ylabel="recall error at the end", ylim=(0, 2.6),
          title="Recent against old facts", xticks=phases)
    c.legend(loc="upper right", fontsize=8)
    _heatmap(d, trace.state.weights[0][0, 0], "M at the end (first draw)", fig)
    fig.suptitle(rf"$\theta$ = {theta:.2f},  $\eta$ = {eta:.2f},  $\alpha$ = {alpha:.3f},  "
                 rf"$\alpha$ at a shift = {alpha_shift:.2f}")
    fig.tight_layout()
    later = float(phase_recall(trace, stream)[:, stream.length // n_phases :].mean())
    if not np.isfinite(later) or later > 10:
        fig.suptitle(rf"$\theta$ = {theta:.2f},  $\eta$ = {eta:.2f}: DIVERGED, lower θ or η", color="darkred")
        return fig, f"theta = {theta:.2f}, eta = {eta:.2f}: DIVERGED, the memory blew up; lower theta or eta"
    text = (f"alpha = {alpha:.3f}, alpha at a shift = {alpha_shift:.2f}: current-phase recall error (phases 2-10) "
            f"{later:.2f}, oldest phase {final[0]:.2f}, last phase {final[-1]:.2f}, "
            f"||M|| at the end {float(trace.weight_norm[:, -1].mean()):.2f}")
    return fig, text


def forgetting_explorer(theta: float = 0.05, eta: float = 0.8, alpha: float = 0.0, alpha_shift: float = 0.0):
    """Sliders for ``theta``, ``eta``, ``alpha`` and the forgetting at a shift, driving :func:`draw_forgetting`."""
    controls = {
        "theta": _slider(theta, 0.01, 0.3, 0.01, "θ (step)"),
        "eta": _slider(eta, 0.0, 0.9, 0.05, "η (momentum)"),
        "alpha": _slider(alpha, 0.0, 0.1, 0.005, "α (every token)"),
        "alpha_shift": _slider(alpha_shift, 0.0, 1.0, 0.1, "α at a shift"),
    }
    return build_explorer(draw_forgetting, controls,
                     "<small>α = 0.02 forgets a write by half in about 35 tokens. α at a shift = 1 wipes the "
                     "memory when a new phase starts.</small>")
