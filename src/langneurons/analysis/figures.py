"""The analysis figures (matplotlib, Agg). Each function takes the data a data function returned (a
:class:`~langneurons.analysis.table.Table` or a result object) and returns a Figure; callers save or log it.

Read at a glance, the figures keep a few rules: panels that are compared share their y-axis (or their colour
scale); a change is drawn on a diverging scale centred on "no change" (zero, or a ratio of 1) with equal reach
both ways; layer and step axes have integer ticks; titles sit in a constrained layout that keeps them off the
labels; a language (or a type) with no neurons says so instead of drawing an empty panel; stages whose fit is not
significant say so in the title.
"""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm, Normalize, TwoSlopeNorm  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from ..plots import TYPE_COLORS  # noqa: E402
from .stages import STAGE_NAMES, Stages  # noqa: E402
from .table import Table  # noqa: E402

STAGE_SHADES = ("#fde0dd", "#deebf7", "#fde0dd", "#deebf7")  # language stages reddish, general stages bluish
DIVERGING = "RdBu_r"  # changes: more (or worse perplexity) red, fewer blue, no change white
NO_NEURONS = "no neurons"


def _run_colors(labels: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {label: cmap(i % 10) for i, label in enumerate(labels)}


def _unique(values: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def _figure(*args, **kwargs):
    """``plt.subplots`` in a constrained layout (titles, legends and colorbars kept off each other's labels)."""
    return plt.subplots(*args, layout="constrained", **kwargs)


def _share_y(axes: Sequence[Any]) -> None:
    """One y-axis for ``axes`` (call before drawing: the limits then cover what every one of them draws)."""
    for ax in axes[1:]:
        ax.sharey(axes[0])


def _integer_ticks(ax, axis: str = "x") -> None:
    (ax.xaxis if axis == "x" else ax.yaxis).set_major_locator(MaxNLocator(integer=True))


def _mark_empty(ax, text: str = NO_NEURONS) -> None:
    """Write ``text`` across a panel that has nothing to draw, so it does not read as missing data."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=8, color="dimgray",
            style="italic")


def _symmetric_ylim(axes: Sequence[Any], floor: float = 1.0) -> None:
    """One y-range for ``axes``, centred on zero, reaching the largest |value| drawn (at least ``floor``)."""
    reach = max([floor, *(abs(v) for ax in axes for v in ax.get_ylim())])
    for ax in axes:
        ax.set_ylim(-reach * 1.15, reach * 1.15)


def _diverging_norm(values: np.ndarray, center: float = 0.0, floor: float = 1.0,
                    lowest: float | None = None) -> Normalize:
    """A colour scale centred on ``center`` with equal reach both ways (the largest deviation, at least
    ``floor``), so that the same change up or down has the same depth of colour; ``lowest`` clips the low end to
    what the values can reach (a ratio is never below 0)."""
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    reach = max(floor, float(np.abs(finite - center).max()) if finite.size else 0.0)
    low = center - reach if lowest is None else max(center - reach, lowest)
    return TwoSlopeNorm(vcenter=center, vmin=low, vmax=center + reach)


def _shade_stages(ax, stages: Stages, labels: bool = True) -> None:
    for i, (lo, hi) in enumerate(stages.ranges):
        ax.axvspan(lo - 0.5, hi + 0.5, color=STAGE_SHADES[i], alpha=0.8, zorder=0, lw=0)
        if labels:  # inside the panel's top edge, where no title or label goes
            ax.text((lo + hi) / 2, 0.98, f"{i + 1}", transform=ax.get_xaxis_transform(), ha="center", va="top",
                    fontsize=8, color="dimgray")


def _run_legend(fig, runs: Sequence[str], colors: dict[str, Any]) -> None:
    """One legend for the runs, below the panels (outside every panel, so it covers no line)."""
    handles = [plt.Line2D([], [], color=colors[r], marker="o", ms=3) for r in runs]
    fig.legend(handles, list(runs), loc="outside lower center", ncols=min(len(runs), 3), fontsize=7, frameon=False)


# ---- (a) counts over steps -------------------------------------------------------------------------------------------
def plot_counts_totals(counts: Table):
    """Distinct neurons of each type over steps (one line per run; the three types on one y-axis), and the average
    accuracy beside them (0..1)."""
    rows = [r for r in counts.records() if r["lang"] == "all"]
    runs = _unique(r["run"] for r in rows)
    colors = _run_colors(runs)
    panels = [("specific", "specific neurons"), ("related", "related neurons"), ("general", "general neurons"),
              ("accuracy", "accuracy (avg)")]
    fig, axes = _figure(1, 4, figsize=(14, 3.6), squeeze=False)
    _share_y(axes[0][:3])  # the type panels are compared: one y-axis
    for ax, (key, title) in zip(axes[0], panels):
        drawn = []
        for run in runs:
            pts = [(r["step"], r[key]) for r in rows if r["run"] == run and r[key] is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, color=colors[run], label=run)
                drawn += [v for _, v in pts]
        if key != "accuracy" and drawn and not any(drawn):
            _mark_empty(ax, f"no {key} neurons")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        _integer_ticks(ax)
    axes[0][0].set_ylabel("neurons", fontsize=8)
    _integer_ticks(axes[0][0], "y")
    axes[0][0].set_ylim(bottom=0)  # counts from zero (the three type panels with it)
    axes[0][3].set_ylim(-0.03, 1.03)
    if runs:
        _run_legend(fig, runs, colors)
    return fig


def plot_counts_languages(counts: Table):
    """Per language (rows): its specific and related neurons and its accuracy over steps, one line per run. Every
    count panel shares one y-axis and every accuracy panel another (0..1); a language with no specific / related
    neuron at any step says so in its panel."""
    rows = [r for r in counts.records() if r["lang"] != "all"]
    runs = _unique(r["run"] for r in rows)
    langs = _unique(r["lang"] for r in rows)
    colors = _run_colors(runs)
    fig, axes = _figure(max(1, len(langs)), 3, figsize=(10, 1.7 * max(1, len(langs)) + 1.0), squeeze=False,
                        sharex=True)
    _share_y([ax for row in axes for ax in row[:2]])  # every count panel on one y-axis ...
    _share_y([row[2] for row in axes])  # ... and every accuracy panel on another
    for i, lang in enumerate(langs):
        empty = []  # count panels with nothing but zeros
        for j, key in enumerate(("specific", "related", "accuracy")):
            ax = axes[i][j]
            drawn = []
            for run in runs:
                pts = [(r["step"], r[key]) for r in rows if r["run"] == run and r["lang"] == lang and r[key] is not None]
                if pts:
                    ax.plot(*zip(*pts), marker="o", ms=2.5, color=colors[run], label=run)
                    drawn += [v for _, v in pts]
            if key != "accuracy" and not any(drawn):
                empty.append(key)
                _mark_empty(ax, f"no {key} neurons" if drawn else "no identification")
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.set_title(key, fontsize=9)
        axes[i][0].set_ylabel(f"{lang}\n({NO_NEURONS})" if len(empty) == 2 else lang, fontsize=9)
    if langs:
        _integer_ticks(axes[0][0], "y")
        axes[0][0].set_ylim(bottom=0)
        axes[0][2].set_ylim(-0.03, 1.03)
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=8)
        _integer_ticks(ax)
    if runs:
        _run_legend(fig, runs, colors)
    return fig


# ---- (b) layers and stages -------------------------------------------------------------------------------------------
def stages_title(stages: Stages) -> str:
    """``stages 0-4 / 5-17 / 18-30 / 31 (p 0.02, r2 0.83)``; a fit that is not significant says so."""
    return f"stages {stages.label()} ({stages.verdict()})"


def plot_stages(layers: Table, stages: Stages, title: str = ""):
    """Neurons per layer by type with the four stages shaded (top), and the language score the stages are fitted to,
    with the boundaries (bottom). The title gives the fit's p-value and r2 (and says when it is not significant)."""
    recs = layers.records()
    x = [r["layer"] for r in recs]
    fig, (top, bottom) = _figure(2, 1, figsize=(9, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]})
    _shade_stages(top, stages)
    for name in ("specific", "related", "general", "unassigned"):
        values = [r[name] for r in recs]
        if name == "unassigned" and not any(values):
            continue
        top.plot(x, values, marker=".", color=TYPE_COLORS[name], label=name)
    top.set_ylabel("neurons", fontsize=8)
    top.margins(y=0.14)  # room for the stage numbers at the top edge
    top.set_ylim(bottom=0)
    top.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    top.tick_params(labelsize=7)
    _integer_ticks(top, "y")
    scores = np.asarray(stages.scores)
    _shade_stages(bottom, stages, labels=False)
    bottom.bar(x, scores, color=["tab:red" if s > 0 else "tab:blue" for s in scores], width=0.7)
    bottom.axhline(0, color="black", lw=0.6)
    bottom.set_ylabel("score", fontsize=8)
    bottom.set_xlabel("layer", fontsize=8)
    bottom.tick_params(labelsize=7)
    _integer_ticks(bottom)
    names = ", ".join(f"{i + 1} {n}" for i, n in enumerate(STAGE_NAMES))
    head = f"{title}\n" if title else ""
    fig.suptitle(f"{head}{stages_title(stages)}\n({names})", fontsize=9)
    return fig


# ---- (c) before -> after -----------------------------------------------------------------------------------------------
def plot_layer_change(change: Table, stages: Stages | None = None, title: str = ""):
    """Change of neurons per layer by type (paper Fig. 4), bars grouped by layer, on a y-axis centred on zero,
    stages shaded (the title says when their fit is not significant)."""
    recs = change.records()
    layers = _unique(r["layer"] for r in recs)
    types = [t for t in ("specific", "related", "general", "unassigned")
             if any(r["change"] for r in recs if r["type"] == t) or t != "unassigned"]
    width = 0.8 / len(types)
    fig, ax = _figure(figsize=(max(6, 0.32 * len(layers) + 3), 3.6))
    if stages is not None:
        _shade_stages(ax, stages)
    for i, t in enumerate(types):
        values = [next(r["change"] for r in recs if r["layer"] == layer and r["type"] == t) for layer in layers]
        ax.bar(np.asarray(layers) + (i - (len(types) - 1) / 2) * width, values, width, color=TYPE_COLORS[t], label=t)
    ax.axhline(0, color="black", lw=0.6)
    _symmetric_ylim([ax])
    _integer_ticks(ax)
    _integer_ticks(ax, "y")
    if stages is not None and stages.significant is False:
        title = f"{title}\n(stages shaded: {stages.verdict()})" if title else f"stages shaded: {stages.verdict()}"
    return _finish_bars(fig, ax, "layer", "after - before", title)


def plot_language_layer_change(change: Table, title: str = ""):
    """Per language (rows) and layer (columns): the change of the specific and of the related neurons it owns, two
    heatmaps on one diverging colour scale centred on zero. A language with no neurons before or after says so."""
    recs = change.records()
    langs = _unique(r["lang"] for r in recs)
    layers = _unique(r["layer"] for r in recs)
    kinds = ("specific", "related")
    grids = {t: np.zeros((len(langs), len(layers))) for t in kinds}
    held = np.zeros(len(langs))  # neurons the language has before + after, both types
    for r in recs:
        i, j = langs.index(r["lang"]), layers.index(r["layer"])
        grids[r["type"]][i, j] = r["change"]
        held[i] += r["before"] + r["after"]
    norm = _diverging_norm(np.concatenate([g.ravel() for g in grids.values()]))
    fig, axes = _figure(1, 2, figsize=(0.28 * len(layers) * 2 + 4, 0.3 * len(langs) + 1.8), squeeze=False,
                        sharey=True)
    image = None
    for ax, kind in zip(axes[0], kinds):
        image = ax.imshow(grids[kind], cmap=DIVERGING, norm=norm, aspect="auto", interpolation="nearest")
        ax.set_yticks(range(len(langs)), [str(lang) for lang in langs], fontsize=7)
        ax.set_xlabel("layer", fontsize=8)
        ax.set_title(f"{kind} neurons: after - before", fontsize=9)
        ax.tick_params(labelsize=7)
        _integer_ticks(ax)
        for i in np.flatnonzero(held == 0):
            ax.text((len(layers) - 1) / 2, i, NO_NEURONS, ha="center", va="center", fontsize=7, color="dimgray",
                    style="italic")
    bar = fig.colorbar(image, ax=list(axes[0]), shrink=0.9, label="change")
    bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_shared_by(shared: Table, title: str = ""):
    """Neurons shared by N languages before and after (paper Fig. 5 / 15)."""
    recs = shared.records()
    n = np.asarray([r["N"] for r in recs])
    fig, ax = _figure(figsize=(6.5, 3.4))
    ax.bar(n - 0.2, [r["before"] for r in recs], 0.4, color="tab:gray", label="before")
    ax.bar(n + 0.2, [r["after"] for r in recs], 0.4, color="tab:green", label="after")
    for r in recs:
        ax.text(r["N"], max(r["before"], r["after"]), f"{r['change']:+d}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(n)
    _integer_ticks(ax, "y")
    return _finish_bars(fig, ax, "N (languages sharing the neuron)", "neurons", title)


def _finish_bars(fig, ax, xlabel: str, ylabel: str, title: str):
    """Axis labels, legend, tick size and title of a one-panel bar chart."""
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return fig


# ---- (d) overlaps ----------------------------------------------------------------------------------------------------
def _heatmap(ax, matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], cmap: str, vmin=None, vmax=None,
             fmt: Any = "{:.2f}", log: bool = False, norm: Normalize | None = None,
             empty: np.ndarray | None = None):
    """``empty``: cells with nothing to compare (two empty neuron sets), drawn grey and written ``none``."""
    if norm is None:
        norm = LogNorm(vmin=vmin, vmax=vmax) if log else Normalize(vmin=vmin, vmax=vmax)
    shown = matrix if empty is None else np.where(empty, np.nan, matrix)
    colours = plt.get_cmap(cmap).with_extremes(bad="#e6e6e6")
    im = ax.imshow(shown, cmap=colours, norm=norm, aspect="auto")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols], fontsize=7, rotation=45 if len(cols) > 6 else 0,
                  ha="right" if len(cols) > 6 else "center")
    ax.set_yticks(range(len(rows)), [str(r) for r in rows], fontsize=7)
    if matrix.size <= 200:
        for (i, j), v in np.ndenumerate(matrix):
            if empty is not None and empty[i, j]:
                ax.text(j, i, "none", ha="center", va="center", fontsize=6, color="dimgray", style="italic")
            elif np.isfinite(v):
                ax.text(j, i, fmt(v) if callable(fmt) else fmt.format(v), ha="center", va="center", fontsize=6)
    return im


