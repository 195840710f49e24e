"""Figures and the explorer of notebook 06b: the memory layer of §4.4, and what its outer loop learns.

    layer_trace      the gates theta_t, eta_t, alpha_t of a NeuralMemory and its momentary surprise ||u_t|| (the
                     gradient of Eq. 12 at the chunk-start weights, the ones the layer takes it at), token by token
    gate_means       a trace's mean gates over groups of tokens (for instance keys, values and boundaries)
    draw_layer_trace the gates and the surprise of one sequence against position, each token coloured by its group
    layer_explorer   sliders for the sequence and the model (trained or not) wired to draw_layer_trace
    input_reach      which inputs each key k_t and each output o_t depends on: ||d k_t / d x_s|| and ||d o_t / d x_s||
    draw_input_reach the two maps side by side
    reach_explorer   a slider for the convolution's width wired to input_reach and draw_input_reach

Glossary: ``theta``, ``eta``, ``alpha`` are θ_t, η_t, α_t (Eqs. 13-14), ``(batch, heads, seq)``; ``max_lr`` is the
largest θ; ``step`` is ``(1 - eta) theta``, the factor of u_t in S_t under dampening; ``surprise`` is ||u_t||_F
over all memory layers; ``groups`` is a ``(seq,)`` integer label per position, an index into ``group_names``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..memory.chunked import chunked_memory
from ..memory.layer import MemoryConfig, NeuralMemory
from ..memory.networks import MLPMemory
from .explorer import build_explorer

GROUP_COLORS = ("tab:blue", "tab:orange", "tab:red", "tab:green", "tab:purple", "tab:gray")
GATE_COLORS = {"theta / max_lr": "tab:blue", "eta": "tab:orange", "alpha": "tab:green",
               "(1 - eta) theta / max_lr": "black"}


@dataclass(frozen=True)
class LayerTrace:
    """The gates and the surprise of one call, as numpy arrays ``(batch, heads, seq)``."""

    theta: np.ndarray
    eta: np.ndarray
    alpha: np.ndarray
    surprise: np.ndarray
    max_lr: float
    dampening: bool

    @property
    def step(self) -> np.ndarray:
        """The factor of ``u_t`` in ``S_t``: ``(1 - eta) theta`` with dampening, ``theta`` without."""
        return (1 - self.eta) * self.theta if self.dampening else self.theta

    def curves(self, sample: int = 0, head: int = 0) -> dict[str, np.ndarray]:
        """The gates of one sequence and head, ``theta`` and the step divided by ``max_lr`` (so all lie in [0, 1])."""
        return {"theta / max_lr": self.theta[sample, head] / self.max_lr, "eta": self.eta[sample, head],
                "alpha": self.alpha[sample, head], "(1 - eta) theta / max_lr": self.step[sample, head] / self.max_lr}


@torch.no_grad()
def layer_trace(layer: NeuralMemory, x: Tensor) -> LayerTrace:
    """The gates of ``layer`` on ``x`` ``(batch, seq, dim)`` and its surprise ``||u_t||`` at every token.

    ``u_t`` is the gradient of Eq. 12 at the weights the layer takes it at: ``M_{t'}``, the weights as ``t``'s chunk
    starts, after the layer's norm bound (if any). The stream is written chunk by chunk from ``initial_state``.
    """
    if not isinstance(layer.memory, MLPMemory):
        raise ValueError("layer_trace needs a NeuralMemory with its MLP memory (the surprise uses grad_terms)")
    c = layer.config
    state = layer.initial_state(x.shape[0])
    q, k, v, _ = layer.project(x, state.conv)
    theta, eta, alpha = layer.gates(x)
    surprise = []
    for start in range(0, x.shape[1], c.chunk_size):
        part = slice(start, start + c.chunk_size)
        anchor = c.stability.bound(state.weights)  # M_{t'}, as the layer's rule will see it
        inputs, deltas = layer.memory.grad_terms(anchor, k[:, :, part], v[:, :, part])
        # ||a_j^T delta_j||_F = ||a_j|| ||delta_j|| for one token's outer product; summed in squares over layers
        surprise.append(sum((a.norm(dim=-1) * d.norm(dim=-1)) ** 2 for a, d in zip(inputs, deltas)).sqrt())
        _, state = chunked_memory(layer.memory, k[:, :, part], v[:, :, part], q[:, :, part], theta[..., part],
                                  eta[..., part], alpha[..., part], c.chunk_size, state, c.stability)
    as_np = lambda t: t.detach().cpu().double().numpy()  # noqa: E731
    return LayerTrace(as_np(theta), as_np(eta), as_np(alpha), as_np(torch.cat(surprise, dim=-1)), float(c.max_lr),
                      c.dampening)


def gate_means(trace: LayerTrace, groups: np.ndarray | Tensor, group_names: Sequence[str],
               head: int = 0) -> dict[str, dict[str, float]]:
    """``{group: {"theta / max_lr", "eta", "alpha", "(1 - eta) theta / max_lr", "surprise": mean}}`` over the batch.

    ``groups`` ``(seq,)`` or ``(batch, seq)``: the group of each position (an index into ``group_names``).
    """
    groups = np.asarray(groups)
    batch, _, seq = trace.theta.shape
    if groups.shape not in ((seq,), (batch, seq)):
        raise ValueError(f"groups must have shape ({seq},) or ({batch}, {seq}), got {groups.shape}")
    groups = np.broadcast_to(groups, (batch, seq))
    values = {name: np.stack([trace.curves(s, head)[name] for s in range(batch)])
              for name in GATE_COLORS}
    values["surprise"] = trace.surprise[:, head]
    table = {}
    for index, name in enumerate(group_names):
        where = groups == index
        if where.any():
            table[name] = {key: float(v[where].mean()) for key, v in values.items()}
    return table


PANELS = (("theta / max_lr", r"$\theta_t$ / max_lr"), ("eta", r"$\eta_t$"),
          ("(1 - eta) theta / max_lr", r"$(1-\eta_t)\,\theta_t$ / max_lr"), ("alpha", r"$\alpha_t$"),
          ("surprise", r"surprise $\|u_t\|$"))


def draw_layer_trace(trace: LayerTrace, groups: np.ndarray | Tensor, group_names: Sequence[str], sample: int = 0,
                     head: int = 0, window: tuple[int, int] | None = None, lines_at: Sequence[int] = (),
                     title: str = "", axes=None):
    """One sequence token by token: theta / max_lr, eta, the step (1 - eta) theta / max_lr, alpha and the surprise,
    one panel each, every position a point coloured by its group.

    ``groups`` ``(seq,)`` or ``(batch, seq)``. ``window``: the positions ``[start, stop)`` to show. ``lines_at``:
    positions marked by a vertical line in every panel. Returns the figure.
    """
    import matplotlib.pyplot as plt

    groups = np.asarray(groups)
    groups = groups[sample] if groups.ndim == 2 else groups
    seq = trace.theta.shape[-1]
    start, stop = window or (0, seq)
    if not 0 <= start < stop <= seq:
        raise ValueError(f"window must satisfy 0 <= start < stop <= {seq}, got {window}")
    if axes is None:
        fig, axes = plt.subplots(len(PANELS), 1, figsize=(11, 7.4), layout="constrained", sharex=True)
    fig = axes[0].figure
    t = np.arange(start, stop)
    g = groups[start:stop]
    values = {**trace.curves(sample, head), "surprise": trace.surprise[sample, head]}
    for ax, (key, label) in zip(axes, PANELS):
        y = values[key][start:stop]
        ax.plot(t, y, color="lightgray", linewidth=0.8, zorder=1)
        for index, name in enumerate(group_names):
            where = g == index
            if where.any():
                ax.scatter(t[where], y[where], s=16, color=GROUP_COLORS[index % len(GROUP_COLORS)], label=name,
                           zorder=2)
        for position in lines_at:
            if start <= position < stop:
                ax.axvline(position, color="black", linestyle=":", linewidth=1)
        ax.set_ylabel(label)
        if key == "alpha":
            ax.set_ylim(-0.001, max(0.02, 1.2 * float(y.max())))
        elif key == "surprise":
            ax.set_ylim(0, 1.1 * float(y.max()))
        else:
            ax.set_ylim(-0.04, 1.04)
    axes[0].legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.02), ncols=len(group_names), frameon=False)
    axes[-1].set(xlabel="position t", xlim=(start - 0.5, stop - 0.5))
    if title:
        fig.suptitle(title)
    return fig


def layer_explorer(traces: dict[str, LayerTrace], groups: np.ndarray | Tensor, group_names: Sequence[str],
                   window: tuple[int, int] | None = None, lines_at: Sequence[int] = ()):
    """A slider for the sequence and buttons for the model (the keys of ``traces``), wired to
    :func:`draw_layer_trace`. Returns an ``ipywidgets.VBox``; ``render()`` returns ``(model, sample)``."""
    import ipywidgets as widgets

    if not traces:
        raise ValueError("traces is empty: pass {name: LayerTrace}, e.g. the trained and the untrained layer")
    batch = next(iter(traces.values())).theta.shape[0]
    controls = {
        "model": widgets.ToggleButtons(options=list(traces), value=next(iter(traces)), description="model",
                                       style={"description_width": "initial"}),
        "sample": widgets.IntSlider(value=0, min=0, max=batch - 1, description="sequence",
                                    style={"description_width": "initial"}, continuous_update=False),
    }

    def draw(model: str, sample: int):
        fig = draw_layer_trace(traces[model], groups, group_names, sample=sample, window=window, lines_at=lines_at,
                               title=f"{model}: sequence {sample}")
        trace = traces[model]
        text = (f"{model}, sequence {sample}: mean theta / max_lr {trace.theta[sample, 0].mean() / trace.max_lr:.2f}, "
                f"mean eta {trace.eta[sample, 0].mean():.2f}, largest alpha {trace.alpha[sample, 0].max():.3f}")
        return fig, text, (model, sample)

    return build_explorer(draw, controls)


def input_reach(layer: NeuralMemory, x: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(keys, outputs)``: ``||d k_t / d x_s||_F`` and ``||d o_t / d x_s||_F``, each ``(seq, seq)``, for one
    sequence ``x`` ``(seq, dim)`` (heads together). Row ``t`` shows which inputs position ``t`` depends on."""
    if x.dim() != 2:
        raise ValueError(f"x must be one sequence (seq, dim), got shape {tuple(x.shape)}")

    def keys(x_: Tensor) -> Tensor:
        _, k, _, _ = layer.project(x_[None], layer.initial_state(1).conv)
        return k[0].transpose(0, 1).flatten(1)  # (seq, heads * head_dim)

    def outputs(x_: Tensor) -> Tensor:
        return layer(x_[None])[0][0]

    maps = []
    for fn in (keys, outputs):
        jac = torch.autograd.functional.jacobian(fn, x)  # (seq, features, seq, dim)
        maps.append(jac.pow(2).sum(dim=(1, 3)).sqrt().detach().cpu().double().numpy())
    return maps[0], maps[1]


def draw_input_reach(keys: np.ndarray, outputs: np.ndarray, kernel: int, axes=None):
    """The two maps of :func:`input_reach` side by side, on a log colour scale. Returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
    fig = axes[0].figure
    first = "x_t" if kernel <= 1 else f"x_{{t-{kernel - 1}}}, \\dots, x_t"
    titles = (f"key $k_t$ reaches ${first}$",
              "output $o_t$: the memory reaches every $x_{s \\leq t}$")
    for ax, m, title in zip(axes, (keys, outputs), titles):
        floor = max(float(m[m > 0].min()) if (m > 0).any() else 1e-12, 1e-12)
        shown = np.ma.masked_where(m <= 0, m)  # exact zeros (no dependence at all) are left blank
        image = ax.imshow(shown, cmap="viridis", norm=LogNorm(vmin=floor, vmax=float(m.max())))
        ax.set(title=title, xlabel="input position s", ylabel="position t")
        ax.grid(False)
        fig.colorbar(image, ax=ax, shrink=0.85, label=r"$\|\partial \cdot / \partial x_s\|$")
    return fig


def reach_explorer(kernel: int = 4, dim: int = 8, seq: int = 12, seed: int = 0):
    """A slider for the width of the causal convolution, wired to :func:`input_reach` on a fresh layer of that
    width (float64) and :func:`draw_input_reach`. Returns an ``ipywidgets.VBox``; ``render()`` returns the
    ``(keys, outputs)`` maps it drew."""
    import ipywidgets as widgets

    if not 0 <= kernel <= 8:
        raise ValueError(f"kernel must be in [0, 8] (0: no convolution), got {kernel}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(seq, dim, generator=gen, dtype=torch.float64)

    def draw(kernel: int):
        with torch.random.fork_rng():  # a fresh layer per width, the same for every redraw
            torch.manual_seed(seed)
            layer = NeuralMemory(MemoryConfig(dim=dim, heads=2, chunk_size=4, conv_kernel=kernel)).double()
        keys, outputs = input_reach(layer, x)
        reach = int((keys > 0).sum(axis=1).max())
        text = f"conv_kernel = {kernel}: each key depends on {reach} input(s) at most; each output on all earlier ones"
        return draw_input_reach(keys, outputs, max(kernel, 1)), text, (keys, outputs)

    slider = widgets.IntSlider(value=kernel, min=0, max=8, description="conv_kernel",
                               style={"description_width": "initial"}, continuous_update=False)
    return build_explorer(draw, {"kernel": slider})
