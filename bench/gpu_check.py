"""The GPU path, checked and measured in one run: correctness, bf16, torch.compile, FlexAttention, tokens/s,
peak memory and MFU at the paper's sizes, titans-pytorch's MAC beside ours, and a short run of the trainer.

    python bench/gpu_check.py                                  # one GPU, within --budget-s (default 480 s)
    python bench/gpu_check.py --continue-from bench/results/gpu-<date>.json --budget-s 240
                                                               # a second run: only what the first left out
    python bench/gpu_check.py --only correctness,speed/340m-4k/mac    # a selection, by name prefix
    python bench/gpu_check.py --wheels bench/wheels            # titans-pytorch from wheels, with no network
    python bench/gpu_check.py --device cpu --smoke             # every path at tiny shapes on CPU (under a minute)

Sections, in the order the time budget serves them; what does not fit is recorded as skipped, with why:

1. ``correctness``, at ``tiny``, every variant, on the device: the chunked memory against the per-token loop
   in float32; bf16 autocast against float32; causality (a changed token changes no earlier logit); a stream
   fed in pieces against one call; FlexAttention (compiled on CUDA) against SDPA with the package's dense
   masks, on the three masks and in every model with attention. Tolerances: ``TOLERANCES``.
2. ``speed``: one training step as the trainer takes it (bf16 autocast, next-token loss, backward, clipping,
   fused AdamW), without and with torch.compile, for every variant at 340M with context 4K and at 170M with
   context 16K: tokens/s (median of --steps after warm-up), compile time (the first step's time beyond a
   steady step), peak memory (``torch.cuda.max_memory_allocated``) and MFU (FLOPs counted by
   ``titans_edu.training.scaling`` on the meta device, against --peak-tflops).
3. ``titans_pytorch``: its MemoryAsContextTransformer beside our MAC at the 170M preset's shape, context 4K.
4. ``train``: 200 steps of the 170M preset through ``torchrun --nproc_per_node 1 -m titans_edu.train`` with
   bf16 and compile; the loss must fall, a checkpoint be written, and ``--resume`` continue from it.

Compile: each block is compiled on its own (``--compile-scope block``), and the blocks being alike, one graph
serves them all. ``--compile-scope model`` compiles the whole model, as the trainer's ``--compile`` does; for a
Titans variant that unrolls every chunk of every block into one graph, which takes many minutes at 4K. For the
same reason the trainer run uses Transformer++ (``--train-variant``).

Order: correctness; then Transformer++, MAC and LMM at 340M, each without and with compile; then the rest
(``plan``). Each case's cost is estimated (``ESTIMATES``, replaced by what this run measured as it goes) and
it starts only if that fits the time left; a case that overruns its allowance is stopped. The targets
(``TARGETS``) are reported beside the figures; where one is missed and time allows, one step of that case is
profiled with torch.profiler and its top device costs are kept.

The cases run in a worker process that the main process feeds one at a time, so that a compile that hangs, a
crash or running out of memory costs that case only. Results: ``bench/results/gpu-<date>.json`` (command, git
commit, versions, device, seeds, every case and every skip), and markdown tables for bench/README.md on stdout.

titans-pytorch is not needed; when it does not import, its section is skipped with a note. To bring it to a
machine without network, download its wheels elsewhere (``WHEELS_HOWTO``) and pass --wheels.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import datetime
import gc
import hashlib
import importlib.metadata
import json
import math
import multiprocessing
import os
import platform
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A bench script runs from a checkout, where the package may not be installed: put the repository root first on
# the path, so that it measures the package beside it (the package itself never changes sys.path). Its worker
# and the trainer it starts get the same root first on PYTHONPATH.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from conditions import machine_conditions  # noqa: E402

from titans_edu.models.config import TITANS_VARIANTS, VARIANTS, ModelConfig  # noqa: E402

GiB = 2**30
SEED = 0
SECTIONS = ("correctness", "speed", "titans_pytorch", "train")
# dense bf16 tensor-core peaks from the datasheets, in TFLOP/s; the first name found in the device's name wins
PEAK_BF16_TFLOPS = (("H200 NVL", 835.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0))
SMOKE_PEAK_TFLOPS = 1.0  # CPU smoke runs: a nominal peak, only so that the MFU code runs
TOLERANCES = {  # name: (tolerance, what is measured)
    "chunked_vs_naive": (1e-4, "max |chunked - naive| / max |naive| over the logits, float32"),
    "chunked_vs_naive_grad": (1e-3, "||g_chunked - g_naive|| / ||g_naive|| over all parameter gradients, float32"),
    "bf16_vs_fp32": (0.05, "||bf16 - fp32|| / ||fp32|| over the logits"),
    "causality": (1e-6, "max change of an earlier logit / max |logit|, float32 (a token changed at 5 places)"),
    "streaming": (1e-4, "max |pieces - one call| / max |one call| over the logits, float32"),
    "flex_vs_sdpa": (1e-4, "max |flex - sdpa| / max |sdpa| over outputs (and q, k, v gradients for the masks), fp32"),
}
TARGETS = {  # {0} and {1}: the names of the two speed settings (340m-4k and 170m-16k)
    "titans_vs_transformer": "reaches >= 0.5x Transformer++'s tokens/s at {0}",
    "lmm_vs_transformer_16k": "LMM reaches >= Transformer++'s tokens/s at {1}",
    "mfu_transformer": "Transformer++ MFU >= 30% at {0}",
    "mfu_mac": "MAC MFU >= 20% at {0}",
    "mac_vs_titans_pytorch": "our MAC reaches >= 2x titans-pytorch's tokens/s",
}
# titans-pytorch 0.5.5 and what it needs beyond torch, numpy, einops and tqdm (pinned as tested on CPU)
WHEELS = ("titans-pytorch==0.5.5 accelerated-scan==0.3.1 assoc-scan==0.0.6 axial-positional-embedding==0.3.12 "
          "cloudpickle==3.1.3 einx==0.4.3 frozendict==2.5.1 hyper-connections==0.4.11 loguru==0.7.3 ninja==1.13.2 "
          "packaging==26.4 pyvers==0.2.3 rotary-embedding-torch==0.9.1 tensordict==0.15.3 torch-einops-utils==0.2.0 "
          "x-transformers==2.31.10")
WHEELS_HOWTO = (f"on a machine with network: pip download --no-deps --only-binary=:all: --python-version 3.12 "
                f"--platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d bench/wheels {WHEELS}; "
                f"then carry bench/wheels and run with --wheels bench/wheels (it unpacks them into a temporary "
                f"folder on the worker's path), or pip install --no-index --no-deps bench/wheels/*.whl")


# --- what runs, at which shapes ---


@dataclass(frozen=True)
class Setting:
    """One speed setting: a preset at a context, and the sequences per step (halved if they do not fit)."""

    name: str
    size: str
    context: int
    micro_batch: int


@dataclass(frozen=True)
class Shapes:
    settings: tuple[Setting, Setting]  # the paper's size at 4K, then the long context
    check_seq: int  # correctness: tokens per sequence (tiny preset: segments and windows of 32, chunks of 16)
    check_pieces: tuple[int, ...]  # where the stream is cut, off every segment, window and chunk edge
    flex_n: int  # FlexAttention against the masks: queries (keys: the same tokens, or [h || S])
    flex_window: int
    compile_backend: str
    compile_variants: tuple[str, ...]  # variants measured with compile in the first setting (second: all)
    compile_second_setting: bool
    second_setting_variants: tuple[str, ...]  # variants measured at the long context
    flop_variants: tuple[str, ...]  # variants whose FLOPs are counted for MFU
    profiles: int | None  # at most this many cases profiled (None: every one that misses a target)
    tp_size: str  # titans-pytorch comparison: our preset, its context and sequences per step
    tp_context: int
    tp_micro_batch: int
    train_size: str
    train_steps: int
    train_more: int  # steps the resumed run adds
    train_flags: tuple[str, ...]


FULL = Shapes(
    settings=(Setting("340m-4k", "340m", 4096, 4), Setting("170m-16k", "170m", 16384, 1)),
    check_seq=96, check_pieces=(7, 40, 41), flex_n=256, flex_window=64, compile_backend="inductor",
    compile_variants=VARIANTS, compile_second_setting=True, second_setting_variants=VARIANTS,
    flop_variants=VARIANTS, profiles=None, tp_size="170m",
    tp_context=4096, tp_micro_batch=2, train_size="170m", train_steps=200, train_more=20,
    # the byte tokenizer gives 256 ids; --model.vocab_size keeps the preset's 32K embedding and head
    train_flags=("--micro_batch=4", "--batch_tokens=16384", "--warmup_steps=20", "--eval_every=200",
                 "--eval_batches=2", "--log_every=10", "--sample_tokens=0", "--model.vocab_size=32000",
                 "--dtype=bfloat16", "--compile"),
)
SMOKE = Shapes(
    settings=(Setting("tiny-64", "tiny", 64, 2), Setting("tiny-128", "tiny", 128, 1)),
    check_seq=40, check_pieces=(7, 20, 21), flex_n=24, flex_window=8, compile_backend="eager",
    compile_variants=("transformer", "mac"), compile_second_setting=False,
    second_setting_variants=("transformer", "lmm"), flop_variants=("transformer", "mac"), profiles=1,
    tp_size="tiny", tp_context=64,
    tp_micro_batch=2, train_size="tiny", train_steps=4, train_more=2,
    # no compile: inductor's C++ build on CPU takes longer than the whole smoke run
    train_flags=("--micro_batch=2", "--context=64", "--warmup_steps=1", "--eval_every=4", "--eval_batches=1",
                 "--log_every=1", "--sample_tokens=0", "--dtype=bfloat16", "--compile=false", "--device=cpu",
                 "--threads=1"),
)
# Seconds a case is expected to take on one H200, the model's build included: guesses, replaced during a run by
# what it measured. The compiled Titans variants are the big ones: every chunk of a block is traced, 64 chunks a
# block at 4K and 256 at 16K. On a shared 2-core CPU, Dynamo alone took 20-24 s for one 4K block of MAC or LMM and
# 178 s for a 16K MAC block; with AOTAutograd, 55-210 s at 4K (MAC, MAG, LMM, as the machine's load varied).
ESTIMATES = {
    "correctness": 10.0, "flex-masks": 30.0, "titans-pytorch": 90.0, "train": 180.0,
    ("eager", "titans", 0): 30.0, ("eager", "attention", 0): 12.0, ("eager", "titans", 1): 60.0,
    ("eager", "attention", 1): 15.0, ("compiled", "titans", 0): 150.0, ("compiled", "attention", 0): 60.0,
    ("compiled", "titans", 1): 600.0, ("compiled", "attention", 1): 70.0,
}
SMOKE_ESTIMATE = 5.0
RESERVE_S = 10.0  # kept for the FLOP counts to finish and the results to be written
NOT_SELECTED = "not selected (--only)"


@dataclass
class Task:
    name: str
    kind: str  # correctness, flex-masks, speed, titans-pytorch, train
    section: str
    tier: int  # 0 correctness, 1 the first speed cases, 2 the rest
    variant: str | None = None
    setting: int | None = None  # index into Shapes.settings
    mode: str | None = None  # eager or compiled

    def key(self):
        if self.kind != "speed":
            return self.kind
        return (self.mode, "titans" if self.variant in TITANS_VARIANTS else "attention", self.setting)


def plan(shapes: Shapes) -> list[Task]:
    """Every case, in the order the budget serves them."""
    def speed(variant, setting, mode, tier=2):
        name = f"speed/{shapes.settings[setting].name}/{variant}/{mode}"
        return Task(name, "speed", "speed", tier, variant, setting, mode)

    def compiled(variant, setting):
        wanted = variant in shapes.compile_variants if setting == 0 else shapes.compile_second_setting
        return [speed(variant, setting, "compiled", 1 if setting == 0 and variant in first else 2)] if wanted else []

    def long(variants):
        return [v for v in variants if v in shapes.second_setting_variants]

    first = ("transformer", "mac", "lmm")
    tasks = [Task("correctness/flex-masks", "flex-masks", "correctness", 0)]
    tasks += [Task(f"correctness/{v}", "correctness", "correctness", 0, v) for v in VARIANTS]
    for v in first:
        tasks += [speed(v, 0, "eager", 1), *compiled(v, 0)]
    tasks += [speed(v, 0, "eager") for v in ("mag", "mal", "swa")]
    tasks += [speed(v, 1, "eager") for v in long(("transformer", "lmm"))]
    tasks += [Task(f"titans-pytorch/{shapes.tp_size}-{shapes.tp_context}", "titans-pytorch", "titans_pytorch", 2),
              Task(f"train/{shapes.train_size}", "train", "train", 2)]
    tasks += [t for v in ("mag", "mal", "swa") for t in compiled(v, 0)]
    tasks += [speed(v, 1, "eager") for v in long(("mac", "mag", "mal", "swa"))]
    tasks += [t for v in long(("transformer", "lmm", "mac", "mag", "mal", "swa")) for t in compiled(v, 1)]
    return tasks


class Budget:
    """Seconds left of ``total`` (less a reserve), and what each kind of case is expected to cost."""

    def __init__(self, total: float, smoke: bool, clock=time.monotonic) -> None:
        self.total, self.smoke, self.clock, self.start = total, smoke, clock, clock()
        self.measured: dict = {}
        self.stopped: set = set()  # kinds of case of which one ran out of its allowance

    def left(self) -> float:
        return self.total - RESERVE_S - (self.clock() - self.start)

    def estimate(self, task: Task) -> float:
        if task.key() in self.measured:
            return self.measured[task.key()]
        return SMOKE_ESTIMATE if self.smoke else ESTIMATES[task.key()]

    def record(self, task: Task, seconds: float, stopped: bool = False) -> None:
        """What a case took; one that was stopped needed more than that (twice, or the estimate, is assumed)."""
        if stopped:
            seconds = max(2 * seconds, self.estimate(task))
            self.stopped.add(task.key())
        self.measured[task.key()] = max(seconds, self.measured.get(task.key(), 0.0))

    def allows(self, task: Task) -> tuple[bool, float]:
        """Whether ``task`` may start, and how long it may run. The first tiers start while at least a minute
        (or their estimate, if smaller) is left, unless a case of their kind was stopped for time; the rest only
        when their estimate fits."""
        est, left = self.estimate(task), self.left()
        need = min(est, 60.0) if task.tier <= 1 and task.key() not in self.stopped else est
        return left >= need, max(0.0, min(left, max(2 * est, est + 60)))


# --- the worker: runs one case at a time on the device ---


def relative_max(a, b) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


def verdict(name: str, error: float) -> dict:
    tolerance, measure = TOLERANCES[name]
    return {"error": error, "tolerance": tolerance, "measure": measure, "passed": bool(error <= tolerance)}


def build(variant: str, size: str, device, **overrides):
    from titans_edu.models.lm import build_model

    torch.manual_seed(SEED)
    with torch.device(device):
        return build_model(variant, size, **overrides)


def correctness_case(task: Task, shapes: Shapes, device) -> dict:
    """Every check of one variant at ``tiny``, in float32 unless said otherwise."""
    import torch.nn.functional as F

    variant, seq = task.variant, shapes.check_seq
    model = build(variant, "tiny", device)
    x = torch.randint(0, 256, (2, seq), generator=torch.Generator(device).manual_seed(SEED), device=device)
    checks = {}

    def loss_and_grads(m):
        m.zero_grad(set_to_none=True)
        logits, _ = m(x)
        F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten()).backward()
        return logits.detach(), [p.grad for p in m.parameters()]

    logits, grads = loss_and_grads(model)
    if variant in TITANS_VARIANTS:
        naive = build(variant, "tiny", device, memory_impl="naive")
        naive.load_state_dict(model.state_dict())
        naive_logits, naive_grads = loss_and_grads(naive)
        checks["chunked_vs_naive"] = verdict("chunked_vs_naive", relative_max(logits, naive_logits))
        diff = math.sqrt(sum((g - h).square().sum().item() for g, h in zip(grads, naive_grads) if h is not None))
        norm = math.sqrt(sum(h.square().sum().item() for h in naive_grads if h is not None))
        checks["chunked_vs_naive_grad"] = verdict("chunked_vs_naive_grad", diff / norm)
        del naive
    else:
        checks["chunked_vs_naive"] = {"passed": None, "note": "no neural memory"}
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            low, _ = model(x)
        checks["bf16_vs_fp32"] = verdict("bf16_vs_fp32", ((low.float() - logits).norm() / logits.norm()).item())
        worst, own = 0.0, True
        for t in (0, 15, 16, seq // 2 + 3, seq - 1):  # inside and at the edges of chunks, segments and windows
            y = x.clone()
            y[:, t] = (y[:, t] + 1) % 256
            changed, _ = model(y)
            if t:
                worst = max(worst, relative_max(changed[:, :t], logits[:, :t]))
            own &= not torch.allclose(changed[:, t], logits[:, t])
        checks["causality"] = {**verdict("causality", worst), "changes_its_own_logit": own}
        checks["causality"]["passed"] &= own
        state, parts, cuts = None, [], (0, *shapes.check_pieces, seq)
        for a, b in zip(cuts, cuts[1:]):
            out, state = model(x[:, a:b], state)
            parts.append(out)
        checks["streaming"] = verdict("streaming", relative_max(torch.cat(parts, 1), logits))
        checks["streaming"]["pieces"] = [b - a for a, b in zip(cuts, cuts[1:])]
        if variant == "lmm":
            checks["flex_vs_sdpa"] = {"passed": None, "note": "no attention"}
        else:  # the same weights with each backend; the transformer's plain causal call always takes SDPA's
            # is_causal path, so it is fed in two halves and the second half's attention (to the cache) is compared
            half = seq // 2 if variant == "transformer" else seq
            outs = {}
            for backend in ("sdpa", "flex"):
                m = build(variant, "tiny", device, attention_backend=backend)
                m.load_state_dict(model.state_dict())
                first, state = m(x[:, :half])
                outs[backend] = torch.cat([first, m(x[:, half:], state)[0]], 1) if half < seq else first
            torch._dynamo.reset()  # each shape compiles FlexAttention anew; start every variant from none
            checks["flex_vs_sdpa"] = verdict("flex_vs_sdpa", relative_max(outs["flex"], outs["sdpa"]))
            checks["flex_vs_sdpa"]["compiled"] = device.type == "cuda"
    passed = all(c["passed"] is not False for c in checks.values())
    return {"status": "ok" if passed else "failed", "checks": checks}


def flex_masks_case(task: Task, shapes: Shapes, device) -> dict:
    """FlexAttention (compiled on CUDA) against SDPA with the package's dense masks: outputs and gradients."""
    import torch.nn.functional as F

    from titans_edu.models.attention import causal_mask, segment_mask, sliding_window_mask
    from titans_edu.models.flex import flex_attend

    n, hd, n_p, window = shapes.flex_n, 32, 4, shapes.flex_window
    pos = torch.arange(n, device=device)
    cases = {  # name: (key positions, window, persistent, dense mask)
        "causal": (pos, None, 0, causal_mask(n, device)),
        "sliding window with persistent (SW-Attn*)": (pos, window, n_p, sliding_window_mask(n, window, n_p, device)),
        "MAC segment [p || h || S]": (torch.cat([pos, pos]), None, n_p, segment_mask(n, n_p, device)),
    }
    g = torch.Generator(device).manual_seed(SEED)
    checks = {}
    for name, (k_pos, win, persistent, mask) in cases.items():
        width = 2 * hd if persistent else hd  # with persistent keys, q and k are the stacked [rotated | raw]
        q = torch.randn(1, 2, n, width, device=device, generator=g)
        k = torch.randn(1, 2, persistent + len(k_pos), width, device=device, generator=g)
        v = torch.randn(1, 2, persistent + len(k_pos), hd, device=device, generator=g)
        w = torch.randn(1, 2, n, hd, device=device, generator=g)
        results, grads = [], device.type == "cuda"  # FlexAttention has no backward pass on CPU
        for fn in ("flex", "sdpa"):
            leaves = [t.clone().requires_grad_(grads) for t in (q, k, v)]
            if fn == "flex":
                out = flex_attend(*leaves, pos, k_pos, win, persistent, hd**-0.5)
            else:
                out = F.scaled_dot_product_attention(*leaves, attn_mask=mask, scale=hd**-0.5)
            results.append([out.detach(), *(torch.autograd.grad((out * w).sum(), leaves) if grads else ())])
        torch._dynamo.reset()
        error = max(relative_max(a, b) for a, b in zip(*results))
        checks[name] = {**verdict("flex_vs_sdpa", error), "queries": n, "keys": persistent + len(k_pos),
                        "gradients": grads}
    passed = all(c["passed"] for c in checks.values())
    return {"status": "ok" if passed else "failed", "checks": checks, "compiled": device.type == "cuda"}


