"""Every variant: the build_model contract, causality, streaming, generation, gradients, presets, configs."""

import dataclasses

import pytest
import torch

from titans_edu.models.generate import generate, sample
from titans_edu.models.config import NOMINAL_PARAMS, TITANS_VARIANTS, VARIANTS, ModelConfig
from titans_edu.models.lm import ModelState, build_model
from titans_edu.memory.state import MemoryState

SEQ = 13

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def small(small_config):
    """``small(variant, **overrides)``: a float64 model of ``small_config``; baselines get no persistent tokens."""

    def build(variant, **overrides):
        config = {**small_config, **overrides}
        if variant not in TITANS_VARIANTS:
            config["persistent"] = 0
        return build_model(variant, "tiny", **config).double()

    return build


def tokens(batch=2, seq=SEQ, vocab=32):
    return torch.randint(0, vocab, (batch, seq))


# --- the contract the trainer relies on ---


@pytest.mark.parametrize("variant", VARIANTS)
def test_build_model_contract(variant):
    model = build_model(variant)  # the tiny preset
    c = model.config
    assert (c.variant, c.vocab_size, c.dim, c.depth) == (variant, 256, 64, 2) and c.context >= 1
    logits, state = model(torch.randint(0, 256, (2, 40)))
    assert logits.shape == (2, 40, 256) and isinstance(state, ModelState) and state.position == 40
    assert isinstance(model.init_state(2), ModelState)


def test_unknown_variant_or_size_lists_the_valid_ones():
    with pytest.raises(ValueError, match="lmm, mac, mag, mal, transformer, swa"):
        build_model("rnn")
    with pytest.raises(ValueError, match="tiny, 170m, 340m, 400m, 760m"):
        build_model("mac", "1b")


# --- causality and streaming, for every variant ---


@pytest.mark.parametrize("variant", VARIANTS)
def test_causality(variant, small):
    model = small(variant)
    x = tokens()
    logits, _ = model(x)
    for t in (0, 4, 5, 9, 12):  # inside and at the edges of segments, windows and chunks
        y = x.clone()
        y[:, t] = (y[:, t] + 1) % 32
        changed, _ = model(y)
        assert torch.equal(changed[:, :t], logits[:, :t]), f"token {t} changed an earlier logit"
        assert not torch.allclose(changed[:, t], logits[:, t]), f"token {t} did not change its own logit"


@pytest.mark.parametrize("variant", VARIANTS)
def test_chained_calls_equal_one_call(variant, small):
    model = small(variant)
    x = tokens(seq=23)
    full, final = model(x)
    state, parts = None, []
    for a, b in [(0, 2), (2, 9), (9, 10), (10, 23)]:  # boundaries off every segment, window and chunk edge
        logits, state = model(x[:, a:b], state)
        parts.append(logits)
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-10, rtol=0)
    assert state.position == final.position == 23


@pytest.mark.parametrize("variant", VARIANTS)
def test_token_by_token_equals_full_forward(variant, small):
    model = small(variant)
    x = tokens(seq=SEQ)
    full, _ = model(x)
    state, steps = model.init_state(2), []
    for t in range(SEQ):
        logits, state = model(x[:, t : t + 1], state)
        steps.append(logits)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-10, rtol=0)


@pytest.mark.parametrize("variant", ["mac", "mag", "transformer"])
def test_greedy_generation_follows_the_full_forward(variant, small):
    model = small(variant)
    prompt = tokens(seq=4)
    out, state = generate(model, prompt, max_new_tokens=8, temperature=0.0)
    assert out.shape == (2, 12) and torch.equal(out[:, :4], prompt) and state.position == 12
    logits, _ = model(out)
    assert torch.equal(out[:, 4:], logits[:, 3:-1].argmax(-1))  # each new token is the argmax after its prefix
    more, _ = model.generate(out[:, -1:], 3, temperature=0.0, state=state)  # the state continues the stream
    assert more.shape == (2, 4)


def test_sample_respects_top_k_and_rejects_bad_arguments():
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]])
    g = torch.Generator().manual_seed(0)
    draws = {sample(logits, 1.0, top_k=2, generator=g).item() for _ in range(50)}
    assert draws <= {1, 2} and len(draws) == 2
    with pytest.raises(ValueError, match="temperature"):
        sample(logits, -1.0)
    with pytest.raises(ValueError, match="top_k"):
        sample(logits, 1.0, top_k=0)


