"""MAL (Eqs. 29-31): what its attention reads, and the layer against a plain re-statement with the input norm."""

import pytest
import torch

from titans_edu.attention import rope
from titans_edu.model_config import ModelConfig
from titans_edu.models import build_model, make_mixer

pytestmark = pytest.mark.usefixtures("one_thread")


def attention_input(model, tokens):
    """What the attention of the first block reads on ``tokens`` (the last call: the stream after ``p``)."""
    caught = {}
    hook = model.blocks[0].mixer.attention.register_forward_hook(lambda m, args, out: caught.update(x=args[0]))
    with torch.no_grad():
        model(tokens)
    hook.remove()
    return caught["x"]


def rms(t):
    return t.pow(2).mean().sqrt().item()


@pytest.mark.parametrize("dim", [32, 64])
def test_attention_reads_a_normalised_stream_at_init(dim):
    """The fresh model's attention input has the scale of a normalised token, as in SWA, not the small scale
    of the memory's output projection (about 0.04 at dim 32 without the norm)."""
    model = build_model("mal", "tiny", vocab_size=48, dim=dim, depth=2, window=8, chunk_size=8)
    tokens = torch.randint(0, 48, (4, 40))
    seen = attention_input(model, tokens)
    y, _ = model.blocks[0].mixer.memory(model.blocks[0].mixer_norm(model.embed(tokens)))
    assert rms(y) < 0.2, "the memory's output is small at init; this test needs that to mean anything"
    assert 0.9 < rms(seen) < 1.1


def test_attention_scores_start_like_swa():
    """Scores q.k / sqrt(d) of the same size as SWA's: MAL's attention does not start as a flat average."""
    scores = {}
    for variant in ("mal", "swa"):
        torch.manual_seed(0)
        model = build_model(variant, "tiny", vocab_size=48, dim=32, depth=1, window=8, chunk_size=8)
        x = attention_input(model, torch.randint(0, 48, (4, 40)))
        att = model.blocks[0].mixer.attention
        q, k, _ = (att.split_heads(t) for t in att.to_qkv(x).chunk(3, dim=-1))
        scores[variant] = rms(q @ k.transpose(-1, -2) / att.head_dim**0.5)
    assert 0.3 < scores["mal"] / scores["swa"] < 3


def reference_mal(mixer, x):
    """Eqs. 29-31 with the input norm: y = M([p || x]), o = SW-Attn(RMSNorm(y)) over the whole stream, written
    with an explicit mask; outputs at the positions of x. ``x (batch, n, dim)``."""
    att, n_p, window = mixer.attention, mixer.persistent.n_tokens, mixer.window
    y = mixer.norm_y(mixer.memory(mixer.persistent.prepend(x))[0])  # (batch, N_p + n, dim)
    positions = torch.arange(y.shape[1])

    def heads(t):  # (batch, N, dim) -> (batch, heads, N, head_dim)
        return t.unflatten(-1, (att.heads, -1)).transpose(1, 2)

    w_q, w_k, w_v = att.to_qkv.weight.chunk(3, dim=0)
    q, k, v = rope(heads(y @ w_q.T), positions), rope(heads(y @ w_k.T), positions), heads(y @ w_v.T)
    i, j = positions[:, None], positions[None, :]
    visible = (j <= i) & (i - j < window)  # plain SW-Attn: M(p) leaves the window like any token
    scores = (q @ k.transpose(-1, -2) / att.head_dim**0.5).masked_fill(~visible, float("-inf"))
    o = att.to_out((scores.softmax(-1) @ v).transpose(1, 2).flatten(2))
    return o[:, n_p:]


@pytest.fixture
def mixer(float64):
    config = ModelConfig(variant="mal", vocab_size=32, dim=16, heads=2, depth=1, window=4, persistent=3,
                         chunk_size=3)
    mixer = make_mixer(config)
    with torch.no_grad():
        mixer.norm_y.weight.uniform_(0.5, 1.5)  # a trained-looking gain, so that a missing weight shows
    return mixer


def test_mixer_equals_its_equations(mixer):
    x = torch.randn(2, 13, 16)
    got, _ = mixer(x, mixer.init_state(2))
    assert torch.allclose(got, reference_mal(mixer, x), atol=1e-10, rtol=0)


def test_mixer_fed_token_by_token_equals_its_equations(mixer):
    x = torch.randn(1, 13, 16)
    state, parts = mixer.init_state(1), []
    for t in range(x.shape[1]):
        out, state = mixer(x[:, t : t + 1], state)
        parts.append(out)
    assert torch.allclose(torch.cat(parts, 1), reference_mal(mixer, x), atol=1e-10, rtol=0)
