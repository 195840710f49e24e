"""Figures and the explorer widget of notebook 06: chunked parallel training (paper §3.2, Eqs. 16-18).

Inside a chunk of ``b`` tokens every gradient is taken at the chunk-start weights, and the memory after token
``i`` mixes them with three lower-triangular ``b x b`` matrices (see :mod:`titans_edu.memory.chunked`):

    E      ``E[i, j] = prod_{j<r<=i} eta_r``          how much of token j's surprise is still in S_i (Eq. 18)
    B      ``B[i, j] = prod_{j<r<=i} (1 - alpha_r)``  how much of S_j survives forgetting up to M_i (Eq. 16)
    C      ``C = (B E) diag(theta)``                  the weight of token j's gradient u_j in M_i (Eq. 17)

The price of a larger ``b`` is that the gradients come from staler weights, so the outputs drift away from the
online rule (``b = 1``, Eqs. 13-15). :func:`chunk_view` computes both for constant gates; it is a pure function
of the slider values. :func:`draw_chunk_view` draws it, and :func:`chunk_explorer` wires sliders to the two.

Glossary: ``chunk_size`` is b; ``theta``, ``eta``, ``alpha`` are θ, η, α (here the same for every token);
``drift[t]`` is ``||y_t^(b) - y_t^(1)||`` divided by the mean of ``||y_t^(1)||``; :func:`drift_by_chunk` averages it
over each chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..memory.chunked import chunked_memory
from ..memory.coefficients import chunk_coefficients, decay_matrix
from ..memory.networks import MLPMemory
from .explorer import build_explorer

CHUNK_SIZES = (1, 2, 4, 8, 16, 32)
DRIFT_CAP = 5.0  # the drift plot is cut off here; beyond it the chunked memory has diverged
TITLE_SIZE = "large"  # the matrices' titles: the size of every other axes title


@dataclass(frozen=True)
class ChunkView:
    """What the explorer shows for one setting of the sliders. Matrices are ``(b, b)``, ``drift`` is ``(seq_len,)``."""

    chunk_size: int
    eta: float
    alpha: float
    theta: float
    E: np.ndarray
    B: np.ndarray
    C: np.ndarray
    drift: np.ndarray


def _check_gates(chunk_size: int, eta: float, alpha: float, theta: float) -> None:
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size (b) must be an integer >= 1, got {chunk_size!r}")
    for name, value, low, high in (("eta", eta, 0.0, 1.0), ("alpha", alpha, 0.0, 1.0), ("theta", theta, 0.0, 1.0)):
        if not low <= value <= high:
            raise ValueError(f"{name} must lie in [{low}, {high}] for this view, got {value}")


def coefficient_matrices(theta: torch.Tensor, eta: torch.Tensor, alpha: torch.Tensor) -> dict[str, np.ndarray]:
    """``{"E", "B", "C"}`` for one chunk with per-token gates ``(b,)``, as numpy arrays ``(b, b)``."""
    if not (theta.dim() == eta.dim() == alpha.dim() == 1 and theta.shape == eta.shape == alpha.shape):
        raise ValueError(
            f"expected three gate vectors of one shape (b,), got theta {tuple(theta.shape)}, "
            f"eta {tuple(eta.shape)}, alpha {tuple(alpha.shape)}"
        )
    E, B = decay_matrix(eta), decay_matrix(1 - alpha)
    C = chunk_coefficients(theta, eta, alpha).C
    return {name: m.detach().cpu().double().numpy() for name, m in (("E", E), ("B", B), ("C", C))}


@lru_cache(maxsize=4)
def _stream(seq_len: int, dim: int, seed: int) -> tuple[MLPMemory, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fixed stream of unit-norm random keys, values and queries, and a 2-layer MLP memory.

    Made with its own generator, so calling the explorer never changes the notebook's random state.
    """
    gen = torch.Generator().manual_seed(seed)
    k = F.normalize(torch.randn(1, 1, seq_len, dim, generator=gen, dtype=torch.float64), dim=-1)
    v = F.normalize(torch.randn(1, 1, seq_len, dim, generator=gen, dtype=torch.float64), dim=-1)
    q = F.normalize(torch.randn(1, 1, seq_len, dim, generator=gen, dtype=torch.float64), dim=-1)
    with torch.random.fork_rng():  # building the module draws from the global generator: keep that private
        memory = MLPMemory(dim, depth=2, expansion=2.0).double()
    with torch.no_grad():  # M_0 from our own generator, so it does not depend on the default dtype either
        for w in memory.initial:
            w.copy_(torch.randn(w.shape, generator=gen, dtype=torch.float64) / math.sqrt(w.shape[-2]))
    return memory, k, v, q