class Measured:
    """A model and its optimizer on a fixed batch; ``step()`` is one training step as the trainer takes it."""

    def __init__(self, model, micro_batch: int, context: int, device, size: str, vocab: int = 256) -> None:
        from titans_edu.training.config import TrainConfig
        from titans_edu.training.parallel import Runtime
        from titans_edu.training.trainer import make_optimizer

        self.model, self.device = model, device
        self.optimizer = make_optimizer(model, TrainConfig(size=size).with_recipe(), device)
        self.autocast = Runtime(device, autocast=torch.bfloat16).autocast_context
        tokens = torch.randint(0, vocab, (micro_batch, context + 1), device=device,
                               generator=torch.Generator(device).manual_seed(SEED))
        self.x, self.y = tokens[:, :-1], tokens[:, 1:]

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def loss(self):
        from titans_edu.training.trainer import next_token_loss

        return next_token_loss(self.model, self.x, self.y)[0]

    def step(self) -> tuple[float, float]:
        self.sync()
        start = time.perf_counter()
        with self.autocast():
            loss = self.loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        value = loss.item()  # the trainer reads the loss every step too
        self.sync()
        return time.perf_counter() - start, value


class TheirsMeasured(Measured):
    def loss(self):
        return self.model(torch.cat([self.x, self.y[:, -1:]], 1), return_loss=True)


