"""Key-value recall with linear and deep memories: the experiments and explorers of notebooks 01 and 02.

Glossary (paper symbol -> code name):

    k_i, v_i       ``keys`` ``(batch, 1, n, d_k)``, ``values`` ``(batch, 1, n, d_v)``: the pairs to store,
                   unit length (§4.4 l2-normalises keys), so an empty memory has recall error 1
    M_t            ``weights``: a tuple over memory layers, each ``(batch, 1, d_in, d_out)``
    θ_t            ``theta``: the momentary step size of Eq. 14 (a constant here)
    η_t            ``eta``: the surprise decay of Eq. 14 (0 = no momentum)
    α_t            ``alpha``: the forgetting gate of Eq. 13 (0 = no forgetting)
    S_t            ``surprise``: the momentum of Eq. 14
    L_M            ``depth``: memory layers; ``depth=1`` is the linear memory ``W`` ``(d_k, d_v)``

Recall error of pair i is ``||M(k_i) - v_i||^2 / ||v_i||^2``: 0 is perfect recall, 1 is no better than an
empty memory that answers 0.

Each explorer is a pure function of its slider values (``draw_*``: figure and readout text, unit-tested)
plus a thin function that wires ipywidgets sliders to it (``*_explorer``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor

from ..memory.networks import MLPMemory
from .explorer import build_explorer

Weights = tuple[Tensor, ...]

__all__ = [
    "best_linear_error",
    "check_pairs",
    "deep_memory_explorer",
    "draw_deep_memory",
    "draw_linear_memory",
    "equal_budget_expansion",
    "fit_memory",
    "linear_memory_explorer",
    "one_thread",
    "parameter_count",
    "random_pairs",
    "recall_error",
    "write_stream",
]


@contextmanager
def one_thread() -> Iterator[None]:
    """Run tiny-tensor loops on one thread, then restore the thread count.

    The memories here are a few hundred numbers; splitting such matmuls across threads costs more in
    synchronisation than it saves (several times slower on a busy 2-core machine). Results do not change.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# --- data and measurement -------------------------------------------------------------------------------


def random_pairs(n_pairs: int, dim_key: int, dim_value: int | None = None, batch: int = 1, seed: int = 0,
                 one_hot: bool = False) -> tuple[Tensor, Tensor]:
    """``n_pairs`` random unit-length keys and values: ``(batch, 1, n, d_k)`` and ``(batch, 1, n, d_v)``.

    ``one_hot=True`` uses the basis vectors ``e_1, e_2, ...`` as keys (needs ``n_pairs <= dim_key``): the
    memory is then a lookup table whose row i holds value i. A private generator makes the pairs depend on
    ``seed`` only, not on the global random state.
    """
    dim_value = dim_key if dim_value is None else dim_value
    if n_pairs < 1 or dim_key < 1 or dim_value < 1 or batch < 1:
        raise ValueError(
            f"n_pairs, dim_key, dim_value and batch must all be >= 1; got n_pairs={n_pairs}, dim_key={dim_key}, "
            f"dim_value={dim_value}, batch={batch}"
        )
    if one_hot and n_pairs > dim_key:
        raise ValueError(
            f"one-hot keys exist only for n_pairs <= dim_key; got n_pairs={n_pairs} with dim_key={dim_key}. "
            f"Use fewer pairs, a larger dim_key, or one_hot=False."
        )
    gen = torch.Generator().manual_seed(seed)
    if one_hot:
        keys = torch.eye(dim_key)[:n_pairs].expand(batch, 1, n_pairs, dim_key).clone()
    else:
        keys = F.normalize(torch.randn(batch, 1, n_pairs, dim_key, generator=gen), dim=-1)
    values = F.normalize(torch.randn(batch, 1, n_pairs, dim_value, generator=gen), dim=-1)
    return keys, values


def check_pairs(keys: Tensor, values: Tensor) -> None:
    """Raise a ``ValueError`` unless ``keys`` ``(batch, heads, n, d_k)`` and ``values`` ``(batch, heads, n, d_v)``
    match."""
    if keys.dim() != 4 or values.dim() != 4 or keys.shape[:3] != values.shape[:3]:
        raise ValueError(
            f"expected keys (batch, heads, n, d_k) and values (batch, heads, n, d_v) with the same batch, heads "
            f"and n; got keys {tuple(keys.shape)} and values {tuple(values.shape)}. random_pairs(...) makes such "
            f"a pair; for a single key k of shape (d_k,) use k[None, None, None]."
        )


