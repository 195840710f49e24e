"""Streaming at constant memory: a million tokens through a model, one call after another (notebook 12).

A Titans model keeps what it has read in a state of fixed size (the memory's weights, a window of keys), so it
can read a stream of any length at a constant cost per token and in constant memory. Transformer++ keeps every
past key and value instead: its cache, and the cost of each new token, grow with the stream.

:func:`stream_tokens` feeds ``total`` tokens to a model in calls of ``call`` tokens, carrying the state, and
records at each checkpoint the tokens per second since the previous one and the process's resident memory. A
model whose cache passes ``budget_mib`` stops there: that is where the budget runs out.

Each model runs in a fresh process (:func:`run_isolated`), so its memory figures are its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from ..models.lm import TitansLM, build_model

CHECKPOINTS = (16_384, 131_072, 1_048_576)


@dataclass
class StreamPoint:
    tokens: int  # tokens read so far
    tokens_per_s: float  # since the previous point
    rss_mib: float  # resident memory of the process now
    peak_rss_mib: float  # the largest resident memory so far
    state_mib: float  # the bytes of the model's streaming state (memory weights, caches)


@dataclass
class StreamResult:
    variant: str
    call: int
    points: list[StreamPoint] = field(default_factory=list)
    stopped: str = ""  # why the stream stopped before the last checkpoint ("" if it did not)


def _status_mib(key: str) -> float:
    """``VmRSS`` or ``VmHWM`` of this process, in MiB (Linux); 0 where ``/proc`` is not available."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024
    except (OSError, StopIteration):
        return 0.0


