"""What keeps the memory bounded (titans_edu.memory.stability), in the naive rule and the chunked rule alike.

Three kinds of check:

* the twins still agree exactly, in float64, with dampening and an active norm bound (outputs, final state and
  every gradient, for every chunk size and any split of the stream into calls);
* property checks: gates at their extremes (eta near 1, theta at its maximum, alpha near 0) on long periodic
  streams keep the weights finite and inside the bound that the module docstring derives, for linear and MLP
  memories, chunked and naive; the plain rule on the same streams diverges, so the checks can fail;
* the algebra behind the bound: with dampening, a chunk's gradients enter M with a total weight of at most
  ``sum theta``, whatever ``eta`` is.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from titans_edu.memory.chunked import chunked_memory
from titans_edu.memory.coefficients import chunk_coefficients
from titans_edu.memory.layer import MemoryConfig, NeuralMemory
from titans_edu.memory.naive import naive_memory
from titans_edu.memory.networks import MLPMemory, ModuleMemory
from titans_edu.memory.stability import PLAIN, Stability, layer_norms

B, H, T, D = 2, 2, 20, 4
TIGHT = Stability(dampening=True, max_norm=0.3)  # small enough that the bound is active in the short streams


def stream(batch=B, heads=H, seq=T, dim=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = nn.functional.normalize(torch.randn(batch, heads, seq, dim, generator=g), dim=-1)
    q = nn.functional.normalize(torch.randn(batch, heads, seq, dim, generator=g), dim=-1)
    v = torch.randn(batch, heads, seq, dim, generator=g)
    theta = 0.3 * torch.rand(batch, heads, seq, generator=g)
    eta = torch.rand(batch, heads, seq, generator=g)
    alpha = 0.2 * torch.rand(batch, heads, seq, generator=g)
    return k, v, q, theta, eta, alpha


MEMORIES = {
    "linear": lambda: MLPMemory(D, depth=1, heads=H),
    "mlp2": lambda: MLPMemory(D, depth=2, heads=H),
    "user-module": lambda: ModuleMemory(nn.Sequential(nn.Linear(D, 6), nn.Tanh(), nn.Linear(6, D)), heads=H),
}


def everything(y, state):
    return (y, *state.weights, *state.anchor, *state.surprise)


@pytest.mark.parametrize("name", MEMORIES)
@pytest.mark.parametrize("chunk_size", [1, 3, 16, T])
def test_the_twins_agree_with_dampening_and_an_active_bound(float64, name, chunk_size):
    memory = MEMORIES[name]()
    inputs = [x.requires_grad_() for x in stream()]
    y_n, s_n = naive_memory(memory, *inputs, chunk_size=chunk_size, stability=TIGHT)
    y_c, s_c = chunked_memory(memory, *inputs, chunk_size=chunk_size, stability=TIGHT)
    for fast, slow in zip(everything(y_c, s_c), everything(y_n, s_n)):
        torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-11)

    # the bound is really at work here: the plain rule gives other outputs
    y_plain, _ = chunked_memory(memory, *inputs, chunk_size=chunk_size)
    assert (y_plain - y_c).abs().max() > 1e-3

    # gradients of one outer loss through outputs and final state, w.r.t. the stream, the gates and M_0
    leaves = inputs + list(memory.parameters())

    def grads(y, state):
        loss = (y.sin() * y).sum() + sum((w * w.cos()).sum() for w in state.weights + state.surprise)
        return torch.autograd.grad(loss, leaves, retain_graph=True, allow_unused=True)

    for g_c, g_n in zip(grads(y_c, s_c), grads(y_n, s_n)):
        if g_n is None:
            assert g_c is None
        else:
            torch.testing.assert_close(g_c, g_n, rtol=1e-9, atol=1e-10)


def test_a_split_stream_equals_one_call_with_the_bound(float64):
    memory = MLPMemory(D, depth=2, heads=H)
    k, v, q, theta, eta, alpha = stream(seq=29)
    y_one, s_one = chunked_memory(memory, k, v, q, theta, eta, alpha, chunk_size=4, stability=TIGHT)
    ys, state = [], None
    for lo, hi in [(0, 3), (3, 4), (4, 11), (11, 12), (12, 29)]:  # calls that start and end inside chunks
        y, state = chunked_memory(memory, k[:, :, lo:hi], v[:, :, lo:hi], q[:, :, lo:hi], theta[..., lo:hi],
                                  eta[..., lo:hi], alpha[..., lo:hi], chunk_size=4, state=state, stability=TIGHT)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, dim=2), y_one, rtol=1e-12, atol=1e-13)
    for a, b in zip(state.weights + state.anchor, s_one.weights + s_one.anchor):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_the_bound_caps_each_layer_and_leaves_small_layers_alone(float64):
    bound = Stability(max_norm=2.0)
    big = torch.randn(3, 2, 5, 8) * 10
    small = torch.randn(3, 2, 8, 4) * 1e-3
    capped, untouched = bound.bound((big, small))
    radius = 2.0 * math.sqrt(8)
    norms = layer_norms((capped,))[0]
    torch.testing.assert_close(norms, torch.full_like(norms, radius))
    assert torch.equal(untouched, small)
    # directions are kept: each (sequence, head) matrix is only scaled
    cos = torch.nn.functional.cosine_similarity(capped.flatten(2), big.flatten(2), dim=-1)
    torch.testing.assert_close(cos, torch.ones_like(cos))
    # a zero layer stays zero, with a finite gradient
    zero = torch.zeros(1, 1, 3, 3, requires_grad=True)
    bound.bound((zero,))[0].sum().backward()
    assert torch.isfinite(zero.grad).all()


def test_dampening_bounds_a_chunks_total_step_whatever_eta_is(float64):
    g = torch.Generator().manual_seed(1)
    b = 16
    theta = torch.rand(100, b, generator=g)
    eta = 1 - torch.rand(100, b, generator=g) ** 4 * 1e-3  # eta in (0.999, 1)
    alpha = torch.zeros(100, b)
    plain = chunk_coefficients(theta, eta, alpha).C[:, -1].sum(-1)
    damped = chunk_coefficients(Stability().step_size(theta, eta), eta, alpha).C[:, -1].sum(-1)
    assert (damped <= theta.sum(-1) + 1e-12).all()  # at most the sum of the steps
    assert (plain > 0.45 * b * theta.sum(-1) / 2).all()  # without it, about (b + 1) / 2 times more


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_max_norm_must_be_a_positive_number(bad):
    with pytest.raises(ValueError, match="max_norm"):
        Stability(max_norm=bad)
    with pytest.raises(ValueError, match="max_norm"):
        MemoryConfig(dim=8, max_norm=bad)


def test_the_layer_uses_the_bound_and_normalised_values_by_default(float64):
    config = MemoryConfig(dim=8, heads=2, chunk_size=4)
    assert config.stability == Stability()
    layer = NeuralMemory(config).double()
    q, k, v, _ = layer.project(torch.randn(2, 6, 8), layer.initial_state(2).conv)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(2, 2, 6))
    plain = NeuralMemory(MemoryConfig(dim=8, heads=2, chunk_size=4, dampening=False, max_norm=None,
                                      normalize_values=False)).double()
    assert plain.config.stability == PLAIN


# --- property checks: extreme gates on long periodic streams ---


def periodic_stream(length: int, dim: int, period: int = 12, seed: int = 0):
    """Keys and queries as the layer makes them (SiLU, then unit length: non-negative, so similar), unit values,
    repeating every ``period`` tokens; gates at their extremes: eta in (0.99, 1), theta near its maximum, alpha
    below 1e-4."""
    g = torch.Generator().manual_seed(seed)
    keys = nn.functional.normalize(nn.functional.silu(torch.randn(period, dim, generator=g)), dim=-1)
    values = nn.functional.normalize(torch.randn(period, dim, generator=g), dim=-1)
    reps = math.ceil(length / period)
    k = keys.repeat(reps, 1)[:length][None, None]
    v = values.repeat(reps, 1)[:length][None, None]
    gate = lambda low, high: (low + (high - low) * torch.rand(1, 1, length, generator=g))  # noqa: E731
    return k, v, k.clone(), gate, length


def extreme_gates(gate, max_lr):
    return gate(0.9 * max_lr, max_lr), gate(0.99, 0.9999), gate(0.0, 1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("depth", [1, 2])
def test_extreme_gates_on_16k_tokens_stay_bounded_chunked(float64, depth):
    dim, b, max_lr = 8, 16, 0.5 / 16
    memory = MLPMemory(dim, depth=depth)
    k, v, q, gate, n = periodic_stream(16_384, dim)
    theta, eta, alpha = extreme_gates(gate, max_lr)
    with torch.no_grad():
        y, state = chunked_memory(memory, k, v, q, theta, eta, alpha, chunk_size=b, stability=Stability())
        y_plain, _ = chunked_memory(memory, k[..., :2048, :], v[..., :2048, :], q[..., :2048, :], theta[..., :2048],
                                    eta[..., :2048], alpha[..., :2048], chunk_size=b, stability=PLAIN)
    assert torch.isfinite(y).all() and all(torch.isfinite(w).all() for w in state.weights + state.surprise)
    radius = [2.0 * math.sqrt(w.shape[-1]) for w in state.anchor]
    for norm, r in zip(layer_norms(state.anchor), radius):
        assert norm.max() <= r * (1 + 1e-9)  # every chunk starts inside the bound
    if depth == 1:  # the bound of the module docstring: ||M_i|| <= R + 2 b max_lr U, U <= 2 (R + 1) for unit k, v
        R = radius[0]
        assert y.norm(dim=-1).max() <= R + 2 * b * max_lr * 2 * (R + 1)
    # the plain rule on the first 2K tokens of the same stream runs away
    assert not torch.isfinite(y_plain).all() or y_plain.abs().max() > 1e6


@pytest.mark.slow
@pytest.mark.parametrize("depth", [1, 2])
def test_extreme_gates_on_16k_tokens_stay_bounded_naive(float64, depth):
    dim, b, max_lr = 4, 16, 0.5 / 16
    memory = MLPMemory(dim, depth=depth, expansion=2.0)
    k, v, q, gate, n = periodic_stream(16_384, dim, seed=1)
    theta, eta, alpha = extreme_gates(gate, max_lr)
    with torch.no_grad():
        y, state = naive_memory(memory, k, v, q, theta, eta, alpha, chunk_size=b, stability=Stability())
        y_plain, _ = naive_memory(memory, k[..., :1024, :], v[..., :1024, :], q[..., :1024, :], theta[..., :1024],
                                  eta[..., :1024], alpha[..., :1024], chunk_size=b, stability=PLAIN)
    assert torch.isfinite(y).all() and all(torch.isfinite(w).all() for w in state.weights + state.surprise)
    for norm, w in zip(layer_norms(state.anchor), state.anchor):
        assert norm.max() <= 2.0 * math.sqrt(w.shape[-1]) * (1 + 1e-9)
    assert y.norm(dim=-1).max() < 1e3
    assert not torch.isfinite(y_plain).all() or y_plain.abs().max() > 1e6