def recall_error(memory: MLPMemory, weights: Sequence[Tensor], keys: Tensor, values: Tensor) -> Tensor:
    """Per-pair relative recall error ``||M(k_i) - v_i||^2 / ||v_i||^2``: ``(batch, 1, n)``."""
    check_pairs(keys, values)
    prediction = memory(weights, keys)
    return (prediction - values).pow(2).sum(-1) / values.pow(2).sum(-1)


def best_linear_error(keys: Tensor, values: Tensor) -> Tensor:
    """Mean recall error of the best linear memory for these pairs: ``min_W sum_i ||k_i W - v_i||^2``.

    The least-squares solution is the lowest error any linear memory can reach, however it is written.
    Shapes ``(batch, 1, n, d_k)``, ``(batch, 1, n, d_v)`` -> ``(batch,)``.
    """
    check_pairs(keys, values)
    best = torch.linalg.lstsq(keys.double(), values.double(), driver="gelsd").solution.to(keys.dtype)
    residual = (keys @ best - values).pow(2).sum(-1) / values.pow(2).sum(-1)
    return residual.mean(dim=(1, 2))


def parameter_count(memory: MLPMemory) -> int:
    """Numbers in one head's memory ``M``: the size of the state that stores the pairs."""
    return sum(w[0].numel() for w in memory.initial)


def equal_budget_expansion(dim_key: int, depth: int, dim_value: int | None = None) -> float:
    """The ``expansion`` whose MLP has the most parameters not above a linear memory's ``d_k * d_v``.

    With hidden width h, ``L_M`` layers hold ``d_k h + (L_M - 2) h^2 + h d_v`` numbers. ``depth=1`` has no
    hidden layer and returns 1.0 (unused).
    """
    dim_value = dim_key if dim_value is None else dim_value
    if depth < 1:
        raise ValueError(f"depth L_M must be >= 1, got {depth}")
    if depth == 1:
        return 1.0
    budget = dim_key * dim_value
    hidden = 1
    while dim_key * (hidden + 1) + (depth - 2) * (hidden + 1) ** 2 + (hidden + 1) * dim_value <= budget:
        hidden += 1
    return hidden / dim_key


# --- writing: the update rule of Eqs. 13-14 ---------------------------------------------------------------


def write_stream(memory: MLPMemory, keys: Tensor, values: Tensor, theta: float, eta: float = 0.0,
                 alpha: float = 0.0, weights: Sequence[Tensor] | None = None) -> list[Weights]:
    """Write the pairs one at a time, in order, and return ``[M_1, ..., M_n]``.

    Each token is one step of the online rule (chunk size 1), with constant gates:

        S_t = eta * S_{t-1} - theta * grad l(M_{t-1}; k_t, v_t)      Eq. 14
        M_t = (1 - alpha) * M_{t-1} + S_t                           Eq. 13

    It is :func:`titans_edu.memory.naive.naive_memory` written for constant gates, keeping every ``M_t``.
    ``weights`` defaults to the memory's ``M_0``.
    """
    check_pairs(keys, values)
    if weights is None:
        weights = memory.initial_weights(keys.shape[0])
    weights = tuple(w.detach().clone() for w in weights)
    surprise = tuple(torch.zeros_like(w) for w in weights)
    history = []
    with torch.no_grad(), one_thread():
        for t in range(keys.shape[2]):
            grad = memory.gradient(weights, keys[:, :, t : t + 1], values[:, :, t : t + 1])
            surprise = tuple(eta * s - theta * g for s, g in zip(surprise, grad))
            weights = tuple((1 - alpha) * w + s for w, s in zip(weights, surprise))
            history.append(weights)
    return history


