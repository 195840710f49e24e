"""Counting parameters, FLOPs and activation memory on the meta device (titans_edu.training.scaling)."""

import pytest
import torch
import torch.nn.functional as F

from titans_edu.models.lm import build_model
from titans_edu.training.scaling import GiB, BlockCosts, _one_pass, block_costs, count_parameters, training_memory

SMALL = dict(dim=32, heads=2, segment=16, window=16, chunk_size=8)


def test_parameters_match_the_built_model():
    for variant in ("mac", "transformer"):
        built = build_model(variant, "tiny", **SMALL)
        assert count_parameters(variant, "tiny", **SMALL) == sum(p.numel() for p in built.parameters())


def test_flops_and_activations_grow_by_one_block_per_block():
    costs = block_costs("mal", "tiny", seq=32, **SMALL)
    flops3, saved3 = _one_pass("mal", "tiny", 3, 1, 32, SMALL)  # depth 3 measured directly
    assert costs.flops(3) == flops3
    assert costs.activations(3) == saved3
    assert costs.flops_per_block > 0 and costs.activations_per_block > 0


def test_transformer_flops_are_the_matmuls_written_out():
    """Forward+backward of one Transformer++ block is 3x its forward matmuls: 2 FLOPs per multiply-add."""
    dim, hidden, seq, vocab = 32, 128, 32, 256
    costs = block_costs("transformer", "tiny", seq=seq, dim=dim, heads=2, mlp_hidden=hidden)
    projections = 2 * seq * dim * (3 * dim + dim)  # q, k, v and the output projection
    scores = 2 * 2 * seq * seq * dim  # q k^T and attention-weighted values (SDPA counts every position)
    mlp = 2 * seq * (dim * 2 * hidden + hidden * dim)
    assert costs.flops_per_block == 3 * (projections + scores + mlp)
    assert costs.flops_outside == 3 * 2 * seq * dim * vocab  # the tied output head


def test_meta_activation_bytes_equal_what_a_real_cpu_pass_saves():
    torch.manual_seed(0)
    model = build_model("lmm", "tiny", **SMALL, depth=1)
    saved = {}

    def keep(t):  # the storage is held, so a freed one cannot pass its address on
        saved[t.untyped_storage().data_ptr()] = (t.untyped_storage(), t.untyped_storage().nbytes())
        return t

    tokens = torch.randint(0, 256, (1, 32))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        logits, _ = model(tokens)
        F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    real = sum(n for ptr, (_, n) in saved.items() if ptr not in params)
    assert _one_pass("lmm", "tiny", 1, 1, 32, SMALL)[1] == pytest.approx(real, rel=1e-2)  # kernels differ a bit


def test_training_memory_arithmetic():
    costs = BlockCosts(0, 0, activations_outside=GiB, activations_per_block=2 * GiB)
    plain = training_memory(GiB // 16, costs, depth=4, dim=8, seq=16, micro_batch=2)
    assert (plain["weights"], plain["gradients"], plain["adamw"]) == (0.25, 0.25, 0.5)  # 16 bytes per parameter
    assert plain["activations"] == 2 * (1 + 4 * 2) and plain["total"] == pytest.approx(1 + 18)
    sharded = training_memory(GiB // 16, costs, depth=4, dim=8, seq=16, micro_batch=2, processes=4, fsdp=True)
    assert sharded["weights"] == 0.25 / 4 and sharded["activations"] == plain["activations"]
    recompute = training_memory(GiB // 16, costs, depth=4, dim=8, seq=16, micro_batch=1, checkpointing=True)
    assert recompute["activations"] == pytest.approx((4 * 16 * 8 * 4 + 3 * GiB) / GiB)


def test_estimates_are_float32_whatever_the_default_dtype():
    float32 = block_costs("mac", "tiny", seq=64)
    torch.set_default_dtype(torch.float64)  # as the notebooks' setup() leaves it
    try:
        assert block_costs("mac", "tiny", seq=64) == float32
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(torch.float32)
