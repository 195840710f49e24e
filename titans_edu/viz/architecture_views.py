"""The data flow of the three Titans architectures, as in the paper's Figs. 2 (MAC), 4 (MAG) and 5 (MAL),
drawn from what :mod:`titans_edu.models.mac`, :mod:`~titans_edu.models.mag` and :mod:`~titans_edu.models.mal`
compute (notebooks 08-10).

Each ``draw_*`` returns a static figure of one mixer: boxes for what is computed, arrows for what flows, and on
every arrow the equations it implements. Under each box, in grey, is the code that does it.

Glossary (paper symbol -> what the figures show):

    S^(t), x          the mixer's input: one segment (MAC) or the whole stream (MAG, MAL)
    p_1..p_Np         persistent memory tokens (Eq. 19)
    M*_{t-1}, M*_t    a read (retrieve) of the neural memory with no update
    M_t = M_{t-1}(y)  an update (write) of the neural memory
    ⊗                 the gate :class:`~titans_edu.models.blocks.MemoryGate` (MAC Eq. 25, MAG Eq. 28)
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyBboxPatch

__all__ = ["draw_mac", "draw_mag", "draw_mal"]

COLORS = {
    "input": "#dde8f6",       # the tokens
    "persistent": "#e8dcf2",  # p (Eq. 19), purple as in the masks of notebook 07
    "memory": "#fbe3c8",      # the neural memory, orange as its tokens h in notebook 07
    "attention": "#d9efd9",
    "join": "#f0f0f0",
    "output": "#dde8f6",
}


@dataclass(frozen=True)
class Box:
    """A box centred at ``(x, y)`` of size ``w`` by ``h`` (axis units), its label, and the code under it."""

    x: float
    y: float
    w: float
    h: float
    label: str
    kind: str
    code: str = ""

    def side(self, where: str) -> tuple[float, float]:
        """The middle of one side: ``"l"``, ``"r"``, ``"t"`` or ``"b"``."""
        dx = {"l": -self.w / 2, "r": self.w / 2}.get(where, 0.0)
        dy = {"b": -self.h / 2, "t": self.h / 2}.get(where, 0.0)
        return self.x + dx, self.y + dy


def _canvas(width: float, height: float, title: str) -> tuple[Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=12)
    return fig, ax


def _box(ax: plt.Axes, box: Box) -> None:
    ax.add_patch(FancyBboxPatch((box.x - box.w / 2, box.y - box.h / 2), box.w, box.h,
                                boxstyle="round,pad=0.02,rounding_size=0.12", facecolor=COLORS[box.kind],
                                edgecolor="0.3", linewidth=1.2))
    ax.text(box.x, box.y, box.label, ha="center", va="center", fontsize=9.5)
    if box.code:
        ax.text(box.x, box.y - box.h / 2 - 0.12, box.code, ha="center", va="top", fontsize=7.5, color="0.4",
                family="monospace")


def _gate(ax: plt.Axes, x: float, y: float, r: float = 0.3) -> Box:
    """The gate ⊗ as a circle; returned as a box so arrows can reach its sides."""
    ax.add_patch(Circle((x, y), r, facecolor="white", edgecolor="0.3", linewidth=1.2))
    ax.text(x, y, "⊗", ha="center", va="center", fontsize=16)
    return Box(x, y, 2 * r, 2 * r, "⊗", "join")


def _arrow(ax: plt.Axes, start: tuple[float, float], end: tuple[float, float], label: str = "",
           where: float = 0.5, offset: tuple[float, float] = (0.0, 0.0), dashed: bool = False,
           bend: float = 0.0) -> None:
    ax.annotate("", xy=end, xytext=start,
                arrowprops=dict(arrowstyle="-|>", color="0.2", linewidth=1.3, shrinkA=0, shrinkB=0,
                                linestyle="--" if dashed else "-", connectionstyle=f"arc3,rad={bend}"))
    if label:
        x = start[0] + where * (end[0] - start[0]) + offset[0]
        y = start[1] + where * (end[1] - start[1]) + offset[1]
        ax.text(x, y, label, ha="center", va="center", fontsize=8.5,
                bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.9))


def _legend(ax: plt.Axes, text: str, width: float) -> None:
    ax.text(width / 2, 0.15, text, ha="center", va="bottom", fontsize=8, color="0.3")


def draw_mac() -> Figure:
    """MAC, memory as a context (Fig. 2, Eqs. 21-25), for one segment ``S^(t)`` as
    :meth:`titans_edu.models.mac.MACMixer.segment_step` runs it."""
    width, height = 15.6, 6.4
    fig, ax = _canvas(width, height, "MAC: memory as a context (Fig. 2), one segment $S^{(t)}$ of $C$ tokens")
    seg = Box(1.3, 3.2, 1.9, 0.9, "input segment\n$S^{(t)}$", "input", "x split at segments")
    read = Box(4.6, 5.1, 2.9, 0.9, "neural memory $\\mathcal{M}^*_{t-1}$\nretrieve (no update)", "memory",
               "memory(segment_start, q)")
    pers = Box(4.6, 1.2, 2.9, 0.9, "persistent memory\n$p_1 \\dots p_{N_p}$", "persistent",
               "persistent.tokens")
    join = Box(7.6, 3.2, 2.1, 0.9, "$[p \\,\\|\\, h_t \\,\\|\\, S^{(t)}]$", "join")
    att = Box(10.7, 3.2, 2.0, 0.9, "attention\n(causal, in segment)", "attention",
              "attend_projected(extra=h)")
    write = Box(10.7, 5.1, 3.0, 0.9, "neural memory $\\mathcal{M}_t$\nupdate, then retrieve", "memory",
                "memory.write_read(y)")
    gate = _gate(ax, 13.1, 3.2)
    out = Box(14.8, 3.2, 1.2, 0.9, "output\n$o_t$", "output")
    for box in (seg, read, pers, join, att, write, out):
        _box(ax, box)
    _arrow(ax, seg.side("t"), read.side("l"), "$q_t = S^{(t)} W_Q$\nEq. 21", where=0.45, offset=(-0.35, 0.15))
    _arrow(ax, read.side("r"), join.side("t"), "$h_t$  Eq. 21-22", where=0.5, offset=(0.45, 0.15))
    _arrow(ax, seg.side("r"), join.side("l"), "$S^{(t)}$  Eq. 22", where=0.45, offset=(0.0, 0.25))
    _arrow(ax, pers.side("r"), join.side("b"), "$p$  Eqs. 19, 22", where=0.5, offset=(0.55, -0.1))
    _arrow(ax, join.side("r"), att.side("l"), "Eq. 23", offset=(0.0, 0.25))
    _arrow(ax, att.side("t"), write.side("b"), "$y_t$  Eq. 24", offset=(0.55, 0.0))
    _arrow(ax, att.side("r"), gate.side("l"), "$y_t$\nEq. 25", offset=(0.0, 0.35))
    _arrow(ax, write.side("r"), gate.side("t"), "$\\mathcal{M}^*_t(y_t)$\nEq. 25", where=0.55, offset=(0.55, 0.3))
    _arrow(ax, gate.side("r"), out.side("l"), "Eq. 25", offset=(0.0, 0.25))
    _arrow(ax, (write.x - write.w / 2, write.y + 0.25), (read.x + read.w / 2, read.y + 0.25),
           "$\\mathcal{M}_t$ is read by segment $t+1$ (Eq. 24)", offset=(0.0, 0.42), dashed=True)
    _legend(ax, "persistent tokens and memory tokens are keys and values of the attention only; the memory "
                "never reads $p$", width)
    return fig


def draw_mag() -> Figure:
    """MAG, memory as a gate (Fig. 4, Eqs. 26-28), two branches over the whole stream as
    :class:`titans_edu.models.mag.MAGMixer` runs them."""
    width, height = 13.0, 6.0
    fig, ax = _canvas(width, height, "MAG: memory as a gate (Fig. 4), two branches side by side, no segments")
    x = Box(1.2, 3.0, 1.7, 0.9, "input\n$x$", "input")
    pers = Box(1.2, 1.0, 2.3, 0.9, "persistent memory\n$p_1 \\dots p_{N_p}$", "persistent", "persistent.tokens")
    join = Box(4.0, 3.0, 1.9, 0.9, "$\\tilde x = [p \\,\\|\\, x]$", "join")
    att = Box(7.4, 4.6, 3.0, 0.9, "SW-Attn*\n(window $W$, $p$ always visible)", "attention",
              "attention(x, window=W, persistent=p)")
    mem = Box(7.4, 1.4, 3.0, 0.9, "neural memory $\\mathcal{M}$\nupdate and retrieve", "memory",
              "memory(x, state.memory)")
    gate = _gate(ax, 10.4, 3.0)
    out = Box(12.1, 3.0, 1.3, 0.9, "output\n$o$", "output")
    for box in (x, pers, join, att, mem, out):
        _box(ax, box)
    _arrow(ax, x.side("r"), join.side("l"), "Eq. 26", offset=(0.0, 0.25))
    _arrow(ax, pers.side("r"), join.side("b"), "$p$  Eqs. 19, 26", where=0.5, offset=(0.6, -0.15))
    _arrow(ax, join.side("t"), att.side("l"), "$\\tilde x$  Eq. 27", where=0.45, offset=(-0.45, 0.2))
    _arrow(ax, join.side("b"), mem.side("l"), "$\\tilde x$  Eq. 28", where=0.45, offset=(-0.45, -0.2))
    _arrow(ax, att.side("r"), gate.side("t"), "$y$  Eqs. 27-28", where=0.5, offset=(0.55, 0.2))
    _arrow(ax, mem.side("r"), gate.side("b"), "$\\mathcal{M}(\\tilde x)$  Eq. 28", where=0.5, offset=(0.7, -0.2))
    _arrow(ax, gate.side("r"), out.side("l"), "Eq. 28", offset=(0.0, 0.25))
    _legend(ax, "$o = y \\otimes \\mathcal{M}(\\tilde x)$, the gate $\\mathrm{RMSNorm}_a(y) \\cdot "
                "\\sigma(\\mathrm{RMSNorm}_b(\\mathcal{M}(\\tilde x)))$; the memory reads $p$ once, "
                "when its state is created", width)
    return fig


def draw_mal() -> Figure:
    """MAL, memory as a layer (Fig. 5, Eqs. 29-31), the memory then the attention as
    :class:`titans_edu.models.mal.MALMixer` runs them."""
    width, height = 15.6, 4.6
    fig, ax = _canvas(width, height, "MAL: memory as a layer (Fig. 5), the memory and the attention in series")
    x = Box(1.2, 2.6, 1.7, 0.9, "input\n$x$", "input")
    pers = Box(1.2, 0.95, 2.3, 0.9, "persistent memory\n$p_1 \\dots p_{N_p}$", "persistent", "persistent.tokens")
    join = Box(4.2, 2.6, 1.9, 0.9, "$\\tilde x = [p \\,\\|\\, x]$", "join")
    mem = Box(7.5, 2.6, 2.6, 0.9, "neural memory $\\mathcal{M}$\nupdate and retrieve", "memory",
              "memory(x, state.memory)")
    norm = Box(10.3, 2.6, 1.3, 0.9, "RMSNorm\n(CHOICE)", "join", "norm_y")
    att = Box(12.5, 2.6, 1.7, 0.9, "SW-Attn\n(window $W$)", "attention", "attention(y, window=W)")
    out = Box(14.7, 2.6, 1.1, 0.9, "output\n$o$", "output")
    for box in (x, pers, join, mem, norm, att, out):
        _box(ax, box)
    _arrow(ax, x.side("r"), join.side("l"), "Eq. 29", offset=(0.0, 0.62))
    _arrow(ax, pers.side("r"), join.side("b"), "$p$  Eqs. 19, 29", where=0.5, offset=(0.6, -0.15))
    _arrow(ax, join.side("r"), mem.side("l"), "$\\tilde x$  Eq. 30", offset=(0.0, 0.62))
    _arrow(ax, mem.side("r"), norm.side("l"), "$y$  Eq. 30", offset=(0.0, 0.62))
    _arrow(ax, norm.side("r"), att.side("l"), "Eq. 31", offset=(0.0, 0.62))
    _arrow(ax, att.side("r"), out.side("l"), "Eq. 31", offset=(0.0, 0.62))
    _legend(ax, "$o$ = SW-Attn$(y)$: the attention sees only the memory's outputs, $\\mathcal{M}(p)$ "
                "included, and plain SW-Attn lets them slide out of its window", width)
    return fig
