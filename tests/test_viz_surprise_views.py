"""Notebooks 03-05: the measured trace equals the package's update rule, and the explorers' callbacks show the
effects they claim (no browser)."""

import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from titans_edu import MLPMemory, associative_loss, chunked_memory, naive_memory  # noqa: E402
from titans_edu.course.streams import event_stream, shift_stream  # noqa: E402
from titans_edu.viz import surprise_views as sv  # noqa: E402


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+\.\d+", text)]


@pytest.mark.parametrize("depth", [1, 2])
def test_trace_equals_the_naive_and_chunked_rules_with_data_dependent_gates(depth):
    torch.set_num_threads(1)  # tiny per-token steps: one thread is fastest (the fixture restores 2 next test)
    stream = shift_stream(n_phases=3, phase_length=8, facts_per_phase=3, dim=6, batch=2, seed=5)
    torch.manual_seed(0)
    memory = MLPMemory(6, depth=depth, expansion=2.0).double()
    gen = torch.Generator().manual_seed(0)
    theta, eta, alpha = (torch.rand(2, 1, 24, generator=gen, dtype=torch.float64) * s for s in (0.2, 0.9, 0.1))
    trace = sv.trace_memory(memory, stream, theta, eta, alpha)
    k, v, q = stream.kvq()
    _, naive = naive_memory(memory, k, v, q, theta, eta, alpha, chunk_size=1)
    _, fast = chunked_memory(memory, k, v, q, theta, eta, alpha, chunk_size=1)
    for ours, ref, ref2 in zip(trace.state.weights, naive.weights, fast.weights):
        assert torch.allclose(ours, ref, atol=1e-12) and torch.allclose(ours, ref2, atol=1e-12)
    for ours, ref in zip(trace.state.surprise, naive.surprise):
        assert torch.allclose(ours, ref, atol=1e-12)
    probe_k, probe_v = stream.fact_keys.unsqueeze(1), stream.fact_values.unsqueeze(1)
    final = associative_loss(memory(trace.state.weights, probe_k), probe_v)
    assert torch.allclose(trace.recall[:, -1], final[:, 0])


def test_trace_measures_the_loss_before_the_write_and_the_linear_gradient():
    stream = event_stream(length=30, dim=8, n_familiar=2, events=(20,), batch=2)
    memory = sv.empty_linear_memory(8)
    trace = sv.trace_memory(memory, stream, 0.2, keep_weights=True)
    k, v = stream.keys, stream.values
    before = torch.cat([torch.zeros(1, 8, 8, dtype=torch.float64), trace.weights[:-1]])
    expected = ((k[0].unsqueeze(1) @ before).squeeze(1) - v[0]).pow(2).sum(-1)
    assert torch.allclose(trace.loss[0], expected)
    assert trace.loss[0, 0] == pytest.approx(1.0)  # the empty memory answers 0 to a unit value
    # linear memory, unit keys: ||u_t|| = ||2 k^T (k W - v)|| = 2 sqrt(loss); with eta = alpha = 0 the write is theta u
    assert torch.allclose(trace.grad_norm, 2 * trace.loss.sqrt())
    assert torch.allclose(trace.update_norm, 0.2 * trace.grad_norm)
    assert torch.allclose(trace.surprise_norm, trace.update_norm)


def test_as_gate_shapes_and_errors():
    stream = event_stream(length=30, dim=4, events=(20,), batch=2)
    assert sv.as_gate(0.1, stream).shape == (2, 1, 30)
    assert torch.equal(sv.as_gate(stream.feature, stream)[1, 0], stream.feature.double())
    assert sv.as_gate(torch.zeros(2, 30), stream).shape == (2, 1, 30)
    with pytest.raises(ValueError, match=r"theta must be a number or a tensor of shape \(T,\)"):
        sv.as_gate(torch.zeros(7), stream, "theta")


def test_trace_rejects_a_memory_of_the_wrong_size():
    with pytest.raises(ValueError, match="build the memory with the stream's dims"):
        sv.trace_memory(sv.empty_linear_memory(5), event_stream(length=30, dim=4, events=(20,)), 0.1)


