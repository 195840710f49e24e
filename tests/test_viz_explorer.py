"""The explorer wiring every widget shares (titans_edu.viz.explorer)."""

import ipywidgets as widgets

from titans_edu.viz.explorer import PLAIN_TEXT, build_explorer


def test_an_explorer_redraws_and_says_what_it_is_where_no_kernel_runs():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    calls = []

    def draw(a):
        calls.append(a)
        return Figure(), f"a = {a}"

    box = build_explorer(draw, {"a": widgets.IntSlider(value=1, min=0, max=3)})
    box.sliders["a"].value = 2
    assert calls == [1, 2] and box.result == "a = 2" and "a = 2" in box.readout.value
    text = box._repr_mimebundle_()["text/plain"]
    assert text == PLAIN_TEXT  # whole: ipywidgets cuts a plain-text form longer than 110 characters
    assert "VBox" not in text and "kernel" in text
