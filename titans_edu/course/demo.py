"""A quick look at the memory at work: write key-value pairs into it at test time, then read them back.

    python -m titans_edu.demo          (or the console script ``titans-edu-demo``)

No training and no data download: the memory learns the pairs with the update rule alone (Eqs. 13-15), and
the table shows how recall degrades as more pairs are stored than the memory can hold.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ..memory.chunked import chunked_memory
from .env import setup
from ..memory.networks import MLPMemory


def recall_error(depth: int, pairs: int, dim: int = 32, passes: int = 16, theta: float = 0.1, eta: float = 0.0,
                 alpha: float = 0.0, chunk_size: int = 16, seed: int = 0) -> float:
    """Write ``pairs`` random (key, value) pairs ``passes`` times, then return ``mean ||M(k) - v||^2 / mean ||v||^2``."""
    g = torch.Generator().manual_seed(seed)
    k = F.normalize(torch.randn(1, 1, pairs, dim, generator=g), dim=-1)
    v = torch.randn(1, 1, pairs, dim, generator=g) / dim**0.5
    memory = MLPMemory(dim, depth=depth, expansion=2.0)
    with torch.no_grad():
        memory.initial[-1].zero_()  # an empty memory: every read returns 0 before the first write
        state = None
        for _ in range(passes):
            gates = [torch.full((1, 1, pairs), x) for x in (theta, eta, alpha)]
            _, state = chunked_memory(memory, k, v, k, *gates, chunk_size=chunk_size, state=state)
        recalled = memory(state.weights, k)
    return ((recalled - v).pow(2).sum(-1).mean() / v.pow(2).sum(-1).mean()).item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=32, help="key and value width")
    args = parser.parse_args(argv)
    setup(seed=0)
    start = time.perf_counter()
    counts = [8, 16, 32, 64, 128]
    print(f"Recall error (0 = perfect, 1 = nothing stored) after writing N pairs into a {args.dim}-dim memory:\n")
    print(f"{'memory':<22}" + "".join(f"N={n:<7}" for n in counts))
    for depth, label in [(1, "linear (L_M = 1)"), (2, "MLP (L_M = 2)")]:
        errors = [recall_error(depth, n, dim=args.dim) for n in counts]
        size = sum(w.numel() for w in MLPMemory(args.dim, depth=depth, expansion=2.0).initial)
        print(f"{label:<22}" + "".join(f"{e:<9.3f}" for e in errors) + f"({size} weights)")
    print("\nEach pair is written 16 times with theta = 0.1 and no momentum or forgetting (plain online")
    print(f"gradient descent, Eq. 8). Near dim = {args.dim} pairs the linear memory fills up and new writes")
    print("overwrite old ones. Notebook 02 asks when depth buys more capacity than width.")
    print(f"done in {time.perf_counter() - start:.1f} s")