def fit_memory(memory: MLPMemory, keys: Tensor, values: Tensor, steps: int, theta: float = 0.4,
               eta: float = 0.9, record_every: int = 10, tol: float = 1e-6) -> tuple[Weights, list[tuple[int, float]]]:
    """Store all pairs by many inner steps, each on the whole set: how a memory is given time to fit.

    Every step treats the n pairs as one write, with the mean gradient over the pairs:

        S = eta * S - theta * (1/n) sum_i grad l(M; k_i, v_i)       Eq. 14 (momentum eta)
        M = M + S                                                  Eq. 13 with alpha = 0

    Starts from the memory's ``M_0``. Returns the final weights and ``[(step, mean recall error), ...]``.
    Stops early once the recorded error is below ``tol`` (the pairs are stored) or has stopped changing (the
    memory has converged): further steps would only push the updates into tiny (denormal) numbers, which are
    very slow on a CPU.
    """
    check_pairs(keys, values)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    n = keys.shape[2]
    weights = tuple(w.detach().clone() for w in memory.initial_weights(keys.shape[0]))
    surprise = tuple(torch.zeros_like(w) for w in weights)
    history = []
    with torch.no_grad(), one_thread():
        for step in range(steps + 1):
            if step % record_every == 0 or step == steps:
                history.append((step, recall_error(memory, weights, keys, values).mean().item()))
                stalled = len(history) > 1 and abs(history[-2][1] - history[-1][1]) < tol * 1e-2
                if step == steps or history[-1][1] < tol or stalled:
                    break
            grad = memory.gradient(weights, keys, values)
            surprise = tuple(eta * s - theta * g / n for s, g in zip(surprise, grad))
            weights = tuple(w + s for w, s in zip(weights, surprise))
    return weights, history


# --- notebook 01: the linear memory explorer ----------------------------------------------------------------


