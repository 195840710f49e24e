"""Train any Titans variant or baseline, at any size, on one CPU, one GPU or many (paper §5).

    python -m titans_edu.train                                   # tiny MAC, embedded corpus, CPU or GPU
    python -m titans_edu.train --variant=mag --max_steps=1000 --model.dim=128
    python -m titans_edu.train --resume                          # continue the newest checkpoint exactly
    torchrun --nproc_per_node 8 -m titans_edu.train --size=340m --data=data/fineweb-edu --tokenizer=tok.json

The loop is the usual one: for each step, accumulate gradients over micro-batches until the step has seen
``batch_tokens`` tokens, clip them, take an AdamW step with warmup then cosine decay; every ``eval_every``
steps evaluate, print a sample and write a checkpoint. The recipe is in ``train_config``, the data in
``data``, checkpoints in ``checkpoint``, devices and DDP/FSDP in ``parallel``, logs in ``run_log``.

A loss that is not finite, or running out of memory, stops the run with a message; the last checkpoint,
written before the problem, stays as it was. A checkpoint is written only when its weights are finite, within
``--max_param_norm`` if one is set, and give a finite loss on the batch the next step trains on; otherwise the
run stops there, so the newest checkpoint is always one that a resumed run can continue from.
"""

from __future__ import annotations

import math
import random
import sys
import time
import warnings
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..models.generate import generate
from ..models.lm import build_model
from . import checkpoint as ckpt
from .config import FSDP_SIZES, TrainConfig, config_from_args, plan_accumulation
from .data import BatchSampler, open_source
from .parallel import (Runtime, broadcast_from_main, default_dtype, init_runtime, mean_across_processes, shutdown,
                       unwrapped, wrap_model)
from .run_log import RunLog, bits_per_byte
from .tokenizer import Tokenizer

ModelBuilder = Callable[..., nn.Module]  # build_model(variant, size, **overrides)
RUN_KEYS = ("variant", "size", "model", "data", "tokenizer", "seed", "context", "carry_state", "micro_batch",
            "batch_tokens")


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, out of memory, ...). The last checkpoint is intact."""


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``min_lr_ratio * lr`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, norms or gate scalars), as in nanoGPT."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")


def next_token_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, state=None):
    """Mean next-token cross-entropy of ``x -> y``, and the model's state after ``x`` (read from ``state``)."""
    logits, state = model(x, state)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten()), state


@torch.no_grad()
def evaluate(model: nn.Module, sampler: BatchSampler, batches: int, rt: Runtime) -> float:
    """Mean validation loss over ``batches`` global batches of held-out windows.

    They are the same windows at every eval (they depend on the seed only), and the same for any number of
    processes: each process evaluates its share of every global batch, as in training.
    """
    model.eval()
    total = torch.zeros((), device=rt.device)
    for i in range(batches):
        for micro in range(sampler.accum):
            x, y = sampler.batch(i, micro, split="val", device=rt.device)
            with rt.autocast_context():
                total += next_token_loss(model, x, y)[0]
    model.train()
    return mean_across_processes(total / (batches * sampler.accum), rt).item()


def sample_text(model: nn.Module, tokenizer: Tokenizer, prompt: str, tokens: int, temperature: float, seed: int,
                rt: Runtime) -> str:
    """Continue ``prompt``, one token per model call with the streaming state (:mod:`titans_edu.models.generate`)."""
    model.eval()
    generator = torch.Generator(rt.device).manual_seed(seed)  # its own generator: training's RNG is untouched
    prompt_ids = torch.tensor([tokenizer.encode(prompt) or [0]], device=rt.device)
    with rt.autocast_context():
        ids, _ = generate(model, prompt_ids, tokens, temperature=temperature, generator=generator)
    model.train()
    return prompt + tokenizer.decode(ids[0, prompt_ids.shape[1]:].tolist())


RUN_FILES = ("metrics.jsonl", "metrics.csv", "samples.txt")  # what a run writes besides its checkpoints


