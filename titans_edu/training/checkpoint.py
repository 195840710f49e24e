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
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

PATTERN = "step_*.pt"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written, found or read."""


def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step_{step:08d}.pt"


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first (temporary files of an unfinished write are skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(folder.glob(PATTERN), key=lambda p: int(p.stem.split("_")[1]))


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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file (or the newest in a folder) onto the CPU."""
    path = Path(path)
    if path.is_dir():
        newest = latest_checkpoint(path)
        if newest is None:
            raise CheckpointError(f"no checkpoint ({PATTERN}) in {str(path)!r}; nothing to resume from")
        path = newest
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors all mean the same thing here
        older = [p.name for p in list_checkpoints(path.parent) if p != path]
        hint = f" Older checkpoints in that folder: {older}; pass one with --resume=PATH." if older else ""
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({reason}); it is damaged or not a "
                              f"titans_edu checkpoint.{hint}") from err


# --- what goes into a checkpoint ---


def model_and_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full state dicts on the CPU. Under FSDP every rank must call this (it gathers); rank 0 receives them."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict  # slow to import

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(model, optimizer, options=options)


def load_model_and_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict,
                                   optimizer_state: dict) -> None:
    """Load full state dicts made by :func:`model_and_optimizer_state` into a (possibly wrapped) model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state, options=options)


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
