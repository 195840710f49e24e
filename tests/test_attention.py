"""Masks against hand-built ones, RoPE, the persistent prefix, the KV cache and the backend choice."""

import pytest
import torch
import torch.nn.functional as F

from titans_edu.models.attention import (
    Attention,
    KVCache,
    attend,
    attention_backend,
    causal_mask,
    rope,
    segment_mask,
    sliding_window_mask,
    visibility,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_causal_mask_is_lower_triangular():
    expected = torch.tensor([
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [1, 1, 1, 0],
        [1, 1, 1, 1],
    ]).bool()
    assert torch.equal(causal_mask(4), expected)


def test_sliding_window_mask_with_persistent_prefix_by_hand():
    # keys [p0 p1 | x0 x1 x2 x3 x4], window 2: x_i sees x_{i-1}, x_i and both persistent tokens (Fig. 3b)
    expected = torch.tensor([
        [1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 0, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 1, 0],
        [1, 1, 0, 0, 0, 1, 1],
    ]).bool()
    assert torch.equal(sliding_window_mask(5, window=2, n_persistent=2), expected)


def test_sliding_window_without_persistent_and_window_one():
    assert torch.equal(sliding_window_mask(3, window=1), torch.eye(3, dtype=torch.bool))
    assert torch.equal(sliding_window_mask(4, window=10), causal_mask(4))


def test_segment_mask_by_hand():
    # MAC window of a 3-token segment: keys [p0 | h0 h1 h2 | s0 s1 s2]; s_i sees p, h_j and s_j for j <= i
    expected = torch.tensor([
        [1, 1, 0, 0, 1, 0, 0],
        [1, 1, 1, 0, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1],
    ]).bool()
    assert torch.equal(segment_mask(3, n_persistent=1), expected)


def test_visibility_with_a_cache_is_a_slice_of_the_full_mask():
    full = sliding_window_mask(10, window=3, n_persistent=2)
    pos = torch.arange(10)
    part = visibility(pos[6:], pos, window=3, n_persistent=2)  # queries 6..9, keys of every position
    assert torch.equal(part, full[6:])


@pytest.mark.parametrize("window", [0, -1])
def test_window_below_one_raises(window):
    with pytest.raises(ValueError, match="window must be >= 1"):
        sliding_window_mask(4, window)


def test_rope_scores_depend_only_on_relative_position(float64):
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(i, j):
        return (rope(q, torch.tensor([i])) * rope(k, torch.tensor([j]))).sum().item()

    assert score(5, 2) == pytest.approx(score(103, 100), abs=1e-12)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-6)
    assert torch.allclose(rope(q, torch.tensor([0])), q)  # position 0 is no rotation
    assert torch.allclose(rope(q, torch.tensor([7])).norm(), q.norm())  # a rotation keeps the norm


def manual_attention(q, q_raw, k, v, k_p, v_p, mask):
    """Softmax attention written out: tokens scored with rotated q, persistent keys with the raw q."""
    scale = q.shape[-1] ** -0.5
    scores = torch.cat([q_raw @ k_p.transpose(-1, -2), q @ k.transpose(-1, -2)], dim=-1) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ torch.cat([v_p, v], dim=2)


def test_attend_with_persistent_prefix_matches_manual_softmax(float64):
    b, h, n, d, n_p = 2, 2, 6, 4, 3
    q_raw, k_raw, v = torch.randn(b, h, n, d), torch.randn(b, h, n, d), torch.randn(b, h, n, d)
    k_p, v_p = torch.randn(b, h, n_p, d), torch.randn(b, h, n_p, d)
    pos = torch.arange(10, 10 + n)
    q, k = rope(q_raw, pos), rope(k_raw, pos)
    got = attend(q, k, v, pos, pos, window=3, persistent=(k_p, v_p), q_raw=q_raw)
    want = manual_attention(q, q_raw, k, v, k_p, v_p, sliding_window_mask(n, 3, n_p))
    assert torch.allclose(got, want, atol=1e-12)


def test_persistent_scores_do_not_depend_on_the_query_position(float64):
    """A persistent key looks the same from every position: shifting all positions changes nothing, and a
    query that sees only persistent keys and itself gives the same output at any position."""
    att = Attention(dim=8, heads=2)
    x, p = torch.randn(1, 5, 8), torch.randn(3, 8)
    y0, _ = att(x, torch.arange(5), window=2, persistent=p)
    y1, _ = att(x, torch.arange(1000, 1005), window=2, persistent=p)
    assert torch.allclose(y0, y1, atol=1e-10)


@pytest.mark.parametrize("window, keep", [(None, None), (3, 2)])
def test_attention_with_cache_equals_one_call(float64, window, keep):
    att = Attention(dim=8, heads=2)
    x, p = torch.randn(2, 11, 8), torch.randn(2, 8)
    pos = torch.arange(11)
    full, _ = att(x, pos, window=window, persistent=p)
    cache, parts = None, []
    for a, b in [(0, 4), (4, 5), (5, 11)]:
        y, cache = att(x[:, a:b], pos[a:b], cache, window=window, persistent=p, keep=keep)
        parts.append(y)
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-12)
    expected_len = 11 if keep is None else keep
    assert len(cache) == expected_len and cache.positions.tolist() == list(range(11 - expected_len, 11))


