"""Each Titans mixer against a plain re-statement of its equations (Eqs. 21-31), in float64.

The references below share only the learned pieces with the mixers (the projections, the memory's parts, the
gates). Their attention is a softmax over a key list assembled by Python loops from the rules of Fig. 3, and
their memory is the per-token naive rule (``impl="naive"``), so masks, positions, segment boundaries, which
memory state each read uses, and where the persistent tokens go are all checked independently.
"""

import copy
from dataclasses import replace

import pytest
import torch

from titans_edu.models.attention import rope
from titans_edu.models.config import ModelConfig
from titans_edu.models.lm import make_mixer

T = 13

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def build(small_config):
    """``build(variant, **overrides)``: a one-block mixer of ``small_config`` in float64, and a copy of it whose
    memory runs the per-token naive rule."""

    def make(variant, **overrides):
        config = {**small_config, "depth": 1, **overrides}
        mixer = make_mixer(ModelConfig(variant=variant, **config)).double()
        with torch.no_grad():  # trained-looking norm gains (they start at 1), so that a reference missing one shows
            for norm in (m for m in mixer.modules() if isinstance(m, torch.nn.RMSNorm)):
                norm.weight.uniform_(0.5, 1.5)
        reference = copy.deepcopy(mixer)
        reference.memory.config.impl = "naive"  # the per-token loop of Eqs. 13-15
        return mixer, reference

    return make


def explicit_attention(att, xq, q_positions, keys, persistent=None):
    """``xq (batch, n, dim)`` attends to ``keys``: for each query, a list of ``(features (batch, dim), position)``.

    Token scores use RoPE at the given positions; persistent keys are scored with the unrotated query.
    """
    dim, b = xq.shape[-1], xq.shape[0]
    wq, wk, wv = att.to_qkv.weight.split(dim)
    heads, hd = att.heads, att.head_dim

    def heads_of(t):  # (batch, dim) -> (batch, heads, 1, hd)
        return t.reshape(b, heads, 1, hd)

    outputs = []
    for i in range(xq.shape[1]):
        q_raw = heads_of(xq[:, i] @ wq.T)
        q = rope(q_raw, torch.tensor([q_positions[i]]))
        scores, values = [], []
        for p in ([] if persistent is None else persistent):
            scores.append((q_raw * heads_of(p.expand(b, dim) @ wk.T)).sum(-1))
            values.append(heads_of(p.expand(b, dim) @ wv.T))
        for feat, pos in keys[i]:
            k = rope(heads_of(feat @ wk.T), torch.tensor([pos]))
            scores.append((q * k).sum(-1))
            values.append(heads_of(feat @ wv.T))
        weights = (torch.cat(scores, -1) * hd**-0.5).softmax(-1)  # (batch, heads, keys)
        out = (weights.unsqueeze(-1) * torch.cat(values, 2)).sum(2)  # (batch, heads, hd)
        outputs.append(att.to_out(out.reshape(b, dim)))
    return torch.stack(outputs, 1)


def reference_mac(ref, x):
    """Eqs. 21-25, segment by segment, the attention window assembled by hand."""
    b, n, _ = x.shape
    C, mem = ref.segment, ref.memory
    state = mem.initial_state(b)
    q_read, _, _, _ = mem.project(x, state.conv)  # the read stream: one causal pass over the input
    outputs = []
    for s0 in range(0, n, C):
        seg = range(s0, min(s0 + C, n))
        xs = x[:, s0 : seg[-1] + 1]
        # Eq. 21: h_t = M*_{t-1}(q_t), with the memory after the previous segment
        h = mem.output(mem.memory(state.weights, q_read[:, :, s0 : seg[-1] + 1]), xs)
        # Eqs. 22-23: [p || h || S], token i of the segment sees all of p and h_j, s_j for j <= i
        keys = [[(h[:, j - s0], j) for j in seg if j <= i] + [(x[:, j], j) for j in seg if j <= i] for i in seg]
        y = explicit_attention(ref.attention, xs, list(seg), keys, ref.persistent.tokens)
        # Eqs. 24-25: write from y, read each position with the memory through that position, gate
        m, state = mem(y, state)
        outputs.append(ref.gate(y, m))
    return torch.cat(outputs, 1)


def memory_over_prefixed_stream(ref, x):
    """M([p || x]) in one call from M_0: the outputs at every position of the stream, ``(batch, N_p + n, dim)``."""
    return ref.memory(ref.persistent.prepend(x))[0]