def free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GiB if device.type == "cuda" else None


def timed(run: Measured, compiled: bool, warmup: int, steps: int) -> dict:
    first, loss = run.step()  # compiles, when compiled; else it is the first warm-up step
    for _ in range(warmup if compiled else warmup - 1):
        run.step()
    times, losses = zip(*(run.step() for _ in range(steps)))
    step_s = statistics.median(times)
    if not all(math.isfinite(v) for v in (loss, *losses)):
        raise FloatingPointError(f"the loss is not finite: {loss}, {losses}")
    tokens = run.x.numel()
    return {"step_s": step_s, "step_s_all": list(times), "tokens_per_step": tokens, "tokens_per_s": tokens / step_s,
            "first_step_s": first, "compile_s": first - step_s if compiled else None, "loss": losses[-1],
            "peak_memory_gib": peak_gib(run.device)}


def speed_case(task: Task, shapes: Shapes, device, args, fit: dict | None) -> tuple[dict, Measured]:
    """Tokens/s, compile time and peak memory of one variant at one setting. Out of memory halves the sequences
    per step, then turns on activation checkpointing; ``fit`` starts from what fitted without compile."""
    from titans_edu.training.parallel import blocks_of, enable_activation_checkpointing

    setting = shapes.settings[task.setting]
    micro, checkpointing, attempts = setting.micro_batch, False, []
    if fit:
        micro, checkpointing = fit["micro_batch"], fit["activation_checkpointing"]
    compiled = task.mode == "compiled"
    from torch._dynamo.utils import counters

    while True:
        run = None
        try:
            free(device)
            torch._dynamo.reset()
            model = build(task.variant, setting.size, device, context=setting.context)
            if checkpointing:
                enable_activation_checkpointing(model)
            if compiled and args.compile_scope == "model":
                model = torch.compile(model, backend=shapes.compile_backend)
            elif compiled:  # every block alike: one compiled graph, reused for each
                for block in blocks_of(model):
                    block.compile(backend=shapes.compile_backend)
            run = Measured(model, micro, setting.context, device, setting.size, model.config.vocab_size)
            graphs = counters["stats"].get("unique_graphs", 0)
            result = timed(run, compiled, args.warmup, args.steps)
            graphs = counters["stats"].get("unique_graphs", 0) - graphs
            break
        except torch.OutOfMemoryError:
            attempts.append(f"micro_batch {micro}{' with checkpointing' if checkpointing else ''}: out of memory")
            del run
            model = None
            if micro > 1:
                micro //= 2
            elif not checkpointing:
                checkpointing = True
            else:
                raise
    result.update(status="ok", variant=task.variant, setting=asdict(setting), mode=task.mode, micro_batch=micro,
                  activation_checkpointing=checkpointing, out_of_memory=attempts,
                  compile_scope=args.compile_scope if compiled else None,
                  compile_backend=shapes.compile_backend if compiled else None,
                  graphs=graphs if compiled else None,
                  parameters=sum(p.numel() for p in run.model.parameters()))
    return result, run


