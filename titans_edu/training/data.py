"""Training data: where tokens come from, and which of them each step trains on.

Three kinds of source, all giving one long stream of token ids split into ``train`` and ``val``:

    embedded         the English documentation text that every CPython install carries
                     (``pydoc_data.topics``, about 0.47 MB). No download; the CPU demo trains on it.
    a text file      read and tokenised in memory; a folder is every ``.txt``/``.md``/``.rst`` file in it,
    or folder        in sorted order. Fine up to some tens of MB; for more, tokenise once with ``prepare``.
    a token folder   ``train.bin`` and ``val.bin``, flat arrays of ``uint16`` or ``uint32`` ids (the format of
                     nanoGPT), with ``meta.json`` beside them. ``python -m titans_edu.prepare`` writes one.
                     The files are memory-mapped, so their size is limited by the disk, not the RAM.

Sampling is a pure function of ``(seed, step)``: step ``s`` trains on the windows that start at
``sample_offsets(..., seed, s)``, whatever happened before. So resuming at step ``s`` needs only ``s``, and
a global batch is the same set of windows for any number of processes (see :class:`BatchSampler`).

Streams (``windows > 1``): each row then reads ``windows`` consecutive windows of one stretch of text, one per
step, so that a model can carry its state from one window to the next and learn from memories that have read
far more than one window (the trainer's ``--carry_state``). The stretches are drawn afresh every ``windows``
steps, and at every multiple of ``restart_every`` (the trainer's checkpoint period, so that a run resumed from a
checkpoint starts new streams exactly where the uninterrupted run does), again as a pure function of
``(seed, step)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .tokenizer import BYTES, Tokenizer, load_tokenizer

EMBEDDED = "embedded"
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
TOKEN_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}
META_EXAMPLE = '{"dtype": "uint16", "vocab_size": 50257, "tokenizer": "bytes or the path of tokenizer.json"}'
_SPLIT_CODE = {"train": 0, "val": 1}


class DataError(ValueError):
    """A data source is missing, empty, corrupt or does not fit the model."""


@dataclass
class TokenData:
    """Token ids of one corpus. ``train``/``val``: 1-D integer arrays (a ``np.memmap`` for token folders)."""

    train: np.ndarray
    val: np.ndarray
    vocab_size: int  # size of the vocabulary the ids were made with: every id is below it
    tokenizer: str  # "bytes" or the path of the tokenizer file
    source: str
    bytes_per_token: float | None = None  # UTF-8 bytes of text per token, for bits per byte (None: unknown)

    def check_fits(self, context: int, model_vocab: int) -> None:
        """Raise a :class:`DataError` unless both splits hold a window of ``context + 1`` tokens and every id
        the data may contain is a valid row of the model's embedding."""
        for split in ("train", "val"):
            n = len(getattr(self, split))
            if n < context + 1:
                raise DataError(
                    f"the {split} split of {self.source!r} has {n} tokens, but one training window needs "
                    f"context + 1 = {context + 1}. Use more text, or a shorter --context."
                )
        if model_vocab < self.vocab_size:
            raise DataError(
                f"vocabulary mismatch: the data {self.source!r} was made with a vocabulary of {self.vocab_size} "
                f"({self.tokenizer}), but the model has vocab_size={model_vocab}. Leave --model.vocab_size unset "
                f"(it then follows the data), or prepare the data with the model's tokenizer."
            )


# --- loading ---