def reference_mag(ref, x):
    """Eqs. 26-28: SW-Attn* over [p || x] (prefix always visible) gated by M([p || x])."""
    n_p, n, W = ref.persistent.n_tokens, x.shape[1], ref.window
    positions = [n_p + i for i in range(n)]
    keys = [[(x[:, j], n_p + j) for j in range(n) if i - W < j <= i] for i in range(n)]
    y = explicit_attention(ref.attention, x, positions, keys, ref.persistent.tokens)
    m = memory_over_prefixed_stream(ref, x)[:, n_p:]
    return ref.gate(y, m)


def reference_mal(ref, x):
    """Eqs. 29-31: y = M([p || x]); plain SW-Attn over all of RMSNorm(y) (mal.py's CHOICE); outputs at the
    positions of x."""
    n_p, n, W = ref.persistent.n_tokens, x.shape[1], ref.window
    y = ref.norm_y(memory_over_prefixed_stream(ref, x))  # positions 0 .. n_p + n - 1
    stream = range(n_p + n)
    keys = [[(y[:, j], j) for j in stream if i - W < j <= i] for i in stream]
    return explicit_attention(ref.attention, y, list(stream), keys)[:, n_p:]


def reference_lmm(ref, x):
    return memory_over_prefixed_stream(ref, x)[:, ref.persistent.n_tokens :]


REFERENCES = {"mac": reference_mac, "mag": reference_mag, "mal": reference_mal, "lmm": reference_lmm}


@pytest.mark.parametrize("variant", list(REFERENCES))
def test_mixer_equals_its_equations(variant, build, small_config, float64):
    mixer, reference = build(variant)
    x = torch.randn(2, T, small_config["dim"])
    got, _ = mixer(x, mixer.init_state(2))
    want = REFERENCES[variant](reference, x)
    assert torch.allclose(got, want, atol=1e-10, rtol=0)


@pytest.mark.parametrize("variant", list(REFERENCES))
def test_mixer_fed_token_by_token_equals_its_equations(variant, build, small_config, float64):
    mixer, reference = build(variant)
    x = torch.randn(1, T, small_config["dim"])
    state, parts = mixer.init_state(1), []
    for t in range(T):
        y, state = mixer(x[:, t : t + 1], state)
        parts.append(y)
    assert torch.allclose(torch.cat(parts, 1), REFERENCES[variant](reference, x), atol=1e-10, rtol=0)


def test_mac_read_queries_are_the_memory_layers_queries(build, small_config, float64):
    """MAC's q-only read path gives the q of NeuralMemory.project, also when streamed with its own cache."""
    mixer, _ = build("mac")
    x = torch.randn(2, 9, small_config["dim"])
    want = mixer.memory.project(x, mixer.memory.initial_state(2).conv)[0]
    cache = mixer.init_state(2).read_conv
    q1, cache = mixer.read_queries(x[:, :4], cache)
    q2, _ = mixer.read_queries(x[:, 4:], cache)
    assert torch.allclose(torch.cat([q1, q2], 2), want, atol=1e-12)


def test_mac_memory_tokens_use_the_memory_of_earlier_segments_only(build, small_config, float64):
    """Changing what the memory holds after segment 0 changes segment 1 but not segment 0 (Eq. 21)."""
    mixer, _ = build("mac", persistent=0)
    x = torch.randn(1, 10, small_config["dim"])
    state = mixer.init_state(1)
    out, _ = mixer(x, state)
    y0, mid = mixer(x[:, :5], state)
    other_memory = replace(mid.memory, weights=tuple(w + 0.1 for w in mid.memory.weights))
    bumped = replace(mid, memory=other_memory)  # a different M after segment 0
    y1, _ = mixer(x[:, 5:], bumped)
    assert torch.allclose(y0, out[:, :5], atol=1e-12)
    assert not torch.allclose(y1, out[:, 5:], atol=1e-6)


def test_mac_never_writes_the_persistent_tokens_into_memory(build, float64):
    mixer, _ = build("mac")
    state = mixer.init_state(1)
    assert state.memory.seen == 0 and state.position == 0


@pytest.mark.parametrize("variant", ["mag", "mal", "lmm"])
def test_memory_reads_the_persistent_tokens_once_at_the_stream_start(variant, build, small_config, float64):
    mixer, _ = build(variant)
    state = mixer.init_state(2)
    memory = state if variant == "lmm" else state.memory
    assert memory.seen == small_config["persistent"]
    _, later = mixer(torch.randn(2, 4, small_config["dim"]), state)
    assert (later if variant == "lmm" else later.memory).seen == small_config["persistent"] + 4