def titans_pytorch_case(task: Task, shapes: Shapes, device, args) -> tuple[dict, Measured | None]:
    """Our MAC and titans-pytorch's at one shape (that of bench/train_speed.py, scaled to a preset), eager."""
    try:
        from titans_pytorch import MemoryAsContextTransformer, MemoryMLP
    except ImportError as err:
        return {"status": "skipped", "reason": f"titans_pytorch does not import ({err}); {WHEELS_HOWTO}"}, None
    c = ModelConfig.preset("mac", shapes.tp_size, context=shapes.tp_context)
    head_dim = c.dim // c.heads
    matched = dict(dim=c.dim, depth=c.depth, heads=c.heads, head_dim=head_dim, segment=c.segment,
                   persistent=c.persistent, chunk=c.chunk_size, vocab=c.vocab_size, context=c.context,
                   micro_batch=shapes.tp_micro_batch, memory="2-layer MLP, expansion 4, momentum",
                   their_longterm_tokens=16, their_residual_streams=1, their_flex=device.type == "cuda")

    def theirs():
        torch.manual_seed(SEED)
        with torch.device(device):
            model = MemoryAsContextTransformer(
                num_tokens=c.vocab_size, dim=c.dim, depth=c.depth, heads=c.heads, dim_head=head_dim,
                ff_mult=c.mlp_hidden * 3 / (2 * c.dim), segment_len=c.segment, num_persist_mem_tokens=c.persistent,
                num_longterm_mem_tokens=16, neural_memory_segment_len=c.chunk_size, num_residual_streams=1,
                neural_mem_gate_attn_output=True, use_flex_attn=device.type == "cuda",
                neural_memory_model=MemoryMLP(dim=head_dim, depth=2, expansion_factor=4.0),
                neural_memory_kwargs=dict(dim_head=head_dim, heads=c.heads, momentum=True))
        for param in model.parameters():  # its per-head memory weights are one tensor expanded over the heads,
            param.data = param.data.contiguous()  # which AdamW cannot update in place
        return model

    rows, run = {}, None
    for name, make, kind in (("titans_edu MAC", lambda: build("mac", shapes.tp_size, device, context=c.context),
                              Measured), ("titans-pytorch MAC", theirs, TheirsMeasured)):
        run = None
        free(device)
        model = make()
        run = kind(model, shapes.tp_micro_batch, c.context, device, shapes.tp_size, c.vocab_size)
        rows[name] = {**timed(run, False, args.warmup, args.steps),
                      "parameters": sum(p.numel() for p in model.parameters())}
        del model
    ours, theirs_row = rows["titans_edu MAC"], rows["titans-pytorch MAC"]
    return {"status": "ok", "matched": matched, "models": rows, "mode": "eager, bf16 autocast",
            "speedup": ours["tokens_per_s"] / theirs_row["tokens_per_s"], "version": _version("titans-pytorch")}, run


