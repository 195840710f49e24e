"""The chunked dual form (Eqs. 16-18) against the naive per-token loop, in float64.

Outputs, final state and gradients must agree to round-off for every chunk size, including sequences whose
length is not a multiple of the chunk size, and for every memory model.
"""

import pytest
import torch
from torch import nn

from titans_edu.memory.chunked import chunked_memory, dual_form_chunk
from titans_edu.memory.coefficients import chunk_coefficients, decay_matrix
from titans_edu.memory.fused_chunk import FusedChunk, Layout, fused_chunk
from titans_edu.memory.networks import MLPMemory, ModuleMemory
from titans_edu.memory.naive import naive_memory

B, H, T, D = 2, 2, 20, 4


def make_stream(memory, batch=B, seq=T, seed=0):
    g = torch.Generator().manual_seed(seed)
    dim_v = memory.initial[-1].shape[-1] if isinstance(memory, MLPMemory) else D
    k = nn.functional.normalize(torch.randn(batch, H, seq, D, generator=g), dim=-1)
    q = nn.functional.normalize(torch.randn(batch, H, seq, D, generator=g), dim=-1)
    v = torch.randn(batch, H, seq, dim_v, generator=g)
    theta = 0.3 * torch.rand(batch, H, seq, generator=g)
    eta = torch.rand(batch, H, seq, generator=g)
    alpha = 0.2 * torch.rand(batch, H, seq, generator=g)
    return k, v, q, theta, eta, alpha


MEMORIES = {
    "linear": lambda: MLPMemory(D, depth=1, heads=H),
    "mlp2": lambda: MLPMemory(D, depth=2, heads=H),
    "mlp3-gelu-residual": lambda: MLPMemory(D, depth=3, expansion=2.0, activation="gelu", residual=True, heads=H),
    "user-module": lambda: ModuleMemory(nn.Sequential(nn.Linear(D, 6), nn.Tanh(), nn.Linear(6, D)), heads=H),
}


def all_state(state):
    return state.weights + state.anchor + state.surprise


@pytest.mark.parametrize("name", MEMORIES)
@pytest.mark.parametrize("chunk_size", [1, 3, 16, T])
def test_chunked_equals_naive_outputs_state_and_gradients(float64, name, chunk_size):
    memory = MEMORIES[name]()
    inputs = [x.requires_grad_() for x in make_stream(memory)]
    params = list(memory.parameters())

    y_naive, s_naive = naive_memory(memory, *inputs, chunk_size=chunk_size)
    y_fast, s_fast = chunked_memory(memory, *inputs, chunk_size=chunk_size)

    torch.testing.assert_close(y_fast, y_naive, rtol=1e-10, atol=1e-11)
    assert s_fast.seen == s_naive.seen == T
    for fast, naive in zip(all_state(s_fast), all_state(s_naive)):
        torch.testing.assert_close(fast, naive, rtol=1e-10, atol=1e-11)

    # one outer loss over outputs and the final state: gradients w.r.t. k, v, q, theta, eta, alpha and M_0
    def outer_loss(y, state):
        return (y * torch.linspace(-1, 1, y.shape[-1])).sum() + sum(w.pow(2).sum() for w in state.weights + state.surprise)

    g_naive = torch.autograd.grad(outer_loss(y_naive, s_naive), inputs + params)
    g_fast = torch.autograd.grad(outer_loss(y_fast, s_fast), inputs + params)
    for fast, naive in zip(g_fast, g_naive):
        torch.testing.assert_close(fast, naive, rtol=1e-9, atol=1e-10)


def test_chunk_size_one_is_the_online_rule(float64):
    """Eqs. 13-15 written out for a linear memory with the closed-form gradient, no package code involved."""
    memory = MLPMemory(D, depth=1, heads=H)
    k, v, q, theta, eta, alpha = make_stream(memory)
    W = memory.initial_weights(B)[0].clone()
    S = torch.zeros_like(W)
    ys = []
    for t in range(T):
        kt, vt, qt = k[:, :, t, None, :], v[:, :, t, None, :], q[:, :, t, None, :]
        grad = 2 * kt.transpose(-1, -2) @ (kt @ W - vt)  # grad of ||k W - v||^2 at M_{t-1}
        S = eta[:, :, t, None, None] * S - theta[:, :, t, None, None] * grad  # Eq. 14
        W = (1 - alpha[:, :, t, None, None]) * W + S  # Eq. 13
        ys.append(qt @ W)  # Eq. 15
    y, state = chunked_memory(memory, k, v, q, theta, eta, alpha, chunk_size=1)
    torch.testing.assert_close(y, torch.cat(ys, dim=2))
    torch.testing.assert_close(state.weights[0], W)
    torch.testing.assert_close(state.surprise[0], S)


