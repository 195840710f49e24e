"""Results files: every figure of an experiment with what it takes to reproduce it.

``results/<name>.json`` holds

    experiment, command        the experiment and the exact command line that made the file
    config                     everything that decides the numbers (task, variants, lengths, steps, seeds, ...)
    git_commit, torch, python  the code and the versions it ran on
    device, threads            where it ran
    wall_s                     the time the sweep took, summed over the runs that filled it
    models                     per (variant, seed): training time, the loss curve, the final training loss
    cells                      per (variant, seed, length, depth[, control]): exact-match accuracy and count
    slice                      the first steps and one small evaluation of the first model, recomputed by the
                               tests to show that the code still produces these numbers

The file is written after every cell, atomically (a temporary file renamed over the old one), so a sweep that is
killed keeps everything it finished, and running the same command again skips the cells that are there. A
command whose config differs from the file's is refused rather than mixing two experiments in one file.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]


def git_commit() -> str:
    """The commit of the working tree, ``+uncommitted`` when the package differs from it, or ``unknown``."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "titans_edu"], capture_output=True, text=True,
                               cwd=ROOT, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode:
        return "unknown"
    return head.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")


def cell_key(variant: str, seed: int, length: int, depth: float, control: str = "") -> str:
    return f"{variant}/seed={seed}/length={length}/depth={depth:g}" + (f"/{control}" if control else "")


class ResultsFile:
    """One experiment's results on disk; see the module docstring."""

    def __init__(self, path: str | Path, experiment: str, config: dict[str, Any], command: str,
                 device: str) -> None:
        self.path = Path(path)
        if self.path.exists():
            self.data = json.loads(self.path.read_text())
            saved = self.data.get("config")
            if self.data.get("experiment") != experiment or saved != json.loads(json.dumps(config)):
                changed = sorted(k for k in set(config) | set(saved or {}) if (saved or {}).get(k) != config.get(k))
                raise ValueError(
                    f"{self.path} holds {self.data.get('experiment')!r} results with another config "
                    f"(differs in: {', '.join(changed) or 'the experiment'}). Nothing was changed. Pass --out with "
                    f"another file for a new sweep, or delete this one to start it again."
                )
            self.data.setdefault("commands", []).append(command)
        else:
            self.data = {"experiment": experiment, "command": command, "commands": [command], "config": config,
                         "models": {}, "cells": {}, "wall_s": 0.0}
        self.data.update(git_commit=git_commit(), torch=torch.__version__, python=platform.python_version(),
                         device=device, threads=torch.get_num_threads())
        self._started = time.perf_counter()

    @property
    def cells(self) -> dict[str, dict]:
        return self.data["cells"]

    @property
    def models(self) -> dict[str, dict]:
        return self.data["models"]

    def has(self, key: str) -> bool:
        return key in self.cells

    def put_cell(self, key: str, value: dict) -> None:
        self.cells[key] = value
        self.save()

    def put_model(self, key: str, value: dict) -> None:
        self.models[key] = value
        self.save()

    def save(self) -> None:
        now = time.perf_counter()
        self.data["wall_s"] = self.data.get("wall_s", 0.0) + (now - self._started)
        self._started = now
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def load(path: str | Path) -> dict[str, Any]:
    """A results file as a dict, with a clear error when it is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no results file at {path}; the experiment's command writes it")
    data = json.loads(path.read_text())
    if "cells" not in data or "config" not in data:
        raise ValueError(f"{path} is not a titans_edu results file (it has no 'cells' or 'config')")
    return data