def online_drift(
    chunk_size: int, eta: float, alpha: float, theta: float, seq_len: int = 48, dim: int = 8, seed: int = 0
) -> np.ndarray:
    """``drift[t] = ||y_t^(b) - y_t^(1)|| / mean_t ||y_t^(1)||`` on a fixed stream, 2-layer MLP memory, float64."""
    _check_gates(chunk_size, eta, alpha, theta)
    memory, k, v, q = _stream(seq_len, dim, seed)
    gate = lambda value: torch.full((1, 1, seq_len), float(value), dtype=torch.float64)  # noqa: E731
    gates = gate(theta), gate(eta), gate(alpha)
    with torch.no_grad():
        online, _ = chunked_memory(memory, k, v, q, *gates, chunk_size=1)
        chunked, _ = chunked_memory(memory, k, v, q, *gates, chunk_size=chunk_size)
    scale = online.norm(dim=-1).mean()
    return ((chunked - online).norm(dim=-1) / scale)[0, 0].numpy()


def drift_by_chunk(drift: np.ndarray, chunk_size: int) -> np.ndarray:
    """The mean drift of each chunk, ``(chunks,)``; the last chunk may be shorter."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size (b) must be >= 1, got {chunk_size}")
    return np.array([drift[s : s + chunk_size].mean() for s in range(0, len(drift), chunk_size)])


def chunk_view(chunk_size: int = 8, eta: float = 0.8, alpha: float = 0.05, theta: float = 0.1) -> ChunkView:
    """Everything the explorer draws, as a pure function of the slider values (constant gates)."""
    _check_gates(chunk_size, eta, alpha, theta)
    full = lambda value: torch.full((chunk_size,), float(value), dtype=torch.float64)  # noqa: E731
    mats = coefficient_matrices(full(theta), full(eta), full(alpha))
    drift = online_drift(chunk_size, eta, alpha, theta)
    return ChunkView(chunk_size, eta, alpha, theta, mats["E"], mats["B"], mats["C"], drift)


def plot_coefficient_matrices(mats: dict[str, np.ndarray], axes: Sequence | None = None, title: str = ""):
    """Heatmaps of E, B and C side by side. Returns the figure."""
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(1, 3, figsize=(10, 3.4), layout="constrained")
    fig = axes[0].figure
    labels = {  # the products written out: a big operator's limits would sit below the title, on the plot
        "E": "E: momentum\n" + r"$E_{ij} = \eta_{j+1} \cdots \eta_i$",
        "B": "B: forgetting\n" + r"$B_{ij} = (1-\alpha_{j+1}) \cdots (1-\alpha_i)$",
        "C": r"C: the weight of $u_j$ in $M_i$" + "\n" + r"$C = (BE)\,\mathrm{diag}(\theta)$",
    }
    for ax, name in zip(axes, ("E", "B", "C")):
        m = mats[name]
        shown = np.ma.masked_where(np.triu(np.ones_like(m, dtype=bool), 1), m)  # blank the (zero) upper triangle
        image = ax.imshow(shown, cmap="viridis", vmin=0.0, vmax=max(float(m.max()), 1e-12))
        ax.set_title(labels[name], fontsize=TITLE_SIZE, pad=8, linespacing=1.5)
        ax.set_xlabel("j (token written)")
        ax.set_ylabel("i (token read)")
        ax.grid(False)
        b = m.shape[0]
        ticks = np.arange(0, b, max(1, b // 4))
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        fig.colorbar(image, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title)
    return fig


def draw_chunk_view(view: ChunkView):
    """The explorer's figure: E, B, C on top, the drift from the online rule below. Returns the figure."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(11, 6.4), layout="constrained")
    grid = fig.add_gridspec(2, 3, height_ratios=[1.1, 1.0])
    top = [fig.add_subplot(grid[0, c]) for c in range(3)]
    plot_coefficient_matrices({"E": view.E, "B": view.B, "C": view.C}, axes=top)
    ax = fig.add_subplot(grid[1, :])
    t = np.arange(len(view.drift))
    drift = np.nan_to_num(view.drift, nan=np.inf)
    diverged = bool((drift > DRIFT_CAP).any())
    ax.plot(t, np.minimum(drift, DRIFT_CAP), marker="o", markersize=3, color="tab:red", label="per token")
    for start in range(0, len(view.drift), view.chunk_size):
        ax.axvline(start - 0.5, color="gray", linewidth=0.6, alpha=0.5)
    for c, mean in enumerate(np.minimum(drift_by_chunk(drift, view.chunk_size), DRIFT_CAP)):
        start = c * view.chunk_size
        ax.hlines(mean, start - 0.5, min(start + view.chunk_size, len(drift)) - 0.5, color="black", linewidth=1.5,
                  label="mean of the chunk" if c == 0 else None)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_xlabel("token t (gray lines: chunk starts)")
    ax.set_ylabel("relative drift")  # ||y_t^(b) - y_t^(1)|| / mean ||y^(1)||: too tall for the axis as maths
    title = f"drift from the online rule (b = 1) with b = {view.chunk_size}: 2-layer MLP memory, fixed stream"
    if diverged:
        title += f"\nDIVERGED: the memory blew up (drift > {DRIFT_CAP:g}, cut off); lower θ, η or b"
    else:
        title += f"  (mean {float(drift.mean()):.2f})"
    ax.set_title(title, color="darkred" if diverged else "black")
    ax.set_ylim(bottom=0, top=max(0.05, 1.1 * float(np.minimum(drift, DRIFT_CAP).max())))
    fig.suptitle(
        rf"chunk size b = {view.chunk_size},  $\eta$ = {view.eta:.2f},  $\alpha$ = {view.alpha:.2f},  "
        rf"$\theta$ = {view.theta:.2f}"
    )
    return fig