def test_no_momentum_no_forgetting_is_online_gradient_descent(float64):
    memory = MLPMemory(D, depth=2, heads=H)
    k, v, q, theta, _, _ = make_stream(memory)
    zeros = torch.zeros_like(theta)
    _, state = chunked_memory(memory, k, v, q, theta, zeros, zeros, chunk_size=1)
    weights = memory.initial_weights(B)
    for t in range(T):  # Eq. 8: M_t = M_{t-1} - theta_t grad l(M_{t-1}; x_t)
        grads = memory.gradient(weights, k[:, :, t : t + 1], v[:, :, t : t + 1])
        weights = tuple(w - theta[:, :, t, None, None] * g for w, g in zip(weights, grads))
    for got, want in zip(state.weights, weights):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("chunk_size", [1, 4, 7])
@pytest.mark.parametrize("name", ["mlp2", "user-module"])
def test_any_split_into_calls_equals_one_call(float64, name, chunk_size):
    memory = MEMORIES[name]()
    stream = make_stream(memory)
    y_once, s_once = chunked_memory(memory, *stream, chunk_size=chunk_size)
    for cuts in ([0, 1, 2, 9, 10, 17, T], list(range(T + 1))):  # arbitrary splits, then token by token
        state, ys = None, []
        for a, b in zip(cuts, cuts[1:]):
            y, state = chunked_memory(memory, *(x[:, :, a:b] for x in stream), chunk_size=chunk_size, state=state)
            ys.append(y)
        torch.testing.assert_close(torch.cat(ys, dim=2), y_once, rtol=1e-10, atol=1e-11)
        for got, want in zip(all_state(state), all_state(s_once)):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("rule", [chunked_memory, naive_memory])
def test_output_at_t_never_depends_on_later_tokens(float64, rule):
    memory = MLPMemory(D, depth=2, heads=H)
    stream = make_stream(memory)
    y, _ = rule(memory, *stream, chunk_size=8)
    for t in (0, 5, 7, 8, 13):
        bumped = [x.clone() for x in stream]
        for x in bumped:
            x[:, :, t] += 0.5  # perturb k, v, q and every gate at position t
        y2, _ = rule(memory, *bumped, chunk_size=8)
        torch.testing.assert_close(y2[:, :, :t], y[:, :, :t], rtol=0, atol=0)
        assert not torch.allclose(y2[:, :, t], y[:, :, t])


def test_decay_matrix_holds_the_products(float64):
    a = torch.tensor([0.5, 0.0, 2.0, 3.0])
    P = decay_matrix(a)
    for i in range(4):
        for j in range(4):
            want = torch.prod(a[j + 1 : i + 1]) if i >= j else torch.tensor(0.0)
            assert P[i, j].item() == pytest.approx(want.item())


def test_chunk_coefficients_match_the_unrolled_recurrence(float64):
    """Unroll Eqs. 13-14 with scalar 'weights' to read off the coefficients of M, S and each u_j."""
    n = 6
    theta, eta, alpha = torch.rand(n), torch.rand(n), 0.3 * torch.rand(n)
    coef = chunk_coefficients(theta, eta, alpha)
    # track (coefficient of M, coefficient of S, coefficients of u_0..u_{n-1}) for M_i and S_i
    M, S = torch.tensor([1.0, 0.0] + [0.0] * n), torch.tensor([0.0, 1.0] + [0.0] * n)
    for i in range(n):
        u = torch.zeros(n + 2)
        u[2 + i] = 1.0
        S = eta[i] * S - theta[i] * u
        M = (1 - alpha[i]) * M + S
        torch.testing.assert_close(M[0], coef.beta[i])
        torch.testing.assert_close(M[1], coef.g[i])
        torch.testing.assert_close(-M[2:], coef.C[i])
        torch.testing.assert_close(S[1], coef.e[i])
        torch.testing.assert_close(-S[2:], coef.D[i])


@pytest.mark.parametrize("rule", [chunked_memory, naive_memory])
def test_chunk_size_below_one_raises(rule):
    memory = MLPMemory(D, depth=1, heads=H)
    with pytest.raises(ValueError, match="chunk_size"):
        rule(memory, *make_stream(memory), chunk_size=0)


def chunk_inputs(memory, n=5, shared_anchor=True, expanded_state=False, seed=1):
    """Random inputs of one chunk step: ``(weights, anchor, surprise, k, v, q, gates)``, gates from real ranges."""
    g = torch.Generator().manual_seed(seed)
    gates = [0.3 * torch.rand(B, H, n, generator=g), torch.rand(B, H, n, generator=g),
             0.2 * torch.rand(B, H, n, generator=g)]
    shapes = [w.shape for w in memory.initial]
    if expanded_state:  # as M_0 arrives: one set of weights expanded over the batch
        weights = [torch.randn(1, *s, generator=g).expand(B, *s) for s in shapes]
    else:
        weights = [torch.randn(B, *s, generator=g) for s in shapes]
    surprise = [torch.randn(B, *s, generator=g) for s in shapes]
    anchor = None if shared_anchor else [torch.randn(B, *s, generator=g) for s in shapes]
    k, q = (torch.randn(B, H, n, memory.dim_key, generator=g) for _ in range(2))
    v = torch.randn(B, H, n, memory.dim_value, generator=g)
    return weights, anchor, surprise, k, v, q, gates