def profile_case(run: Measured) -> dict:
    """One step of the last case under torch.profiler: the kernels that take the device's time (on CPU, the
    operators that take the CPU's), how busy the device was, and how many kernels the step launched."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = run.device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        step_s, _ = run.step()
    events = prof.key_averages()
    if cuda:  # the kernels themselves (the operators that launch them carry the same time)
        costs = [(e, getattr(e, "self_device_time_total", 0)) for e in events if e.device_type == DeviceType.CUDA]
    else:
        costs = [(e, e.self_cpu_time_total) for e in events]
    total = sum(t for _, t in costs) or 1.0
    top = sorted(costs, key=lambda c: c[1], reverse=True)[:8]
    return {"profiled_step_s": step_s, "clock": "device" if cuda else "cpu", "busy_ms": total / 1e3,
            "busy_share": total / 1e6 / step_s,
            "cpu_ops_ms": sum(e.self_cpu_time_total for e in events) / 1e3,
            "kernel_launches": sum(e.count for e in events if "LaunchKernel" in e.key) if cuda else None,
            "top": [{"name": e.key[:90], "calls": e.count, "self_ms": t / 1e3, "share": t / total} for e, t in top]}


def describe_device(device) -> dict:
    info = {"type": device.type, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(name=p.name, memory_gib=round(p.total_memory / GiB, 1), multiprocessors=p.multi_processor_count,
                    capability=f"{p.major}.{p.minor}", bf16=torch.cuda.is_bf16_supported(),
                    driver=_command_output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
                    alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF"))
    info["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    info["titans_pytorch"] = _version("titans-pytorch")
    return info


def worker_main(args) -> None:
    """Read one message per line on stdin, answer one ``@@ {json}`` line on stdout for each."""
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1 if args.smoke else torch.get_num_threads())
        torch.set_flush_denormal(True)  # as the trainer does on CPU
    import warnings

    warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
    shapes = SMOKE if args.smoke else FULL
    last = None
    while line := sys.stdin.readline():
        message = json.loads(line)
        try:
            if message["op"] == "hello":
                out = describe_device(device)
            elif message["op"] == "profile":
                out = profile_case(last) if last is not None else {"status": "error", "error": "no case to profile"}
            else:
                last = None
                free(device)
                task = Task(**message["task"])
                if task.kind == "correctness":
                    out = correctness_case(task, shapes, device)
                elif task.kind == "flex-masks":
                    out = flex_masks_case(task, shapes, device)
                elif task.kind == "speed":
                    out, last = speed_case(task, shapes, device, args, message.get("fit"))
                else:
                    out, last = titans_pytorch_case(task, shapes, device, args)
        except Exception as err:  # noqa: BLE001 - every failure is a result to record
            last = None
            out = {"status": "error", "error": f"{type(err).__name__}: {str(err)[:1500]}",
                   "traceback": traceback.format_exc()[-3000:]}
        print("@@ " + json.dumps(out, default=float), flush=True)


# --- the main process: the plan, the budget, the record ---


class WorkerGone(RuntimeError):
    pass


class Worker:
    """The worker process; ``call`` sends one message and waits for its answer, killing the worker past ``timeout``."""

    def __init__(self, args, env: dict, log) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--device", args.device,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--compile-scope", args.compile_scope]
        self.env = env
        self.proc = subprocess.Popen(cmd + (["--smoke"] if args.smoke else []), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=ROOT,
                                     start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("@@ "):
                self.lines.put(line[3:])
        self.lines.put(None)

    def call(self, message: dict, timeout: float) -> dict:
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as err:
            raise WorkerGone(f"the worker had exited ({err})") from err
        try:
            line = self.lines.get(timeout=max(timeout, 0.1))
        except queue.Empty:
            self.kill()
            raise TimeoutError(f"stopped after {timeout:.0f} s, its allowance of the time budget") from None
        if line is None:
            code = self.proc.wait()
            raise WorkerGone(f"the worker exited with code {code} (see the log)")
        return json.loads(line)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()


def count_flops(variant: str, size: str, context: int) -> dict:
    """FLOPs of one training pass per sequence and the parameters, counted on the meta device (in a pool)."""
    from titans_edu.training.scaling import block_costs, count_parameters

    torch.set_num_threads(1)
    depth = ModelConfig.preset(variant, size, context=context).depth
    costs = block_costs(variant, size, batch=1, seq=context, context=context)
    return {"flops_per_sequence": costs.flops(depth), "parameters": count_parameters(variant, size, context=context)}


def run_group(cmd: list[str], env: dict, timeout: float, log) -> tuple[int | None, float]:
    """Run ``cmd`` in a process group of its own (torchrun starts children); kill the group past ``timeout``."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return proc.wait(timeout=max(timeout, 1.0)), time.monotonic() - start
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None, time.monotonic() - start


def train_case(shapes: Shapes, args, cap: float, log) -> dict:
    """The trainer's own path: torchrun, one process, bf16 and compile; then --resume from its checkpoint. The
    run folder is temporary (a 170M checkpoint with its AdamW state is 2 GB); its metrics are kept."""
    folder = Path(tempfile.mkdtemp(prefix="gpu-check-train-"))
    try:
        return _train_case(shapes, args, cap, log, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _train_case(shapes: Shapes, args, cap: float, log, folder: Path) -> dict:
    from titans_edu.training.checkpoint import list_checkpoints
    from titans_edu.training.run_log import read_metrics

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
            "-m", "titans_edu.train", f"--variant={args.train_variant}", f"--size={shapes.train_size}",
            *shapes.train_flags, "--progress=false", "--plot=false", f"--seed={SEED}", f"--out_dir={folder}"]
    steps, more = shapes.train_steps, shapes.train_steps + shapes.train_more
    commands = [base + [f"--max_steps={steps}"], base + [f"--max_steps={more}", "--resume"]]
    out = {"variant": args.train_variant, "size": shapes.train_size, "runs": [],
           "commands": [" ".join(["torchrun", *c[3:]]) for c in commands]}
    deadline = time.monotonic() + cap
    for which, cmd in zip(("the first run", "the resumed run"), commands):
        code, seconds = run_group(cmd, env, deadline - time.monotonic(), log)
        out["runs"].append({"exit_code": code, "wall_s": seconds})
        if code != 0:
            why = "was stopped at its time allowance" if code is None else f"exited with code {code}"
            return {**out, "status": "error", "error": f"{which} {why} (see the log)"}
    metrics = folder / "metrics.jsonl"
    rows = [r for r in read_metrics(metrics) if "loss" in r] if metrics.exists() else []
    out["losses"] = [(int(r["step"]), r["loss"]) for r in rows]
    first_run = [r for r in rows if r["step"] <= steps]
    if not first_run:
        return {**out, "status": "failed", "error": f"the first run logged no training loss in {metrics.name}"}
    resumed = [r for r in rows if r["step"] > steps]
    saved = [int(p.stem.split("_")[1]) for p in list_checkpoints(folder / "ckpt")]
    rates = [r["tokens_per_s"] for r in first_run[2:]] or [r["tokens_per_s"] for r in first_run]
    checks = {
        "loss_falls": {"first": first_run[0]["loss"], "last": first_run[-1]["loss"],
                       "passed": first_run[-1]["loss"] < first_run[0]["loss"] - 0.05},
        "checkpoint_written": {"steps_saved": saved, "passed": steps in saved},
        # a resumed run logs from the checkpoint's step on, at the loss it had reached, and saves at its end
        "resume_continues": {"first_step": resumed[0]["step"] if resumed else None,
                             "loss": resumed[0]["loss"] if resumed else None,
                             "passed": bool(resumed) and resumed[0]["step"] <= steps + 10 and more in saved
                             and resumed[0]["loss"] < first_run[0]["loss"] - 0.05},
    }
    passed = all(c["passed"] for c in checks.values())
    return {**out, "status": "ok" if passed else "failed", "checks": checks, "steps": more,
            "tokens_per_s": statistics.median(rates) if rates else None}


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _command_output(cmd: list[str]) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=15, cwd=ROOT).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def source_record() -> dict:
    """The git commit when there is a checkout, and a hash of the sources that holds without one."""
    digest = hashlib.sha256()
    for path in sorted([*ROOT.glob("titans_edu/**/*.py"), *ROOT.glob("bench/*.py")]):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    status = _command_output(["git", "status", "--porcelain", "--untracked-files=no"])
    return {"commit": _command_output(["git", "rev-parse", "HEAD"]), "dirty": bool(status),
            "sources_sha256": digest.hexdigest()}


def unpack_wheels(folder: str) -> tuple[str | None, str]:
    """The wheels in ``folder`` unpacked into a temporary folder for the worker's path. A wheel is a zip file, and
    titans-pytorch and what it needs are pure Python, so no pip is needed."""
    wheels = sorted(Path(folder).glob("*.whl"))
    if not wheels:
        return None, f"no .whl files in {folder}"
    target = tempfile.mkdtemp(prefix="titans-pytorch-")
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(target)
    return target, f"{len(wheels)} wheels unpacked from {folder}"


