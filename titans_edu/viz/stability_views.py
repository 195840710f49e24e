"""Figures and the explorer of notebook 06's last section: where the chunked update diverges, and what bounds it.

A chunk takes all its ``b`` gradients at the chunk-start weights, and momentum sums each of them again at every
later token of the chunk. With constant gates, the total weight with which a chunk's gradients enter ``M`` by
the chunk's end is ``sum_j C[b-1, j]`` (:func:`chunk_step`):

    plain rule (Eq. 14)    theta * sum_{m=1}^{b} (1 - eta^m) / (1 - eta)   ->  theta * b (b + 1) / 2  as eta -> 1
    dampened               the same with the step (1 - eta) theta           <=  b * theta  for every eta

:func:`stability_view` writes a periodic stream into a 2-layer MLP memory four ways (the plain rule, dampening
only, the norm bound only, both: what :class:`~titans_edu.memory.layer.NeuralMemory` uses; see
:mod:`titans_edu.memory.stability`) and records ``||M_l||_F`` of every layer at the end of every chunk.
:func:`draw_stability_view` draws it, :func:`chunk_step_figure` draws the total step against ``eta``, and
:func:`stability_explorer` wires sliders to them.

Glossary: ``theta``, ``eta``, ``alpha`` are θ, η, α (the same for every token here); ``chunk_size`` is b;
``m0_scale`` multiplies the initial weights ``M_0``, which the outer loop learns and nothing keeps small;
``radius`` is the bound ``max_norm * sqrt(d_out)`` of each layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..memory.chunked import chunked_memory
from ..memory.coefficients import chunk_coefficients
from ..memory.layer import default_max_lr
from ..memory.networks import MLPMemory
from ..memory.stability import PLAIN, Stability, layer_norms
from .explorer import build_explorer
from .memory_views import one_thread

RULES = {  # name -> what keeps the rule bounded
    "plain rule": PLAIN,
    "dampening only": Stability(dampening=True, max_norm=None),
    "norm bound only": Stability(dampening=False, max_norm=2.0),
    "both (NeuralMemory)": Stability(),
}
COLORS = {"plain rule": "tab:red", "dampening only": "tab:orange", "norm bound only": "tab:purple",
          "both (NeuralMemory)": "tab:green"}
STYLES = {"plain rule": "-", "dampening only": "-", "norm bound only": "-", "both (NeuralMemory)": "--"}
EXPLORER_CHUNKS = (4, 8, 16, 32)
TOP = 1e4  # the figures' scale ends here; a memory that passes it has diverged (it goes on to inf)


def _check(chunk_size: int, eta: float, alpha: float, theta: float) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size (b) must be an integer >= 1, got {chunk_size!r}")
    for name, value in (("eta", eta), ("alpha", alpha)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} is a gate in [0, 1], got {value}")
    if not theta > 0:
        raise ValueError(f"theta must be > 0, got {theta}")


def chunk_step(eta: float, chunk_size: int, theta: float, alpha: float = 0.0, dampening: bool = False) -> float:
    """``sum_j C[b-1, j]`` for constant gates: the total weight of a chunk's gradients in ``M`` at its end.

    With ``dampening`` the step of each gradient is ``(1 - eta) theta`` (:meth:`Stability.step_size`).
    """
    _check(chunk_size, eta, alpha, theta)
    full = lambda value: torch.full((chunk_size,), float(value), dtype=torch.float64)  # noqa: E731
    theta_t, eta_t = full(theta), full(eta)
    step = Stability(dampening=dampening, max_norm=None).step_size(theta_t, eta_t)
    return chunk_coefficients(step, eta_t, full(alpha)).C[-1].sum().item()


def periodic_stream(length: int, period: int = 12, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``k, v, q`` ``(1, 1, length, dim)`` in float64: ``period`` pairs repeated in order, ``q = k``.

    The keys are l2-normalised SiLU outputs, as the layer makes them; the values are unit vectors. With a period
    shorter than the chunk, a chunk holds some keys twice, and their gradients, taken at the same weights, add
    up. Drawn from a private generator.
    """
    if length < 1 or period < 1 or dim < 1:
        raise ValueError(f"length, period and dim must be >= 1, got {length}, {period}, {dim}")
    gen = torch.Generator().manual_seed(seed)
    keys = F.normalize(F.silu(torch.randn(period, dim, generator=gen, dtype=torch.float64)), dim=-1)
    values = F.normalize(torch.randn(period, dim, generator=gen, dtype=torch.float64), dim=-1)
    order = torch.arange(length) % period
    k, v = keys[order][None, None], values[order][None, None]
    return k, v, k


