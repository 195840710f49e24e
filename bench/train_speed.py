"""Tokens per second of one training step, for every variant at ``tiny``, and our MAC beside titans-pytorch's.

    python bench/train_speed.py                  # all six variants, then the MAC comparison
    python bench/train_speed.py --quick          # 3 rounds instead of 7
    python bench/train_speed.py --threads 2      # every model on two threads

A training step is what the trainer (``titans_edu.training.trainer``) does: forward, next-token cross-entropy, backward, AdamW step,
on the CPU demo's batch of 8 windows x 256 bytes (2,048 tokens), in float32, with 1 thread by default (the demo's
setting; see ``train_config``). Each figure is the median over rounds after a warm-up step.

The comparison with titans-pytorch 0.5.5 (``pip install -e '.[bench]'``) times both models in this one
process, in interleaved rounds, at matched settings:

    width 64, 2 blocks, 2 attention heads of 32, SwiGLU/GEGLU hidden 192, vocabulary 256
    segment C = 32 tokens, 4 persistent tokens, a neural memory in every block
    memory: 2 heads of 32, a 2-layer MLP with expansion 4, chunks of 16 tokens, momentum on

Where the designs differ, titans-pytorch is set to its closest plain form: one residual stream (no
hyper-connections) and its memory output gating the attention output (as Eq. 25 does). Its MAC puts 16
learned long-term memory tokens into each segment; ours puts the segment's C memory reads h_t (Eq. 21).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from conditions import machine_conditions, print_conditions

from titans_edu.models.config import VARIANTS
from titans_edu.models.lm import build_model

BATCH, CONTEXT, THREADS = 8, 256, 1


def ours(variant: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(variant, "tiny")


def theirs() -> torch.nn.Module:
    from titans_pytorch import MemoryAsContextTransformer, MemoryMLP

    torch.manual_seed(0)
    model = MemoryAsContextTransformer(
        num_tokens=256, dim=64, depth=2, heads=2, dim_head=32, ff_mult=4.5, segment_len=32,
        num_persist_mem_tokens=4, num_longterm_mem_tokens=16, neural_memory_segment_len=16,
        num_residual_streams=1, neural_mem_gate_attn_output=True,
        neural_memory_model=MemoryMLP(dim=32, depth=2, expansion_factor=4.0),
        neural_memory_kwargs=dict(dim_head=32, heads=2, momentum=True),
    )
    for param in model.parameters():  # its per-head initial memory weights are one tensor expanded over the
        param.data = param.data.contiguous()  # heads, which AdamW cannot update in place; give each head its own
    return model


def make_step(model: torch.nn.Module, external: bool):
    """One training step on a fixed batch; returns a function that runs it and gives its wall time."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, 256, (BATCH, CONTEXT + 1), generator=torch.Generator().manual_seed(0))

    def step() -> float:
        start = time.perf_counter()
        if external:
            loss = model(tokens, return_loss=True)
        else:
            logits, _ = model(tokens[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return step


def tokens_per_second(steps: dict, rounds: int) -> dict[str, float]:
    for step in steps.values():  # warm up every model first
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):  # interleaved, so every model sees the same machine load
        for name, step in steps.items():
            times[name].append(step())
    return {name: BATCH * CONTEXT / statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=THREADS, help="torch CPU threads (default 1, the demo's)")
    parser.add_argument("--out", default="bench/results/train_speed.json")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as the trainer (titans_edu.training.trainer) does on CPU
    conditions = machine_conditions()
    print_conditions(conditions)

    variants = tokens_per_second({v: make_step(ours(v), external=False) for v in VARIANTS}, rounds)
    print(f"training step at tiny, batch {BATCH} x {CONTEXT} tokens, float32, {args.threads} thread(s), "
          f"median of {rounds}\n")
    print("| variant | parameters | tokens/s |")
    print("| --- | --- | --- |")
    for v, rate in variants.items():
        print(f"| {v} | {sum(p.numel() for p in ours(v).parameters()):,} | {rate:,.0f} |")
    report = {"conditions": conditions, "variants": variants}

    try:
        pair = {"titans_edu MAC": make_step(ours("mac"), external=False),
                "titans-pytorch MAC": make_step(theirs(), external=True)}
    except ImportError:
        print("\ntitans-pytorch is not installed (pip install -e '.[bench]'); no comparison")
    else:
        side = tokens_per_second(pair, rounds)
        sizes = {"titans_edu MAC": ours("mac"), "titans-pytorch MAC": theirs()}
        print("\n| model | parameters | tokens/s |")
        print("| --- | --- | --- |")
        for name, rate in side.items():
            print(f"| {name} | {sum(p.numel() for p in sizes[name].parameters()):,} | {rate:,.0f} |")
        speedup = side["titans_edu MAC"] / side["titans-pytorch MAC"]
        print(f"\ntitans_edu MAC is {speedup:.2f}x the tokens/s of titans-pytorch's MemoryAsContextTransformer")
        report["mac_side_by_side"] = {**side, "speedup": speedup}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
