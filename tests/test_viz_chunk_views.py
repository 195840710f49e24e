"""The notebook 06 explorer: its pure compute function, its figure, and its slider wiring (no browser)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from titans_edu.viz import chunk_views as cv  # noqa: E402


def test_constant_gate_matrices_are_powers():
    view = cv.chunk_view(chunk_size=4, eta=0.5, alpha=0.25, theta=0.2)
    i, j = np.indices((4, 4))
    lower = i >= j
    np.testing.assert_allclose(view.E, np.where(lower, 0.5 ** (i - j), 0.0))
    np.testing.assert_allclose(view.B, np.where(lower, 0.75 ** (i - j), 0.0))
    # C_ij = theta * sum_{j<=r<=i} B_ir E_rj = theta * sum_{r=j}^{i} 0.75^(i-r) 0.5^(r-j)
    expected_C = np.zeros((4, 4))
    for a in range(4):
        for b in range(a + 1):
            expected_C[a, b] = 0.2 * sum(0.75 ** (a - r) * 0.5 ** (r - b) for r in range(b, a + 1))
    np.testing.assert_allclose(view.C, expected_C)


def test_momentum_off_makes_E_the_identity():
    view = cv.chunk_view(chunk_size=8, eta=0.0, alpha=0.1, theta=0.1)
    np.testing.assert_array_equal(view.E, np.eye(8))
    np.testing.assert_allclose(view.C, 0.1 * view.B)


def test_data_dependent_matrices_match_the_package():
    gen = torch.Generator().manual_seed(1)
    theta, eta, alpha = (torch.rand(6, generator=gen, dtype=torch.float64) for _ in range(3))
    mats = cv.coefficient_matrices(theta, eta, alpha)
    # a hand-written triple loop, independent of the cumprod in titans_edu.memory.chunked
    for i in range(6):
        for j in range(6):
            e = float(torch.prod(eta[j + 1 : i + 1])) if i >= j else 0.0
            b = float(torch.prod(1 - alpha[j + 1 : i + 1])) if i >= j else 0.0
            assert mats["E"][i, j] == pytest.approx(e, abs=1e-15)
            assert mats["B"][i, j] == pytest.approx(b, abs=1e-15)
    np.testing.assert_allclose(mats["C"], mats["B"] @ mats["E"] * theta.numpy()[None, :], atol=1e-15)


def test_drift_is_zero_for_the_online_rule_and_grows_with_chunk_size():
    assert np.all(cv.chunk_view(chunk_size=1).drift == 0.0)
    means = [float(cv.chunk_view(chunk_size=b).drift.mean()) for b in (2, 8, 16)]
    assert 0 < means[0] < means[1] < means[2]


def test_drift_vanishes_inside_the_first_chunk_start():
    # token 0 of the stream: both rules take one gradient step at M_0, so they agree exactly
    drift = cv.online_drift(chunk_size=8, eta=0.8, alpha=0.05, theta=0.1)
    assert drift[0] == pytest.approx(0.0, abs=1e-14)
    assert drift[1:8].max() > 1e-6  # later tokens of the first chunk use stale gradients


def test_chunk_view_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    cv._stream.cache_clear()
    cv.chunk_view(chunk_size=4)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": 2.5}, "chunk_size"),
        ({"eta": 1.5}, "eta"),
        ({"alpha": -0.1}, "alpha"),
        ({"theta": 2.0}, "theta"),
    ],
)
def test_bad_slider_values_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cv.chunk_view(**kwargs)


def test_mismatched_gate_shapes_raise():
    with pytest.raises(ValueError, match="one shape"):
        cv.coefficient_matrices(torch.ones(3), torch.ones(4), torch.ones(3))


def test_figure_has_three_heatmaps_and_a_drift_panel():
    fig = cv.draw_chunk_view(cv.chunk_view(chunk_size=4))
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(axes) == 4
    assert sum(len(ax.images) for ax in axes) == 3
    assert "b = 4" in axes[3].get_title() and "DIVERGED" not in axes[3].get_title()
    plt.close(fig)


def test_figure_flags_a_diverged_memory():
    view = cv.chunk_view(chunk_size=32, eta=0.95, alpha=0.0, theta=0.3)
    fig = cv.draw_chunk_view(view)
    drift_ax = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"][3]
    assert "DIVERGED" in drift_ax.get_title()
    assert np.nanmax(drift_ax.lines[0].get_ydata()) <= cv.DRIFT_CAP
    plt.close(fig)


def test_explorer_redraws_when_a_slider_moves():
    box = cv.chunk_explorer(chunk_size=8)
    assert box.result.chunk_size == 8
    box.sliders["chunk_size"].value = 2
    assert box.result.chunk_size == 2 and box.result.E.shape == (2, 2)
    box.sliders["eta"].value = 0.0
    np.testing.assert_array_equal(box.result.E, np.eye(2))
    assert box.render().eta == 0.0
    plt.close("all")


def test_explorer_rejects_a_chunk_size_it_cannot_show():
    with pytest.raises(ValueError, match="chunk sizes"):
        cv.chunk_explorer(chunk_size=3)


def test_drift_by_chunk_averages_each_chunk():
    drift = np.arange(10.0)
    np.testing.assert_allclose(cv.drift_by_chunk(drift, 4), [1.5, 5.5, 8.5])
    with pytest.raises(ValueError, match="chunk_size"):
        cv.drift_by_chunk(drift, 0)


def test_matrix_titles_are_as_large_as_the_other_titles():
    fig = cv.draw_chunk_view(cv.chunk_view(chunk_size=4))
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    sizes = {ax.title.get_fontsize() for ax in axes}
    assert len(sizes) == 1, sizes
    assert all("\\prod" not in ax.get_title() for ax in axes[:3])  # no big operator whose limits hit the plot
    plt.close(fig)


def test_explorer_labels_take_the_width_they_need():
    box = cv.chunk_explorer(chunk_size=8)
    assert box.sliders["eta"].description == "η (momentum)"
    assert all(s.style.description_width == "initial" for s in box.sliders.values())
    plt.close("all")
