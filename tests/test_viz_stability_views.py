"""Notebook 06's stability section: the total step of a chunk, the norm traces of the four rules, the figures and
the explorer's wiring (no browser)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from titans_edu.memory.stability import Stability  # noqa: E402
from titans_edu.viz import stability_views as sv  # noqa: E402


def test_chunk_step_closed_forms():
    b, theta = 16, 0.5 / 16
    assert sv.chunk_step(0.0, b, theta) == pytest.approx(b * theta)  # no momentum: b steps of theta
    # plain: theta * sum_{m=1}^{b} (1 - eta^m) / (1 - eta), towards theta b (b + 1) / 2 as eta -> 1
    eta = 0.9
    expected = theta * sum((1 - eta**m) / (1 - eta) for m in range(1, b + 1))
    assert sv.chunk_step(eta, b, theta) == pytest.approx(expected, rel=1e-12)
    assert sv.chunk_step(1.0, b, theta) == pytest.approx(theta * b * (b + 1) / 2, rel=1e-12)
    # dampened: at most b theta, for every eta
    for eta in np.linspace(0, 1, 11):
        assert sv.chunk_step(float(eta), b, theta, dampening=True) <= b * theta + 1e-15


def test_chunk_step_rejects_bad_gates():
    with pytest.raises(ValueError, match="eta"):
        sv.chunk_step(1.5, 16, 0.1)
    with pytest.raises(ValueError, match="chunk_size"):
        sv.chunk_step(0.5, 0, 0.1)


def test_periodic_stream_is_periodic_unit_and_private():
    torch.manual_seed(7)
    expected = torch.rand(2)
    torch.manual_seed(7)
    k, v, q = sv.periodic_stream(30, period=6, dim=8)
    assert torch.equal(torch.rand(2), expected)  # the global generator was not used
    assert k.shape == (1, 1, 30, 8) and torch.equal(q, k)
    assert torch.equal(k[0, 0, :6], k[0, 0, 6:12]) and torch.equal(v[0, 0, :6], v[0, 0, 24:])
    torch.testing.assert_close(k.norm(dim=-1), torch.ones(1, 1, 30, dtype=torch.float64))


def test_scaled_memory_scales_m0_and_leaves_the_global_generator_alone():
    torch.manual_seed(3)
    expected = torch.rand(2)
    torch.manual_seed(3)
    one, six = sv.scaled_memory(8, 1.0), sv.scaled_memory(8, 6.0)
    assert torch.equal(torch.rand(2), expected)
    for w1, w6 in zip(one.initial, six.initial):
        torch.testing.assert_close(w6, 6.0 * w1)


def test_norm_trace_matches_one_call_and_marks_divergence():
    k, v, q = sv.periodic_stream(64, period=5, dim=8)
    memory = sv.scaled_memory(8, 1.0)
    gate = lambda value: torch.full((1, 1, 64), value, dtype=torch.float64)  # noqa: E731
    norms, errors = sv.norm_trace(memory, k, v, q, gate(0.03), gate(0.5), gate(0.01), 16, Stability())
    assert norms.shape == (4, 2) and errors.shape == (4,)
    from titans_edu import chunked_memory

    with torch.no_grad():
        _, state = chunked_memory(memory, k, v, q, gate(0.03), gate(0.5), gate(0.01), 16, stability=Stability())
    np.testing.assert_allclose(norms[-1], [w[0, 0].norm().item() for w in state.weights], rtol=1e-12)
    positions = np.array([16, 32, 48, 64])
    assert sv.first_nonfinite(norms, positions) is None
    norms[2, 1] = np.inf
    assert sv.first_nonfinite(norms, positions) == 48


def test_the_four_rules_at_extreme_gates():
    view = sv.stability_view(eta=0.95, m0_scale=6.0, length=512)
    assert set(view.norms) == set(sv.RULES)
    assert view.diverged_at["plain rule"] is not None and view.diverged_at["dampening only"] is not None
    assert view.diverged_at["norm bound only"] is None and view.diverged_at["both (NeuralMemory)"] is None
    both = view.norms["both (NeuralMemory)"]
    assert (both <= np.array(view.radius) + 1e-9).all()  # both: every layer within its bound at every chunk end
    assert view.largest("norm bound only") > view.radius[0]  # the bound alone leaves momentum unbounded
    assert "inf by t =" in view.summary("plain rule") and "finite" in view.summary("both (NeuralMemory)")
    assert np.isfinite(view.final_error("both (NeuralMemory)"))


def test_figures_draw():
    fig = sv.chunk_step_figure(chunk_size=8)
    assert len(fig.axes[0].lines) >= 2
    plt.close(fig)
    view = sv.stability_view(eta=0.95, length=256)
    fig = sv.draw_stability_view(view)
    assert len(fig.axes) == 2 and all(ax.get_yscale() == "log" for ax in fig.axes)
    assert fig.axes[0].get_ylim()[1] == pytest.approx(sv.TOP)
    plt.close(fig)


def test_explorer_redraws_when_a_slider_moves():
    box = sv.stability_explorer(eta=0.5, chunk_size=16)
    assert box.result.eta == 0.5 and box.result.chunk_size == 16
    box.sliders["chunk_size"].value = 8
    assert box.result.chunk_size == 8 and box.result.theta == pytest.approx(0.0625)
    box.sliders["m0_scale"].value = 6.0
    assert box.result.m0_scale == 6.0
    assert "plain rule" in box.readout.value
    assert all(s.style.description_width == "initial" for s in box.sliders.values())  # labels are never cut
    plt.close("all")


def test_explorer_rejects_a_chunk_size_it_cannot_show():
    with pytest.raises(ValueError, match="chunk sizes"):
        sv.stability_explorer(chunk_size=3)
