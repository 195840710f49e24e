"""Does the memory stay stable, in training and past the training length? Three measurements, per variant.

    python bench/stability.py passkey            # a passkey in a periodic filler: first non-finite loss, if any
    python bench/stability.py passkey --plain    # the same with the plain rule of Eqs. 13-14 (the failure)
    python bench/stability.py drift              # trained at context 512 on a repetitive log: loss at L/2 ... 16L
    python bench/stability.py context            # the README's main job: loss of fixed spans with more context

``passkey`` trains each tiny model (vocabulary 20: a 12-token periodic filler, a needle marker and four digits, a
query and the digits again; batch 16 x 256, AdamW without weight decay, gradient norm clipped at 1) and reports
the step of the first non-finite loss, or the loss at the end. ``drift`` and ``context`` train with
``python -m titans_edu.train`` (each run in its own folder under ``--runs``) and then score, without training,
the same target spans with more and more text in front of them: a model that uses its context well gets no
worse as the context grows, and the sliding-window control stays flat. Scores are nats per byte.

Each part writes ``bench/results/stability-<part>.json`` with the command, the git commit, the versions, the
machine and every figure. These are measurements of minutes to an hour on a CPU, not tests.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from conditions import machine_conditions, print_conditions

from titans_edu import build_model, load_checkpoint
from titans_edu.training.data import embedded_corpus

ROOT = Path(__file__).resolve().parent.parent
PLAIN = {"dampening": False, "memory_max_norm": None, "normalize_values": False}  # the rule as Eqs. 13-14 write it

# --- passkey in a periodic filler (token level) ---

CYCLE = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 0, 2, 4, 6])  # filler ids 0-7, period 12
DIGITS, NEEDLE, QUERY, VOCAB = 8, 18, 19, 20  # digits are ids 8-17


def passkey_batch(batch: int, length: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``NEEDLE d d d d`` at a random place in the filler, ``QUERY d d d d`` at the end; only the answer is scored."""
    phase = torch.randint(0, len(CYCLE), (batch,), generator=g)
    reps = length // len(CYCLE) + 2
    x = torch.stack([CYCLE.repeat(reps)[int(p) : int(p) + length] for p in phase])
    digits = torch.randint(0, 10, (batch, 4), generator=g) + DIGITS
    where = torch.randint(0, length - 12, (batch,), generator=g)
    y = torch.full((batch, length), -100)
    for i, p in enumerate(where.tolist()):
        x[i, p] = NEEDLE
        x[i, p + 1 : p + 5] = digits[i]
    x[:, -5] = QUERY
    x[:, -4:] = digits
    y[:, -5:-1] = digits
    return x, y