def choose_run_folder(cfg: TrainConfig) -> Path:
    """``out_dir``, or ``runs/<variant>-<size>`` and, for a fresh run, the first of ``-2``, ``-3``... not in use.

    ``--resume`` without ``--out_dir`` continues the run that holds the checkpoint it names (a file in a run's
    ``ckpt`` folder, or a run folder), or with no name the newest run of this variant and size: the one whose
    last checkpoint was written last. A file from anywhere else starts the next free run folder.
    """
    if cfg.out_dir:
        folder = Path(cfg.out_dir)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"--out_dir={cfg.out_dir} is a file, not a folder. Pass a folder for the run (it is "
                             f"created if it does not exist).")
        if (folder / "ckpt").exists() and not (folder / "ckpt").is_dir():
            raise ValueError(f"{folder / 'ckpt'} is a file, where the run keeps its folder of checkpoints. Move "
                             f"that file, or pass another --out_dir.")
        if not cfg.resume:
            if ckpt.list_checkpoints(folder / "ckpt"):
                raise ValueError(f"{folder} already holds a run's checkpoints. Pass --resume to continue it, or "
                                 f"another --out_dir for a new run (nothing is overwritten).")
            found = [name for name in RUN_FILES if (folder / name).exists()]
            if found:
                raise ValueError(f"{folder} already holds a run's {', '.join(found)}, but no checkpoint to resume "
                                 f"from. Pass another --out_dir for a new run (nothing is overwritten), or delete "
                                 f"those files if that run is not needed.")
        return folder
    base = Path("runs") / f"{cfg.variant}-{cfg.size}"
    if cfg.resume == "latest":
        return newest_run(base) or base
    if cfg.resume:  # the run that holds the checkpoint named
        source = Path(cfg.resume)
        ckpt_folder = source if source.is_dir() else source.parent
        if ckpt_folder.name == "ckpt":
            return ckpt_folder.parent
        if source.is_dir():
            return source
    folder, n = base, 1
    while folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    return folder


def newest_run(base: Path) -> Path | None:
    """Of ``base`` and ``base-2``, ``base-3``..., the run whose newest checkpoint was written last (None: no
    checkpoint in any of them)."""
    runs = [base] + [p for p in base.parent.glob(f"{base.name}-*") if p.name[len(base.name) + 1:].isdigit()]
    written = [(last.stat().st_mtime, run) for run in runs if (last := ckpt.latest_checkpoint(run / "ckpt"))]
    return max(written, key=lambda t: t[0])[1] if written else None


def train(cfg: TrainConfig, build: ModelBuilder | None = None) -> dict:
    """Run training as ``cfg`` says; return a summary (run folder, first and last loss, final val loss, ...)."""
    cfg = cfg.with_recipe()
    build = build or build_model
    rt = init_runtime(cfg.device, cfg.dtype)
    try:
        # Weights, optimizer state and the loss are float32 (bfloat16 only inside autocast), also when the caller
        # made float64 the default, as the notebooks' setup() does: a run in a notebook is the command line's run.
        with default_dtype(torch.float32):
            return _train(cfg, build, rt)
    finally:
        shutdown(rt)


