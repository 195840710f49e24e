"""The recall task, the MAG probes and the explorers of notebooks 09-10 (titans_edu.viz.gate_views), no browser."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from titans_edu import build_model  # noqa: E402
from titans_edu.viz import gate_views as gv  # noqa: E402

TINY = dict(vocab_size=gv.VOCAB_SIZE, dim=16, heads=2, depth=1, window=4, persistent=3, chunk_size=4)


pytestmark = pytest.mark.usefixtures("close_figures")


@pytest.fixture
def mag():
    torch.manual_seed(0)
    return build_model("mag", "tiny", **TINY).double()


class Oracle(nn.Module):
    """Predicts the true next token of a known stream (or always token 0 with ``cheat=False``)."""

    def __init__(self, stream: gv.RecallStream, cheat: bool = True) -> None:
        super().__init__()
        self.stream, self.cheat = stream, cheat

    def forward(self, tokens):
        target = self.stream.tokens[:, 1:] if self.cheat else torch.zeros_like(tokens)
        return 20.0 * nn.functional.one_hot(target, gv.VOCAB_SIZE).float(), None


# --- the task ---


def test_recall_stream_layout():
    s = gv.recall_stream(batch=5, n_pairs=3, gap=10, generator=1)
    assert s.tokens.shape == (5, 9 * 3 + 10) and s.kind.shape == (37,)
    assert s.kind.tolist()[:16] == [0] * 6 + [1] * 10
    assert s.kind.tolist()[16:23] == [2, 2, 3, 3, 1, 4, 4]
    assert s.far.tolist() == [18, 25, 32] and s.near.tolist() == [21, 28, 35]
    assert s.answers.tolist() == [18, 25, 32, 21, 28, 35]
    keys = s.tokens[:, s.kind.tolist().index(0) :: 1][:, :6:2]
    assert (keys < 16).all() and all(len(set(row.tolist())) == 3 for row in keys)  # distinct keys
    assert ((s.tokens[:, 6:16] >= 32) & (s.tokens[:, 6:16] < 48)).all()  # filler
    rows = torch.arange(5)[:, None]
    # a far query repeats the pair at far_source; a near query repeats the pair five tokens earlier
    assert torch.equal(s.tokens[:, s.far], s.tokens[rows, s.far_source])
    assert torch.equal(s.tokens[:, s.far + 1], s.tokens[rows, s.far_source + 1])
    assert torch.equal(s.tokens[:, s.near], s.tokens[:, s.near - 5])
    assert torch.equal(s.tokens[:, s.near + 1], s.tokens[:, s.near - 4])  # beyond a kernel-4 convolution
    assert ((s.tokens[:, s.near - 1] >= 32) & (s.tokens[:, s.near - 1] < 48)).all()  # the spacer
    assert (s.tokens[:, s.far + 1] >= 16).all() and (s.tokens[:, s.far + 1] < 32).all()
    assert s.far_distance == 10 + 3  # from the first far query back to the value of the last far pair
    # every sequence asks each far pair once
    assert all(sorted(row.tolist()) == [0, 2, 4] for row in s.far_source)


def test_recall_stream_depends_only_on_the_seed():
    a = gv.recall_stream(4, generator=3)
    torch.manual_seed(99)
    assert torch.equal(a.tokens, gv.recall_stream(4, generator=3).tokens)
    assert not torch.equal(a.tokens, gv.recall_stream(4, generator=4).tokens)
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(gv.recall_stream(4, generator=gen).tokens, a.tokens)
    assert not torch.equal(gv.recall_stream(4, generator=gen).tokens, a.tokens)  # a generator moves on


@pytest.mark.parametrize("kwargs", [dict(batch=0), dict(n_pairs=0), dict(n_pairs=9), dict(gap=-1)])
def test_bad_recall_streams_raise(kwargs):
    with pytest.raises(ValueError, match="n_pairs"):
        gv.recall_stream(**kwargs)


def test_scores_of_a_perfect_and_of_a_constant_model():
    s = gv.recall_stream(8, generator=0)
    perfect = gv.recall_scores(Oracle(s), s)
    assert perfect["far"] == perfect["near"] == 1.0 and perfect["loss"] < 1e-6
    constant = gv.recall_scores(Oracle(s, cheat=False), s)
    assert constant["far"] == constant["near"] == 0.0 and constant["loss"] > 10  # token 0 is a key, never a value


def test_training_lowers_the_loss_and_repeats_exactly():
    torch.manual_seed(0)
    model = build_model("swa", "tiny", vocab_size=gv.VOCAB_SIZE, dim=16, depth=1, window=8)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    result = gv.train_recall(model, 40, batch=16, lr=1e-2)
    losses = result["loss"]
    assert len(losses) == 40 and result["seconds"] > 0
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3
    model.load_state_dict(first)
    assert gv.train_recall(model, 40, batch=16, lr=1e-2)["loss"] == losses


# --- looking inside MAG ---


def test_gate_trace_catches_what_the_gate_combines(mag):
    s = gv.recall_stream(3, generator=0)
    mixer = mag.blocks[0].mixer
    outputs = []
    handle = mixer.register_forward_hook(lambda mod, args, out: outputs.append(out[0]))
    logits, _ = mag(s.inputs)
    handle.remove()
    trace = gv.gate_trace(mag, s.inputs)
    assert trace.gate.shape == trace.y.shape == trace.m.shape == trace.x.shape == (3, 42, 16)
    assert ((trace.gate > 0) & (trace.gate < 1)).all()
    # o = RMSNorm_a(y) * gate is the mixer's output (Eq. 28 with the CHOICE)
    assert torch.allclose(mixer.gate.norm_y(trace.y) * trace.gate, outputs[0], atol=1e-12)
    # the hooks are gone and the model computes what it computed before
    assert not mixer._forward_hooks and not mixer.gate._forward_hooks
    assert torch.equal(mag(s.inputs)[0], logits)


def test_tracing_a_model_without_mag_raises():
    model = build_model("mal", "tiny", **TINY)
    with pytest.raises(ValueError, match="MAGMixer"):
        gv.gate_trace(model, gv.recall_stream(1).inputs)


def test_branch_ablation_replaces_one_branch_by_its_mean_and_then_leaves(mag):
    s = gv.recall_stream(4, generator=0)
    before = gv.gate_trace(mag, s.inputs)
    with gv.branch_ablation(mag, "memory"):
        flat = gv.gate_trace(mag, s.inputs)
    assert torch.allclose(flat.gate, flat.gate[:1, :1].expand_as(flat.gate))  # one fixed vector
    assert torch.allclose(flat.m[0, 0], before.m.mean(dim=(0, 1)))
    assert torch.equal(flat.y, before.y)
    with gv.branch_ablation(mag, "attention"):
        flat = gv.gate_trace(mag, s.inputs)
    assert torch.allclose(flat.y, before.y.mean(dim=(0, 1)).expand_as(flat.y))
    assert torch.equal(flat.gate, before.gate)
    assert not mag.blocks[0].mixer.gate._forward_pre_hooks
    with pytest.raises(RuntimeError), gv.branch_ablation(mag, "memory"):
        raise RuntimeError("a failing cell")
    assert not mag.blocks[0].mixer.gate._forward_pre_hooks  # removed even when the block fails
    with pytest.raises(ValueError, match="branch"):
        with gv.branch_ablation(mag, "both"):
            pass


def test_attention_weights_reproduce_the_attention_branch(mag):
    s = gv.recall_stream(2, generator=0)
    trace = gv.gate_trace(mag, s.inputs)
    mixer = mag.blocks[0].mixer
    att, n_p, n = mixer.attention, 3, s.inputs.shape[1]
    weights = gv.attention_weights(mixer, trace.x)
    assert weights.shape == (2, 2, n, n_p + n)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 2, n, dtype=weights.dtype))
    assert (weights[..., :n_p] > 0).all()  # the persistent prefix is always visible (Fig. 3b)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    assert (weights[..., n_p:][..., (j > i) | (i - j >= 4)] == 0).all()  # causal, window W = 4
    _, _, v = (att.split_heads(t) for t in att.to_qkv(trace.x).chunk(3, dim=-1))
    v_p = att.persistent_keys_values(mixer.persistent.tokens, 2)[1]
    out = weights @ torch.cat([v_p, v], dim=2)
    assert torch.allclose(att.to_out(out.transpose(1, 2).flatten(2)), trace.y, atol=1e-12)


def test_gate_by_answer_is_one_when_the_gate_names_the_answer_and_small_when_it_ignores_it():
    s = gv.recall_stream(64, generator=0)
    n = s.inputs.shape[1]
    gate = torch.rand(64, n, 16, generator=torch.Generator().manual_seed(0))
    answers = s.tokens[:, s.far + 1] - 16
    named = gate.clone()
    named[:, s.far] = nn.functional.one_hot(answers, 16).float()
    trace = gv.GateTrace(gate, gate, gate, named)
    means, r2, r2_null = gv.gate_by_answer(trace, s, "far")
    assert r2 == pytest.approx(1.0) and r2_null < 0.2
    assert means.shape == (16, 16)
    _, r2_near, _ = gv.gate_by_answer(trace, s, "near")
    assert r2_near < 0.2
    with pytest.raises(ValueError, match="far"):
        gv.gate_by_answer(trace, s, "middle")


# --- figures and explorers ---


def test_draw_gates_and_ablation_figures(mag):
    s = gv.recall_stream(16, generator=0)
    fig = gv.draw_gates(gv.gate_trace(mag, s.inputs), s)
    assert any("far query keys" in ax.get_title() for ax in fig.axes)
    results = {"full": {"far": 0.5, "near": 0.9, "loss": 1.0}, "no memory": {"far": 0.06, "near": 0.8, "loss": 2.0}}
    fig = gv.draw_ablation(results)
    heights = [round(bar.get_height(), 2) for bar in fig.axes[0].patches]
    assert heights == [0.5, 0.06, 0.9, 0.8]
    fig, (left, right) = plt.subplots(1, 2)
    assert gv.draw_ablation(results, ax=right) is fig and len(right.patches) == 4 and not left.patches


def test_draw_position_reads_out_the_position_and_the_ablation(mag):
    s = gv.recall_stream(4, generator=0)
    far = int(s.far[0])
    _, text = gv.draw_position(mag, s, far, sample=1)
    assert text.startswith(f"t = {far} (far query)") and "tokens back, the window is 4" in text
    _, near_text = gv.draw_position(mag, s, int(s.near[0]))
    assert "(near query)" in near_text and "tokens back" not in near_text
    _, ablated = gv.draw_position(mag, s, far, sample=1, ablate="memory")
    assert "memory branch averaged" in ablated
    guess = lambda t: t.split("predicted ")[1].split(" (p")[0]  # noqa: E731
    assert guess(ablated) != guess(text)  # the memory branch changes what this (untrained) model predicts
    for bad in (dict(position=99), dict(position=0, sample=4), dict(position=0, ablate="gate")):
        with pytest.raises(ValueError):
            gv.draw_position(mag, s, **bad)


def test_position_explorer_updates_its_readout(mag):
    s = gv.recall_stream(4, generator=0)
    box = gv.position_explorer(mag, s)
    controls = {child.description: child for child in box.children[0].children}
    assert box.readout.value.startswith(f"<b>t = {int(s.far[0])} (far query)")
    controls["position t"].value = int(s.near[0])
    assert "(near query)" in box.readout.value
    controls["average"].value = "attention"
    assert "attention branch averaged" in box.readout.value


def test_visibility_masks_by_hand():
    masks = list(gv.visibility_masks(window=3, n_persistent=2, length=5).values())
    mag, mal = masks
    assert mag.shape == mal.shape == (5, 7)
    assert mag[:, :2].all()  # MAG: p always visible
    # MAL: query x_i sits at stream position 2 + i and sees positions i .. 2 + i
    want = torch.tensor([[0 <= (2 + i) - j < 3 for j in range(7)] for i in range(5)])
    assert torch.equal(mal, want)
    assert torch.equal(mag[:, 2:], want[:, 2:])  # the token part is the same window
    with pytest.raises(ValueError, match="window"):
        gv.visibility_masks(0, 2, 5)


def test_draw_visibility_counts_the_queries_that_see_p():
    _, text = gv.draw_visibility(window=4, n_persistent=3, length=12, query=5)
    assert "only the first 3 of 12 queries see any M(p)" in text and "x6 sees 0" in text
    _, text = gv.draw_visibility(window=6, n_persistent=2, length=12, query=0)
    assert "first 5 of 12" in text and "x1 sees 2" in text


def test_visibility_explorer_follows_its_sliders():
    box = gv.visibility_explorer(window=4, n_persistent=3, length=12)
    controls = {child.description: child for child in box.children[0].children}
    assert "first 3 of 12" in box.readout.value
    controls["window W"].value = 8
    assert "first 7 of 12" in box.readout.value
    controls["tokens n"].value = 6
    assert controls["query (index)"].max == 5 and "of 6 queries" in box.readout.value
