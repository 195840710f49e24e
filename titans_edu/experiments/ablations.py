"""Table 5 at small scale: the LMM without each of its parts (notebook 13).

Each variant of the tiny LMM is scored twice, over several seeds:

    language     held-out bits per byte of the embedded corpus, after ``lm_steps`` steps of ``titans_edu.train``
    long context exact match on a two-digit passkey in a periodic filler (token level), trained at 128 tokens
                 and tested at 128, 512 and 2K tokens at five needle depths

The paper's Table 5 (about 400M parameters, 15B tokens) is printed beside ours: LM perplexity, reasoning and
long-context accuracy, and its ranking of what each part contributes (weight decay > momentum > convolution >
persistent memory). At this scale and budget the ranking may well differ; the notebook says where it does.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from .language import train_language_model
from .results import ResultsFile
from .runner import Sweep, examples_for, exact_match, make_model, train
from .tasks import get_task

ABLATIONS: dict[str, dict] = {
    "LMM": {},
    "linear memory": {"memory_depth": 1},
    "w/o convolution": {"conv_kernel": 0},
    "w/o momentum": {"momentum": False},
    "w/o weight decay": {"forgetting": False},
    "w/o persistent memory": {"persistent": 0},
}

# The paper's Table 5: (LM perplexity, reasoning accuracy, long-context accuracy), about 400M parameters.
PAPER_TABLE_5: dict[str, tuple[float, float, float]] = {
    "LMM": (27.01, 47.83, 92.68),
    "linear memory": (28.49, 46.97, 85.34),
    "w/o convolution": (28.73, 45.82, 90.28),
    "w/o momentum": (28.98, 45.49, 87.12),
    "w/o weight decay": (29.04, 45.11, 85.60),
    "w/o persistent memory": (27.63, 46.35, 92.49),
}

TASK_LENGTH, TASK_LENGTHS, TASK_DEPTHS = 128, (128, 512, 2048), (0.0, 0.25, 0.5, 0.75, 1.0)
TASK_OPTIONS = {"n_digits": 2}


def run(args, path: Path, command: str) -> int:
    seeds = tuple(int(s) for s in args.seeds.split(",")) if not args.quick else (0,)
    lm_steps = args.lm_steps or (30 if args.quick else 300)
    task_steps = args.task_steps or (60 if args.quick else 600)
    names = list(ABLATIONS) if not args.quick else ["LMM", "w/o momentum"]
    examples = 8 if args.quick else 16
    config = {"ablations": {n: ABLATIONS[n] for n in names}, "seeds": list(seeds), "lm_steps": lm_steps,
              "task": "passkey_tokens", "task_options": TASK_OPTIONS, "task_steps": task_steps,
              "task_length": TASK_LENGTH, "task_lengths": list(TASK_LENGTHS),
              "task_depths": list(TASK_DEPTHS), "examples": examples, "preset": args.preset}
    results = ResultsFile(path, "ablations", config, command, args.device)
    if "slice" not in results.data:
        from .reproduce import compute

        results.data["slice"] = compute("ablations", results.data["config"])
        results.save()
    task = get_task("passkey_tokens", **TASK_OPTIONS)
    runs = path.parent / "checkpoints" / path.stem
    for seed in seeds:
        for name in names:
            key = f"{name}/seed={seed}"
            if key in results.cells:
                continue
            overrides = ABLATIONS[name]
            lm = train_language_model(runs / f"{_slug(name)}-seed{seed}", "lmm", overrides, seed, lm_steps,
                                      args.device)
            sweep = Sweep(task="passkey_tokens", task_options=TASK_OPTIONS, variants=("lmm",), seeds=(seed,),
                          train_length=TASK_LENGTH, steps=task_steps, preset=args.preset, model=overrides)
            model = make_model(sweep, "lmm", task, seed, args.device)
            losses = train(model, task, sweep, seed, args.device)
            scores = {f"{length}/{depth:g}": exact_match(model, examples_for(task, length, depth, examples, seed),
                                                         sweep.call, args.device)
                      for length in TASK_LENGTHS for depth in TASK_DEPTHS}
            results.put_cell(key, {"val_loss": lm["val_loss"], "bits_per_byte": lm["val_loss"] / math.log(2),
                                   "passkey": scores, "passkey_mean": statistics.fmean(scores.values()),
                                   "task_final_loss": statistics.fmean(losses[-20:])})
            print(f"{name:>22} seed {seed}: {lm['val_loss'] / math.log(2):.3f} bits/byte, passkey "
                  f"{statistics.fmean(scores.values()):.2f}", flush=True)
    print(table(results.data))
    print(f"written to {path}")
    return 0


def _slug(name: str) -> str:
    return name.replace("/", "").replace(" ", "-")


def summary(data: dict) -> dict[str, dict[str, tuple[float, float]]]:
    """Per ablation: (mean, spread over seeds) of bits per byte and of passkey exact match."""
    out = {}
    for name in data["config"]["ablations"]:
        cells = [c for k, c in data["cells"].items() if k.split("/seed=")[0] == name]
        if not cells:
            continue
        out[name] = {}
        for metric in ("bits_per_byte", "passkey_mean"):
            values = [c[metric] for c in cells]
            out[name][metric] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
        out[name]["seeds"] = len(cells)
    return out


def ranking(values: dict[str, float], higher_is_better: bool) -> list[str]:
    """Names from best to worst."""
    return sorted(values, key=lambda n: values[n], reverse=higher_is_better)


def table(data: dict) -> str:
    rows = ["| variant | bits/byte (ours) | passkey exact match (ours) | seeds | LM ppl (paper) | long-context acc. "
            "(paper) |", "| --- | --- | --- | --- | --- | --- |"]
    for name, s in summary(data).items():
        paper = PAPER_TABLE_5[name]
        rows.append(f"| {name} | {s['bits_per_byte'][0]:.3f} ± {s['bits_per_byte'][1]:.3f} | "
                    f"{s['passkey_mean'][0]:.2f} ± {s['passkey_mean'][1]:.2f} | {s['seeds']} | {paper[0]:.2f} | "
                    f"{paper[2]:.2f} |")
    return "\n".join(rows)