def _train(cfg: TrainConfig, build: ModelBuilder, rt: Runtime) -> dict:
    if rt.device.type == "cpu":
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)  # results on CPU are bitwise repeatable at a fixed thread count
        # Denormal floats (below 1.2e-38) slow CPU matmuls down many times over; an untrained memory with
        # forgetting decays towards zero over a long stream and produces them. Flush them to zero.
        torch.set_flush_denormal(True)
    folder = broadcast_from_main(choose_run_folder(cfg) if rt.is_main else None, rt)
    data, tokenizer = open_source(cfg.data, cfg.tokenizer, cfg.val_fraction)
    torch.manual_seed(cfg.seed)  # the same initial weights in every process
    random.seed(cfg.seed)  # and the same Python and NumPy random states, which checkpoints record
    np.random.seed(cfg.seed)
    model = build(cfg.variant, cfg.size, **{"vocab_size": data.vocab_size, **cfg.model})
    context = cfg.context or model.config.context
    data.check_fits(context, model.config.vocab_size)
    accum = plan_accumulation(cfg.batch_tokens, cfg.micro_batch, context, rt.world)
    sampler = BatchSampler(data, context, cfg.micro_batch, accum, rt.rank, rt.world, cfg.seed, cfg.carry_state,
                           restart_every=cfg.ckpt_every or cfg.eval_every)
    step_tokens = cfg.micro_batch * context * accum * rt.world
    n_params = sum(p.numel() for p in model.parameters())

    model.to(rt.device)
    fsdp = cfg.fsdp == "on" or (cfg.fsdp == "auto" and rt.distributed and cfg.size in FSDP_SIZES)
    model = wrap_model(model, rt, fsdp, cfg.compile, cfg.activation_checkpointing, cfg.carry_state > 1)
    optimizer = make_optimizer(model, cfg, rt.device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate(s, cfg) / cfg.lr)
    say = tqdm.write if rt.is_main else (lambda *_: None)
    step = 0
    if cfg.resume:
        step = resume(cfg, folder, model, optimizer, scheduler, say)
    if rt.is_main:  # a resumed run's folder may be new too: a checkpoint file from outside any run folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"cannot create the run folder {str(folder)!r} ({err.strerror or err}). Pass an "
                             f"--out_dir that can be created and written.") from err
    start_step = step
    log = RunLog(folder, cfg.metrics, cfg.tensorboard, enabled=rt.is_main)
    say(f"{cfg.variant} {cfg.size}: {n_params / 1e6:.2f}M parameters on {rt.device} x{rt.world}"
        f"{' (FSDP)' if fsdp else ''}; {step_tokens:,} tokens per step ({accum} micro-batches of "
        f"{cfg.micro_batch} x {context} per process); data {data.source}; run folder {folder}")
    if step >= cfg.max_steps:
        say(f"the checkpoint is at step {step} and --max_steps={cfg.max_steps}: nothing is left to train. Raise "
            f"--max_steps to train further.")

    @torch.no_grad()
    def check_loss(step: int) -> float:
        """The loss of the current weights on the first micro-batch of the next step (the batch a run resumed
        from them trains on first), averaged over the processes; model and random states are untouched."""
        model.eval()
        x, y = sampler.batch(step, 0, device=rt.device)
        with rt.autocast_context():
            loss = next_token_loss(model, x, y)[0]  # a resumed run starts its streams afresh, as here
        model.train()
        return mean_across_processes(loss, rt).item()

    def save(step: int, val: float | None) -> None:
        """Write checkpoint ``step`` if its weights pass the check; otherwise stop without writing anything."""
        model_state, optimizer_state = ckpt.model_and_optimizer_state(model, optimizer)  # every rank (FSDP)
        problem = None
        if rt.is_main:
            found = ckpt.weights_problem(model_state, cfg.max_param_norm)
            problem = f"are not sound: {found}" if found else None
        problem = broadcast_from_main(problem, rt)  # every process takes the same branches below
        if problem is None and val is not None and not math.isfinite(val):
            problem = f"give a validation loss of {val}"
        elif problem is None:
            loss = check_loss(step)
            if not math.isfinite(loss):
                problem = f"give a loss of {loss} on the first batch of step {step + 1}"
        if problem:
            raise TrainingError(
                f"the weights after step {step} {problem}. Stopped without saving them: "
                f"{good_checkpoint(folder / 'ckpt', step + 1)}. Try a lower --lr, more --warmup_steps, or "
                f"--dtype=float32."
            )
        if rt.is_main:
            payload = {"model": model_state, "optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
                       "step": step, "rng": ckpt.rng_state(), "config": cfg.to_dict()}
            ckpt.save_checkpoint(folder / "ckpt", step, payload, cfg.keep_last)

    def eval_and_sample(step: int) -> float:
        val = evaluate(model, sampler, cfg.eval_batches, rt)
        ppl, bpb = math.exp(min(val, 50.0)), bits_per_byte(val, data.bytes_per_token)
        log.log({"step": step, "val_loss": val, "val_ppl": ppl, **({"val_bpb": bpb} if bpb is not None else {})})
        say(f"step {step}: val loss {val:.4f}, ppl {ppl:.2f}" + (f", {bpb:.3f} bits/byte" if bpb is not None else ""))
        if tokenizer is not None and cfg.sample_tokens:
            text = sample_text(unwrapped(model) if not fsdp else model, tokenizer, cfg.sample_prompt,
                               cfg.sample_tokens, cfg.temperature, cfg.seed + step, rt)
            log.sample(step, text)
            say(f"sample: {text!r}")
        if cfg.plot:
            log.plot()
        return val

    model.train()
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not (rt.is_main and cfg.progress), unit="step")
    first_loss = last_loss = val = None
    states = [None] * accum  # with --carry_state, each micro-batch's state carried into its next window
    start = time.perf_counter()
    while step < cfg.max_steps:
        t0 = time.perf_counter()
        try:
            loss = torch.zeros((), device=rt.device)
            if sampler.stream_start(step) == step:  # new streams begin: every row starts from the initial state
                states = [None] * accum
            for micro in range(accum):  # gradient accumulation; DDP syncs gradients on the last micro-batch only
                x, y = sampler.batch(step, micro, device=rt.device)
                sync = micro == accum - 1 or not hasattr(model, "no_sync")
                with rt.autocast_context(), (nullcontext() if sync else model.no_sync()):
                    micro_loss, state = next_token_loss(model, x, y, states[micro])
                    micro_loss = micro_loss / accum
                micro_loss.backward()
                loss += micro_loss.detach()
                # truncated backprop through time: the next window starts from this state, without its history
                states[micro] = state.detach() if cfg.carry_state > 1 else None
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            loss = mean_across_processes(loss, rt).item()
            if not (math.isfinite(loss) and math.isfinite(float(grad_norm))):
                raise TrainingError(
                    f"the loss became {loss} (gradient norm {float(grad_norm)}) at step {step + 1}. Stopped without "
                    f"saving: {good_checkpoint(folder / 'ckpt', step + 1)}. Try a lower --lr, more --warmup_steps, "
                    f"or --dtype=float32."
                )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        except torch.OutOfMemoryError as err:
            raise TrainingError(
                f"out of memory at step {step + 1} with micro_batch={cfg.micro_batch} x context={context}. Lower "
                f"--micro_batch (accumulation keeps batch_tokens), add --activation_checkpointing, or shard with "
                f"--fsdp=on. The last good checkpoint is {ckpt.latest_checkpoint(folder / 'ckpt')}."
            ) from err
        step += 1
        first_loss = loss if first_loss is None else first_loss
        last_loss, dt = loss, time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{step_tokens / dt:,.0f}")
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            log.log({"step": step, "loss": loss, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                     "tokens": step * step_tokens, "tokens_per_s": step_tokens / dt,
                     "elapsed_s": time.perf_counter() - start})
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            val = eval_and_sample(step)
        if step % (cfg.ckpt_every or cfg.eval_every) == 0 or step == cfg.max_steps:
            save(step, val if step % cfg.eval_every == 0 or step == cfg.max_steps else None)
    bar.close()
    log.close()
    trained = ""
    if first_loss is not None:
        trained = f"; train loss {first_loss:.3f} at step {start_step + 1} -> {last_loss:.3f} at step {step}"
        if start_step:
            trained += f" (this session only: it resumed from step {start_step})"
    files = "checkpoints, metrics and loss.png" if cfg.plot else "checkpoints and metrics"
    say(f"done: {step} steps in {time.perf_counter() - start:.0f} s{trained}; {files} in {folder}")
    return {"folder": folder, "steps": step, "first_loss": first_loss, "last_loss": last_loss, "val_loss": val,
            "parameters": n_params, "resumed_from": start_step}