def plot_overlap_steps(overlaps: Table):
    """Per run, each language's overlap with the run's first checkpoint at every step. Where a language has no
    neurons at the step nor at the first (nothing to overlap), the cell is grey and says ``none``; a language
    without neurons at any step is labelled so."""
    recs = overlaps.records()
    runs = _unique(r["run"] for r in recs)
    fig, axes = _figure(1, max(1, len(runs)), figsize=(3.6 * max(1, len(runs)) + 1.2, 3.8), squeeze=False)
    im = None
    for ax, run in zip(axes[0], runs):
        mine = [r for r in recs if r["run"] == run]
        steps, langs = _unique(r["step"] for r in mine), _unique(r["lang"] for r in mine)
        m = np.full((len(langs), len(steps)), np.nan)
        held = np.zeros((len(langs), len(steps)))
        for r in mine:
            i, j = langs.index(r["lang"]), steps.index(r["step"])
            m[i, j] = r["vs first"]
            held[i, j] = r.get("neurons") if r.get("neurons") is not None else 1
        # a Jaccard of 1.0 over an empty set at this step: the first was empty too
        empty = (held == 0) & (m == 1.0)
        names = [f"{lang} ({NO_NEURONS})" if not held[i].any() else lang for i, lang in enumerate(langs)]
        im = _heatmap(ax, m, names, steps, "viridis", 0, 1, empty=empty)
        ax.set_title(run, fontsize=8)
        ax.set_xlabel("step", fontsize=8)
    if im is not None:
        fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label="Jaccard vs first checkpoint")
    return fig