def scaled_memory(dim: int = 16, m0_scale: float = 1.0, seed: int = 0) -> MLPMemory:
    """A 2-layer MLP memory (hidden ``4 dim``) in float64, its ``M_0`` drawn from a private generator and scaled."""
    if not m0_scale > 0:
        raise ValueError(f"m0_scale must be > 0, got {m0_scale}")
    with torch.random.fork_rng():  # building the module draws from the global generator: keep that private
        memory = MLPMemory(dim, depth=2).double()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for w in memory.initial:
            w.copy_(m0_scale * torch.randn(w.shape, generator=gen, dtype=torch.float64) / math.sqrt(w.shape[-2]))
    return memory


def norm_trace(memory: MLPMemory, k: torch.Tensor, v: torch.Tensor, q: torch.Tensor, theta: torch.Tensor,
               eta: torch.Tensor, alpha: torch.Tensor, chunk_size: int,
               stability: Stability) -> tuple[np.ndarray, np.ndarray]:
    """``||M_l||_F`` of every layer at the end of every chunk, ``(chunks, layers)``, and each chunk's mean recall
    error ``||y_t - v_t||^2``, ``(chunks,)``; one sequence and head.

    The stream is written chunk by chunk through :func:`chunked_memory`, carrying the state, so each row is the
    memory a chunk leaves behind (before the bound, if any, scales it as the next chunk starts). ``inf`` and
    ``nan`` are kept: they mark a memory that diverged.
    """
    norms, errors, state = [], [], None
    with torch.no_grad(), one_thread():
        for start in range(0, k.shape[2], chunk_size):
            part = slice(start, start + chunk_size)
            y, state = chunked_memory(memory, k[:, :, part], v[:, :, part], q[:, :, part], theta[..., part],
                                      eta[..., part], alpha[..., part], chunk_size, state, stability)
            norms.append([n[0, 0].item() for n in layer_norms(state.weights)])
            errors.append(((y - v[:, :, part]) ** 2).sum(-1).mean().item())
    return np.array(norms), np.array(errors)


def first_nonfinite(norms: np.ndarray, positions: np.ndarray) -> int | None:
    """The position (a chunk end) where some layer's norm first stops being finite, or ``None``."""
    bad = ~np.isfinite(norms).all(axis=1)
    return int(positions[bad.argmax()]) if bad.any() else None