def good_checkpoint(folder: Path, failed_step: int) -> str:
    """Which checkpoint a run stopped before ``failed_step`` can continue from, as a clause of a message.

    Every checkpoint passed the check when it was written. The one written just before the failing step holds
    the weights that step started from, so resuming from it repeats the failure (the data of a step is fixed by
    the seed); the good one is then the one before it.
    """
    found = ckpt.list_checkpoints(folder)
    if not found:
        return "no checkpoint has been written yet, so there is nothing to resume from"
    newest = found[-1]
    if ckpt.checkpoint_step(newest) != failed_step - 1:
        return f"the last good checkpoint is {newest}"
    clause = (f"the newest checkpoint, {newest}, holds the weights step {failed_step} started from, so resuming "
              f"from it repeats this step")
    if len(found) == 1:
        return clause + "; no earlier checkpoint is kept (--keep_last keeps more)"
    return clause + f"; the last good checkpoint before it is {found[-2]} (continue with --resume={found[-2]})"


def resume(cfg: TrainConfig, folder: Path, model: nn.Module, optimizer, scheduler,
           say: Callable[[str], None] = print) -> int:
    """Load model, optimizer, schedule and random states; return the step to continue from."""
    source = folder / "ckpt" if cfg.resume == "latest" else Path(cfg.resume)
    if cfg.resume == "latest" and not ckpt.list_checkpoints(source):
        raise ckpt.CheckpointError(f"--resume: no checkpoint in {source}, so nothing to resume. Start the run "
                                   f"without --resume, or point --out_dir at the run to continue.")
    if source.is_dir() and not ckpt.list_checkpoints(source) and ckpt.list_checkpoints(source / "ckpt"):
        source = source / "ckpt"  # --resume=runs/mac-tiny: the run folder rather than its ckpt folder
    path = ckpt.latest_checkpoint(source) if source.is_dir() else source
    state = ckpt.load_checkpoint(path or source, require=ckpt.TRAINING_KEYS)
    saved = state["config"]
    changed = [k for k in RUN_KEYS if saved.get(k) != getattr(cfg, k)]
    if changed:
        raise ValueError(
            f"--resume: this run's {', '.join(f'{k}={getattr(cfg, k)!r}' for k in changed)} differ from the "
            f"checkpoint's ({', '.join(f'{k}={saved.get(k)!r}' for k in changed)}). Resume with the same settings."
        )
    found = ckpt.weights_problem(state["model"])
    if found:
        older = [str(p) for p in ckpt.list_checkpoints(path.parent) if p != path]
        hint = f" Resume from an older one: --resume={older[-1]}." if older else ""
        raise ckpt.CheckpointError(f"checkpoint {str(path)!r} holds weights that are not sound ({found}); a run "
                                   f"cannot continue from it.{hint}")
    ckpt.load_model_and_optimizer_state(model, optimizer, state["model"], state["optimizer"], source=path)
    try:
        scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
        raise ckpt.CheckpointError(f"checkpoint {str(path)!r}: its schedule or random states cannot be restored "
                                   f"({type(err).__name__}: {err}); it is damaged or from another version.") from err
    written = datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M:%S")
    which = (f", the newest run of {cfg.variant}-{cfg.size} (pass --out_dir to continue another)"
             if cfg.resume == "latest" and not cfg.out_dir else "")
    say(f"--resume: continuing {folder}{which} from {path} (step {state['step']}, written {written})")
    return state["step"]


def main(argv: list[str] | None = None, build: ModelBuilder | None = None) -> int:
    """Command-line entry point: ``python -m titans_edu.train [--field=value ...]``. Returns the exit code."""
    with warnings.catch_warnings():  # our warnings as one line "warning: ...", as the errors are printed
        show = warnings.showwarning

        def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
            if issubclass(category, ckpt.RunFolderWarning):
                print(f"warning: {message}", file=sys.stderr)
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = show_warning
        try:
            summary = train(config_from_args(argv), build)
        except (ValueError, TrainingError, ckpt.CheckpointError) as err:  # DataError is a ValueError
            print(f"error: {err}", file=sys.stderr)
            return 1
    return 0 if summary else 1