def peak_tflops(args, device_info: dict) -> tuple[float | None, str]:
    if args.peak_tflops:
        return args.peak_tflops, "--peak-tflops"
    if device_info.get("type") != "cuda":
        return (SMOKE_PEAK_TFLOPS, "nominal, CPU smoke run") if args.smoke else (None, "no peak known for a CPU")
    for name, peak in PEAK_BF16_TFLOPS:
        if name in device_info.get("name", ""):
            return peak, f"{name} datasheet, dense bf16"
    return None, f"no datasheet peak for {device_info.get('name')}; pass --peak-tflops"


class Checker:
    """The targets, judged as figures arrive; it says which case to profile when one is missed."""

    def __init__(self, shapes: Shapes, results: dict) -> None:
        self.shapes, self.results = shapes, results

    def speed(self, variant: str, setting: int, mode: str) -> dict | None:
        r = self.results.get(f"speed/{self.shapes.settings[setting].name}/{variant}/{mode}")
        return r if r and r.get("status") == "ok" else None

    def pair(self, variant: str, setting: int):
        """Our case and Transformer++'s in the same mode, compiled if both have run."""
        for mode in ("compiled", "eager"):
            a, b = self.speed(variant, setting, mode), self.speed("transformer", setting, mode)
            if a and b:
                return mode, a, b
        return None

    def judge(self) -> list[dict]:
        rows = []
        for variant in TITANS_VARIANTS:
            found = self.pair(variant, 0)
            rows.append(self._row("titans_vs_transformer", variant, found and (
                found[1]["tokens_per_s"] / found[2]["tokens_per_s"], 0.5, f"{found[0]}, x Transformer++"),
                found and f"speed/{self.shapes.settings[0].name}/{variant}/{found[0]}"))
        found = self.pair("lmm", 1)
        rows.append(self._row("lmm_vs_transformer_16k", "lmm", found and (
            found[1]["tokens_per_s"] / found[2]["tokens_per_s"], 1.0, f"{found[0]}, x Transformer++"),
            found and f"speed/{self.shapes.settings[1].name}/lmm/{found[0]}"))
        for key, variant, floor in (("mfu_transformer", "transformer", 0.30), ("mfu_mac", "mac", 0.20)):
            case = self.speed(variant, 0, "compiled") or self.speed(variant, 0, "eager")
            mfu = case.get("mfu") if case else None
            rows.append(self._row(key, variant, mfu is not None and (mfu, floor, f"{case['mode']}, MFU"),
                                  case and f"speed/{self.shapes.settings[0].name}/{variant}/{case['mode']}"))
        tp = next((r for n, r in self.results.items() if n.startswith("titans-pytorch/") and r.get("status") == "ok"),
                  None)
        mac = self.speed("mac", 0, "compiled") or self.speed("mac", 0, "eager")
        rows.append(self._row("mac_vs_titans_pytorch", "mac", tp and (tp["speedup"], 2.0, "eager, x titans-pytorch"),
                              mac and f"speed/{self.shapes.settings[0].name}/mac/{mac['mode']}"))
        return rows

    def _row(self, key, variant, figure, case) -> dict:
        text = TARGETS[key].format(*(s.name for s in self.shapes.settings))
        if key == "titans_vs_transformer":
            text = f"{variant.upper()} {text}"
        if not figure:
            return {"target": key, "variant": variant, "text": text, "result": "not measured"}
        value, floor, unit = figure
        return {"target": key, "variant": variant, "text": text, "value": value, "floor": floor,
                "unit": unit, "result": "met" if value >= floor else "missed", "case": case}

    def missed_by(self, name: str) -> bool:
        return any(r["result"] == "missed" and r.get("case") == name for r in self.judge())


def section_status(tasks: dict) -> str:
    states = {t["status"] for t in tasks.values()}
    for bad in ("failed", "error"):
        if bad in states:
            return bad
    if not states or states == {"skipped"}:
        return "skipped"
    return "ok" if states == {"ok"} else "partial"


def attach_flops(results: dict, flops: dict, peak: float | None, wait: float, final: bool = False) -> None:
    """MFU of every speed case, once its FLOP count is in (waiting ``wait`` seconds at most, in all): counted
    FLOPs of the step / step time / peak."""
    deadline = time.monotonic() + wait
    for name, r in results.items():
        if not name.startswith("speed/") or r.get("status") != "ok" or r.get("mfu") is not None:
            continue
        job = flops.get((r["variant"], r["setting"]["size"], r["setting"]["context"]))
        if job is None:
            r["mfu"], r["mfu_note"] = None, "FLOPs not counted for this case"
            continue
        try:
            count = job.result(timeout=max(deadline - time.monotonic(), 0.0))
        except futures.TimeoutError:
            if final:
                r["mfu"], r["mfu_note"] = None, "the FLOP count had not finished"
            continue
        except Exception as err:  # noqa: BLE001
            r["mfu"], r["mfu_note"] = None, f"FLOP count failed: {err}"
            continue
        step_flops = count["flops_per_sequence"] * r["micro_batch"]
        r["flops_per_step"] = step_flops
        r["achieved_tflops"] = step_flops / r["step_s"] / 1e12
        r["mfu"] = r["achieved_tflops"] / peak if peak else None


def why(r: dict) -> str:
    return r.get("reason") or r.get("error") or ""


