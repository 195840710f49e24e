"""What a run leaves behind besides checkpoints: metrics, a loss plot, text samples, optional TensorBoard.

    <run>/metrics.jsonl   one JSON object per line: training rows ``{step, loss, lr, grad_norm, tokens,
                          tokens_per_s, elapsed_s}`` and eval rows ``{step, val_loss, val_ppl, val_bpb}``
    <run>/metrics.csv     the same with fixed columns, if ``--metrics=csv``
    <run>/loss.png        train and validation loss against the step
    <run>/samples.txt     the text generated at each eval
    <run>/tb/             TensorBoard event files, with ``--tensorboard`` (when it is installed)

A resumed run appends to the same files, so steps between its checkpoint and the interruption appear twice;
:func:`read_metrics` keeps the last row of each (step, kind), which is the one of the resumed run. A run killed
in the middle of writing a row leaves a partial last line; the resumed run cuts it off (with a warning) before
it appends, so that its own rows start on a line of their own.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path
from typing import Any

from .checkpoint import RunFolderWarning

COLUMNS = ("step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s", "val_loss", "val_ppl", "val_bpb")


class RunLog:
    """Appends metric rows to the run folder. Only the main process writes; the others get a silent log."""

    def __init__(self, folder: str | Path, fmt: str = "jsonl", tensorboard: bool = False, enabled: bool = True) -> None:
        self.folder, self.fmt, self.enabled = Path(folder), fmt, enabled
        self.path = self.folder / f"metrics.{fmt}"
        if enabled:
            drop_partial_last_line(self.path)
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.folder / "tb"))
            except ImportError:
                print("note: --tensorboard needs the tensorboard package (pip install tensorboard); logging without it")

    def log(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"metric names {sorted(unknown)} are not among the columns {COLUMNS}")
        if self.fmt == "jsonl":
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        else:
            new = not self.path.exists()
            with open(self.path, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=COLUMNS, restval="")
                if new:
                    writer.writeheader()
                writer.writerow(row)
        if self.tb is not None:
            for name, value in row.items():
                if name != "step":
                    self.tb.add_scalar(name, value, row["step"])

    def sample(self, step: int, text: str) -> None:
        if self.enabled:
            with open(self.folder / "samples.txt", "a") as f:
                f.write(f"--- step {step} ---\n{text}\n")

    def plot(self) -> Path | None:
        """Write ``loss.png`` from the metrics so far; returns its path (None if there is nothing to plot)."""
        if not self.enabled or not self.path.exists():
            return None
        return plot_losses(read_metrics(self.path), self.folder / "loss.png")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def drop_partial_last_line(path: Path) -> str:
    """Cut off a last line that has no newline (a row whose writing was cut short), with a warning.

    Every row is written with its newline, so only an interrupted write leaves such a line; appending after it
    would glue the next row onto it. Returns the text removed (``""`` when the file ends cleanly or is absent).
    """
    if not path.is_file():
        return ""
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return ""
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
    removed = data[keep:].decode("utf-8", errors="replace")
    shown = removed if len(removed) <= 80 else removed[:77] + "..."
    warnings.warn(f"{str(path)!r} ended in a partial line (a write cut short), now removed: {shown!r}",
                  RunFolderWarning, stacklevel=3)
    return removed


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of a metrics file, in step order, the last row winning for each (step, train or eval).

    A partial last line (a run cut short while writing it) is skipped with a warning; any other line that is not
    a JSON object raises a ``ValueError`` naming the file and the line.
    """
    path = Path(path)
    if path.suffix == ".jsonl":
        text = path.read_text()
        lines = text.splitlines()
        rows = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or "step" not in row:
                    raise ValueError("not a row with a step")
            except ValueError as err:
                if number == len(lines) and not text.endswith("\n"):
                    warnings.warn(f"{str(path)!r}: skipping its partial last line {line[:80]!r}", RunFolderWarning,
                                  stacklevel=2)
                    continue
                raise ValueError(f"{str(path)!r} line {number} is not a metrics row ({err}): {line[:80]!r}") from err
            rows.append(row)
    else:
        with open(path, newline="") as f:
            rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
    latest = {(int(r["step"]), "val_loss" in r): r for r in rows}
    return [latest[key] for key in sorted(latest)]


def plot_losses(rows: list[dict[str, float]], path: str | Path) -> Path | None:
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not train and not val:
        return None
    from matplotlib.figure import Figure  # no pyplot: works headless and leaves a notebook's backend alone

    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train), label="train", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def bits_per_byte(loss: float, bytes_per_token: float | None) -> float | None:
    """Cross-entropy in nats per token to bits per byte of text: ``loss / ln 2 / bytes_per_token``."""
    return None if bytes_per_token is None else loss / math.log(2) / bytes_per_token
