"""Train each variant at one length, test it at many: the sweep behind the long-context results (notebook 12).

For every seed and every variant asked for, :func:`run_sweep`

1. builds the model (``build_model(variant, preset)`` with the task's vocabulary) and trains it on examples of
   the task at the training length ``L`` only: AdamW, a short linear warmup then cosine decay, gradient norm
   clipped at 1, the loss on the answer tokens alone (teacher forcing);
2. scores exact match of the answer at every length ``m * L`` and needle depth, on examples the training never
   saw; the stream is read in calls of ``call`` tokens with the state carried, which gives what one call gives;
3. for the memory variants, scores the same examples once more with the memory reset to ``M_0`` just before
   the question (the control: what the answer owes to the memory).

Every cell goes into the results file as soon as it is scored (:mod:`titans_edu.experiments.results`), the
trained model into ``checkpoints/`` beside it, so a killed sweep continues where it stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..memory.state import MemoryState
from ..models.config import TITANS_VARIANTS
from ..models.lm import ModelState, TitansLM, build_model
from ..models.mac import MACState
from .results import ResultsFile, cell_key
from .tasks import IGNORE, Example, Task, batch, get_task


@dataclass(frozen=True)
class Sweep:
    """Everything that decides a sweep's numbers; it is stored in the results file as its ``config``."""

    task: str
    task_options: dict = field(default_factory=dict)
    variants: tuple[str, ...] = ("lmm", "mac", "mag", "mal", "swa", "transformer")
    train_length: int = 256
    multiples: tuple[int, ...] = (1, 2, 4, 8, 16)  # test lengths, as multiples of the training length
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 800
    batch: int = 16
    lr: float = 3e-3
    warmup: int = 50
    eval_examples: int = 32
    preset: str = "tiny"
    model: dict = field(default_factory=dict)  # build_model overrides for every variant
    reset_control: bool = True
    call: int = 1024  # tokens per model call when scoring long inputs

    def config(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def json_safe(value):
    """Tuples as lists, so that a config compares equal to the one read back from JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def make_model(sweep: Sweep, variant: str, task: Task, seed: int, device: str) -> TitansLM:
    torch.manual_seed(seed)
    return build_model(variant, sweep.preset, vocab_size=task.vocab_size, context=sweep.train_length,
                       **sweep.model).to(device)


def answer_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    logits, _ = model(x)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE)


def learning_rate(step: int, sweep: Sweep) -> float:
    """Linear warmup, a constant rate, then a linear decay to a tenth over the last fifth of the steps: retrieval
    is learned in a sudden drop of the loss after a plateau, which a rate decaying from the start can delay."""
    if step < sweep.warmup:
        return sweep.lr * (step + 1) / sweep.warmup
    decay_from = int(0.8 * sweep.steps)
    if step < decay_from:
        return sweep.lr
    return sweep.lr * (1 - 0.9 * (step - decay_from) / max(1, sweep.steps - decay_from))


def train(model: nn.Module, task: Task, sweep: Sweep, seed: int, device: str, steps: int | None = None,
          on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Train on fresh batches of the task at the training length; returns the loss of every step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=sweep.lr, weight_decay=0.0)
    losses = []
    model.train()
    for step in range(sweep.steps if steps is None else steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, sweep)
        x, y, _ = batch(task, sweep.batch, sweep.train_length, seed=seed * 1_000_003 + step)
        loss = answer_loss(model, x.to(device), y.to(device))
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"the training loss became {loss.item()} at step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, loss.item())
    model.eval()
    return losses


# --- scoring ---


def reset_memory(model: TitansLM, state: ModelState) -> ModelState:
    """The state with every block's memory weights and momentum set back to those of a fresh stream (``M_0``
    after the persistent tokens, ``S = 0``); attention caches, convolution caches and positions are kept."""
    batch_size = state.batch
    layers = []
    for block, layer in zip(model.blocks, state.layers):
        fresh = block.mixer.init_state(batch_size)
        if isinstance(layer, MemoryState):  # LMM
            layers.append(_fresh_weights(layer, fresh))
        elif isinstance(layer, MACState):
            memory = _fresh_weights(layer.memory, fresh.memory)
            layers.append(replace(layer, memory=memory, segment_start=memory.weights))
        elif hasattr(layer, "memory"):  # MAG, MAL
            layers.append(replace(layer, memory=_fresh_weights(layer.memory, fresh.memory)))
        else:
            raise ValueError(f"{type(layer).__name__} has no memory to reset; only {TITANS_VARIANTS} do")
    return ModelState(layers, batch_size, state.position)


def _fresh_weights(now: MemoryState, fresh: MemoryState) -> MemoryState:
    return replace(now, weights=fresh.weights, anchor=fresh.weights, surprise=fresh.surprise)


@torch.no_grad()
def predictions(model: TitansLM, tokens: Tensor, call: int, reset_at: int | None = None) -> Tensor:
    """Argmax of the next token at every position of ``tokens (batch, n)`` (``(batch, n - 1)``), read in calls of
    ``call`` tokens; with ``reset_at``, the memory is reset to ``M_0`` before position ``reset_at``."""
    x = tokens[:, :-1]
    cuts = sorted({*range(0, x.shape[1], call), *([reset_at] if reset_at is not None else [])})
    state, out = None, []
    for lo, hi in zip(cuts, cuts[1:] + [x.shape[1]]):
        if lo == reset_at:
            if state is None:
                raise ValueError("the memory can only be reset after some tokens have been read")
            state = reset_memory(model, state)
        logits, state = model(x[:, lo:hi], state)
        out.append(logits.argmax(-1))
    return torch.cat(out, dim=1)


def exact_match(model: TitansLM, examples: list[Example], call: int, device: str, reset: bool = False) -> float:
    """The share of examples whose every answer token is the argmax given the tokens before it: the verdict of
    greedy decoding (all right given the right prefix, or greedy goes wrong at the first miss). With ``reset``,
    the memory is reset to ``M_0`` just before each example's question; examples whose questions start at
    different positions (a question naming "Sandra" is longer than one naming "Mary") are read in separate
    batches, one per position."""
    groups = {}
    for e in examples:
        groups.setdefault(e.question if reset else None, []).append(e)
    right = 0.0
    for reset_at, group in groups.items():
        tokens = torch.stack([e.tokens for e in group]).to(device)
        scored = torch.stack([e.scored for e in group]).to(device)[:, 1:]
        pred = predictions(model, tokens, call, reset_at)
        right += ((pred == tokens[:, 1:]) | ~scored).all(dim=1).sum().item()
    return right / len(examples)


def examples_for(task: Task, length: int, depth: float, n: int, seed: int) -> list[Example]:
    """``n`` test examples; their seeds never meet those of training batches (which are below 2**40)."""
    return [task.example(length, depth, seed=2**40 + seed * 100_003 + i) for i in range(n)]


# --- the sweep ---


def run_sweep(sweep: Sweep, results: ResultsFile, device: str = "cpu", checkpoints: Path | None = None,
              progress: Callable[[str, int], None] | None = None) -> ResultsFile:
    """Fill ``results`` with every cell of ``sweep`` that it does not hold yet (see the module docstring)."""
    task = get_task(sweep.task, **sweep.task_options)
    tick = progress or (lambda what, n: None)
    if "slice" not in results.data:  # on the CPU, where the tests recompute it
        results.data["slice"] = compute_slice(sweep)
        results.save()
    for seed in sweep.seeds:
        for variant in sweep.variants:
            wanted = planned_cells(sweep, variant, seed)
            missing = [c for c in wanted if not results.has(cell_key(*c))]
            if not missing:
                tick("skip", sweep.steps + len(wanted))
                continue
            model = make_model(sweep, variant, task, seed, device)
            path = None if checkpoints is None else checkpoints / f"{variant}-seed{seed}.pt"
            model_key = f"{variant}/seed={seed}"
            if path is not None and path.is_file() and model_key in results.models:
                model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
                model.eval()
                tick("train", sweep.steps)
            else:
                start = time.perf_counter()
                losses = train(model, task, sweep, seed, device, on_step=lambda s, loss: tick("train", 1))
                results.put_model(model_key, {"train_seconds": time.perf_counter() - start,
                                              "final_loss": sum(losses[-20:]) / len(losses[-20:]),
                                              "loss_every_10": losses[::10], "parameters": model.num_params()})
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    torch.save(model.state_dict(), path)
            tick("skip", len(wanted) - len(missing))
            for cell in missing:
                _, _, length, depth, control = cell
                examples = examples_for(task, length, depth, sweep.eval_examples, seed)
                score = exact_match(model, examples, sweep.call, device, reset=control == "reset")
                results.put_cell(cell_key(*cell), {"exact_match": score, "n": len(examples)})
                tick("cell", 1)
    return results


def planned_cells(sweep: Sweep, variant: str, seed: int) -> list[tuple]:
    cells = []
    controls = [""] + (["reset"] if sweep.reset_control and variant in TITANS_VARIANTS else [])
    for control in controls:
        for m in sweep.multiples:
            for depth in sweep.depths:
                cells.append((variant, seed, m * sweep.train_length, depth, control))
    return cells


def total_work(sweep: Sweep) -> int:
    """Training steps plus cells: the length of the sweep's progress bar."""
    return sum(sweep.steps + len(planned_cells(sweep, v, s)) for s in sweep.seeds for v in sweep.variants)


SLICE_STEPS, SLICE_EXAMPLES = 5, 8


def compute_slice(sweep: Sweep, device: str = "cpu") -> dict:
    """The first few training steps of the sweep's first model and a small evaluation after them: a prefix of the
    real run, cheap to recompute, that changes whenever the code behind the numbers changes."""
    task = get_task(sweep.task, **sweep.task_options)
    variant, seed = sweep.variants[0], sweep.seeds[0]
    model = make_model(sweep, variant, task, seed, device)
    losses = train(model, task, sweep, seed, device, steps=SLICE_STEPS)
    examples = examples_for(task, sweep.train_length, 0.5, SLICE_EXAMPLES, seed)
    tokens = torch.stack([e.tokens for e in examples]).to(device)
    with torch.no_grad():
        logits, _ = model(tokens[:, :-1])
    scored = torch.stack([e.scored for e in examples])[:, 1:].to(device)
    answer_loss_value = F.cross_entropy(logits[scored].float(), tokens[:, 1:][scored]).item()
    return {"variant": variant, "seed": seed, "steps": SLICE_STEPS, "losses": losses,
            "eval_answer_loss": answer_loss_value}