def embedded_corpus() -> str:
    """The CPython documentation topics (``pydoc_data.topics``), joined in sorted order: ~0.47 MB of English."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def load_tokens(source: str, tokenizer: Tokenizer, val_fraction: float = 0.05) -> TokenData:
    """Load ``source`` (``"embedded"``, a text file or folder, or a token folder); see the module docstring.

    Text is tokenised with ``tokenizer`` and its last ``val_fraction`` becomes ``val``. A token folder brings
    its own split and its tokenizer name in ``meta.json``.
    """
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if source == EMBEDDED:
        return _split(_encode(embedded_corpus(), tokenizer), tokenizer, "embedded (pydoc_data.topics)", val_fraction)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"data source {source!r} does not exist. Give --data=embedded (the built-in corpus), a text file, "
            f"a folder of .txt/.md/.rst files, or a folder made by `python -m titans_edu.prepare`."
        )
    if _is_token_folder(path):
        return load_token_folder(path if path.is_dir() else path.parent)
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise DataError(
            f"folder {source!r} holds no text files ({', '.join(TEXT_SUFFIXES)}) and no meta.json of a token "
            f"folder. Point --data at a text file, or at the output folder of `python -m titans_edu.prepare`."
        )
    text = "\n\n".join(_read_text(p) for p in files)
    return _split(_encode(text, tokenizer), tokenizer, str(path), val_fraction)


def _is_token_folder(path: Path) -> bool:
    return path.suffix == ".bin" or path.is_dir() and any((path / n).exists() for n in ("meta.json", "train.bin"))


def open_source(source: str, tokenizer: str | None = None,
                val_fraction: float = 0.05) -> tuple[TokenData, Tokenizer | None]:
    """The data of ``source`` and the tokenizer that reads and writes its ids.

    ``tokenizer`` None means: the one a token folder's ``meta.json`` names, else bytes. The tokenizer comes
    back as None when a token folder names a tokenizer file that is not on this machine (training works;
    text samples are then skipped).
    """
    path = Path(source).expanduser()
    if source == EMBEDDED or not _is_token_folder(path):
        tok = load_tokenizer(tokenizer)
        return load_tokens(source, tok, val_fraction), tok
    data = load_token_folder(path if path.is_dir() else path.parent)
    try:
        tok = load_tokenizer(tokenizer or data.tokenizer)
    except ValueError:
        if tokenizer is not None:
            raise
        return data, None
    if tok.vocab_size != data.vocab_size:
        raise DataError(
            f"vocabulary mismatch: {data.source!r} was made with a vocabulary of {data.vocab_size} "
            f"({data.tokenizer}), but --tokenizer={tok.name} has {tok.vocab_size}. Drop --tokenizer to use the "
            f"data's own, or prepare the data again with this tokenizer."
        )
    return data, tok


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise DataError(
            f"{str(path)!r} contains NUL bytes, so it is not a text file. If it holds token ids, put it in a "
            f"folder with meta.json ({META_EXAMPLE}) and pass that folder."
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{str(path)!r} is not valid UTF-8 text ({err}). Convert it to UTF-8 first.") from err


def _encode(text: str, tokenizer: Tokenizer) -> tuple[np.ndarray, int]:
    if not text.strip():
        raise DataError("the data source holds no text (it is empty or only whitespace)")
    ids = np.frombuffer(text.encode("utf-8"), np.uint8) if tokenizer.name == BYTES else tokenizer.encode(text)
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    return np.asarray(ids, dtype=dtype), len(text.encode("utf-8"))


def _split(encoded: tuple[np.ndarray, int], tokenizer: Tokenizer, source: str, val_fraction: float) -> TokenData:
    ids, n_bytes = encoded
    cut = len(ids) - max(1, int(len(ids) * val_fraction))
    return TokenData(ids[:cut], ids[cut:], tokenizer.vocab_size, tokenizer.name, source, n_bytes / len(ids))


def load_token_folder(folder: str | Path) -> TokenData:
    """Memory-map ``train.bin`` and ``val.bin`` of ``folder``, described by its ``meta.json``."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise DataError(
            f"token folder {str(folder)!r} has no meta.json, so the dtype and vocabulary of its .bin files are "
            f"unknown. Write one such as {META_EXAMPLE}, or make the folder with `python -m titans_edu.prepare`."
        )
    try:
        meta = json.loads(meta_path.read_text())
        dtype, vocab_size = TOKEN_DTYPES[meta["dtype"]], int(meta["vocab_size"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise DataError(
            f"{str(meta_path)!r} is not valid: it needs 'dtype' (one of {sorted(TOKEN_DTYPES)}) and an integer "
            f"'vocab_size', e.g. {META_EXAMPLE}. Problem: {err!r}"
        ) from err
    if vocab_size > np.iinfo(dtype).max + 1:
        raise DataError(f"{str(meta_path)!r}: vocab_size {vocab_size} does not fit dtype {meta['dtype']}")
    splits = {}
    for split in ("train", "val"):
        path = folder / f"{split}.bin"
        if not path.is_file():
            raise DataError(f"token folder {str(folder)!r} has no {split}.bin; prepare writes train.bin and val.bin")
        size = path.stat().st_size
        if size == 0:
            raise DataError(f"{str(path)!r} is empty")
        if size % np.dtype(dtype).itemsize:
            raise DataError(
                f"{str(path)!r} has {size} bytes, not a whole number of {meta['dtype']} tokens: the file is "
                f"truncated or corrupt, or meta.json names the wrong dtype"
            )
        splits[split] = np.memmap(path, dtype=dtype, mode="r")
        expected = meta.get(f"{split}_tokens")
        if expected is not None and int(expected) != len(splits[split]):
            raise DataError(
                f"{str(path)!r} holds {len(splits[split])} tokens but meta.json records {expected}: the file is "
                f"truncated or corrupt. Prepare it again."
            )
    return TokenData(splits["train"], splits["val"], vocab_size, str(meta.get("tokenizer", "unknown")),
                     str(folder), meta.get("bytes_per_token"))


# --- sampling ---


def sample_offsets(n_tokens: int, context: int, count: int, seed: int, step: int, split: str = "train") -> np.ndarray:
    """Start positions of ``count`` windows of ``context + 1`` tokens: a pure function of its arguments."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], step])
    return rng.integers(0, n_tokens - context, size=count)


@dataclass
class BatchSampler:
    """Which windows each process trains on at each step.

    A step's global batch is ``micro_batch * accum * world`` windows. Micro-batch ``m`` of process ``rank``
    takes rows ``(m * world + rank) * micro_batch ...`` of it, so one process accumulating 2 micro-batches
    sees the same windows as 2 processes with 1 each.
    """

    data: TokenData
    context: int
    micro_batch: int
    accum: int = 1
    rank: int = 0
    world: int = 1
    seed: int = 0
    windows: int = 1  # consecutive windows per row, from the step a stream starts (see stream_start)
    restart_every: int | None = None  # streams also start at every multiple of this (the checkpoints)

    def __post_init__(self) -> None:
        if self.windows < 1:
            raise ValueError(f"windows (consecutive windows per stream) must be >= 1, got {self.windows}")
        n = len(self.data.train)
        if self.windows > 1 and n < self.windows * self.context + 1:
            raise DataError(
                f"a stream of {self.windows} windows of {self.context} tokens needs {self.windows * self.context + 1} "
                f"training tokens, but {self.data.source!r} has {n}. Use fewer windows or a shorter --context."
            )

    def stream_start(self, step: int) -> int:
        """The step at which the stream that ``step`` trains on began: the last multiple of ``windows`` or of
        ``restart_every`` at or before ``step``."""
        start = step - step % self.windows
        if self.restart_every:
            start = max(start, step - step % self.restart_every)
        return start

    def batch(self, step: int, micro: int = 0, split: str = "train", device: torch.device | str = "cpu"):
        """``(x, y)``, each ``(micro_batch, context)`` int64: ``y`` is ``x`` shifted by one token.

        In training with ``windows > 1``, row ``i`` of step ``s`` continues row ``i`` of step ``s - 1`` unless a
        new stream starts at ``s`` (:meth:`stream_start`). Validation windows are always drawn one by one.
        """
        tokens = getattr(self.data, split)
        per_step = self.micro_batch * self.accum * self.world
        if split == "train" and self.windows > 1:
            span = self.windows * self.context  # the longest stretch a stream reads (+1 token for the last target)
            first = self.stream_start(step)
            starts = sample_offsets(len(tokens) - span + self.context, self.context, per_step, self.seed, first,
                                    split)
            offsets = starts + (step - first) * self.context
        else:
            offsets = sample_offsets(len(tokens), self.context, per_step, self.seed, step, split)
        first = (micro * self.world + self.rank) * self.micro_batch
        rows = np.stack([tokens[o : o + self.context + 1] for o in offsets[first : first + self.micro_batch]])
        top = int(rows.max())
        if top >= self.data.vocab_size:
            raise DataError(
                f"token id {top} in the {split} split of {self.data.source!r} is not below the data's vocab_size "
                f"{self.data.vocab_size}: the file is corrupt or was made with another tokenizer"
            )
        rows = torch.from_numpy(rows.astype(np.int64))
        if torch.device(device).type == "cuda":
            rows = rows.pin_memory().to(device, non_blocking=True)
        return rows[:, :-1], rows[:, 1:]