def state_bytes(state) -> int:
    """Bytes of every tensor in a model state (dataclasses, tuples and lists of tensors, nested)."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(s) for s in state)
    if hasattr(state, "__dataclass_fields__"):
        return sum(state_bytes(getattr(state, name)) for name in state.__dataclass_fields__)
    return 0


@torch.no_grad()
def stream_tokens(model: TitansLM, tokens: torch.Tensor, call: int) -> tuple[torch.Tensor, object]:
    """The logits of ``tokens (batch, n)`` read in calls of ``call`` tokens with the state carried: what one call
    on all of ``tokens`` gives (the tests hold the two equal)."""
    state, outs = None, []
    for start in range(0, tokens.shape[1], call):
        logits, state = model(tokens[:, start : start + call], state)
        outs.append(logits)
    return torch.cat(outs, dim=1), state


@torch.no_grad()
def measure(variant: str, total: int = CHECKPOINTS[-1], call: int = 2048, budget_mib: float | None = 256.0,
            checkpoints: tuple[int, ...] = CHECKPOINTS, seed: int = 0) -> StreamResult:
    """Stream ``total`` random byte tokens through the tiny ``variant``; see the module docstring."""
    torch.manual_seed(seed)
    model = build_model(variant, "tiny").eval()
    g = torch.Generator().manual_seed(seed)
    result = StreamResult(variant, call)
    state, done, last_t, last_n = None, 0, time.perf_counter(), 0
    marks = [c for c in checkpoints if c <= total]
    while done < total:
        chunk = torch.randint(0, model.config.vocab_size, (1, min(call, total - done)), generator=g)
        _, state = model(chunk, state)
        done += chunk.shape[1]
        size = state_bytes(state) / 2**20
        if marks and done >= marks[0]:
            now = time.perf_counter()
            result.points.append(StreamPoint(done, (done - last_n) / (now - last_t), _status_mib("VmRSS"),
                                             _status_mib("VmHWM"), size))
            marks.pop(0)
            last_t, last_n = time.perf_counter(), done
        if budget_mib is not None and size > budget_mib:
            if not result.points or result.points[-1].tokens != done:
                now = time.perf_counter()
                result.points.append(StreamPoint(done, (done - last_n) / (now - last_t), _status_mib("VmRSS"),
                                                 _status_mib("VmHWM"), size))
            result.stopped = f"its state passed the {budget_mib:g} MiB budget at {done:,} tokens"
            break
    return result


def run_isolated(variant: str, **options) -> StreamResult:
    """:func:`measure` in a fresh Python process on one thread, so the memory it reports is this model's alone."""
    code = ("import json, sys, torch; from dataclasses import asdict; torch.set_num_threads(1); "
            "torch.set_flush_denormal(True); from titans_edu.experiments.stream import measure; "
            f"print(json.dumps(asdict(measure({variant!r}, **{options!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    raw = json.loads(out.stdout.strip().splitlines()[-1])
    return StreamResult(raw["variant"], raw["call"], [StreamPoint(**p) for p in raw["points"]], raw["stopped"])


def table(results: list[StreamResult]) -> str:
    """A markdown table of the points of every result."""
    rows = ["| model | tokens | tokens/s | RSS MiB | peak RSS MiB | state MiB |",
            "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        for p in r.points:
            rows.append(f"| {r.variant} | {p.tokens:,} | {p.tokens_per_s:,.0f} | {p.rss_mib:,.0f} | "
                        f"{p.peak_rss_mib:,.0f} | {p.state_mib:.2f} |")
    return "\n".join(rows)


def growth(result: StreamResult, start: int = CHECKPOINTS[1], end: int = CHECKPOINTS[2]) -> float | None:
    """Relative growth of the peak resident memory from ``start`` to ``end`` tokens (None if not reached)."""
    by = {p.tokens: p for p in result.points}
    if start not in by or end not in by:
        return None
    return by[end].peak_rss_mib / by[start].peak_rss_mib - 1


def as_dict(results: list[StreamResult]) -> list[dict]:
    return [asdict(r) for r in results]


def stream_slice(variants: list[str]) -> dict:
    """What the tests recompute (:mod:`titans_edu.experiments.reproduce`): each model's state after 2,048 tokens,
    and whether reading them in calls of 512 gives what one call gives."""
    out = {}
    for variant in variants:
        torch.manual_seed(0)
        model = build_model(variant, "tiny").eval()
        tokens = torch.randint(0, 256, (1, 2048), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            whole, _ = model(tokens)
            streamed, state = stream_tokens(model, tokens, 512)
        out[variant] = {"state_mib": state_bytes(state) / 2**20, "streamed_equals_one_call":
                        bool(torch.allclose(whole, streamed, atol=1e-4, rtol=1e-4))}
    return out


def run(args, path, command: str) -> int:
    """``python -m titans_edu.experiments stream``: each variant in its own process; writes the results file."""
    from .results import ResultsFile

    total = 131_072 if args.quick else args.tokens
    config = {"variants": args.variants.split(","), "tokens": total, "budget_mib": args.budget, "call": 2048,
              "checkpoints": [c for c in CHECKPOINTS if c <= total], "preset": "tiny"}
    results = ResultsFile(path, "stream", config, command, "cpu")
    if "slice" not in results.data:
        results.data["slice"] = stream_slice(config["variants"])
        results.save()
    streamed = []
    for variant in config["variants"]:
        if variant in results.models:
            raw = results.models[variant]
            streamed.append(StreamResult(raw["variant"], raw["call"], [StreamPoint(**p) for p in raw["points"]],
                                         raw["stopped"]))
            continue
        budget = args.budget if variant == "transformer" else None
        result = run_isolated(variant, total=total, call=2048, budget_mib=budget,
                              checkpoints=tuple(config["checkpoints"]))
        results.put_model(variant, asdict(result))
        streamed.append(result)
        print(table([result]) + (f"\n{variant} stopped: {result.stopped}" if result.stopped else ""), flush=True)
    for r in streamed:
        g = growth(r, config["checkpoints"][-2], config["checkpoints"][-1]) if len(config["checkpoints"]) > 1 else None
        if g is not None:
            print(f"{r.variant}: peak RSS grows {g:+.1%} from {config['checkpoints'][-2]:,} to "
                  f"{config['checkpoints'][-1]:,} tokens")
    print(f"written to {path}")
    return 0
