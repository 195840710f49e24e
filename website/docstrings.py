"""A griffe extension (mkdocstrings loads it, see mkdocs.yml): the package's docstrings are plain text written for
``help()``, with Sphinx roles; the API reference reads them as Markdown. Two things are translated:

- A module docstring's indented lines (its tables of modules, glossaries, formulas) stay indented, and so show as
  blocks. A module docstring starts at column 0, so every indent in it is meant; ``inspect.cleandoc`` would strip
  the indent of a docstring whose lines after the first are all indented.
- ``:class:`~titans_edu.models.blocks.MemoryGate``` becomes a link to that entry (its last name with ``~``), and a
  role on a name that is not spelled out in full becomes that name in code. Inside an indented block the role
  and the double backquotes are dropped, since Markdown shows a block as it is.
"""

from __future__ import annotations

import ast
import re

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc):`(~?)([\w.]+)`")
PACKAGE = "titans_edu"


def _name(match: re.Match) -> str:
    short, target = match.groups()
    return target.rsplit(".", 1)[-1] if short else target


def _link(match: re.Match) -> str:
    target = match.group(2)
    return f"[`{_name(match)}`][{target}]" if target.startswith(f"{PACKAGE}.") else f"`{_name(match)}`"


def translate(text: str) -> str:
    lines = []
    for line in text.split("\n"):
        if line.startswith("    "):  # an indented block
            lines.append(ROLE.sub(_name, line).replace("``", ""))
        else:
            lines.append(ROLE.sub(_link, line))
    return "\n".join(lines)


class PlainTextDocstrings(griffe.Extension):
    def on_module_instance(self, *, node, mod, agent, **kwargs) -> None:
        if isinstance(node, ast.Module) and mod.docstring is not None:
            mod.docstring.value = ast.get_docstring(node, clean=False).strip("\n").rstrip()

    def on_object(self, *, obj, loader, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = translate(obj.docstring.value)
