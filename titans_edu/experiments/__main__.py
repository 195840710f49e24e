"""``python -m titans_edu.experiments <name> ...``: the long-context experiments from the command line.

    niah        single needle in a haystack (RULER's S-NIAH; the paper's Table 2): train at L, test to 16L
    babilong    BABILong-style qa1-qa3: facts spread through prose, a question at the end
    mqar        multi-query associative recall: capacity against pairs, memory width and memory depth
    ablations   Table 5 at small scale: held-out bits per byte and a long-context task, several seeds
    depth       §5.5: memory depth L_M = 1..4 against loss at several lengths, and training throughput
    stream      a million tokens through a model in calls with carried state: speed and memory
    eval        any checkpoint of titans_edu.train on a JSONL file of {"input": ..., "target": ...}

Each takes ``--help``, ``--quick`` (a run of a minute or two), ``--seeds``, ``--device`` and ``--preset``, and writes
``results/<name>.json`` (see :mod:`titans_edu.experiments.results`); running the same command again continues a
sweep where it stopped. The ``tiny`` preset runs on a CPU; the larger presets (``170m`` ...) are for a GPU.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from .results import ROOT, ResultsFile

QUICK = dict(steps=150, seeds=(0,), multiples=(1, 4), depths=(0.0, 1.0), eval_examples=8)


def _common(parser: argparse.ArgumentParser, default_seeds: str = "0,1,2") -> None:
    parser.add_argument("--quick", action="store_true", help="a short run (a minute or two on a CPU)")
    parser.add_argument("--seeds", default=default_seeds, help=f"comma-separated seeds (default {default_seeds})")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    parser.add_argument("--preset", default="tiny", help="model size: tiny (CPU) or 170m/340m/400m/760m (GPU)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (results repeat bitwise at a fixed count)")
    parser.add_argument("--out", default=None, help="the results file (default results/<name>.json)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _sweep_parser(sub, name: str, help_text: str, tasks: list[str], default_task: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--task", default=default_task, choices=tasks, help=f"the task (default {default_task})")
    p.add_argument("--variants", default=None,
                   help="comma-separated variants (default lmm,mac,mag,mal,swa,transformer; --quick: lmm,swa)")
    p.add_argument("--length", type=int, default=256, help="the training length L (default 256)")
    p.add_argument("--multiples", default=None, help="test lengths as multiples of L (default 1,2,4,8,16)")
    p.add_argument("--depths", default=None, help="needle depths in [0, 1] (default 0,0.25,0.5,0.75,1)")
    p.add_argument("--steps", type=int, default=None, help="training steps per model (default 800)")
    p.add_argument("--examples", type=int, default=None, help="test examples per cell (default 32)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the task, e.g. n_digits=4 (repeatable)")
    _common(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m titans_edu.experiments", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[2:10]))
    sub = parser.add_subparsers(dest="name", required=True, metavar="name")
    _sweep_parser(sub, "niah", "single needle in a haystack: train at L, test at L..16L and every depth",
                  ["passkey_tokens", "passkey", "number", "uuid"], "passkey_tokens")
    _sweep_parser(sub, "babilong", "BABILong-style qa1-qa3 in prose: train at L, test at L..16L",
                  ["qa1", "qa2", "qa3"], "qa1")
    p = sub.add_parser("mqar", help="multi-query associative recall: capacity of the memory",
                       description="accuracy per query against the number of pairs, for memory widths and depths")
    p.add_argument("--pairs", default="4,8,16,32", help="numbers of key-value pairs (default 4,8,16,32)")
    p.add_argument("--memory-depths", default="1,2", help="L_M values (default 1,2)")
    p.add_argument("--dims", default="64", help="model widths, which set the memory width (default 64)")
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--steps", type=int, default=None, help="training steps per model (default 600)")
    _common(p, "0,1")
    p = sub.add_parser("ablations", help="Table 5 at small scale: LMM without each of its parts",
                       description="LMM, linear memory, w/o convolution, w/o momentum, w/o weight decay, w/o "
                                   "persistent memory: held-out bits per byte and passkey exact match")
    p.add_argument("--lm-steps", type=int, default=None, help="language-model training steps (default 300)")
    p.add_argument("--task-steps", type=int, default=None, help="passkey training steps (default 500)")
    _common(p)
    p = sub.add_parser("depth", help="memory depth L_M = 1..4: loss at several lengths, and throughput",
                       description="§5.5: loss of LMMs of memory depth 1-4 at contexts L..16L, and training "
                                   "tokens per second against depth and sequence length")
    p.add_argument("--memory-depths", default="1,2,3,4")
    p.add_argument("--lm-steps", type=int, default=None, help="training steps per model (default 300)")
    _common(p, "0,1")
    p = sub.add_parser("stream", help="stream 1M tokens with carried state: tokens/s and peak memory",
                       description="the tiny LMM and MAC read 1M tokens in calls with carried state; Transformer++ "
                                   "reads until its KV cache passes --budget MiB")
    p.add_argument("--variants", default="lmm,mac,transformer")
    p.add_argument("--tokens", type=int, default=1_048_576)
    p.add_argument("--budget", type=float, default=64.0, help="Transformer++'s cache budget in MiB (default 64)")
    _common(p, "0")
    p = sub.add_parser("eval", help="exact match of a checkpoint on a JSONL file of inputs and targets",
                       description="greedy answers of a titans_edu.train checkpoint to {'input': ..., 'target': ...} "
                                   "lines, scored by exact match")
    p.add_argument("--checkpoint", required=True, help="a run folder of titans_edu.train, or a checkpoint file")
    p.add_argument("--data", required=True, help="a .jsonl file, one {'input': str, 'target': str} per line")
    p.add_argument("--limit", type=int, default=None, help="score only the first N lines")
    _common(p, "0")
    return parser


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def results_path(args, name: str) -> Path:
    if args.out:
        return Path(args.out)
    suffix = "" if getattr(args, "task", None) in (None, "passkey_tokens", "qa1") else f"-{args.task}"
    return ROOT / "results" / f"{name}{suffix}{'-quick' if args.quick else ''}.json"


def run_sweep_command(args) -> int:
    from tqdm.auto import tqdm

    from .figures import summary_table
    from .runner import Sweep, run_sweep, total_work

    quick = QUICK if args.quick else {}
    variants = tuple(args.variants.split(",")) if args.variants else (("lmm", "swa") if args.quick else
                                                                      Sweep.variants)
    options = {}
    for item in args.task_option:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--task-option takes KEY=VALUE, got {item!r}")
        options[key] = int(value) if value.lstrip("-").isdigit() else value
    sweep = Sweep(
        task=args.task, task_options=options, variants=variants, train_length=args.length,
        multiples=_ints(args.multiples) if args.multiples else quick.get("multiples", Sweep.multiples),
        depths=_floats(args.depths) if args.depths else quick.get("depths", Sweep.depths),
        seeds=_ints(args.seeds) if not args.quick or args.seeds != "0,1,2" else quick["seeds"],
        steps=args.steps or quick.get("steps", Sweep.steps), lr=args.lr,
        eval_examples=args.examples or quick.get("eval_examples", Sweep.eval_examples), preset=args.preset,
    )
    path = results_path(args, args.name)
    results = ResultsFile(path, args.name, sweep.config(), _command(), args.device)
    bar = tqdm(total=total_work(sweep), disable=args.no_progress, unit="step", desc=args.name)
    run_sweep(sweep, results, args.device, checkpoints=path.parent / "checkpoints" / path.stem,
              progress=lambda what, n: bar.update(n))
    bar.close()
    print(summary_table(results.data))
    if any(v in ("lmm", "mac", "mag", "mal") for v in sweep.variants):
        print("\nmemory reset to M_0 before the question:")
        print(summary_table(results.data, [v for v in sweep.variants if v in ("lmm", "mac", "mag", "mal")],
                            control="reset"))
    print(f"\nwritten to {path}")
    return 0


def _command() -> str:
    return "python -m titans_edu.experiments " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    try:
        if args.name in ("niah", "babilong"):
            return run_sweep_command(args)
        if args.name == "mqar":
            from .mqar_sweep import run
        elif args.name == "ablations":
            from .ablations import run
        elif args.name == "depth":
            from .depth import run
        elif args.name == "stream":
            from .stream import run
        else:
            from .evaluate import run
        return run(args, results_path(args, args.name), _command())
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
