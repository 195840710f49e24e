"""Checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is one file ``<run>/ckpt/step_00000300.pt`` holding

    model, optimizer     full (unsharded) state dicts, on the CPU, keyed by parameter name; the same file
                         loads into a plain, DDP or FSDP model
    scheduler            the learning-rate schedule's state
    step                 optimizer steps done; data sampling is a pure function of (seed, step), so this is
                         also the data position (see ``data.BatchSampler``)
    rng                  the Python, NumPy, torch and CUDA random states
    config               the training config, to check that a resumed run is the same run

Writing is atomic: the file is written under a temporary name, flushed to disk, then renamed over the final
name. A crash in the middle of a write leaves the previous checkpoints untouched, and only complete files are
ever named ``step_*.pt``. The newest ``keep_last`` are kept; older ones are deleted after a newer one is safe.
The trainer writes a checkpoint only after its weights pass :func:`weights_problem` (all finite, optionally
within a norm bound) and give a finite loss, so the newest checkpoint is always one a run can continue from.

Files in the folder that are not named ``step_<number>.pt`` are ignored, with a warning. Reading checks what
a file holds: :func:`load_checkpoint` with ``require=`` names the file and the keys it lacks, and
:func:`load_model_and_optimizer_state` names the tensors that do not fit the model.
"""

from __future__ import annotations

import math
import os
import random
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch import nn

PATTERN = "step_*.pt"
NAME = re.compile(r"step_(\d+)\.pt")  # the names this module writes: step_00000300.pt
TRAINING_KEYS = ("model", "optimizer", "scheduler", "step", "rng", "config")  # what the trainer writes


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written, found or read."""


class RunFolderWarning(UserWarning):
    """Something in a run folder was skipped (a file that is not a checkpoint, a broken last metrics line)."""


def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step_{step:08d}.pt"


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first (temporary files of an unfinished write are skipped).

    A file that looks like a checkpoint but is not named ``step_<number>.pt`` (``step_final.pt``, say) is not
    one of ours: it is skipped with a :class:`RunFolderWarning`, and never deleted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob(PATTERN):
        if NAME.fullmatch(path.name) and path.is_file():
            found.append(path)
        else:
            warnings.warn(f"{str(path)!r} is not a checkpoint of this trainer (those are named step_<number>.pt); "
                          f"it is ignored. Rename or move it to silence this warning.", RunFolderWarning,
                          stacklevel=2)
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: str | Path) -> int:
    """The step in a checkpoint's name: ``step_00000300.pt -> 300``."""
    match = NAME.fullmatch(Path(path).name)
    if match is None:
        raise CheckpointError(f"{str(path)!r} is not named like a checkpoint (step_<number>.pt)")
    return int(match.group(1))


def latest_checkpoint(folder: str | Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1] if found else None


