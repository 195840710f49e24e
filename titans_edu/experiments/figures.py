"""Summaries and figures of a results file: RULER-style heat maps and accuracy against length (notebook 12).

Every function takes the dict of :func:`titans_edu.experiments.results.load`. Figures are matplotlib ``Figure``
objects made without pyplot, so they work headless and in a notebook alike.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

import numpy as np
from matplotlib.figure import Figure


def parse_key(key: str) -> tuple[str, int, int, float, str]:
    """``"mac/seed=0/length=512/depth=0.5[/reset]"`` -> ``("mac", 0, 512, 0.5, "reset" or "")``."""
    parts = key.split("/")
    variant, fields = parts[0], dict(p.split("=") for p in parts[1:4])
    return variant, int(fields["seed"]), int(fields["length"]), float(fields["depth"]), "/".join(parts[4:])


def grid(data: dict, variant: str, control: str = "") -> tuple[list[int], list[float], np.ndarray]:
    """Lengths, depths, and the exact match of each (depth, length) averaged over seeds (NaN where missing)."""
    scores = defaultdict(list)
    for key, cell in data["cells"].items():
        v, _, length, depth, c = parse_key(key)
        if v == variant and c == control:
            scores[(depth, length)].append(cell["exact_match"])
    lengths = sorted({length for _, length in scores})
    depths = sorted({depth for depth, _ in scores})
    table = np.full((len(depths), len(lengths)), np.nan)
    for (depth, length), values in scores.items():
        table[depths.index(depth), lengths.index(length)] = statistics.fmean(values)
    return lengths, depths, table


def by_length(data: dict, variant: str, control: str = "") -> dict[int, tuple[float, float, int]]:
    """Per length: the mean over seeds of the depth-averaged exact match, its spread (standard deviation over
    seeds, 0 for one seed) and the number of seeds."""
    per_seed = defaultdict(lambda: defaultdict(list))
    for key, cell in data["cells"].items():
        v, seed, length, _, c = parse_key(key)
        if v == variant and c == control:
            per_seed[length][seed].append(cell["exact_match"])
    out = {}
    for length in sorted(per_seed):
        means = [statistics.fmean(scores) for scores in per_seed[length].values()]
        spread = statistics.stdev(means) if len(means) > 1 else 0.0
        out[length] = (statistics.fmean(means), spread, len(means))
    return out


def _length_label(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def variants_of(data: dict) -> list[str]:
    seen = []
    for key in data["cells"]:
        v = key.split("/")[0]
        if v not in seen:
            seen.append(v)
    return seen


def heatmaps(data: dict, variants: list[str] | None = None, control: str = "", title: str = "") -> Figure:
    """One RULER-style heat map per variant: needle depth (rows) by input length (columns), exact match."""
    variants = variants or variants_of(data)
    fig = Figure(figsize=(3.0 * len(variants) + 0.8, 3.0), layout="constrained")
    axes = fig.subplots(1, len(variants), squeeze=False)[0]
    image = None
    for ax, variant in zip(axes, variants):
        lengths, depths, table = grid(data, variant, control)
        image = ax.imshow(table, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(lengths)), [_length_label(n) for n in lengths], fontsize=8)
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths], fontsize=8)
        ax.set_title(variant + (f" ({control})" if control else ""), fontsize=10)
        ax.set_xlabel("input length (tokens)", fontsize=9)
        for (i, j), value in np.ndenumerate(table):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.2f}".lstrip("0") if value < 1 else "1", ha="center", va="center", fontsize=7)
    axes[0].set_ylabel("needle depth", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8, label="exact match")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def accuracy_against_length(data: dict, variants: list[str] | None = None, controls: bool = True,
                            chance: float | None = None, title: str = "") -> Figure:
    """Exact match (mean over depths, then over seeds; bars: spread over seeds) against the input length, with
    the memory-reset control dashed and the training length marked."""
    variants = variants or variants_of(data)
    fig = Figure(figsize=(7.0, 3.6), layout="constrained")
    ax = fig.subplots()
    colors = {}
    for variant in variants:
        rows = by_length(data, variant)
        if not rows:
            continue
        xs = list(rows)
        line = ax.errorbar(xs, [rows[x][0] for x in xs], yerr=[rows[x][1] for x in xs], marker="o", ms=4,
                           capsize=2, label=variant)
        colors[variant] = line[0].get_color()
        reset = by_length(data, variant, "reset") if controls else {}
        if reset:
            xr = list(reset)
            ax.plot(xr, [reset[x][0] for x in xr], ls="--", color=colors[variant], alpha=0.7, lw=1,
                    label=f"{variant}, memory reset")
    train_length = data["config"].get("train_length")
    if train_length:
        ax.axvline(train_length, color="gray", lw=0.8, ls=":")
        ax.text(train_length, 1.02, " training length", fontsize=8, color="gray", va="bottom")
    if chance is not None:
        ax.axhline(chance, color="black", lw=0.8, ls=":", label="chance")
    ax.set_xscale("log", base=2)
    lengths = sorted({parse_key(k)[2] for k in data["cells"]})
    ax.set_xticks(lengths, [_length_label(n) for n in lengths])
    ax.minorticks_off()
    ax.set_xlabel("input length (tokens)")
    ax.set_ylabel("exact match")
    ax.set_ylim(-0.03, 1.08)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def summary_table(data: dict, variants: list[str] | None = None, control: str = "") -> str:
    """A markdown table: exact match per variant and length (mean over depths and seeds, +- spread over seeds)."""
    variants = variants or variants_of(data)
    lengths = sorted({parse_key(k)[2] for k in data["cells"]})
    rows = ["| variant | " + " | ".join(str(n) for n in lengths) + " |", "| --- |" + " --- |" * len(lengths)]
    for variant in variants:
        r = by_length(data, variant, control)
        if r:
            rows.append(f"| {variant}{' (' + control + ')' if control else ''} | " + " | ".join(
                f"{r[n][0]:.2f} ± {r[n][1]:.2f}" if n in r else "" for n in lengths) + " |")
    return "\n".join(rows)