def train_passkey(variant: str, lr: float, steps: int, plain: bool, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = build_model(variant, "tiny", vocab_size=VOCAB, **(PLAIN if plain else {}))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    start, losses = time.perf_counter(), []
    for step in range(steps):
        x, y = passkey_batch(16, 256, g)
        logits, _ = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
        if not math.isfinite(loss.item()):
            return {"finite": False, "first_nonfinite_step": step, "seconds": time.perf_counter() - start}
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 100 == 0:
            print(f"  {variant} lr {lr:g} step {step}: loss {loss.item():.3f}", flush=True)
    tail = losses[-50:]
    return {"finite": True, "steps": steps, "final_loss": sum(tail) / len(tail), "chance": math.log(10),
            "seconds": time.perf_counter() - start}


# --- loss of fixed spans with more and more context in front (byte level, checkpoints of titans_edu.train) ---


def make_logs(path: Path, lines: int = 40_000) -> None:
    """A repetitive log file of about 2.7 MB, the same for every seed of this script."""
    rng = random.Random(1)
    rows = []
    for i in range(lines):
        level = rng.choice(["INFO", "INFO", "INFO", "WARN", "DEBUG"])
        size = rng.choice([512, 1024, 2048])
        rows.append(f"2026-12-04 10:{(i // 60) % 60:02d}:{i % 60:02d} {level} worker-{i % 4} request ok "
                    f"status=200 bytes={size}\n")
    path.write_text("".join(rows))


def load_trained(run: Path, context: int):
    state = load_checkpoint(run / "ckpt")
    cfg = state["config"]
    model = build_model(cfg["variant"], cfg["size"], context=context, **cfg.get("model", {}))
    model.load_state_dict(state["model"])
    return model.eval()


@torch.no_grad()
def span_losses(model, data: bytes, ends: list[int], contexts: list[int], span: int = 512) -> list[float]:
    """Mean loss over the ``span`` bytes before each end, for each length of context in front of the span."""
    means = []
    for ctx in contexts:
        total = 0.0
        for end in ends:
            seq = torch.tensor(list(data[end - ctx - span : end]), dtype=torch.long)[None]
            logits, _ = model(seq)
            total += F.cross_entropy(logits[0, -span - 1 : -1].float(), seq[0, -span:]).item()
        means.append(total / len(ends))
    return means


def train_run(folder: Path, flags: list[str]) -> None:
    """``python -m titans_edu.train`` into ``folder``, unless a finished run is already there."""
    if (folder / "ckpt").is_dir() and any((folder / "ckpt").glob("step_*.pt")):
        print(f"  using the run already in {folder}")
        return
    command = [sys.executable, "-m", "titans_edu.train", f"--out_dir={folder}", "--progress=false",
               "--sample_tokens=0", *flags]
    print("  " + " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def curves(runs: Path, variants: list[str], source: str, data: bytes, context: int, flags: list[str],
           ends: list[int]) -> dict:
    contexts = [context // 2, context, 2 * context, 4 * context, 8 * context, 16 * context]
    out = {"contexts": contexts, "ends": ends, "variants": {}}
    for variant in variants:
        folder = runs / f"{variant}-{context}"
        train_run(folder, [f"--variant={variant}", f"--data={source}", f"--context={context}", *flags])
        losses = span_losses(load_trained(folder, context), data, ends, contexts)
        out["variants"][variant] = losses
        print(f"  {variant:>11}: " + "  ".join(f"{c}: {x:.3f}" for c, x in zip(contexts, losses)), flush=True)
    return out


def git_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    dirty = subprocess.run(["git", "status", "--porcelain", "titans_edu"], capture_output=True, text=True, cwd=ROOT)
    return done.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=["passkey", "drift", "context"])
    parser.add_argument("--variants", nargs="+", default=None)
    parser.add_argument("--lrs", nargs="+", type=float, default=[3e-3, 1e-2], help="passkey: learning rates")
    parser.add_argument("--steps", type=int, default=None, help="passkey: 1000; drift: 800; context: the recipe's")
    parser.add_argument("--plain", action="store_true", help="passkey: the plain rule of Eqs. 13-14")
    parser.add_argument("--runs", default="runs/stability", help="drift, context: where the trained runs go")
    parser.add_argument("--train-flags", nargs=argparse.REMAINDER, default=[],
                        help="drift, context: more flags for titans_edu.train (last on the line)")
    parser.add_argument("--out", default=None,
                        help="results file; default bench/results/stability-<part>.json (an existing file is kept "
                             "unless it is named here)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    conditions = machine_conditions()
    print_conditions(conditions)
    record = {"command": " ".join(["python", *sys.argv]), "commit": git_commit(), "conditions": conditions,
              "torch": torch.__version__}
    start = time.perf_counter()
    if args.part == "passkey":
        variants = args.variants or ["lmm", "mac", "mag", "mal", "swa"]
        steps = args.steps or 1000
        results = {}
        for lr in args.lrs:
            for variant in variants:
                r = train_passkey(variant, lr, steps, args.plain)
                results[f"{variant} lr={lr:g}"] = r
                state = (f"finite for {steps} steps, loss {r['final_loss']:.3f} (chance {r['chance']:.3f})"
                         if r["finite"] else f"non-finite loss at step {r['first_nonfinite_step']}")
                print(f"{variant:>5} lr {lr:g}: {state}", flush=True)
        record.update(rule="plain" if args.plain else "bounded", steps=steps, results=results)
    else:
        runs = Path(args.runs)
        runs.mkdir(parents=True, exist_ok=True)
        variants = args.variants or ["lmm", "mac", "swa"]
        if args.part == "drift":
            data_file = runs / "logs.txt"
            if not data_file.exists():
                make_logs(data_file)
            data = data_file.read_bytes()
            flags = [f"--max_steps={args.steps or 800}", *args.train_flags]
            # three spans in the held-out last 5% of the file (135 KB)
            ends = [len(data), len(data) - 40_000, len(data) - 80_000]
            record.update(data="a generated log file (make_logs)",
                          results=curves(runs / "drift", variants, str(data_file), data, 512, flags, ends))
        else:
            data = embedded_corpus().encode("utf-8")  # the bytes the trainer reads for --data=embedded
            flags = ([f"--max_steps={args.steps}"] if args.steps else []) + args.train_flags
            # three spans in the held-out last 5% of the corpus (about 23 KB), 16L + 512 = 4.6 KB each
            ends = [len(data), len(data) - 6_000, len(data) - 12_000]
            record.update(data="the embedded corpus, held-out part",
                          results=curves(runs / "context", variants, "embedded", data, 256, flags, ends))
        record["train_flags"] = flags
    record["seconds"] = time.perf_counter() - start
    if args.out:
        out = Path(args.out)
    else:
        out = ROOT / "bench" / "results" / f"stability-{args.part}{'-plain' if args.plain else ''}.json"
        if out.exists():  # a result already there is kept; this run goes beside it
            out = out.with_name(f"{out.stem}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
