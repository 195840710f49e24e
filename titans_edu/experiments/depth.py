"""§5.5 at small scale: what a deeper memory buys, and what it costs (notebook 13).

    loss        tiny LMMs with memory depth L_M = 1..4, trained alike on the embedded corpus, scored on the same
                held-out spans with 128 to 4K bytes of context in front (the analogue of Fig. 8)
    throughput  training tokens per second of the LMM against L_M at 256 tokens, and against the sequence length
                at L_M = 2 with the tokens per step held fixed (the analogue of Fig. 9); a median of timed steps

The paper reports lower perplexity for deeper memories at every length, a throughput that falls linearly with
depth, and one that stays flat as sequences grow.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models.lm import build_model
from .language import context_losses, load_trained, train_language_model
from .results import ResultsFile

CONTEXTS = [128, 256, 512, 1024, 2048, 4096]
LENGTHS = [256, 512, 1024, 2048, 4096]


def step_tokens_per_s(memory_depth: int, seq: int, batch: int, steps: int, device: str) -> float:
    """Median training tokens/s of the tiny LMM (forward, backward, AdamW) at this memory depth and length."""
    torch.manual_seed(0)
    model = build_model("lmm", "tiny", memory_depth=memory_depth, context=seq).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 256, (batch, seq + 1), device=device)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        logits, _ = model(x[:, :-1])
        F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:  # the first step warms up
            times.append(time.perf_counter() - start)
    return batch * seq / statistics.median(times)


def run(args, path: Path, command: str) -> int:
    seeds = tuple(int(s) for s in args.seeds.split(",")) if not args.quick else (0,)
    depths = [int(d) for d in args.memory_depths.split(",")] if not args.quick else [1, 2]
    lm_steps = args.lm_steps or (30 if args.quick else 300)
    contexts = CONTEXTS[:4] if args.quick else CONTEXTS
    timed = 3 if args.quick else 7
    config = {"memory_depths": depths, "seeds": list(seeds), "lm_steps": lm_steps, "contexts": contexts,
              "throughput_lengths": LENGTHS[:3] if args.quick else LENGTHS, "timed_steps": timed,
              "tokens_per_step": 2048, "preset": args.preset}
    results = ResultsFile(path, "depth", config, command, args.device)
    if "slice" not in results.data:
        from .reproduce import compute

        results.data["slice"] = compute("depth", results.data["config"])
        results.save()
    runs = path.parent / "checkpoints" / path.stem
    for seed in seeds:
        for depth in depths:
            key = f"loss/L_M={depth}/seed={seed}"
            if key in results.cells:
                continue
            folder = runs / f"depth{depth}-seed{seed}"
            lm = train_language_model(folder, "lmm", {"memory_depth": depth}, seed, lm_steps, args.device)
            losses = context_losses(load_trained(folder, device=args.device), contexts, device=args.device)
            results.put_cell(key, {"val_loss": lm["val_loss"], "context_losses": losses,
                                   "train_seconds": lm["seconds"]})
            print(f"L_M = {depth}, seed {seed}: " + "  ".join(f"{c}: {x:.3f}" for c, x in zip(contexts, losses)),
                  flush=True)
    for depth in depths:
        key = f"throughput/L_M={depth}/seq=256"
        if key not in results.cells:
            results.put_cell(key, {"tokens_per_s": step_tokens_per_s(depth, 256, 8, timed, args.device)})
    for seq in config["throughput_lengths"]:
        key = f"throughput/L_M=2/seq={seq}"
        if key not in results.cells:
            batch = max(1, config["tokens_per_step"] // seq)
            results.put_cell(key, {"tokens_per_s": step_tokens_per_s(2, seq, batch, timed, args.device)})
    for key, cell in results.cells.items():
        if key.startswith("throughput"):
            print(f"{key}: {cell['tokens_per_s']:,.0f} tokens/s")
    print(f"written to {path}")
    return 0


def loss_table(data: dict) -> dict[int, list[tuple[float, float]]]:
    """Per memory depth, per context: (mean, spread over seeds) of the held-out loss."""
    out = {}
    for depth in data["config"]["memory_depths"]:
        rows = [c["context_losses"] for k, c in data["cells"].items() if k.startswith(f"loss/L_M={depth}/")]
        if rows:
            out[depth] = [(statistics.fmean(col), statistics.stdev(col) if len(col) > 1 else 0.0)
                          for col in zip(*rows)]
    return out