@dataclass(frozen=True)
class StabilityView:
    """What the figure shows for one setting: ``norms[name]`` is ``(chunks, layers)`` at the chunk ends in
    ``positions``, ``errors[name]`` ``(chunks,)`` the mean recall error of each chunk; ``radius`` is each layer's
    bound; ``diverged_at[name]`` the first non-finite position or None."""

    eta: float
    m0_scale: float
    chunk_size: int
    theta: float
    alpha: float
    positions: np.ndarray
    norms: dict
    errors: dict
    radius: tuple
    diverged_at: dict

    def largest(self, name: str) -> float:
        """The largest finite norm, over layers and positions, of one rule."""
        finite = self.norms[name][np.isfinite(self.norms[name])]
        return float(finite.max()) if finite.size else float("nan")

    def final_error(self, name: str) -> float:
        """The mean recall error ``||y_t - v_t||^2`` over the last quarter of the stream (``nan`` if it diverged)."""
        errors = self.errors[name]
        return float(errors[-max(1, len(errors) // 4):].mean())

    def summary(self, name: str) -> str:
        """One line: where the rule diverged, or its largest norm and its final recall error."""
        if self.diverged_at[name] is not None:
            return f"{name}: inf by t = {self.diverged_at[name]}"
        largest, error = self.largest(name), self.final_error(name)
        return f"{name}: finite, largest ||M_l|| {largest:.3g}, recall error {error:.3g}"


def stability_view(eta: float = 0.95, m0_scale: float = 1.0, chunk_size: int = 16, theta: float | None = None,
                   alpha: float = 1e-3, length: int = 2048, period: int = 12, dim: int = 16,
                   seed: int = 0) -> StabilityView:
    """The four rules of :data:`RULES` on one periodic stream, with constant gates.

    ``theta`` defaults to the layer's ``max_lr`` for this ``b`` (:func:`~titans_edu.memory.layer.default_max_lr`).
    """
    theta = default_max_lr(chunk_size) if theta is None else theta
    _check(chunk_size, eta, alpha, theta)
    k, v, q = periodic_stream(length, period, dim, seed)
    memory = scaled_memory(dim, m0_scale, seed)
    gate = lambda value: torch.full((1, 1, length), float(value), dtype=torch.float64)  # noqa: E731
    gates = gate(theta), gate(eta), gate(alpha)
    positions = np.minimum(np.arange(chunk_size, length + chunk_size, chunk_size), length)
    traces = {name: norm_trace(memory, k, v, q, *gates, chunk_size, rule) for name, rule in RULES.items()}
    norms, errors = ({name: trace[i] for name, trace in traces.items()} for i in (0, 1))
    radius = tuple(2.0 * math.sqrt(w.shape[-1]) for w in memory.initial)
    diverged = {name: first_nonfinite(n, positions) for name, n in norms.items()}
    return StabilityView(eta, m0_scale, chunk_size, theta, alpha, positions, norms, errors, radius, diverged)


def chunk_step_figure(chunk_size: int = 16, theta: float | None = None, mark: Sequence[float] = (0.95,), ax=None):
    """The total step ``sum_j C[b-1, j]`` against ``eta``, plain and dampened, with ``b theta`` and
    ``b (b + 1) / 2 theta`` marked. Returns the figure."""
    import matplotlib.pyplot as plt

    theta = default_max_lr(chunk_size) if theta is None else theta
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.6), layout="constrained")
    etas = np.linspace(0.0, 0.999, 200)
    plain = [chunk_step(e, chunk_size, theta) for e in etas]
    damped = [chunk_step(e, chunk_size, theta, dampening=True) for e in etas]
    ax.plot(etas, plain, color=COLORS["plain rule"], label="plain rule (Eq. 14)")
    ax.plot(etas, damped, color=COLORS["both (NeuralMemory)"], label=r"dampened: step $(1-\eta)\,\theta$")
    top, sized = chunk_size * (chunk_size + 1) / 2 * theta, chunk_size * theta
    ax.axhline(top, color="gray", linestyle=":", linewidth=1)
    ax.axhline(sized, color="gray", linestyle="--", linewidth=1)
    ax.annotate(rf"$b(b+1)/2\ \theta$ = {top:.3g}", (0.02, top), textcoords="offset points", xytext=(0, -12),
                fontsize=9, color="dimgray")
    ax.annotate(rf"$b\,\theta$ = {sized:.3g} (what max_lr is sized for)", (0.02, sized), textcoords="offset points",
                xytext=(0, 4), fontsize=9, color="dimgray")
    for e in mark:
        ax.plot([e], [chunk_step(e, chunk_size, theta)], "o", color=COLORS["plain rule"])
    ax.set(xlabel=r"momentum $\eta$ (constant)", ylabel=r"$\sum_j C_{b-1,j}$",
           title=rf"total step of one chunk: b = {chunk_size}, $\theta$ = {theta:.3g}, $\alpha$ = 0",
           ylim=(0, 1.12 * top))
    ax.legend(fontsize=9, loc="center left")
    return ax.figure


def draw_stability_view(view: StabilityView, axes: Sequence | None = None, title: str | None = None):
    """``||M_l||`` against position, log scale, one panel per layer, the four rules and the bound. Returns the
    figure. The scale stops at :data:`TOP`; a rule that leaves it ends with an x there (it went on to inf)."""
    import matplotlib.pyplot as plt

    layers = len(view.radius)
    if axes is None:
        fig, axes = plt.subplots(1, layers, figsize=(11, 3.9), layout="constrained", sharey=True)
    fig = axes[0].figure
    for layer, ax in enumerate(axes):
        for name, norms in view.norms.items():
            y = norms[:, layer]
            inside = np.isfinite(y) & (y <= TOP)
            last = len(y) if inside.all() else int(np.argmin(inside))
            ax.plot(view.positions[:last], y[:last], STYLES[name], color=COLORS[name], label=name, linewidth=1.6)
            if last < len(y):  # off the scale from here on
                ax.plot([view.positions[last]], [TOP], "x", color=COLORS[name], markersize=9, markeredgewidth=2,
                        clip_on=False)
        ax.axhline(view.radius[layer], color="black", linestyle=":", linewidth=1)
        ax.annotate(f"bound {view.radius[layer]:.3g}", (view.positions[-1], view.radius[layer]),
                    textcoords="offset points", xytext=(-4, -12), ha="right", fontsize=9)
        ax.set_yscale("log")
        ax.set_ylim(1.0, TOP)
        ax.set(xlabel="position t (chunk ends)", title=f"memory layer {layer + 1}: " + r"$\|M_%d\|_F$" % (layer + 1))
    axes[0].set_ylabel(r"$\|M_l\|_F$  (x: off the scale, then inf)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=9)
    if title is None:
        title = (rf"b = {view.chunk_size}, $\theta$ = {view.theta:.3g}, $\eta$ = {view.eta:.2f}, "
                 rf"$\alpha$ = {view.alpha:g}, $M_0$ x {view.m0_scale:g}")
    if title:
        fig.suptitle(title)
    return fig


def stability_explorer(eta: float = 0.95, m0_scale: float = 1.0, chunk_size: int = 16):
    """Sliders for ``eta``, the scale of ``M_0`` and ``b``, wired to :func:`stability_view` and
    :func:`draw_stability_view`. Returns an ``ipywidgets.VBox``; ``render()`` returns the view it drew."""
    import ipywidgets as widgets

    _check(chunk_size, eta, 0.0, 1.0)
    if chunk_size not in EXPLORER_CHUNKS:
        raise ValueError(f"the explorer's chunk sizes are {EXPLORER_CHUNKS}; got chunk_size={chunk_size}")
    style, layout = {"description_width": "initial"}, widgets.Layout(width="330px")
    sliders = {
        "eta": widgets.FloatSlider(value=eta, min=0.0, max=0.99, step=0.01, description="η (momentum)",
                                   style=style, layout=layout, continuous_update=False),
        "m0_scale": widgets.FloatSlider(value=m0_scale, min=0.5, max=8.0, step=0.5, description="M₀ scale",
                                        style=style, layout=layout, continuous_update=False),
        "chunk_size": widgets.SelectionSlider(options=list(EXPLORER_CHUNKS), value=chunk_size, description="b",
                                              style=style, layout=layout, continuous_update=False),
    }

    def draw(eta: float, m0_scale: float, chunk_size: int):
        view = stability_view(eta=eta, m0_scale=m0_scale, chunk_size=chunk_size)
        text = " · ".join(view.summary(name) for name in RULES)
        return draw_stability_view(view), text, view

    return build_explorer(draw, sliders, per_row=3)
