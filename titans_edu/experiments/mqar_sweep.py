"""Multi-query associative recall (Zoology's MQAR): how many pairs the memory holds (notebook 13).

For each number of key-value pairs, memory width (the model width ``dim``; each head's memory is ``dim / heads``
wide) and memory depth ``L_M``, a tiny LMM is trained at one length and scored on unseen streams: the share of
queries answered right (per query) and of streams with every query right (exact match). A memory that is full
starts to overwrite: accuracy falls as the pairs outnumber what its weights can hold.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from .results import ResultsFile
from .runner import Sweep, examples_for, make_model, predictions, train
from .tasks import get_task


@torch.no_grad()
def query_scores(model, examples, call: int, device: str) -> tuple[float, float]:
    """(per-query accuracy, exact match over whole streams)."""
    tokens = torch.stack([e.tokens for e in examples]).to(device)
    scored = torch.stack([e.scored for e in examples]).to(device)[:, 1:]
    right = predictions(model, tokens, call) == tokens[:, 1:]
    per_query = right[scored].float().mean().item()
    exact = (right | ~scored).all(dim=1).float().mean().item()
    return per_query, exact


def run(args, path: Path, command: str) -> int:
    seeds = tuple(int(s) for s in args.seeds.split(",")) if not args.quick else (0,)
    pairs = [int(p) for p in args.pairs.split(",")] if not args.quick else [4, 16]
    depths = [int(d) for d in args.memory_depths.split(",")] if not args.quick else [2]
    dims = [int(d) for d in args.dims.split(",")]
    steps = args.steps or (80 if args.quick else 600)
    examples = 8 if args.quick else 32
    config = {"pairs": pairs, "memory_depths": depths, "dims": dims, "seeds": list(seeds), "steps": steps,
              "length": args.length, "examples": examples, "preset": args.preset, "variant": "lmm"}
    results = ResultsFile(path, "mqar", config, command, args.device)
    if "slice" not in results.data:
        from .reproduce import compute

        results.data["slice"] = compute("mqar", results.data["config"])
        results.save()
    for seed in seeds:
        for dim in dims:
            for depth in depths:
                for n in pairs:
                    key = f"dim={dim}/L_M={depth}/pairs={n}/seed={seed}"
                    if key in results.cells:
                        continue
                    task = get_task("mqar", n_pairs=n)
                    sweep = Sweep(task="mqar", task_options={"n_pairs": n}, variants=("lmm",), seeds=(seed,),
                                  train_length=args.length, steps=steps, preset=args.preset,
                                  model={"dim": dim, "memory_depth": depth})
                    model = make_model(sweep, "lmm", task, seed, args.device)
                    losses = train(model, task, sweep, seed, args.device)
                    per_query, exact = query_scores(
                        model, examples_for(task, args.length, 0.0, examples, seed), sweep.call, args.device)
                    results.put_cell(key, {"per_query": per_query, "exact_match": exact,
                                           "final_loss": statistics.fmean(losses[-20:]),
                                           "chance_per_query": task.per_query_chance})
                    print(f"{key}: per query {per_query:.2f}, exact {exact:.2f}", flush=True)
    print(f"written to {path}")
    return 0