def save_checkpoint(folder: str | Path, step: int, payload: dict[str, Any], keep_last: int = 3) -> Path:
    """Write ``payload`` atomically as checkpoint ``step`` and delete all but the newest ``keep_last``."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 (how many checkpoints to keep), got {keep_last}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(folder, step)
    tmp = folder / f".{path.name}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows: readers see the old name or the whole new file
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(folder)
    for old in list_checkpoints(folder)[:-keep_last]:
        old.unlink()
    return path


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a folder; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, require: Iterable[str] = ()) -> dict[str, Any]:
    """Read a checkpoint file (or the newest in a folder) onto the CPU.

    ``require``: keys the checkpoint must hold (the trainer asks for :data:`TRAINING_KEYS`); a file that is
    not a dict, or lacks one of them, raises a :class:`CheckpointError` that names the file and what is missing.
    """
    path = Path(path)
    if path.is_dir():
        newest = latest_checkpoint(path)
        if newest is None:
            raise CheckpointError(f"no checkpoint ({PATTERN}) in {str(path)!r}; nothing to resume from")
        path = newest
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors all mean the same thing here
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({reason}); it is damaged or not a "
                              f"titans_edu checkpoint.{_older_hint(path)}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(state).__name__}, not the dict of "
                              f"{', '.join(TRAINING_KEYS)} that the trainer writes.{_older_hint(path)}")
    missing = [key for key in require if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} has no {', '.join(missing)} (it holds "
                              f"{', '.join(map(str, state)) or 'nothing'}); it was not written by the trainer "
                              f"or is from an incompatible version.{_older_hint(path)}")
    if "step" in require and (not isinstance(state["step"], int) or isinstance(state["step"], bool)
                              or state["step"] < 0):
        raise CheckpointError(f"checkpoint {str(path)!r}: step must be a count of steps (an int >= 0), got "
                              f"{state['step']!r}")
    for key in ("model", "optimizer", "scheduler", "rng", "config"):
        if key in require and not isinstance(state[key], dict):
            raise CheckpointError(f"checkpoint {str(path)!r}: {key} must be a dict, got {type(state[key]).__name__}")
    return state


def _older_hint(path: Path) -> str:
    """Which other checkpoints sit next to ``path``, as a hint for ``--resume=PATH``."""
    older = [p.name for p in list_checkpoints(path.parent) if p != path]
    return f" Other checkpoints in that folder: {older}; pass one with --resume=PATH." if older else ""


def weights_problem(state: Mapping[str, Any], max_norm: float | None = None) -> str | None:
    """What is wrong with a model state dict's floating-point tensors, or ``None`` when nothing is.

    Every value must be finite; with ``max_norm``, the global L2 norm of all of them (every weight as one
    vector) must not exceed it. The answer names the first non-finite tensor, or the norm and the bound.
    """
    total = 0.0
    for name, value in state.items():
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
            continue
        value = value.detach()
        if not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            return f"{name} has {bad} non-finite value(s) (nan or inf) out of {value.numel()}"
        if max_norm is not None:
            total += float(torch.linalg.vector_norm(value, dtype=torch.float64)) ** 2
    norm = math.sqrt(total)
    if max_norm is not None and norm > max_norm:
        return f"the parameters' global L2 norm is {norm:.4g}, above --max_param_norm={max_norm:g}"
    return None


# --- what goes into a checkpoint ---


def model_and_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full state dicts on the CPU. Under FSDP every rank must call this (it gathers); rank 0 receives them."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict  # slow to import

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(model, optimizer, options=options)


def load_model_and_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict,
                                   optimizer_state: dict, source: str | Path = "the checkpoint") -> None:
    """Load full state dicts made by :func:`model_and_optimizer_state` into a (possibly wrapped) model.

    Names and shapes are compared first: a state that does not fit the model raises a :class:`CheckpointError`
    naming ``source`` and the tensors that are missing, unexpected or of another shape.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    problems = state_mismatch(model, model_state)
    if problems:
        raise CheckpointError(f"{source} does not fit this model: {problems}. It was written for another model "
                              f"(variant, size or --model.* options); resume with the settings it was made with.")
    options = StateDictOptions(full_state_dict=True)
    try:
        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state,
                       options=options)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CheckpointError(f"{source}: its model or optimizer state cannot be loaded into this run ({reason}). "
                              f"It is damaged or was written for another model or optimizer.") from err


def state_mismatch(model: nn.Module, model_state: Mapping[str, Any], limit: int = 3) -> str:
    """How ``model_state`` differs from what ``model`` holds (names, then shapes); ``""`` when it fits."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    expected = {k: tuple(v.shape) for k, v in
                get_model_state_dict(model, options=StateDictOptions(full_state_dict=False)).items()}
    given = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else None for k, v in model_state.items()}

    def few(names: list[str]) -> str:
        return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")

    problems = []
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    if missing:
        problems.append(f"missing {few(missing)}")
    if unexpected:
        problems.append(f"unexpected {few(unexpected)}")
    shapes = [f"{k} is {given[k]} in the file, {expected[k]} in the model" for k in sorted(set(given) & set(expected))
              if given[k] != expected[k]]
    if shapes:
        problems.append("; ".join(shapes[:limit]) + (f" and {len(shapes) - limit} more" if len(shapes) > limit else ""))
    return "; ".join(problems)


def rng_state() -> dict[str, Any]:
    """Every random state a training step may use, in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, key, *rest = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
