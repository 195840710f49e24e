"""The NeuralMemory layer: chunked vs naive on every parameter's gradient, streaming, causality, errors."""

import pytest
import torch
from torch import nn

from titans_edu.memory.layer import MemoryConfig, NeuralMemory
from titans_edu.memory.state import MemoryState

DIM, T = 8, 20


def twin_layers(**overrides):
    """The same layer twice: once with the chunked fast path, once with the naive per-token loop."""
    fast = NeuralMemory(MemoryConfig(dim=DIM, heads=2, impl="chunked", **overrides))
    naive = NeuralMemory(MemoryConfig(dim=DIM, heads=2, impl="naive", **overrides))
    naive.load_state_dict(fast.state_dict())
    return fast, naive


@pytest.mark.parametrize("chunk_size", [1, 3, 16, T])
def test_layer_gradients_match_for_every_parameter(float64, chunk_size):
    fast, naive = twin_layers(chunk_size=chunk_size)
    x = torch.randn(2, T, DIM, requires_grad=True)
    y_fast, s_fast = fast(x)
    y_naive, s_naive = naive(x)
    torch.testing.assert_close(y_fast, y_naive, rtol=1e-10, atol=1e-12)
    for a, b in zip(s_fast.weights + s_fast.surprise, s_naive.weights + s_naive.surprise):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)

    names = [n for n, _ in fast.named_parameters()]
    for required in ("to_qkv.weight", "conv.weight", "to_gates.weight", "to_gates.bias", "memory.initial.0", "memory.initial.1"):
        assert required in names
    g_fast = torch.autograd.grad((y_fast**2).sum(), [x, *fast.parameters()])
    g_naive = torch.autograd.grad((y_naive**2).sum(), [x, *naive.parameters()])
    for name, a, b in zip(["x", *names], g_fast, g_naive):
        assert a.abs().sum() > 0, f"no gradient reaches {name}"
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=lambda m: f"{name}: {m}")


def test_user_module_memory_through_the_layer(float64):
    module = nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 4))
    fast = NeuralMemory(MemoryConfig(dim=DIM, heads=2, chunk_size=5), memory=module)
    naive = NeuralMemory(MemoryConfig(dim=DIM, heads=2, chunk_size=5, impl="naive"), memory=module)
    naive.load_state_dict(fast.state_dict())
    x = torch.randn(2, 12, DIM)
    torch.testing.assert_close(fast(x)[0], naive(x)[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cuts", [[0, 7, 8, 19, T], list(range(T + 1))])
def test_chained_calls_equal_one_call(float64, cuts):
    layer = NeuralMemory(MemoryConfig(dim=DIM, heads=2, chunk_size=6))
    x = torch.randn(2, T, DIM)
    y_once, s_once = layer(x)
    state, ys = None, []
    for a, b in zip(cuts, cuts[1:]):
        y, state = layer(x[:, a:b], state)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, 1), y_once, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state.conv, s_once.conv)
    assert state.seen == T


def test_perturbing_a_token_never_changes_earlier_outputs(float64):
    layer = NeuralMemory(MemoryConfig(dim=DIM, heads=2, chunk_size=8))
    x = torch.randn(1, T, DIM)
    y, _ = layer(x)
    for t in (0, 3, 8, 15, T - 1):
        x2 = x.clone()
        x2[:, t] += 1.0
        y2, _ = layer(x2)
        assert torch.equal(y2[:, :t], y[:, :t]), f"output before {t} changed"
        assert not torch.allclose(y2[:, t], y[:, t])


def test_switching_momentum_and_forgetting_off_fixes_their_gates():
    layer = NeuralMemory(MemoryConfig(dim=DIM, heads=2, momentum=False, forgetting=False))
    theta, eta, alpha = layer.gates(torch.randn(3, 5, DIM))
    assert theta.shape == eta.shape == alpha.shape == (3, 2, 5)
    assert torch.all(eta == 0) and torch.all(alpha == 0)
    assert torch.all((theta > 0) & (theta < layer.config.max_lr))


