"""The experiments and explorers of notebooks 01-02 (titans_edu.viz.memory_views), without a browser."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from titans_edu import MLPMemory, naive_memory  # noqa: E402
from titans_edu.viz import memory_views as mv  # noqa: E402


pytestmark = pytest.mark.usefixtures("close_figures")


# --- data and measurement ---


def test_random_pairs_are_unit_length_and_depend_only_on_the_seed():
    keys, values = mv.random_pairs(5, 8, 3, batch=2, seed=7)
    assert keys.shape == (2, 1, 5, 8) and values.shape == (2, 1, 5, 3)
    assert torch.allclose(keys.norm(dim=-1), torch.ones(2, 1, 5))
    assert torch.allclose(values.norm(dim=-1), torch.ones(2, 1, 5))
    torch.manual_seed(123)  # the global random state must not matter
    again = mv.random_pairs(5, 8, 3, batch=2, seed=7)
    assert torch.equal(keys, again[0]) and torch.equal(values, again[1])
    assert not torch.equal(keys, mv.random_pairs(5, 8, 3, batch=2, seed=8)[0])


def test_one_hot_keys_are_the_basis_vectors():
    keys, _ = mv.random_pairs(3, 5, one_hot=True)
    assert torch.equal(keys[0, 0], torch.eye(5)[:3])


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(n_pairs=0, dim_key=4), "n_pairs"),
        (dict(n_pairs=6, dim_key=4, one_hot=True), "one_hot=False"),
    ],
)
def test_bad_pair_requests_raise_with_a_fix(kwargs, words):
    with pytest.raises(ValueError, match=words):
        mv.random_pairs(**kwargs)


def test_mismatched_pairs_raise_with_the_expected_shapes():
    memory = MLPMemory(4, depth=1)
    keys, values = mv.random_pairs(5, 4)
    expected = r"expected keys \(batch, heads, n, d_k\).*got keys \(1, 1, 5, 4\) and values \(1, 1, 3, 4\)"
    with pytest.raises(ValueError, match=expected):
        mv.write_stream(memory, keys, values[:, :, :3], theta=0.5)
    with pytest.raises(ValueError, match="k\\[None, None, None\\]"):
        mv.recall_error(memory, memory.initial_weights(1), keys[0, 0, 0], values[0, 0, 0])


def test_recall_error_is_zero_for_a_perfect_memory_and_one_for_an_empty_one():
    keys, values = mv.random_pairs(4, 4, one_hot=True)
    memory = MLPMemory(4, depth=1)
    table = (values[:, :, :4].transpose(-1, -2) @ keys[:, :, :4]).transpose(-1, -2)  # W = K^T V, K = I
    assert torch.allclose(mv.recall_error(memory, (table,), keys, values), torch.zeros(1, 1, 4), atol=1e-6)
    empty = (torch.zeros(1, 1, 4, 4),)
    assert torch.allclose(mv.recall_error(memory, empty, keys, values), torch.ones(1, 1, 4))


def test_best_linear_memory_is_exact_up_to_d_k_pairs_then_loses_about_1_minus_d_over_n():
    keys, values = mv.random_pairs(8, 8, batch=3)
    assert mv.best_linear_error(keys, values).max() < 1e-5
    keys, values = mv.random_pairs(256, 16, batch=8, seed=1)
    error = mv.best_linear_error(keys, values).mean().item()
    assert abs(error - (1 - 16 / 256)) < 0.03


def test_parameter_budget():
    assert mv.parameter_count(MLPMemory(16, depth=1)) == 256
    assert mv.parameter_count(MLPMemory(16, depth=2)) == 2 * 16 * 64
    for depth in (2, 3):
        e = mv.equal_budget_expansion(16, depth)
        h = round(e * 16)
        assert mv.parameter_count(MLPMemory(16, depth=depth, expansion=e)) <= 256
        bigger = MLPMemory(16, depth=depth, expansion=(h + 1) / 16)
        assert mv.parameter_count(bigger) > 256
    with pytest.raises(ValueError, match="depth"):
        mv.equal_budget_expansion(16, 0)


# --- writing ---


def test_write_stream_of_a_linear_memory_is_the_delta_rule():
    keys, values = mv.random_pairs(6, 4, batch=2)
    memory = MLPMemory(4, depth=1)
    W = torch.zeros(2, 1, 4, 4)
    history = mv.write_stream(memory, keys, values, theta=0.3, weights=(W,))
    for t in range(6):
        k, v = keys[:, :, t : t + 1], values[:, :, t : t + 1]
        W = W - 0.3 * 2 * k.transpose(-1, -2) @ (k @ W - v)
        assert torch.allclose(history[t][0], W, atol=1e-6)


@pytest.mark.parametrize("depth", [1, 2])
def test_write_stream_matches_the_package_reference_loop(depth):
    keys, values = mv.random_pairs(7, 4, batch=2, seed=3)
    memory = MLPMemory(4, depth=depth, expansion=2.0)
    theta, eta, alpha = 0.2, 0.5, 0.1
    history = mv.write_stream(memory, keys, values, theta=theta, eta=eta, alpha=alpha)
    gate = lambda x: torch.full((2, 1, 7), x)  # noqa: E731
    with torch.no_grad():
        _, state = naive_memory(memory, keys, values, keys, gate(theta), gate(eta), gate(alpha))
    for mine, reference in zip(history[-1], state.weights):
        assert torch.allclose(mine, reference, atol=1e-5)


def test_fit_memory_deep_stores_what_linear_cannot():
    keys, values = mv.random_pairs(32, 8, seed=2)
    torch.manual_seed(0)
    linear = MLPMemory(8, depth=1)
    deep = MLPMemory(8, depth=2)
    _, lin_history = mv.fit_memory(linear, keys, values, steps=300)
    _, deep_history = mv.fit_memory(deep, keys, values, steps=300)
    bound = mv.best_linear_error(keys, values).item()
    assert lin_history[-1][1] >= bound - 1e-4  # no linear memory beats least squares
    assert lin_history[-1][1] < bound + 0.02  # and inner steps get there
    assert deep_history[-1][1] < 0.1 < bound
    assert deep_history[0][0] == 0 and all(a[0] < b[0] for a, b in zip(deep_history, deep_history[1:]))
    with pytest.raises(ValueError, match="steps"):
        mv.fit_memory(deep, keys, values, steps=0)


# --- the explorers: pure draw functions and their slider wiring ---


def test_draw_linear_memory_readout_follows_the_sliders():
    fig, text = mv.draw_linear_memory(0.5, 8, dim_key=16)
    assert len(fig.axes) == 3  # curve, heatmap, colorbar
    assert "8 pairs" in text and "theta = 0.50" in text
    heat = fig.axes[1].images[0].get_array()
    assert heat.shape == (16, 16)
    fig2, text2 = mv.draw_linear_memory(0.2, 8, dim_key=16)
    assert text2 != text
    assert not (fig2.axes[1].images[0].get_array() == heat).all()
    _, text3 = mv.draw_linear_memory(0.5, 30, dim_key=16)
    error = lambda s: float(s.split("mean recall error ")[1].split()[0])  # noqa: E731
    assert error(text3) > error(text)  # more pairs than d_k: recall degrades
    with pytest.raises(ValueError, match="theta"):
        mv.draw_linear_memory(0.0, 8)


@pytest.mark.parametrize("theta", [0.5, 0.65, 1.0])
def test_linear_memory_legend_covers_no_curve(theta):
    """The legend, with the N = d_k marker in it, sits under the axes, so no curve runs behind it or a label."""
    fig, _ = mv.draw_linear_memory(theta, 24, dim_key=16)
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()][-1] == "N = d_k = 16"
    renderer = fig.canvas.get_renderer()
    assert legend.get_window_extent(renderer).y1 < ax.get_window_extent(renderer).y0  # below the plotting area
    assert not ax.texts  # no label drawn inside the axes, where the curve can reach it


def test_linear_explorer_updates_its_readout_when_a_slider_moves():
    box = mv.linear_memory_explorer(theta=0.5, n_pairs=8, dim_key=8)
    sliders = {child.description: child for child in box.children[0].children}
    before = box.readout.value
    assert "8 pairs" in before
    sliders["pairs N"].value = 12
    assert "12 pairs" in box.readout.value
    sliders["theta"].value = 0.25
    assert "theta = 0.25" in box.readout.value and box.readout.value != before


def test_draw_deep_memory_reports_sizes_and_deep_beats_linear():
    fig, text = mv.draw_deep_memory(2, 32, dim_key=8, steps=200)
    assert len(fig.axes) == 2
    assert "L_M = 2 (512 params)" in text and "linear memory (64 params)" in text
    deep = float(re.search(r"recall error ([0-9.]+)", text).group(1))
    linear = float(re.search(r"params\): ([0-9.]+)", text).group(1))
    assert deep < 0.1 < linear
    _, small = mv.draw_deep_memory(2, 32, width="equal to linear", dim_key=8, steps=50)
    assert "(64 params)" in small.split(";")[0]
    with pytest.raises(ValueError, match="width"):
        mv.draw_deep_memory(2, 8, width="huge")


def test_deep_explorer_updates_its_readout_when_a_slider_moves():
    box = mv.deep_memory_explorer(depth=1, n_pairs=8)
    controls = box.children[0].children
    assert "L_M = 1" in box.readout.value
    controls[0].value = 2
    assert "L_M = 2" in box.readout.value
