"""The architecture figures of notebooks 08-10 (titans_edu.viz.architecture_views): each shows its parts and the
equations on its arrows."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from titans_edu.viz import architecture_views as av  # noqa: E402

pytestmark = pytest.mark.usefixtures("close_figures")


def figure_text(fig: Figure) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(Text))


def equations(text: str) -> set[int]:
    """Every equation number named as ``Eq. n``, ``Eqs. n, m`` or ``Eq. n-m``."""
    found = set()
    for group in re.findall(r"Eqs?\. ([0-9][0-9 ,\-]*)", text):
        for part in group.replace(" ", "").strip(",-").split(","):
            if "-" in part:
                lo, hi = part.split("-")
                found.update(range(int(lo), int(hi) + 1))
            elif part:
                found.add(int(part))
    return found


CASES = {
    "draw_mac": (["Fig. 2", "input segment", "persistent memory", "retrieve (no update)", "update, then retrieve",
                  "attention", "⊗", "output"], set(range(21, 26)) | {19}),
    "draw_mag": (["Fig. 4", "input", "persistent memory", "SW-Attn*", "update and retrieve", "⊗", "output"],
                 set(range(26, 29)) | {19}),
    "draw_mal": (["Fig. 5", "input", "persistent memory", "SW-Attn", "update and retrieve", "RMSNorm", "output"],
                 set(range(29, 32)) | {19}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_figure_shows_its_parts_and_equations(name):
    fig = getattr(av, name)()
    assert isinstance(fig, Figure)
    text = figure_text(fig)
    labels, eqs = CASES[name]
    for label in labels:
        assert label in text, (name, label)
    assert equations(text) == eqs, (name, sorted(equations(text)))


def test_only_mag_uses_the_star_mask_and_only_mal_has_no_gate():
    assert "SW-Attn*" in figure_text(av.draw_mag())
    assert "SW-Attn*" not in figure_text(av.draw_mal())
    assert "⊗" not in figure_text(av.draw_mal())


def test_equation_reader_can_fail():
    assert equations("Eq. 21-22 and Eqs. 19, 26; Eq. 3") == {3, 19, 21, 22, 26}
    assert equations("no equations") == set()