def markdown(record: dict) -> str:
    """The tables for bench/README.md; cases that were not selected are left out of them."""
    s, d = record["settings"], record["device"]
    lines = [f"{d.get('name', d['type'])}, torch {record['versions']['torch']}, {record['date']}, commit "
             f"{(record['git']['commit'] or 'unknown')[:10]}; MFU against {s['peak_tflops']} TFLOP/s "
             f"({s['peak_source']}); compile scope: {s['compile_scope']}", ""]
    sections = {name: {n: r for n, r in sec["tasks"].items() if r.get("reason") != NOT_SELECTED}
                for name, sec in record["sections"].items()}
    corr = sections["correctness"]
    cols = ("chunked_vs_naive", "bf16_vs_fp32", "causality", "streaming", "flex_vs_sdpa")
    if corr:
        lines += ["| variant | chunked vs naive (fp32) | bf16 vs fp32 | causality | streaming | FlexAttention vs SDPA |",
                  "| --- | --- | --- | --- | --- | --- |"]
    for name, r in corr.items():
        if "checks" not in r or name.endswith("flex-masks"):
            continue
        cells = []
        for c in cols:
            check = r["checks"].get(c, {})
            cells.append("n/a" if check.get("passed") is None else
                         f"{'ok' if check['passed'] else 'FAIL'} {check['error']:.1e}")
        lines.append(f"| {name.split('/')[-1]} | " + " | ".join(cells) + " |")
    masks = corr.get("correctness/flex-masks", {})
    for mask, check in masks.get("checks", {}).items():
        lines.append(f"| FlexAttention, {mask} | | | | | {'ok' if check['passed'] else 'FAIL'} {check['error']:.1e} |")
    for name, r in corr.items():
        if r["status"] in ("skipped", "error"):
            lines.append(f"| {name.split('/')[-1]} | {r['status']}: {why(r)[:80]} |")
    if sections["speed"]:
        lines += ["", "| setting | variant | mode | sequences x tokens | tokens/s | step ms | peak GiB | compile s | MFU |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in sections["speed"].items():
        _, setting, variant, mode = name.split("/")
        if r["status"] != "ok":
            lines.append(f"| {setting} | {variant} | {mode} | {r['status']}: {why(r)[:70]} |")
            continue
        ckpt = " (checkpointing)" if r["activation_checkpointing"] else ""
        lines.append(
            f"| {setting} | {variant} | {mode} | {r['micro_batch']} x {r['setting']['context']}{ckpt} | "
            f"{r['tokens_per_s']:,.0f} | {r['step_s'] * 1e3:,.0f} | "
            f"{'' if r['peak_memory_gib'] is None else format(r['peak_memory_gib'], '.1f')} | "
            f"{'' if r['compile_s'] is None else format(r['compile_s'], '.0f')} | "
            f"{'' if r.get('mfu') is None else format(r['mfu'], '.1%')} |")
    for name, r in sections["titans_pytorch"].items():
        lines += ["", "| model (matched shape, eager, bf16) | parameters | tokens/s | peak GiB |",
                  "| --- | --- | --- | --- |"]
        if r["status"] != "ok":
            lines.append(f"| {name} | {r['status']}: {why(r)[:100]} | | |")
            continue
        for model, m in r["models"].items():
            peak = "" if m["peak_memory_gib"] is None else f"{m['peak_memory_gib']:.1f}"
            lines.append(f"| {model} | {m['parameters']:,} | {m['tokens_per_s']:,.0f} | {peak} |")
    for name, r in sections["train"].items():
        lines += ["", "| trainer run | status | loss first -> last | checkpoints | resumed at step | tokens/s |",
                  "| --- | --- | --- | --- | --- | --- |"]
        c = r.get("checks")
        if not c:
            lines.append(f"| {name} | {r['status']}: {why(r)[:100]} | | | | |")
            continue
        lines.append(f"| {name} ({r['variant']}) | {r['status']} | {c['loss_falls']['first']:.3f} -> "
                     f"{c['loss_falls']['last']:.3f} | {c['checkpoint_written']['steps_saved']} | "
                     f"{c['resume_continues']['first_step']} | {r['tokens_per_s'] or 0:,.0f} |")
    lines += ["", "| target | figure | result |", "| --- | --- | --- |"]
    for t in record["targets"]:
        if "value" not in t:
            figure = ""
        else:
            figure = f"{t['value']:.2%}" if t["target"].startswith("mfu") else f"{t['value']:.2f}x"
            figure += f" ({t['unit']})"
        lines.append(f"| {t['text']} | {figure} | {t['result']} |")
    unselected = [s for s in record["skipped"] if s["reason"] == NOT_SELECTED]
    left_out = [f"{s['task']} ({s['reason']})" for s in record["skipped"] if s["reason"] != NOT_SELECTED]
    if unselected:
        left_out.append(f"{len(unselected)} cases {NOT_SELECTED}")
    if left_out:
        lines += ["", "Left out: " + "; ".join(left_out)]
    return "\n".join(line for i, line in enumerate(lines) if line or (i and lines[i - 1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if there is one), cuda, cuda:N or cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, a few steps: every code path, quickly")
    parser.add_argument("--budget-s", type=float, default=480.0, help="seconds for the whole run (default 480)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (default 3, smoke 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them (compiled: after the first)")
    parser.add_argument("--compile-scope", choices=("block", "model"), default="block",
                        help="compile each block (one graph for all; default) or the whole model (as the trainer)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak for MFU (default: datasheet)")
    parser.add_argument("--only", default="", help="comma-separated name prefixes of the cases to run")
    parser.add_argument("--continue-from", default=None, help="an earlier results file: keep its finished cases")
    parser.add_argument("--wheels", default=None, help="a folder of titans-pytorch wheels (see WHEELS_HOWTO)")
    parser.add_argument("--train-variant", default="transformer",
                        help="variant of the trainer run (default transformer: the trainer compiles the whole model, "
                             "which for a Titans variant traces every chunk of every block)")
    parser.add_argument("--no-profile", action="store_true", help="do not profile the cases that miss a target")
    parser.add_argument("--out", default=None, help="results file (default bench/results/gpu-<date>[-smoke].json)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.steps = args.steps or (2 if args.smoke else 3)
    if args.worker:
        worker_main(args)
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device; use --device cpu --smoke")
    if args.device == "cpu" and not args.smoke:
        parser.error("the full shapes need a GPU; on CPU run --smoke")
    return run(args, argv if argv is not None else sys.argv[1:])


def run(args, argv: list[str]) -> int:
    shapes = SMOKE if args.smoke else FULL
    budget = Budget(args.budget_s, args.smoke)
    started = datetime.datetime.now(datetime.timezone.utc)
    date = started.strftime("%Y-%m-%d")
    default = ROOT / "bench" / "results" / f"gpu-{date}{'-smoke' if args.smoke else ''}.json"
    out = Path(args.out) if args.out else default
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.with_suffix(".log")
    log = open(log_path, "a")
    earlier = json.loads(Path(args.continue_from).read_text()) if args.continue_from else None
    if out.exists() and not (earlier and Path(args.continue_from).resolve() == out.resolve()):
        out = out.with_name(f"{out.stem}-{started.strftime('%H%M%S')}.json")

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # less fragmentation between cases
    tasks = plan(shapes)
    only = [p for p in args.only.split(",") if p]
    selected = [t for t in tasks if not only or any(t.name.startswith(p) or t.section == p for p in only)]

    carried = {name: r for section in (earlier or {}).get("sections", {}).values()
               for name, r in section["tasks"].items() if r.get("status") in ("ok", "failed")}
    # FLOP counts on the meta device, in a pool of CPU processes beside the device's work
    pool = futures.ProcessPoolExecutor(max_workers=1 if args.smoke else 4,
                                       mp_context=multiprocessing.get_context("spawn"))
    flops = {}
    for t in selected:
        if t.kind == "speed" and carried.get(t.name, {}).get("mfu") is None and t.variant in shapes.flop_variants:
            s = shapes.settings[t.setting]
            if (t.variant, s.size, s.context) not in flops:
                flops[(t.variant, s.size, s.context)] = pool.submit(count_flops, t.variant, s.size, s.context)

    worker = Worker(args, env, log)
    try:
        device_info = worker.call({"op": "hello"}, 120)
    except (TimeoutError, WorkerGone) as err:
        print(f"error: the worker did not start: {err}; see {log_path}", file=sys.stderr)
        return 1
    peak, peak_source = peak_tflops(args, device_info)
    results: dict[str, dict] = {}
    checker = Checker(shapes, results)
    print(f"gpu_check on {device_info.get('name', device_info['type'])}: {len(selected)} cases, budget "
          f"{args.budget_s:.0f} s, MFU against {peak} TFLOP/s ({peak_source})", flush=True)

    def upcoming(i: int) -> list[Task]:
        return [t for t in tasks[i + 1:] if t in selected and t.name not in carried]

    def should_profile(i: int, task: Task, result: dict) -> bool:
        """A case that misses a target is profiled, unless its compiled twin is still to come and fits (that
        one is profiled instead), or the time it takes would come out of the first tiers' share."""
        profiled = sum("profile" in r for r in results.values())
        if args.no_profile or profiled == shapes.profiles or not checker.missed_by(task.name):
            return False
        twin = next((t for t in upcoming(i) if t.name == task.name.replace("/eager", "/compiled")), None)
        if task.mode == "eager" and twin is not None and budget.allows(twin)[0]:
            return False
        first_tiers = sum(budget.estimate(t) for t in upcoming(i) if t.tier <= 1)
        return budget.left() - (4 * result["step_s"] + 10) > first_tiers

    for i, task in enumerate(tasks):
        if task not in selected:
            results[task.name] = {"status": "skipped", "reason": NOT_SELECTED}
            continue
        if task.name in carried:
            results[task.name] = {**carried[task.name], "carried_from": args.continue_from}
            continue
        ok, cap = budget.allows(task)
        if not ok:
            results[task.name] = {"status": "skipped", "reason": f"time budget: needs ~{budget.estimate(task):.0f} s, "
                                                                 f"{max(budget.left(), 0):.0f} s left"}
            print(f"  skip {task.name}: {results[task.name]['reason']}", flush=True)
            continue
        start = time.monotonic()
        print(f"  {task.name} (up to {cap:.0f} s) ...", end=" ", flush=True)
        if task.kind == "train":
            if worker is not None:
                worker.close()  # the trainer gets the device to itself
            worker = None
            try:
                result = train_case(shapes, args, cap, log)
            except Exception as err:  # noqa: BLE001 - a broken run folder is a result too
                result = {"status": "error", "error": f"{type(err).__name__}: {err}"}
        else:
            worker = worker or Worker(args, env, log)
            message = {"op": "run", "task": asdict(task)}
            if task.kind == "speed" and task.mode == "compiled":
                eager = results.get(task.name.replace("/compiled", "/eager"), {})
                if eager.get("status") == "ok":  # start from what fitted without compile
                    message["fit"] = {k: eager[k] for k in ("micro_batch", "activation_checkpointing")}
            if task.kind == "titans-pytorch" and args.wheels and not device_info.get("titans_pytorch"):
                target, note = unpack_wheels(args.wheels)
                print(f"({note})", end=" ", flush=True)
                if target:
                    worker.close()
                    env = {**env, "PYTHONPATH": env["PYTHONPATH"] + os.pathsep + target}
                    worker = Worker(args, env, log)
            try:
                result = worker.call(message, cap)
            except (TimeoutError, WorkerGone) as err:
                result = {"status": "error", "error": str(err)}
                if isinstance(err, TimeoutError):
                    budget.record(task, time.monotonic() - start, stopped=True)
                worker = None
        result["wall_s"] = time.monotonic() - start
        results[task.name] = result
        print(f"{result['status']} in {result['wall_s']:.0f} s" + (f": {result.get('error', '')[:200]}"
              if result["status"] == "error" else ""), flush=True)
        if result["status"] in ("ok", "failed"):
            budget.record(task, result["wall_s"])
        if task.kind == "speed" and result["status"] == "ok":
            attach_flops({task.name: result}, flops, peak, wait=min(20.0, max(budget.left(), 0)))
            if should_profile(i, task, result):
                try:
                    result["profile"] = worker.call({"op": "profile"}, max(30.0, 10 * result["step_s"]))
                except (TimeoutError, WorkerGone) as err:
                    result["profile"] = {"status": "error", "error": str(err)}
                    worker = None
    # a missed target whose case could not be profiled when it ran: its eager twin once more, profiled
    attach_flops(results, flops, peak, wait=max(min(30.0, budget.left()), 1.0))
    for row in checker.judge():
        case, profiled = row.get("case"), sum("profile" in r for r in results.values())
        if row["result"] != "missed" or not case or "profile" in results[case] or args.no_profile \
                or profiled == shapes.profiles:
            continue
        task = next(t for t in tasks if t.name == case.replace("/compiled", "/eager"))
        ok, cap = budget.allows(Task(**{**asdict(task), "tier": 2}))
        if not ok or budget.left() < budget.estimate(task) + 20:
            results[case]["profile"] = {"status": "skipped", "reason": "time budget"}
            continue
        print(f"  profile {task.name} (misses: {row['text']}) ...", flush=True)
        try:
            worker = worker or Worker(args, env, log)
            fit = {k: results[case][k] for k in ("micro_batch", "activation_checkpointing")}
            again = worker.call({"op": "run", "task": asdict(task), "fit": fit}, cap)
            if again["status"] == "ok":
                results[case]["profile"] = {**worker.call({"op": "profile"}, max(30.0, 10 * again["step_s"])),
                                            "of": f"{task.name}, run again for the profile"}
        except (TimeoutError, WorkerGone) as err:
            results[case]["profile"] = {"status": "error", "error": str(err)}
            worker = None
    if worker is not None:
        worker.close()
    attach_flops(results, flops, peak, wait=max(min(60.0, budget.left() + RESERVE_S - 5), 1.0), final=True)
    counting = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in counting:  # a count still running is not waited for
        if process.is_alive():
            process.kill()
    log.close()

    record = {
        "command": " ".join([Path(sys.executable).name, "bench/gpu_check.py", *argv]),
        "argv": argv, "date": date, "started": started.isoformat(timespec="seconds"),
        "wall_s": time.monotonic() - budget.start, "git": source_record(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                     **{n: _version(n) for n in ("triton", "numpy", "einops")},
                     "titans-pytorch": next((r.get("version") for n, r in results.items()
                                             if n.startswith("titans-pytorch/") and r.get("version")),
                                            device_info.get("titans_pytorch"))},
        "device": device_info, "conditions": machine_conditions(),
        "settings": {"smoke": args.smoke, "budget_s": args.budget_s, "steps": args.steps, "warmup": args.warmup,
                     "compile_scope": args.compile_scope, "peak_tflops": peak, "peak_source": peak_source,
                     "seed": SEED, "tolerances": {k: v[0] for k, v in TOLERANCES.items()},
                     "shapes": asdict(shapes), "train_variant": args.train_variant,
                     "mfu_flops": "FLOPs of forward+backward counted by titans_edu.training.scaling on the meta "
                                  "device (attention as dense masked SDPA: a window's hidden blocks count; "
                                  "recomputation under checkpointing does not)"},
        "earlier_runs": ((earlier or {}).get("earlier_runs", []) + [earlier["command"]]) if earlier else [],
        "log": str(log_path),
        "cases": results,
    }
    record["sections"] = {
        s: {"status": section_status(ts), "tasks": ts}
        for s in SECTIONS for ts in [{t.name: results[t.name] for t in tasks if t.section == s}]}
    record["targets"] = checker.judge()
    record["skipped"] = [{"task": n, "reason": r.get("reason") or r.get("error")} for n, r in results.items()
                         if r["status"] in ("skipped", "error")]
    record["markdown"] = markdown(record)
    del record["cases"]  # they are in the sections
    out.write_text(json.dumps(record, indent=1, default=float))
    print("\n" + record["markdown"] + "\n")
    shown = set()
    for t in record["targets"]:
        profile = t["result"] == "missed" and t["case"] not in shown and results.get(t["case"], {}).get("profile")
        if profile and "top" in profile:
            shown.add(t["case"])
            print(f"{t['case']} (misses: {t['text']}): one profiled step of {profile['profiled_step_s'] * 1e3:,.0f} "
                  f"ms, {profile['busy_ms']:,.0f} ms busy on the {profile['clock']}"
                  + (f", {profile['kernel_launches']:,} kernel launches" if profile["kernel_launches"] else ""))
            for row in profile["top"][:5]:
                print(f"    {row['share']:6.1%}  {row['self_ms']:9.1f} ms  {row['calls']:7,}x  {row['name']}")
    print(f"\nresults: {out} ({record['wall_s']:.0f} s; sections: "
          + ", ".join(f"{s} {v['status']}" for s, v in record["sections"].items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
