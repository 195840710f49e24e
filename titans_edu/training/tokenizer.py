"""Tokenizers for training: raw bytes by default, or a local Hugging Face ``tokenizers`` file.

    bytes          ``ByteTokenizer``: one token per UTF-8 byte, vocabulary 256. Needs nothing, so the CPU demo
                   and the tests use it. Bits per byte is then simply the loss in bits.
    tokenizer.json ``HFTokenizer``: any tokenizer saved by the ``tokenizers`` library, for instance a 32K
                   Llama-2 style vocabulary as in the paper (§5). Needs ``pip install tokenizers``.

Both expose ``name``, ``vocab_size``, ``encode(text) -> list[int]`` and ``decode(ids) -> str``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

BYTES = "bytes"


class Tokenizer(Protocol):
    name: str
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: ``"hé" -> [104, 195, 169]``. Lossless, 256 symbols, no files."""

    name = BYTES
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        bad = [i for i in ids if not 0 <= int(i) < 256]
        if bad:
            raise ValueError(f"ByteTokenizer decodes ids in [0, 256), got {bad[:5]}; was the model built for bytes?")
        # a sample may stop in the middle of a multi-byte character: show it as U+FFFD instead of failing
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class HFTokenizer:
    """A tokenizer file written by the Hugging Face ``tokenizers`` library (``tokenizer.json``)."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(
                f"tokenizer file {str(path)!r} does not exist. Pass --tokenizer=bytes for byte-level training, "
                f"or the path of a tokenizer.json saved by the Hugging Face tokenizers library."
            )
        try:
            from tokenizers import Tokenizer as _Tokenizer
        except ImportError as err:
            raise ValueError(
                f"--tokenizer={path} needs the Hugging Face 'tokenizers' package: pip install tokenizers "
                f"(or use --tokenizer=bytes)"
            ) from err
        try:
            self._tok = _Tokenizer.from_file(str(path))
        except Exception as err:  # the library raises its own exception types for a malformed file
            raise ValueError(f"could not read tokenizer file {str(path)!r}: {err}") from err
        self.name = str(path)
        self.vocab_size = self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids])


def load_tokenizer(spec: str | None = None) -> Tokenizer:
    """``None`` or ``"bytes"`` gives a :class:`ByteTokenizer`; anything else is the path of a tokenizer file."""
    if spec is None or spec == BYTES:
        return ByteTokenizer()
    return HFTokenizer(spec)
