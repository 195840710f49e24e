"""The ipywidgets wiring shared by every explorer: controls in rows, a readout line, a figure area, notes.

An explorer is a pure ``draw(**values)`` function (unit-tested on its own) plus this wiring. The box it returns
keeps handles for tests that drive it without a browser:

    box.sliders    the controls, name -> widget (the names are ``draw``'s keyword arguments)
    box.readout    the HTML line above the figure (CSS class ``titans-readout``, which the browser test finds)
    box.update     ``update(**values)``: draw with these values, whatever the controls show
    box.render     ``render()``: draw with the values the controls show now
    box.result     what the latest drawing returned (see :func:`build_explorer`)

Where no kernel runs (GitHub, the website before its widget state is drawn, a fresh JupyterLab), a notebook shows
an output's plain-text form; an explorer's says what it is and that its controls need a running kernel, rather
than the nested ``VBox(children=(HBox(...`` of ipywidgets.
"""

from __future__ import annotations

from typing import Any, Callable

import matplotlib.pyplot as plt

__all__ = ["PLAIN_TEXT", "build_explorer"]

PLAIN_TEXT = "[interactive explorer: it needs Jupyter with a running kernel; the static figure shows the same idea]"


def build_explorer(draw: Callable[..., tuple], controls: dict, notes: str = "", per_row: int | None = None):
    """Wire ``controls`` (name -> widget) to ``draw(**values)`` and return an ``ipywidgets.VBox``.

    ``draw`` returns ``(figure, readout text)`` or ``(figure, readout text, result)``; ``update`` and ``render``
    return ``result`` (the readout text when there is none) and keep it as ``box.result``. Any change of a
    control redraws; the figure is shown in an ``Output`` widget and then closed. ``notes``: HTML under the
    figure. ``per_row``: how many controls share one row (all of them by default). The first drawing happens
    here.
    """
    import ipywidgets as widgets
    from IPython.display import display

    readout, out = widgets.HTML(), widgets.Output()
    readout.add_class("titans-readout")

    def update(**values: Any) -> Any:
        with out:  # inside a notebook, an error in draw is shown in the figure area
            out.clear_output(wait=True)
            fig, text, *result = draw(**values)
            readout.value = f"<b>{text}</b>"
            display(fig)
            plt.close(fig)
            box.result = result[0] if result else text
            return box.result

    def render() -> Any:
        return update(**{name: control.value for name, control in controls.items()})

    for control in controls.values():
        control.observe(lambda _change: render(), names="value")
    items = list(controls.values())
    step = per_row or len(items)
    rows = [widgets.HBox(items[i : i + step]) for i in range(0, len(items), step)]
    class Explorer(widgets.VBox):
        def __repr__(self) -> str:
            return PLAIN_TEXT

    box = Explorer(rows + [readout, out] + ([widgets.HTML(notes)] if notes else []))
    box.sliders, box.readout, box.update, box.render = controls, readout, update, render
    render()
    return box