def run_chunk(step, memory, weights, anchor, surprise, k, v, q, gates):
    """One chunk step on fresh leaf tensors (``anchor=None``: the anchor is the weights themselves, as at a chunk
    start). Returns ``(outputs, leaves)``, outputs ``[y, *M', *S']`` and leaves ``[*M, *S, k, v, q, *gates, *A]``."""
    weights = [w.detach().requires_grad_() for w in weights]
    surprise = [s.detach().requires_grad_() for s in surprise]
    k, v, q, *gates = [x.detach().requires_grad_() for x in (k, v, q, *gates)]
    leaves = [*weights, *surprise, k, v, q, *gates]
    if anchor is None:
        anchor = weights
    else:
        anchor = [a.detach().requires_grad_() for a in anchor]
        leaves += anchor
    y, M, S = step(memory, tuple(weights), tuple(anchor), tuple(surprise), k, v, q, chunk_coefficients(*gates))
    return [y, *M, *S], leaves


FUSED_CASES = {
    "linear": dict(depth=1),
    "mlp2-silu": dict(depth=2),
    "mlp2-gelu-residual": dict(depth=2, activation="gelu", residual=True),
    "mlp3-tanh": dict(depth=3, expansion=2.0, activation="tanh"),
    "mlp3-silu-residual": dict(depth=3, expansion=2.0, residual=True),
}


@pytest.mark.parametrize("expanded_state", [False, True])
@pytest.mark.parametrize("shared_anchor", [True, False])
@pytest.mark.parametrize("case", FUSED_CASES)
def test_fused_chunk_equals_plain_chunk_outputs_and_gradients(float64, case, shared_anchor, expanded_state):
    """The hand-written backward (fused_chunk) against autograd through the plain dual_form_chunk: the outputs,
    the chunk-end state, and the gradient of every input (weights, momentum, k, v, q, the gates, the anchor)."""
    memory = MLPMemory(3, heads=H, **FUSED_CASES[case])
    inputs = chunk_inputs(memory, shared_anchor=shared_anchor, expanded_state=expanded_state)
    fused, leaves_f = run_chunk(fused_chunk, memory, *inputs)
    plain, leaves_p = run_chunk(dual_form_chunk, memory, *inputs)
    for f, p in zip(fused, plain):
        torch.testing.assert_close(f, p, rtol=1e-12, atol=1e-12)
    out_weights = [torch.randn_like(p) for p in plain]  # a loss that weights every output element differently
    grads = [torch.autograd.grad(sum((w * o).sum() for w, o in zip(out_weights, outs)), leaves)
             for outs, leaves in ((fused, leaves_f), (plain, leaves_p))]
    L = memory.depth
    names = [f"M{i}" for i in range(L)] + [f"S{i}" for i in range(L)] + "k v q theta eta alpha".split()
    names += [] if shared_anchor else [f"anchor{i}" for i in range(L)]
    for name, f, p in zip(names, *grads):
        torch.testing.assert_close(f, p, rtol=1e-10, atol=1e-11, msg=lambda m: f"gradient of {name}: {m}")


@pytest.mark.parametrize("shared_anchor", [True, False])
def test_fused_chunk_passes_gradcheck(float64, shared_anchor):
    memory = MLPMemory(2, depth=2, expansion=1.5, heads=H)
    weights, anchor, surprise, k, v, q, gates = chunk_inputs(memory, n=3, shared_anchor=shared_anchor)
    coef = chunk_coefficients(*gates)
    layout = Layout(memory.depth, memory.activation, memory.residual, shared_anchor)
    flat = lambda t: t.reshape(-1, *t.shape[2:])  # noqa: E731  (batch and heads merged, as FusedChunk takes them)
    state = [*weights, *surprise, *([] if shared_anchor else anchor)]
    inputs = tuple(flat(x).detach().requires_grad_()
                   for x in (q, k, v, coef.beta, coef.g, coef.e, coef.C, coef.D, *state))
    assert torch.autograd.gradcheck(lambda *xs: FusedChunk.apply(layout, *xs), inputs)


def test_fused_chunk_with_unused_state_outputs(float64):
    """Only the read is used (the chunk-end state is dropped): the missing output gradients count as zero."""
    memory = MLPMemory(3, depth=2, heads=H)
    inputs = chunk_inputs(memory)
    grads = []
    for step in (fused_chunk, dual_form_chunk):
        outs, leaves = run_chunk(step, memory, *inputs)
        grads.append(torch.autograd.grad(outs[0].sum(), leaves, allow_unused=True))
    for f, p in zip(*grads):
        torch.testing.assert_close(f, torch.zeros_like(f) if p is None else p, rtol=1e-10, atol=1e-12)


def test_chunked_memory_runs_the_fused_step_outside_autocast():
    """The fast path is the one the tests above prove: fused_chunk, one autograd node per chunk."""
    memory = MLPMemory(D, depth=2, heads=H)
    y, _ = chunked_memory(memory, *(x.requires_grad_() for x in make_stream(memory)), chunk_size=8)
    nodes, todo = [], [y.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in nodes:
            nodes.append(node)
            todo += [next_node for next_node, _ in node.next_functions]
    names = [type(node).__name__ for node in nodes]
    assert names.count("FusedChunkBackward") == 3  # T = 20 tokens in chunks of 8: 8, 8, 4
