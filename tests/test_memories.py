"""The memory models of notebooks 01-02: forward pass, the manual gradient of Eq. 12, and bad input."""

import pytest
import torch
from torch import nn

from titans_edu.memory.networks import ACTIVATIONS, MLPMemory, ModuleMemory, associative_loss


def autograd_gradient(memory, weights, k, v):
    weights = tuple(w.detach().requires_grad_() for w in weights)
    loss = associative_loss(memory(weights, k), v).sum()
    return torch.autograd.grad(loss, weights)


def test_linear_memory_gradient_is_the_closed_form(float64):
    memory = MLPMemory(5, 3, depth=1)
    (W,) = memory.initial_weights(1)
    k, v = torch.randn(1, 1, 1, 5), torch.randn(1, 1, 1, 3)
    (grad,) = memory.gradient((W,), k, v)
    # Eq. 12 without a 1/2: grad_W ||k W - v||^2 = 2 k^T (k W - v), i.e. 2 (W^T k - v) k^T in column notation
    k_row, v_row = k[0, 0], v[0, 0]
    expected = 2 * k_row.T @ (k_row @ W[0, 0] - v_row)
    torch.testing.assert_close(grad[0, 0], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad[0, 0].T, 2 * torch.outer(W[0, 0].T @ k_row[0] - v_row[0], k_row[0]), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(depth=1),
        dict(depth=2, activation="silu"),
        dict(depth=3, activation="gelu", expansion=2.0),
        dict(depth=2, activation="tanh", residual=True),
    ],
)
def test_manual_mlp_gradient_equals_autograd(float64, kwargs):
    memory = MLPMemory(6, 6, heads=2, **kwargs)
    weights = tuple(w + 0.1 * torch.randn_like(w) for w in memory.initial_weights(3))
    k, v = torch.randn(3, 2, 7, 6), torch.randn(3, 2, 7, 6)
    for manual, auto in zip(memory.gradient(weights, k, v), autograd_gradient(memory, weights, k, v)):
        torch.testing.assert_close(manual, auto, rtol=1e-10, atol=1e-12)


def test_per_token_gradients_are_outer_products(float64):
    memory = MLPMemory(4, depth=2)
    weights = memory.initial_weights(1)
    k, v = torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4)
    inputs, deltas = memory.grad_terms(weights, k, v)
    for t in range(5):
        per_token = memory.gradient(weights, k[:, :, t : t + 1], v[:, :, t : t + 1])
        for layer, (a, d) in enumerate(zip(inputs, deltas)):
            torch.testing.assert_close(torch.outer(a[0, 0, t], d[0, 0, t]), per_token[layer][0, 0])


def test_depth_one_is_a_plain_matrix_read(float64):
    memory = MLPMemory(4, 3, depth=1)
    (W,) = memory.initial_weights(2)
    q = torch.randn(2, 1, 5, 4)
    torch.testing.assert_close(memory((W,), q), q @ W)


def test_module_memory_reads_like_the_module(float64):
    module = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 4))
    memory = ModuleMemory(module, heads=3)
    x = torch.randn(2, 3, 5, 4)
    y = memory(memory.initial_weights(2), x)
    torch.testing.assert_close(y, module(x))
    assert len(list(memory.parameters())) == 4  # the stacked M_0 copies, not the template module's own


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dim_key=4, depth=0), "depth"),
        (dict(dim_key=4, activation="swish"), "activation"),
        (dict(dim_key=4, dim_value=3, residual=True), "residual"),
        (dict(dim_key=4, expansion=0), "positive"),
    ],
)
def test_bad_memory_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MLPMemory(**kwargs)


def test_module_memory_without_parameters_raises():
    with pytest.raises(ValueError, match="no parameters"):
        ModuleMemory(nn.Identity())


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_derivatives_written_out_equal_autograd(float64, name):
    """grad, grad2 and chain of every activation: what grad_terms and the hand-written chunk backward rely on."""
    act = ACTIVATIONS[name]
    z = torch.linspace(-6, 6, 101, requires_grad=True)
    (first,) = torch.autograd.grad(act.fn(z).sum(), z, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), z)
    torch.testing.assert_close(act.grad(z), first)
    torch.testing.assert_close(act.grad2(z), second)
    g = torch.randn(101, generator=torch.Generator().manual_seed(0), dtype=z.dtype)
    torch.testing.assert_close(act.chain(g, z.detach()), g * first.detach())
