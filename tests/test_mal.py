"""MAL (Eqs. 29-31): what its attention reads at init. The layer against its equations, the input norm included,
is in test_arch_reference.py."""

import pytest
import torch

from titans_edu.models.lm import build_model

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
