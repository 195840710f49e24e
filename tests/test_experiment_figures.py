"""The summaries and figures that notebook 12 draws from a results file (titans_edu.experiments.figures)."""

import math

import numpy as np
import pytest

from titans_edu.experiments import figures


def results(scores: dict[tuple[str, int, int, float], float], reset: float | None = None) -> dict:
    cells = {f"{v}/seed={s}/length={n}/depth={d:g}": {"exact_match": x, "n": 8} for (v, s, n, d), x in scores.items()}
    if reset is not None:
        cells.update({f"{v}/seed={s}/length={n}/depth={d:g}/reset": {"exact_match": reset, "n": 8}
                      for (v, s, n, d) in scores})
    return {"config": {"train_length": 256}, "cells": cells}


SCORES = {("lmm", 0, 256, 0.0): 1.0, ("lmm", 0, 256, 1.0): 0.5, ("lmm", 0, 512, 0.0): 1.0, ("lmm", 0, 512, 1.0): 0.0,
          ("lmm", 1, 256, 0.0): 0.0, ("lmm", 1, 256, 1.0): 0.5, ("lmm", 1, 512, 0.0): 0.0, ("lmm", 1, 512, 1.0): 0.0,
          ("swa", 0, 256, 0.0): 0.0, ("swa", 0, 256, 1.0): 1.0, ("swa", 0, 512, 0.0): 0.0, ("swa", 0, 512, 1.0): 1.0}


def test_parse_key_reads_every_field_and_the_control():
    assert figures.parse_key("mac/seed=2/length=1024/depth=0.25") == ("mac", 2, 1024, 0.25, "")
    assert figures.parse_key("lmm/seed=0/length=256/depth=1/reset") == ("lmm", 0, 256, 1.0, "reset")


def test_grid_averages_over_seeds_per_depth_and_length():
    lengths, depths, table = figures.grid(results(SCORES), "lmm")
    assert lengths == [256, 512] and depths == [0.0, 1.0]
    np.testing.assert_allclose(table, [[0.5, 0.5], [0.5, 0.0]])
    assert np.isnan(figures.grid(results({("lmm", 0, 256, 0.0): 1.0, ("lmm", 0, 512, 1.0): 1.0}), "lmm")[2][0, 1])


def test_by_length_gives_the_mean_and_spread_over_seeds_of_the_depth_mean():
    rows = figures.by_length(results(SCORES), "lmm")
    # seed 0: 0.75 at 256, 0.5 at 512; seed 1: 0.25 and 0.0
    assert rows[256] == pytest.approx((0.5, math.sqrt(0.125), 2))
    assert rows[512] == pytest.approx((0.25, math.sqrt(0.125), 2))
    assert figures.by_length(results(SCORES), "swa")[256] == (0.5, 0.0, 1)  # one seed: no spread
    assert figures.by_length(results(SCORES), "lmm", "reset") == {}


def test_summary_table_has_a_row_per_variant_and_a_column_per_length():
    table = figures.summary_table(results(SCORES, reset=0.0), ["lmm", "swa"]).splitlines()
    assert table[0] == "| variant | 256 | 512 |"
    assert table[2] == "| lmm | 0.50 ± 0.35 | 0.25 ± 0.35 |"
    assert table[3] == "| swa | 0.50 ± 0.00 | 0.50 ± 0.00 |"
    assert figures.summary_table(results(SCORES, reset=0.0), ["lmm"], "reset").splitlines()[2].startswith(
        "| lmm (reset) | 0.00")


def test_the_figures_draw_one_panel_per_variant_and_label_lengths_in_tokens():
    data = results(SCORES, reset=0.0)
    fig = figures.heatmaps(data, ["lmm", "swa"], title="t")
    assert [ax.get_title() for ax in fig.axes[:2]] == ["lmm", "swa"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["256", "512"]
    fig = figures.accuracy_against_length(data, ["lmm", "swa"], chance=0.01)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["256", "512"]
    labels = ax.get_legend_handles_labels()[1]
    assert {"lmm", "swa", "lmm, memory reset", "chance"} <= set(labels)
