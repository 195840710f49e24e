"""Notebook 06b's views of the memory layer: the gate and surprise trace, its figure and explorer, the input reach."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch.func import grad  # noqa: E402

from titans_edu import MemoryConfig, NeuralMemory, associative_loss  # noqa: E402
from titans_edu.viz import layer_views as lv  # noqa: E402


def _layer(**kw):
    torch.manual_seed(0)
    return NeuralMemory(MemoryConfig(dim=8, heads=2, depth=2, expansion=2.0, chunk_size=4, **kw)).double()


def test_trace_gates_are_the_layers_and_surprise_is_the_gradient_at_the_chunk_start():
    layer = _layer()
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    trace = lv.layer_trace(layer, x)
    theta, eta, alpha = layer.gates(x)
    for mine, ref in zip((trace.theta, trace.eta, trace.alpha), (theta, eta, alpha)):
        np.testing.assert_allclose(mine, ref.detach().numpy(), rtol=0, atol=1e-15)
    assert trace.surprise.shape == (2, 2, 10) and trace.max_lr == layer.config.max_lr
    # the first chunk's gradients are taken at M_0 (inside the bound for a fresh layer): check them by autograd
    _, k, v, _ = layer.project(x, layer.initial_state(2).conv)
    weights = tuple(w[0, 0].detach() for w in layer.memory.initial_weights(1))  # sequence 0, head 0
    for t in range(4):
        def loss(ws):
            return associative_loss(_read(layer, ws, k[0, 0, t : t + 1]), v[0, 0, t : t + 1]).sum()

        g = grad(loss)(weights)
        expected = torch.sqrt(sum((w ** 2).sum() for w in g)).item()
        assert trace.surprise[0, 0, t] == pytest.approx(expected, rel=1e-10)


def _read(layer, weights, k):
    h = k
    for i, w in enumerate(weights):
        h = h @ w
        if i < len(weights) - 1:
            h = layer.memory.act(h)
    return h


def test_step_is_dampened_only_with_dampening():
    base = dict(theta=np.full((1, 1, 3), 0.1), eta=np.full((1, 1, 3), 0.5), alpha=np.zeros((1, 1, 3)),
                surprise=np.ones((1, 1, 3)), max_lr=0.2)
    np.testing.assert_allclose(lv.LayerTrace(**base, dampening=True).step, 0.05)
    np.testing.assert_allclose(lv.LayerTrace(**base, dampening=False).step, 0.1)
    curves = lv.LayerTrace(**base, dampening=True).curves()
    np.testing.assert_allclose(curves["theta / max_lr"], 0.5)
    np.testing.assert_allclose(curves["(1 - eta) theta / max_lr"], 0.25)


def test_gate_means_average_each_group():
    theta = np.array([[[0.1, 0.2, 0.3, 0.4]]])
    trace = lv.LayerTrace(theta=theta, eta=np.zeros_like(theta), alpha=np.zeros_like(theta),
                          surprise=np.array([[[1.0, 2.0, 3.0, 4.0]]]), max_lr=1.0, dampening=True)
    table = lv.gate_means(trace, np.array([0, 1, 0, 1]), ("a", "b", "never"))
    assert set(table) == {"a", "b"}
    assert table["a"]["theta / max_lr"] == pytest.approx(0.2) and table["b"]["surprise"] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="groups"):
        lv.gate_means(trace, np.array([0, 1]), ("a", "b"))


def test_figure_and_explorer():
    layer = _layer()
    x = torch.randn(3, 12, 8, dtype=torch.float64)
    traces = {"one": lv.layer_trace(layer, x), "two": lv.layer_trace(_layer(alpha_bias=0.0), x)}
    groups = np.arange(12) % 2
    fig = lv.draw_layer_trace(traces["one"], groups, ("even", "odd"), window=(2, 10), lines_at=(4,))
    assert len(fig.axes) == len(lv.PANELS)
    assert fig.axes[-1].get_xlim() == (1.5, 9.5)
    plt.close(fig)
    with pytest.raises(ValueError, match="window"):
        lv.draw_layer_trace(traces["one"], groups, ("even", "odd"), window=(5, 40))
    box = lv.layer_explorer(traces, groups, ("even", "odd"))
    assert box.result == ("one", 0)
    box.sliders["sample"].value = 2
    box.sliders["model"].value = "two"
    assert box.result == ("two", 2) and "two, sequence 2" in box.readout.value
    plt.close("all")
    with pytest.raises(ValueError, match="empty"):
        lv.layer_explorer({}, groups, ("even", "odd"))


def test_input_reach_is_causal_and_the_convolution_is_k_wide():
    layer = _layer()
    x = torch.randn(9, 8, dtype=torch.float64)
    keys, outputs = lv.input_reach(layer, x)
    upper = np.triu_indices(9, 1)
    assert (keys[upper] == 0).all() and (outputs[upper] == 0).all()  # nothing depends on a later input
    assert (keys[np.tril_indices(9, -4)] == 0).all()  # k_t reaches x_{t-3} .. x_t only (kernel 4)
    assert (np.diagonal(keys, -3) > 0).all()
    assert (outputs[np.tril_indices(9)] > 0).all()  # the memory reaches every earlier input
    fig = lv.draw_input_reach(keys, outputs, kernel=4)
    assert sum(len(ax.images) for ax in fig.axes) == 2
    plt.close(fig)
    with pytest.raises(ValueError, match="one sequence"):
        lv.input_reach(layer, x[None])


def test_reach_explorer_follows_the_kernel():
    box = lv.reach_explorer(kernel=4, seq=9)
    keys, _ = box.result
    assert (keys > 0).sum(axis=1).max() == 4
    box.sliders["kernel"].value = 2
    keys, outputs = box.result
    assert (keys > 0).sum(axis=1).max() == 2 and "2 input(s)" in box.readout.value
    box.sliders["kernel"].value = 0
    keys, _ = box.result
    assert (keys > 0).sum(axis=1).max() == 1  # no convolution: k_t is made from x_t alone
    plt.close("all")
    with pytest.raises(ValueError, match="kernel"):
        lv.reach_explorer(kernel=9)