def plot_overlap_pairs(pairs: Table, title: str = ""):
    """Per language (rows) and pair of sources (columns): the Jaccard overlap of the language's neuron sets (grey,
    ``none``: the language has no neurons in either)."""
    recs = pairs.records()
    cols = _unique(f"{r['a']}\nvs {r['b']}" for r in recs)
    langs = _unique(r["lang"] for r in recs)
    m = np.full((len(langs), len(cols)), np.nan)
    empty = np.zeros(m.shape, dtype=bool)
    for r in recs:
        i, j = langs.index(r["lang"]), cols.index(f"{r['a']}\nvs {r['b']}")
        m[i, j] = r["jaccard"]
        empty[i, j] = r.get("neurons a") == 0 and r.get("neurons b") == 0
    fig, ax = _figure(figsize=(2.2 * len(cols) + 2.5, 0.3 * len(langs) + 1.8))
    im = _heatmap(ax, m, langs, cols, "viridis", 0, 1, empty=empty)
    fig.colorbar(im, ax=ax, label="Jaccard")
    if title:
        ax.set_title(title, fontsize=9)
    return fig


# ---- (e) spontaneous alignment ---------------------------------------------------------------------------------------
def plot_spontaneous(per_language: Table):
    """Per run (rows): change of each language's specific / related neurons and accuracy; trained languages solid,
    untrained hatched. The neuron panels share one y-axis centred on zero, the accuracy panels another."""
    recs = per_language.records()
    runs = _unique(r["run"] for r in recs)
    keys = ("specific change", "related change", "accuracy change")
    fig, axes = _figure(max(1, len(runs)), 3, figsize=(12, 2.6 * max(1, len(runs)) + 0.6), squeeze=False)
    neuron_axes = [ax for row in axes for ax in row[:2]]
    accuracy_axes = [row[2] for row in axes]
    _share_y(neuron_axes)
    _share_y(accuracy_axes)
    for i, run in enumerate(runs):
        mine = [r for r in recs if r["run"] == run]
        x = np.arange(len(mine))
        for j, key in enumerate(keys):
            ax = axes[i][j]
            values = [r[key] if r[key] is not None else 0.0 for r in mine]
            bars = ax.bar(x, values, color=["tab:purple" if r["trained"] else "tab:olive" for r in mine])
            for bar, r in zip(bars, mine):
                if not r["trained"]:
                    bar.set_hatch("//")
            ax.axhline(0, color="black", lw=0.6)
            ax.set_xticks(x, [r["lang"] for r in mine], fontsize=7)
            ax.tick_params(labelsize=7)
            ax.set_title(f"{run}: {key}" if j == 0 else key, fontsize=8)
            if j < 2:
                _integer_ticks(ax, "y")
    _symmetric_ylim(neuron_axes)
    _symmetric_ylim(accuracy_axes, floor=0.05)
    return fig