def state_numel(obj) -> int:
    """Elements in every tensor a state holds."""
    if isinstance(obj, torch.Tensor):
        return obj.numel()
    if dataclasses.is_dataclass(obj):
        return sum(state_numel(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    if isinstance(obj, (list, tuple)):
        return sum(state_numel(o) for o in obj)
    return 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_size_per_token(variant, small):
    """The state a step reads: flat for LMM, MAG, MAL and SWA; for MAC it grows within a segment and drops when
    the segment ends; for Transformer++ it grows with the context."""
    model = small(variant, depth=1)
    x = tokens(batch=1, seq=31)
    sizes, state = [], model.init_state(1)
    for t in range(31):
        _, state = model(x[:, t : t + 1], state)
        sizes.append(state_numel(state))
    if variant in ("lmm", "mag", "mal", "swa"):
        assert len(set(sizes[5:])) == 1  # once the window is full
    elif variant == "mac":  # segment 5: positions 4, 9, ... end a segment (and its window); 5, 10, ... start one
        assert sizes[8] == sizes[28] and sizes[9] == sizes[29] and sizes[10] == sizes[25]
        assert sizes[9] < sizes[10] < sizes[8]
    else:
        assert all(a < b for a, b in zip(sizes, sizes[1:]))


# --- gradients ---


@pytest.mark.parametrize("variant", TITANS_VARIANTS)
def test_gradients_reach_persistent_tokens_m0_gates_and_projections(variant, small):
    model = small(variant)
    logits, _ = model(tokens(seq=12))
    logits.logsumexp(-1).mean().backward()
    mixer = model.blocks[0].mixer
    named = {
        "persistent tokens": mixer.persistent.tokens,
        "M_0": mixer.memory.memory.initial[0],
        "gates": mixer.memory.to_gates.weight,
        "memory projections": mixer.memory.to_qkv.weight,
        "memory output": mixer.memory.to_out.weight,
        "embedding": model.embed.weight,
    }
    if variant != "lmm":
        named["attention projections"] = mixer.attention.to_qkv.weight
    for name, p in named.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches the {name}"


def test_detached_state_cuts_the_graph_but_keeps_values(small):
    model = small("mac")
    x = tokens(seq=8)
    _, state = model(x)
    detached = state.detach()
    w = detached.layers[0].memory.weights[0]
    assert not w.requires_grad and torch.equal(w, state.layers[0].memory.weights[0])
    logits, _ = model(x, detached)
    logits.sum().backward()  # trains on the second piece only


@pytest.mark.parametrize("variant", TITANS_VARIANTS)
def test_fresh_tiny_model_stays_finite_over_its_whole_context(variant):
    """The memory's step size at init must not make the inner loop diverge (see ``max_lr`` in model_config)."""
    model = build_model(variant)
    with torch.no_grad():
        logits, state = model(torch.randint(0, 256, (1, model.config.context)))
    assert torch.isfinite(logits).all()


def test_a_few_training_steps_lower_the_loss_of_mac():
    model = build_model("mac", "tiny", depth=1, segment=16)
    data = torch.randint(0, 256, (1, 8)).repeat(2, 8)  # a repeated pattern: copying from context pays
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        logits, _ = model(data[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), data[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(map(lambda v: v == v, losses)) and losses[-1] < 0.8 * losses[0]


# --- presets and configs ---


@pytest.mark.parametrize("size", list(NOMINAL_PARAMS))
def test_preset_parameter_counts_are_within_ten_percent(size):
    nominal = NOMINAL_PARAMS[size]
    for variant in VARIANTS:
        with torch.device("meta"):
            model = build_model(variant, size)
        c = model.config
        assert (c.vocab_size, c.context) == (32000, 4096)
        count = model.num_params()
        assert abs(count - nominal) / nominal < 0.10, f"{variant} at {size}: {count / 1e6:.1f}M"


@pytest.mark.parametrize("overrides, message", [
    (dict(segment=0), "segment"),
    (dict(window=0), "window"),
    (dict(heads=3), "does not divide dim"),
    (dict(dim=12, heads=4), "even head dim"),
    (dict(memory_heads=5), "memory_heads"),
    (dict(persistent=-1), "persistent"),
    (dict(depth=0), "depth"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(max_lr=0.0), "max_lr"),
    (dict(attention_backend="dense"), "attention_backend"),
    (dict(segmnt=8), "unknown config field"),
])
def test_invalid_configs_raise_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_model("mac", "tiny", **overrides)


def test_baselines_reject_persistent_tokens_and_presets_drop_them():
    with pytest.raises(ValueError, match="no persistent memory"):
        ModelConfig(variant="transformer", persistent=4)
    assert build_model("swa").config.persistent == 0 and build_model("mag").config.persistent == 4


def test_state_of_another_batch_is_rejected(small):
    model = small("mag")
    _, state = model(tokens(batch=2, seq=3))
    with pytest.raises(ValueError, match="batch 1"):
        model(tokens(batch=1, seq=3), state)
    with pytest.raises(ValueError, match=r"\(batch, seq\)"):
        model(torch.zeros(3, dtype=torch.long))


# --- the GPU path's model on CPU: bf16 autocast and torch.compile ---


@pytest.mark.parametrize("variant", ["mac", "mag", "mal", "lmm"])
def test_bf16_autocast_runs_and_keeps_the_memory_state_in_fp32(variant, small_config):
    model = build_model(variant, "tiny", **{**small_config, "dim": 32})
    x = tokens(seq=12)
    reference, _ = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, state = model(x)
    memory = state.layers[0] if variant == "lmm" else state.layers[0].memory
    assert isinstance(memory, MemoryState) and all(w.dtype == torch.float32 for w in memory.weights)
    assert torch.isfinite(logits).all()
    error = (logits.float() - reference).norm() / reference.norm()
    assert error < 0.05, f"bf16 relative error {error:.3f}"


@pytest.mark.slow
def test_mac_traces_into_one_graph_without_breaks(small_config):
    torch._dynamo.reset()
    model = build_model("mac", "tiny", **{**small_config, "depth": 1})
    explanation = torch._dynamo.explain(model)(tokens(seq=12))
    assert explanation.graph_break_count == 0, explanation.break_reasons