def chunk_explorer(chunk_size: int = 8, eta: float = 0.8, alpha: float = 0.05, theta: float = 0.1):
    """Sliders for b, eta, alpha, theta wired to :func:`chunk_view` and :func:`draw_chunk_view`.

    Returns an ``ipywidgets.VBox``. Its ``render()`` method redraws from the current slider values and returns
    the :class:`ChunkView` it drew (also kept as ``result``), which is how the tests drive it without a browser.
    """
    import ipywidgets as widgets

    _check_gates(chunk_size, eta, alpha, theta)
    if chunk_size not in CHUNK_SIZES:
        raise ValueError(f"the explorer's chunk sizes are {CHUNK_SIZES}; got chunk_size={chunk_size}")
    # "initial": each label takes the width its text needs (a fixed width cut "η (momentum)" short)
    style, layout = {"description_width": "initial"}, widgets.Layout(width="320px")
    sliders = {
        "chunk_size": widgets.SelectionSlider(options=list(CHUNK_SIZES), value=chunk_size, description="b (chunk)",
                                              style=style, layout=layout),
        "eta": widgets.FloatSlider(value=eta, min=0.0, max=0.95, step=0.05, description="η (momentum)",
                                   style=style, layout=layout),
        "alpha": widgets.FloatSlider(value=alpha, min=0.0, max=0.3, step=0.01, description="α (forgetting)",
                                     style=style, layout=layout),
        "theta": widgets.FloatSlider(value=theta, min=0.01, max=0.3, step=0.01, description="θ (step)",
                                     style=style, layout=layout),
    }

    def draw(**values):
        view = chunk_view(**values)
        drift = np.nan_to_num(view.drift, nan=np.inf)
        text = (f"b = {view.chunk_size}: DIVERGED, lower θ, η or b" if (drift > DRIFT_CAP).any()
                else f"b = {view.chunk_size}: mean drift from the online rule {float(drift.mean()):.2f}")
        return draw_chunk_view(view), text, view

    return build_explorer(draw, sliders, per_row=2)