def draw_linear_memory(theta: float, n_pairs: int, dim_key: int = 16, seed: int = 0,
                       fig: Figure | None = None) -> tuple[Figure, str]:
    """Write ``n_pairs`` random pairs into an empty linear memory with step ``theta``, one pass.

    Left: mean recall error over the pairs written so far, after each write, beside the best any linear
    memory could do for the same pairs. Right: the heatmap of ``W`` after the last write.
    Returns the figure and a one-line readout.
    """
    if not 0 < theta <= 2:
        raise ValueError(f"theta must be in (0, 2], got {theta}; with unit keys theta > 1 makes the rule diverge")
    memory = MLPMemory(dim_key, depth=1)
    keys, values = random_pairs(n_pairs, dim_key, seed=seed)
    empty = (torch.zeros(1, 1, dim_key, dim_key),)
    history = write_stream(memory, keys, values, theta=theta, weights=empty)
    steps = range(1, n_pairs + 1)
    stream = [recall_error(memory, w, keys[:, :, :t], values[:, :, :t]).mean().item() for t, w in zip(steps, history)]
    best = [best_linear_error(keys[:, :, :t], values[:, :, :t]).item() for t in steps]

    fig = fig or plt.figure(figsize=(10, 4.2))
    fig.clear()
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.4, 1]})
    left.plot(steps, stream, marker="o", ms=3, label="after one pass of the delta rule")
    left.plot(steps, best, "k--", label="best possible linear memory")
    left.axvline(dim_key, color="gray", lw=1, ls=":", label=f"N = d_k = {dim_key}")
    left.set(xlabel="pairs written so far, t", ylabel="mean recall error", ylim=(-0.03, max(1.1, 1.05 * max(stream))),
             title=f"Recall of pairs 1..t, theta = {theta:.2f}")
    # the legend sits under the axes: inside, some slider setting always puts a curve behind it
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=8, frameon=False)
    limit = max(float(history[-1][0].abs().max()), 1e-6)
    image = right.imshow(history[-1][0][0, 0].numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
    right.set(title=f"W after {n_pairs} writes ({dim_key} x {dim_key})", xlabel="value dim", ylabel="key dim")
    right.grid(False)
    fig.colorbar(image, ax=right, fraction=0.046)
    fig.tight_layout()
    text = (f"theta = {theta:.2f}, {n_pairs} pairs, d_k = {dim_key}: mean recall error {stream[-1]:.3f} "
            f"(best linear memory {best[-1]:.3f})")
    return fig, text


def linear_memory_explorer(theta: float = 0.5, n_pairs: int = 24, dim_key: int = 16, seed: int = 0):
    """Sliders for ``theta``, the number of pairs and ``d_k``, driving :func:`draw_linear_memory`."""
    import ipywidgets as widgets

    style = {"description_width": "initial"}
    controls = {
        "theta": widgets.FloatSlider(value=theta, min=0.05, max=1.0, step=0.05, description="theta", style=style),
        "n_pairs": widgets.IntSlider(value=n_pairs, min=1, max=64, description="pairs N", style=style),
        "dim_key": widgets.IntSlider(value=dim_key, min=4, max=32, step=4, description="d_k", style=style),
    }
    return build_explorer(lambda **v: draw_linear_memory(seed=seed, **v), controls,
                     "<small>theta = 0.5 writes each new pair exactly (unit keys); watch the error jump once N "
                     "passes d_k.</small>")


# --- notebook 02: the deep memory explorer --------------------------------------------------------------------


def draw_deep_memory(depth: int, n_pairs: int, width: str = "4 x d_k", dim_key: int = 16, steps: int = 600,
                     seed: int = 0, fig: Figure | None = None) -> tuple[Figure, str]:
    """Fit ``n_pairs`` random pairs into a memory of depth ``L_M`` by :func:`fit_memory`, and a linear one too.

    ``width``: ``"4 x d_k"`` (hidden = 4 d_k, titans_edu's default, a choice of the package: the paper does not
    fix it) or ``"equal to linear"`` (hidden chosen so the MLP has no more parameters than the linear memory).
    Left: recall error against inner steps. Right: recalled against stored value coordinates.
    """
    if width not in ("4 x d_k", "equal to linear"):
        raise ValueError(f"width must be '4 x d_k' or 'equal to linear', got {width!r}")
    expansion = 4.0 if width == "4 x d_k" else equal_budget_expansion(dim_key, depth)
    keys, values = random_pairs(n_pairs, dim_key, seed=seed)
    results = {}
    for name, d, e in (("linear", 1, 1.0), ("deep", depth, expansion)):
        torch.manual_seed(seed)
        memory = MLPMemory(dim_key, depth=d, expansion=e)
        weights, history = fit_memory(memory, keys, values, steps=steps)
        results[name] = (memory, weights, history)

    memory, weights, history = results["deep"]
    lin_memory, _, lin_history = results["linear"]
    params, lin_params = parameter_count(memory), parameter_count(lin_memory)
    fig = fig or plt.figure(figsize=(10, 3.8))
    fig.clear()
    left, right = fig.subplots(1, 2)
    left.plot(*zip(*lin_history), color="gray", label=f"L_M = 1 (linear, {lin_params} params)")
    left.plot(*zip(*history), color="C1", lw=2, label=f"L_M = {depth} ({params} params)")
    left.set(xlabel="inner step", ylabel="mean recall error", ylim=(-0.03, 1.3),
             title=f"Fitting {n_pairs} pairs with d_k = {dim_key}")
    left.legend(loc="upper right", fontsize=8)
    with torch.no_grad():
        recalled = memory(weights, keys)
    right.scatter(values.flatten().numpy(), recalled.flatten().numpy(), s=4, alpha=0.5, color="C1")
    lim = 1.1 * float(values.abs().max())
    right.plot([-lim, lim], [-lim, lim], "k--", lw=1)
    right.set(xlim=(-lim, lim), ylim=(-lim, lim), xlabel="stored value coordinate v_ij",
              ylabel="recalled coordinate M(k_i)_j", title=f"L_M = {depth}: recalled vs stored")
    fig.tight_layout()
    text = (f"L_M = {depth} ({params} params), {n_pairs} pairs: recall error {history[-1][1]:.3f}; "
            f"linear memory ({lin_params} params): {lin_history[-1][1]:.3f}")
    return fig, text


def deep_memory_explorer(depth: int = 2, n_pairs: int = 64, width: str = "4 x d_k", seed: int = 0):
    """Sliders for ``L_M``, the number of pairs and the hidden width, driving :func:`draw_deep_memory`."""
    import ipywidgets as widgets

    style = {"description_width": "initial"}
    controls = {
        "depth": widgets.IntSlider(value=depth, min=1, max=3, description="L_M", style=style),
        "n_pairs": widgets.IntSlider(value=n_pairs, min=8, max=128, step=8, description="pairs N", style=style),
        "width": widgets.ToggleButtons(options=["4 x d_k", "equal to linear"], value=width,
                                       description="hidden width", style=style),
    }
    return build_explorer(lambda **v: draw_deep_memory(seed=seed, **v), controls,
                     "<small>Each change refits both memories (600 inner steps, about a second).</small>")