# ---- (f) deactivation ------------------------------------------------------------------------------------------------
def _factor(v: float) -> str:
    """2.1x, 158x, 6e5x: short enough for a heatmap cell."""
    if v < 10:
        return f"{v:.1f}x"
    return f"{v:.0f}x" if v < 1000 else f"{v:.0e}x".replace("e+0", "e").replace("e+", "e")


def plot_deactivation(result, title: str = ""):
    """Per mode: perplexity ratio (deactivated / baseline) with language A's neurons zeroed (rows) on language B
    (columns), on a diverging scale centred on 1 (unchanged; red: worse, blue: better; a log scale with equal
    reach both ways when the ratios span orders of magnitude); a second row of heatmaps with the accuracy change,
    one scale centred on zero for every mode, when accuracy was measured."""
    modes = list(result.modes)
    with_acc = result.accuracy is not None
    nrows = 2 if with_acc else 1
    size = 0.42 * max(len(result.langs), 4) + 1.5
    fig, axes = _figure(nrows, len(modes), figsize=(size * len(modes), size * nrows + 0.4), squeeze=False)
    if with_acc:
        changes = np.concatenate([np.asarray(result.accuracy_change(m), dtype=float).ravel() for m in modes])
        accuracy_norm = _diverging_norm(changes, floor=0.05)
    for j, mode in enumerate(modes):
        ratio = np.asarray(result.ratio(mode))
        top, bottom = max(1.01, float(np.nanmax(ratio))), min(1.0, float(np.nanmin(ratio)))
        # small effects read best as a percentage, large ones as a factor, huge ones on a log scale
        label = (lambda v: f"{(v - 1) * 100:+.1f}%") if top < 2 else _factor
        if top / max(bottom, 1e-9) > 20:
            reach = max(top, 1 / max(bottom, 1e-9))  # symmetric in log: 1 sits in the middle
            norm = LogNorm(vmin=1 / reach, vmax=reach)
        else:
            norm = _diverging_norm(ratio, center=1.0, floor=0.01, lowest=0.0)
        im = _heatmap(axes[0][j], ratio, result.deactivated, result.langs, DIVERGING, fmt=label, norm=norm)
        axes[0][j].set_title(f"zeroed: {mode}\nperplexity / baseline", fontsize=8)
        axes[0][j].set_xlabel("measured language", fontsize=7)
        axes[0][j].set_ylabel("deactivated language", fontsize=7)
        fig.colorbar(im, ax=axes[0][j], shrink=0.8)
        if with_acc:
            change = np.asarray(result.accuracy_change(mode))
            im = _heatmap(axes[1][j], change, result.deactivated, result.langs, "RdBu", norm=accuracy_norm)
            axes[1][j].set_title("accuracy change", fontsize=8)
            fig.colorbar(im, ax=axes[1][j], shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def close(fig) -> None:
    plt.close(fig)