def test_theta_gate_is_the_sigmoid_gate():
    feature = torch.tensor([-1.0, 0.0, 1.0])
    theta = sv.theta_gate(feature, max_lr=0.5, weight=4.0)
    assert theta[1] == pytest.approx(0.25) and theta[2] == pytest.approx(0.5 * torch.sigmoid(torch.tensor(4.0)).item())
    assert theta[0] < 0.01 < theta[2] - theta[1]


def test_surprise_gate_writes_events_and_skips_noise():
    fig, constant = sv.draw_surprise(theta=0.25, gate=0.0, t=160)
    plt.close(fig)
    fig, gated = sv.draw_surprise(theta=0.25, gate=6.0, t=160)
    assert len(fig.axes) == 4  # surprise trace, recall, heatmap and its colour bar
    plt.close(fig)
    event_c, noise_c = _numbers(constant)[2:4]
    event_g, noise_g = _numbers(gated)[2:4]
    assert event_g < 0.5 * event_c  # events are remembered better
    assert noise_g > 1.0 > noise_c  # noise is no longer stored


def test_surprise_rejects_bad_sliders():
    with pytest.raises(ValueError, match="theta must be in"):
        sv.draw_surprise(theta=0.9)
    with pytest.raises(ValueError, match="t must be a token index"):
        sv.draw_surprise(t=500)


def test_momentum_memorises_the_episode_and_the_gate_spares_the_rest():
    fig, plain = sv.draw_momentum(theta=0.05, eta=0.0)
    plt.close(fig)
    fig, everywhere = sv.draw_momentum(theta=0.05, eta=0.8)
    plt.close(fig)
    fig, gated = sv.draw_momentum(theta=0.05, eta=0.8, gated=True)
    plt.close(fig)
    ep0 = _numbers(plain)[2]
    ep, fam = _numbers(everywhere)[2], _numbers(everywhere)[4]
    ep_g, fam_g = _numbers(gated)[2], _numbers(gated)[4]
    assert ep < 0.5 * ep0 and ep_g < 0.5 * ep0  # momentum keeps the episode
    assert fam_g < 0.5 * fam  # the gated eta does not chase the noise of familiar tokens


def test_momentum_reports_divergence():
    fig, text = sv.draw_momentum(theta=0.3, eta=0.95)
    plt.close(fig)
    assert "DIVERGED" in text


def test_forgetting_recovers_recall_and_bounds_the_memory():
    readouts = {}
    for key, kwargs in {"none": {}, "alpha": {"alpha": 0.02}, "shift": {"alpha_shift": 1.0}}.items():
        fig, text = sv.draw_forgetting(**kwargs)
        plt.close(fig)
        readouts[key] = _numbers(text)
    current, oldest, norm = (lambda r: (r[2], r[3], r[5]))(readouts["none"])
    current_a, oldest_a, norm_a = (lambda r: (r[2], r[3], r[5]))(readouts["alpha"])
    current_s = readouts["shift"][2]
    assert current_s < current_a < current  # forgetting brings recall of the current phase back
    assert norm_a < 0.7 * norm  # and keeps the memory small
    assert oldest > 1.5 and 1.0 < oldest_a < oldest  # without it, old keys read confident junk


def test_explorers_update_their_readout():
    pytest.importorskip("ipywidgets")
    for make, change in (
        (sv.surprise_explorer, {"theta": 0.25, "gate": 6.0, "t": 60}),
        (sv.momentum_explorer, {"theta": 0.05, "eta": 0.0, "gated": False}),
        (sv.forgetting_explorer, {"theta": 0.05, "eta": 0.8, "alpha": 0.02, "alpha_shift": 0.0}),
    ):
        box = make()
        first = box.readout.value
        assert first.startswith("<b>") and first != "<b></b>"
        box.update(**change)
        assert box.readout.value != first
        plt.close("all")


def test_every_slider_label_is_shown_whole():
    """ipywidgets cuts a description longer than its default width ("heatmap …"); 'initial' sizes it to fit."""
    ipywidgets = pytest.importorskip("ipywidgets")
    for make in (sv.surprise_explorer, sv.momentum_explorer, sv.forgetting_explorer):
        box = make()
        for name, control in box.sliders.items():
            if isinstance(control, (ipywidgets.FloatSlider, ipywidgets.IntSlider)):
                assert control.style.description_width == "initial", (make.__name__, name)
        plt.close("all")