@pytest.mark.parametrize("chunk_size", [1, 16, 64])
def test_a_fresh_layer_stays_finite_on_a_long_stream(chunk_size):
    """The default step size (0.5 / chunk_size) keeps the inner loop from diverging at every chunk size."""
    layer = NeuralMemory(MemoryConfig(dim=64, heads=2, chunk_size=chunk_size))
    with torch.no_grad():
        y, state = layer(torch.randn(2, 512, 64))
    assert torch.isfinite(y).all()
    assert max(w.abs().max().item() for w in state.weights) < 10.0


def test_gates_start_with_little_forgetting():
    layer = NeuralMemory(MemoryConfig(dim=DIM, heads=2))
    _, eta, alpha = layer.gates(torch.randn(4, 50, DIM))
    assert alpha.mean() < 0.05
    assert torch.all((eta > 0) & (eta < 1))


def test_bfloat16_autocast_runs_and_stays_close_to_float32():
    layer = NeuralMemory(MemoryConfig(dim=32, heads=2, chunk_size=16))
    x = torch.randn(2, 48, 32)
    y32, s32 = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16, s16 = layer(x)
    assert torch.isfinite(y16).all()
    assert all(w.dtype == torch.float32 for w in s16.weights + s16.surprise)  # the state stays in fp32
    rel = (y16.float() - y32).norm() / y32.norm()
    assert rel < 0.05, f"bf16 output differs from fp32 by {rel:.3f}"
    y16.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


def test_compiles_as_one_graph():
    """No data-dependent Python control flow in the hot path: dynamo traces the layer without a graph break."""
    layer = NeuralMemory(MemoryConfig(dim=16, heads=2, chunk_size=4))
    x = torch.randn(2, 10, 16)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    y, state = compiled(x)
    torch.testing.assert_close(y, layer(x)[0])
    assert state.seen == 10


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dim=10, heads=3), "not divisible"),
        (dict(dim=8, chunk_size=0), "chunk_size"),
        (dict(dim=8, depth=0), "depth"),
        (dict(dim=8, max_lr=0.0), "max_lr"),
        (dict(dim=8, max_lr=-1.0), "max_lr"),
        (dict(dim=8, conv_kernel=-1), "conv_kernel"),
        (dict(dim=8, activation="relu6"), "activation"),
        (dict(dim=8, impl="fast"), "impl"),
        (dict(dim=0), "dim"),
    ],
)
def test_bad_config_raises_a_helpful_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MemoryConfig(**kwargs)


def test_bad_input_raises_a_helpful_error():
    layer = NeuralMemory(MemoryConfig(dim=DIM, heads=2))
    with pytest.raises(ValueError, match=r"\(batch, seq, dim=8\)"):
        layer(torch.randn(T, DIM))  # missing batch dim
    with pytest.raises(ValueError, match="dim=8"):
        layer(torch.randn(2, T, DIM + 1))
    with pytest.raises(ValueError, match="floating-point"):
        layer(torch.ones(2, T, DIM, dtype=torch.long))


def test_a_state_from_another_config_or_batch_is_refused():
    layer = NeuralMemory(MemoryConfig(dim=DIM, heads=2))
    _, state = layer(torch.randn(2, 5, DIM))
    with pytest.raises(ValueError, match="batch size 3"):
        layer(torch.randn(3, 5, DIM), state)
    other = NeuralMemory(MemoryConfig(dim=DIM, heads=2, depth=1))
    with pytest.raises(ValueError, match="same config"):
        other(torch.randn(2, 5, DIM), state)
    no_conv = NeuralMemory(MemoryConfig(dim=DIM, heads=2, conv_kernel=2))
    with pytest.raises(ValueError, match="conv cache"):
        no_conv(torch.randn(2, 5, DIM), state)
    with pytest.raises(ValueError, match="MemoryState"):
        layer(torch.randn(2, 5, DIM), state=(1, 2))


def test_detached_state_cuts_the_graph():
    layer = NeuralMemory(MemoryConfig(dim=DIM, heads=2))
    _, state = layer(torch.randn(1, 5, DIM))
    assert state.weights[0].requires_grad
    cut = state.detach()
    assert isinstance(cut, MemoryState) and not any(w.requires_grad for w in cut.weights + cut.anchor + cut.surprise)
    assert cut.seen == 5
