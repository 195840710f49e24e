"""Tokenise a corpus once into ``train.bin`` / ``val.bin`` / ``meta.json`` (nanoGPT's memmap format).

    python -m titans_edu.prepare my_corpus/ --out data/my_corpus                 # a local file or folder
    python -m titans_edu.prepare --hf HuggingFaceFW/fineweb-edu --hf-subset sample-10BT \\
        --tokenizer tokenizer.json --max-tokens 1e9 --out data/fineweb-edu       # needs `datasets` and network

Every document is tokenised, followed by a blank line, and every ``val_every``-th document goes to ``val``
(if there are too few documents, the last ``1/val_every`` of the tokens do). Ids are ``uint16`` when the
vocabulary has at most 65,536 entries, else ``uint32``.

Nothing already written is lost: the output is written to temporary files and renamed into place only when it
is complete (``meta.json`` last), and an existing dataset is kept unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .data import TEXT_SUFFIXES, DataError, _read_text
from .tokenizer import BYTES, load_tokenizer

OUTPUTS = ("train.bin", "val.bin", "meta.json")


def local_documents(source: str | Path) -> Iterator[str]:
    """A text file is one document; a folder gives each ``.txt``/``.md``/``.rst`` file in it, sorted."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"source {str(source)!r} does not exist; give a text file or a folder of text files")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise DataError(f"folder {str(source)!r} holds no text files ({', '.join(TEXT_SUFFIXES)})")
    for file in files:
        yield _read_text(file)


def hf_documents(name: str, subset: str | None = None, split: str = "train", field: str = "text") -> Iterator[str]:
    """Stream the ``field`` column of a Hugging Face dataset (e.g. ``HuggingFaceFW/fineweb-edu``)."""
    try:
        import datasets
    except ImportError as err:
        raise DataError(f"--hf {name} needs the 'datasets' package: pip install datasets") from err
    try:
        rows = datasets.load_dataset(name, subset, split=split, streaming=True)
    except Exception as err:  # network errors, unknown names: the library has many exception types
        raise DataError(f"could not open Hugging Face dataset {name!r} (subset {subset!r}): {err}") from err
    for row in rows:
        if field not in row:
            raise DataError(f"dataset {name!r} has no column {field!r}; its columns are {sorted(row)}. Use --field.")
        yield row[field]


def prepare(documents: Iterable[str], out_dir: str | Path, tokenizer: str = "bytes", val_every: int = 200,
            max_tokens: int | None = None, overwrite: bool = False, source: str = "") -> dict:
    """Tokenise ``documents`` into ``out_dir``; return the ``meta.json`` it wrote."""
    out = Path(out_dir)
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not overwrite:
        raise DataError(
            f"{str(out)!r} already holds {', '.join(existing)}. Choose another --out, or pass --overwrite to "
            f"replace them (the old files stay intact until the new ones are complete)."
        )
    if val_every < 2:
        raise DataError(f"val_every must be >= 2 (one document in val_every goes to val), got {val_every}")
    tok = load_tokenizer(tokenizer)
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    out.mkdir(parents=True, exist_ok=True)
    tmp = {split: out / f".{split}.bin.tmp" for split in ("train", "val")}
    try:
        counts, n_bytes, n_docs = _write_splits(documents, tok, dtype, tmp, val_every, max_tokens)
    except BaseException:  # a bad document or an interrupt: drop the partial output, keep what was there
        for path in tmp.values():
            path.unlink(missing_ok=True)
        raise
    if counts["train"] == 0:
        for path in tmp.values():
            path.unlink()
        raise DataError(f"the source {source!r} gave no text to tokenise")
    if counts["val"] == 0:  # fewer than val_every documents: the tail of the tokens becomes val
        counts = _move_tail_to_val(tmp, dtype, counts["train"], max(1, counts["train"] // val_every))
    meta = {"format": "titans_edu.tokens/1", "dtype": np.dtype(dtype).name, "vocab_size": tok.vocab_size,
            "tokenizer": tok.name, "train_tokens": counts["train"], "val_tokens": counts["val"],
            "bytes_per_token": n_bytes / sum(counts.values()), "documents": n_docs, "source": source}
    (out / "meta.json").unlink(missing_ok=True)  # a folder caught between old and new files reads as incomplete
    for split, path in tmp.items():
        os.replace(path, out / f"{split}.bin")
    meta_tmp = out / ".meta.json.tmp"
    meta_tmp.write_text(json.dumps(meta, indent=2))
    os.replace(meta_tmp, out / "meta.json")
    return meta


def _write_splits(documents: Iterable[str], tok, dtype: type, tmp: dict[str, Path], val_every: int,
                  max_tokens: int | None) -> tuple[dict[str, int], int, int]:
    """Append each document's ids to the train or val temp file; return token counts, bytes and documents."""
    counts, n_bytes, n_docs = {"train": 0, "val": 0}, 0, 0
    with open(tmp["train"], "wb") as train_file, open(tmp["val"], "wb") as val_file:
        files = {"train": train_file, "val": val_file}
        for n_docs, doc in enumerate(documents, start=1):
            text = doc + "\n\n"
            raw = text.encode("utf-8")
            if tok.name == BYTES:
                ids = np.frombuffer(raw, np.uint8).astype(dtype)
            else:
                ids = np.asarray(tok.encode(text), dtype)
            split = "val" if n_docs % val_every == 0 else "train"
            ids.tofile(files[split])
            counts[split] += len(ids)
            n_bytes += len(raw)
            if max_tokens is not None and sum(counts.values()) >= max_tokens:
                break
        for f in files.values():
            f.flush()
            os.fsync(f.fileno())
    return counts, n_bytes, n_docs


def _move_tail_to_val(tmp: dict[str, Path], dtype: type, n_train: int, n_val: int) -> dict[str, int]:
    tail = np.fromfile(tmp["train"], dtype=dtype, offset=(n_train - n_val) * np.dtype(dtype).itemsize)
    tail.tofile(tmp["val"])
    with open(tmp["train"], "r+b") as f:
        f.truncate((n_train - n_val) * np.dtype(dtype).itemsize)
    return {"train": n_train - n_val, "val": n_val}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m titans_edu.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("source", nargs="?", help="a local text file or folder (or use --hf)")
    parser.add_argument("--out", required=True, help="output folder for train.bin, val.bin and meta.json")
    parser.add_argument("--tokenizer", default="bytes", help="'bytes' or the path of a tokenizer.json")
    parser.add_argument("--hf", help="a Hugging Face dataset name, e.g. HuggingFaceFW/fineweb-edu")
    parser.add_argument("--hf-subset", help="the dataset's configuration, e.g. sample-10BT")
    parser.add_argument("--hf-split", default="train")
    parser.add_argument("--field", default="text", help="the column that holds the text")
    parser.add_argument("--val-every", type=int, default=200, help="every N-th document goes to val")
    parser.add_argument("--max-tokens", type=float, help="stop after about this many tokens (e.g. 1e9)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    args = parser.parse_args(argv)
    if (args.source is None) == (args.hf is None):
        parser.error("give either a local SOURCE or --hf NAME (exactly one)")
    try:
        if args.hf:
            docs = hf_documents(args.hf, args.hf_subset, args.hf_split, args.field)
        else:
            docs = local_documents(args.source)
        max_tokens = None if args.max_tokens is None else int(args.max_tokens)
        meta = prepare(docs, args.out, args.tokenizer, args.val_every, max_tokens, args.overwrite,
                       source=args.hf or args.source)
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens ({meta['dtype']}, "
          f"vocabulary {meta['vocab_size']}) from {meta['documents']} documents to {args.out}")
    return 0