def test_extra_tokens_are_keys_only_at_the_positions_of_x(float64):
    """MAC's memory tokens: keys visible causally, sharing the positions of the segment tokens."""
    att = Attention(dim=8, heads=2)
    x, h = torch.randn(1, 4, 8), torch.randn(1, 4, 8)
    y, cache = att(x, torch.arange(4), extra=h)
    assert y.shape == (1, 4, 8) and cache.positions.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    h2 = h.clone()
    h2[:, 2] += 1.0  # memory token 2 belongs to token 2: positions 0 and 1 must not see it
    y2, _ = att(x, torch.arange(4), extra=h2)
    assert torch.allclose(y[:, :2], y2[:, :2]) and not torch.allclose(y[:, 2:], y2[:, 2:])


def test_cache_keep_zero_and_cleared():
    c = KVCache.empty(1, 2, 4, torch.zeros(1))
    c = c.extend(torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4), torch.arange(3), keep=0)
    assert len(c) == 0
    c = c.extend(torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4), torch.arange(3))
    assert len(c) == 3 and len(c.cleared()) == 0 and c.cleared().keys.shape == (1, 2, 0, 4)


def test_heads_must_divide_dim_and_head_dim_be_even():
    with pytest.raises(ValueError, match="heads must divide dim"):
        Attention(dim=10, heads=3)
    with pytest.raises(ValueError, match="even head dim"):
        Attention(dim=6, heads=2)


def test_cpu_takes_the_math_path_with_persistent_keys_and_sdpa_without():
    q = torch.zeros(1, 1, 1, 4)
    assert attention_backend(q, n_keys=10**6, persistent=True) == "math"
    assert attention_backend(q, n_keys=10**6) == "sdpa"
    assert attention_backend(q, n_keys=10, backend="sdpa", persistent=True) == "sdpa"
    with pytest.raises(ValueError, match="backend"):
        attention_backend(q, 10, backend="dense")


@pytest.mark.parametrize("window, n_p", [(None, 0), (3, 0), (None, 2), (4, 3)])
def test_math_and_sdpa_paths_agree_on_outputs_and_gradients(float64, window, n_p):
    b, h, n, m, d = 2, 2, 5, 9, 4
    leaves = [torch.randn(*shape, requires_grad=True) for shape in
              [(b, h, n, d), (b, h, n, d), (b, h, m, d), (b, h, m, 6), (b, h, n_p, d), (b, h, n_p, 6)]]
    q, q_raw, k, v, k_p, v_p = leaves
    q_pos, k_pos = torch.arange(14, 14 + n), torch.arange(10, 10 + m)
    persistent = (k_p, v_p) if n_p else None
    outs = [attend(q, k, v, q_pos, k_pos, window, persistent, q_raw, backend=path) for path in ("math", "sdpa")]
    assert torch.allclose(outs[0], outs[1], atol=1e-12)
    weight = torch.randn_like(outs[0])
    grads = [torch.autograd.grad((out * weight).sum(), leaves, allow_unused=True) for out in outs]
    for got, want in zip(*grads):
        assert (got is None) == (want is None)
        assert got is None or torch.allclose(got, want, atol=1e-12)


def test_cpu_forward_never_calls_flex(monkeypatch, float64):
    import titans_edu.models.flex as flex_path

    def fail(*args, **kwargs):
        raise AssertionError("the FlexAttention path ran on CPU")

    monkeypatch.setattr(flex_path, "flex_attend", fail)
    att = Attention(dim=8, heads=2)
    att(torch.randn(1, 2000, 8), torch.arange(2000), window=16, keep=15)


@pytest.mark.filterwarnings("ignore::UserWarning")  # FlexAttention warns that it runs uncompiled
def test_flex_path_matches_dense_masks(float64):
    pytest.importorskip("torch.nn.attention.flex_attention")
    from titans_edu.models.flex import flex_attend

    torch.set_default_dtype(torch.float32)  # FlexAttention's reference path runs in float32
    b, h, n, m, d, n_p = 1, 2, 12, 12, 8, 3
    q, k, v = torch.randn(b, h, n, 2 * d), torch.randn(b, h, n_p + m, 2 * d), torch.randn(b, h, n_p + m, d)
    pos = torch.arange(20, 20 + n)
    got = flex_attend(q, k, v, pos, pos, window=4, n_persistent=n_p, scale=d**-0.5, compiled=False)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=sliding_window_mask(n, 4, n_p), scale=d**-0.5)
    assert torch.allclose(got, want, atol=1e-5)


def test_plain_causal_shortcut_equals_the_explicit_mask(float64):
    q, k, v = torch.randn(1, 2, 7, 4), torch.randn(1, 2, 7, 4), torch.randn(1, 2, 7, 4)
    pos = torch.arange(7)
    fast = attend(q, k, v, pos, pos, same_tokens=True)
    masked = attend(q, k, v, pos, pos, same_tokens=False)
    assert torch.allclose(fast, masked, atol=1e-12)
    assert torch.allclose(masked, manual_attention(q, q, k, v, k[:, :, :0], v[:, :, :0], causal_mask(7)), atol=1e-12)
