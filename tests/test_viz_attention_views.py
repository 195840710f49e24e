"""The notebook 07-08 views: masks against hand-built ones, attention weights against the package's attention,
the sink example, the MAC trace against the mixer, and the explorers' callbacks (no browser)."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from titans_edu.models.attention import Attention, causal_mask, segment_mask, sliding_window_mask  # noqa: E402
from titans_edu.models.lm import build_model  # noqa: E402
from titans_edu.course.tasks import History  # noqa: E402
from titans_edu.viz import attention_views as av  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread", "close_figures")


# --- masks ---


def test_mac_sequence_mask_by_hand():
    # 5 tokens, segments of 3 (the last one short), one persistent token: keys [p | h0..h4 | x0..x4]
    expected = torch.tensor([
        [1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0],
        [1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0],
        [1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1],
    ]).bool()
    assert torch.equal(av.mac_sequence_mask(5, segment=3, n_persistent=1), expected)


def test_mac_sequence_mask_of_one_segment_is_the_segment_mask():
    assert torch.equal(av.mac_sequence_mask(6, segment=6, n_persistent=2), segment_mask(6, 2))
    assert torch.equal(av.mac_sequence_mask(6, segment=100, n_persistent=0), segment_mask(6, 0))
    with pytest.raises(ValueError, match="segment"):
        av.mac_sequence_mask(4, segment=0)


def test_figure3_masks_come_from_the_package_and_see_what_fig3_says():
    views = av.figure3_masks(n=20, window=5, segment=8, n_persistent=3)
    assert torch.equal(views[0].mask, causal_mask(20))
    assert torch.equal(views[1].mask, sliding_window_mask(20, 5, 3))
    for view in views:
        assert sum(count for _, count in view.groups) == view.mask.shape[1]
    counts = [av.visible_keys(v) for v in views]
    assert counts == [{"x": 20}, {"p": 3, "x": 5}, {"p": 3, "h": 8, "x": 8}]


def test_draw_masks_colours_each_kind_of_key():
    views = av.figure3_masks(n=6, window=2, segment=3, n_persistent=2)
    image = av._group_image(views[2].mask, views[2].groups)
    assert set(np.unique(image[:, :2])) == {1}  # persistent: always visible
    assert image[0, 2] == 2 and image[0, 3] == 0 and image[0, 8] == 3  # h0 visible, h1 hidden, x0 visible
    fig = av.draw_masks(views)
    assert len(fig.axes) == 3 and "Fig. 3a" in fig.axes[2].get_title()


def test_mask_explorer_redraws_from_its_sliders():
    box = av.mask_explorer(n=12, window=4, segment=6, n_persistent=2)
    box.sliders["n_persistent"].value = 5  # the observer re-renders
    assert "p 5" in box.readout.value
    box.sliders["segment"].value = 3
    views = box.render()
    assert views[2].mask.shape == (12, 5 + 24) and av.visible_keys(views[2]) == {"p": 5, "h": 3, "x": 3}
    assert "x 4" in box.readout.value  # the window's 4 tokens


# --- attention weights ---


@pytest.mark.parametrize("window, use_p, use_h", [(None, False, False), (3, True, False), (None, True, True)])
def test_explain_attention_equals_the_attention_module(float64, window, use_p, use_h):
    att = Attention(dim=8, heads=2)
    x, h, p = torch.randn(2, 6, 8), torch.randn(2, 6, 8), torch.randn(3, 8)
    pos = torch.arange(4, 10)
    kw = dict(window=window, persistent=p if use_p else None, extra=h if use_h else None)
    view = av.explain_attention(att, x, pos, **kw)
    want, _ = att(x, pos, **kw)
    assert torch.allclose(view.output, want, atol=1e-12)
    keys = (3 if use_p else 0) + (12 if use_h else 6)
    assert view.weights.shape == (2, 2, 6, keys)
    assert torch.allclose(view.weights.sum(-1), torch.ones(2, 2, 6))
    if window is not None:  # hidden keys get exactly zero weight
        hidden = ~sliding_window_mask(6, window, 3)
        assert (view.weights[..., hidden] == 0).all()


def test_persistent_mass_sums_the_first_columns():
    w = torch.tensor([[0.5, 0.2, 0.3], [0.1, 0.1, 0.8]])
    assert torch.allclose(av.persistent_mass(w, 2), torch.tensor([0.7, 0.2]))
    assert torch.equal(av.persistent_mass(w, 0), torch.zeros(2))


# --- the sink ---


def test_sink_example_turns_the_head_down():
    low, mid, high = (av.sink_example(s) for s in (-30.0, 0.0, 30.0))
    assert low.weights[0] < 1e-12 and low.output_norm == pytest.approx(low.output_norm_without_sink, rel=1e-9)
    assert high.weights[0] > 1 - 1e-9 and high.output_norm < 1e-9
    assert high.output_norm < mid.output_norm < low.output_norm
    assert np.isclose(mid.weights.sum(), 1.0)
    # the sink takes mass from every token in the same proportion: the ratios between tokens stay
    assert np.allclose(mid.weights[1:] / mid.weights[1:].sum(), low.weights[1:] / low.weights[1:].sum())


def test_sink_explorer_readout_follows_the_slider():
    box = av.sink_explorer(0.0)
    box.sliders["sink_score"].value = 6.0
    text = box.render()
    assert text == av.draw_sink_example(6.0)[1] and f"{av.sink_example(6.0).output_norm:.3f}" in text


def test_sink_probe_attention_view_matches_its_forward(float64):
    for n_p in (0, 4):
        probe = av.SinkProbe(vocab_size=10, dim=8, heads=2, window=3, n_persistent=n_p).double()
        tokens = torch.randint(0, 10, (2, 7))
        view = probe.attention_view(tokens)
        assert view.weights.shape == (2, 2, 7, n_p + 7) and probe.n_persistent == n_p
        logits = probe.readout(probe.norm(probe.embed(tokens) + view.output))
        assert torch.allclose(logits, probe(tokens), atol=1e-12)


# --- MAC, segment by segment ---


def small_mac(persistent=3):
    torch.manual_seed(0)
    model = build_model("mac", vocab_size=16, dim=16, heads=2, depth=1, segment=5, persistent=persistent,
                        chunk_size=3).double()
    return model.blocks[0].mixer


def test_trace_mac_reproduces_the_mixer(float64):
    mixer = small_mac()
    x = torch.randn(2, 13, 16)
    traces = av.trace_mac(mixer, x)
    want, _ = mixer(x, mixer.init_state(2))
    assert [t.start for t in traces] == [0, 5, 10] and [t.index for t in traces] == [0, 1, 2]
    assert torch.allclose(torch.cat([t.o for t in traces], 1), want, atol=1e-12)
    assert traces[2].weights.shape == (2, 2, 3, 3 + 6)  # the short last segment
    hidden = ~segment_mask(5, 3)
    assert (traces[0].weights[..., hidden] == 0).all()  # h_j and x_j hidden from queries i < j


def test_trace_mac_first_segment_reads_the_initial_memory(float64):
    mixer = small_mac(persistent=0)
    x = torch.randn(1, 10, 16)
    first = av.trace_mac(mixer, x)[0]
    m0 = mixer.memory.initial_state(1).weights
    assert torch.allclose(first.h, mixer.memory.output(mixer.memory.memory(m0, first.q), x[:, :5]), atol=1e-12)
    # the second segment reads a memory that segment 0 has written: different h for the same tokens
    again = av.trace_mac(mixer, torch.cat([x[:, :5], x[:, :5]], 1))
    assert not torch.allclose(again[1].h, again[0].h, atol=1e-6)


def test_group_mass_adds_up_to_one(float64):
    mixer = small_mac()
    trace = av.trace_mac(mixer, torch.randn(1, 5, 16))[0]
    mass = av.group_mass(trace.weights, trace.groups(3))
    assert set(mass) == {"p", "h", "x"}
    assert torch.allclose(mass["p"] + mass["h"] + mass["x"], torch.ones(1, 2, 5))
    assert torch.allclose(mass["p"], av.persistent_mass(trace.weights, 3))


def test_mac_explorer_draws_the_chosen_segment_and_head(float64):
    mixer = small_mac()
    traces = av.trace_mac(mixer, torch.randn(1, 15, 16))
    box = av.mac_explorer(traces, n_persistent=3, heads=2, marked={2: [0, 2]})
    assert box.readout.value.startswith("<b>segment 2, head 0")
    box.sliders["segment"].value = 1
    box.sliders["head"].value = 1
    text = box.render()
    assert text == av.draw_mac_segment(traces[1], 3, head=1)[1] and text.startswith("segment 1, head 1")


def test_draw_histories_one_line_per_model():
    h = History(loss=[1.0, 0.5], eval_steps=[1, 2], eval_loss=[1.0, 0.5], eval_accuracy=[0.1, 0.9])
    fig = av.draw_histories({"a": h, "b": h}, chance=0.0625)
    assert len(fig.axes[0].lines) == 3  # two models and the chance line
