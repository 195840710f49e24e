"""The glossary and the equation index name only things that exist: functions, classes, fields, notebooks, tests."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from pathlib import Path

import pytest

import titans_edu

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CODE = re.compile(r"`([^`]+)`")


def table_rows(path: Path) -> list[list[str]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("|") and not set(line) <= set("|- "):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]  # the first row is the header


def resolve(name: str) -> object:
    """``pkg.module.attr.attr`` or a name exported by ``titans_edu``, followed to the object (dataclass fields,
    and attributes a class sets on ``self`` in its source, count as attributes)."""
    parts = name.split(".")
    if parts[0] != "titans_edu":
        parts = ["titans_edu", *parts]
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            fields = {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()
            if attr in fields:
                obj = fields
                continue
            if isinstance(obj, type) and not hasattr(obj, attr):
                if re.search(rf"self\.{attr}\b[^=\n]*=", inspect.getsource(obj)):  # set in __init__
                    obj = attr
                    continue
            obj = getattr(obj, attr)
        return obj
    raise ImportError(name)


def test_every_name_in_the_equation_index_exists():
    rows = table_rows(DOCS / "equations.md")
    assert len(rows) >= 20
    for row in rows:
        for cell in row:
            for name in CODE.findall(cell):
                if name.startswith("titans_edu."):
                    resolve(name.split(" ")[0])
                elif name.startswith("tests/"):
                    file, _, test = name.partition("::")
                    assert f"def {test}(" in (ROOT / file).read_text(), name
                elif name.endswith(".ipynb"):
                    assert (ROOT / "notebooks" / name).is_file(), name


def test_every_code_name_in_the_glossary_exists():
    rows = table_rows(DOCS / "glossary.md")
    assert len(rows) >= 20
    exported = set(titans_edu.__all__)
    names = {"ChunkCoefficients": "memory.coefficients.ChunkCoefficients", "decay_matrix": "decay_matrix",
             "MACMixer": "models.mac.MACMixer", "MemoryGate": "models.blocks.MemoryGate",
             "PersistentMemory": "models.persistent.PersistentMemory", "Stability": "memory.stability.Stability",
             "sliding_window_mask": "models.attention.sliding_window_mask"}
    for symbol, code, *_ in rows:
        for name in CODE.findall(code):
            if name in ("x", "k", "v", "q", "theta", "eta", "alpha", "chunk_size"):
                continue  # argument names, checked below
            head, _, rest = name.partition(".")
            path = names.get(head, head) + (f".{rest}" if rest else "")
            assert head in exported or head in names, f"{name}: not exported by titans_edu"
            resolve(path)
    arguments = inspect.signature(titans_edu.naive_memory).parameters
    assert {"k", "v", "q", "theta", "eta", "alpha", "chunk_size"} <= set(arguments)


@pytest.mark.parametrize("name", ["titans_edu.no_such_thing", "memory.naive.no_function"])
def test_the_checks_fail_on_a_name_that_does_not_exist(name):
    with pytest.raises((ImportError, AttributeError)):
        resolve(name)
