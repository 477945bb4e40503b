"""The analysis figures (matplotlib, Agg). Each function takes the data a data function returned (a
:class:`~langneurons.analysis.table.Table` or a result object) and returns a Figure; callers save or log it."""

from __future__ import annotations

from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..plots import TYPE_COLORS  # noqa: E402
from .stages import STAGE_NAMES, Stages  # noqa: E402
from .table import Table  # noqa: E402

STAGE_SHADES = ("#fde0dd", "#deebf7", "#fde0dd", "#deebf7")  # language stages reddish, general stages bluish


def _run_colors(labels: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {label: cmap(i % 10) for i, label in enumerate(labels)}


def _unique(values: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def _shade_stages(ax, stages: Stages, labels: bool = True) -> None:
    for i, (lo, hi) in enumerate(stages.ranges):
        ax.axvspan(lo - 0.5, hi + 0.5, color=STAGE_SHADES[i], alpha=0.8, zorder=0, lw=0)
        if labels:
            ax.text((lo + hi) / 2, 1.0, f"{i + 1}", transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize=8, color="dimgray")


# ---- (a) counts over steps -------------------------------------------------------------------------------------------
def plot_counts_totals(counts: Table):
    """Distinct neurons of each type over steps (one line per run), and the average accuracy beside them."""
    rows = [r for r in counts.records() if r["lang"] == "all"]
    runs = _unique(r["run"] for r in rows)
    colors = _run_colors(runs)
    panels = [("specific", "specific neurons"), ("related", "related neurons"), ("general", "general neurons"),
              ("accuracy", "accuracy (avg)")]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for run in runs:
            pts = [(r["step"], r[key]) for r in rows if r["run"] == run and r[key] is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, color=colors[run], label=run)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_counts_languages(counts: Table):
    """Per language (rows): its specific and related neurons and its accuracy over steps, one line per run."""
    rows = [r for r in counts.records() if r["lang"] != "all"]
    runs = _unique(r["run"] for r in rows)
    langs = _unique(r["lang"] for r in rows)
    colors = _run_colors(runs)
    fig, axes = plt.subplots(max(1, len(langs)), 3, figsize=(10, 1.7 * max(1, len(langs)) + 0.6), squeeze=False,
                             sharex=True)
    for i, lang in enumerate(langs):
        for j, key in enumerate(("specific", "related", "accuracy")):
            ax = axes[i][j]
            for run in runs:
                pts = [(r["step"], r[key]) for r in rows if r["run"] == run and r["lang"] == lang and r[key] is not None]
                if pts:
                    ax.plot(*zip(*pts), marker="o", ms=2.5, color=colors[run], label=run)
            ax.tick_params(labelsize=7)
            if i == 0:
                ax.set_title(key, fontsize=9)
            if j == 0:
                ax.set_ylabel(lang, fontsize=9)
    axes[0][0].legend(fontsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=8)
    fig.tight_layout()
    return fig


# ---- (b) layers and stages -------------------------------------------------------------------------------------------
def plot_stages(layers: Table, stages: Stages, title: str = ""):
    """Neurons per layer by type with the four stages shaded (top), and the language score the stages are fitted to,
    with the boundaries (bottom)."""
    recs = layers.records()
    x = [r["layer"] for r in recs]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]})
    _shade_stages(top, stages)
    for name in ("specific", "related", "general", "unassigned"):
        values = [r[name] for r in recs]
        if name == "unassigned" and not any(values):
            continue
        top.plot(x, values, marker=".", color=TYPE_COLORS[name], label=name)
    top.set_ylabel("neurons", fontsize=8)
    top.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    top.tick_params(labelsize=7)
    scores = np.asarray(stages.scores)
    _shade_stages(bottom, stages, labels=False)
    bottom.bar(x, scores, color=["tab:red" if s > 0 else "tab:blue" for s in scores], width=0.7)
    bottom.axhline(0, color="black", lw=0.6)
    bottom.set_ylabel("score", fontsize=8)
    bottom.set_xlabel("layer", fontsize=8)
    bottom.tick_params(labelsize=7)
    names = ", ".join(f"{i + 1} {n}" for i, n in enumerate(STAGE_NAMES))
    fig.suptitle(f"{title}\nstages {stages.label()}  ({names})" if title else f"stages {stages.label()}", fontsize=9)
    fig.tight_layout()
    return fig


# ---- (c) before -> after -----------------------------------------------------------------------------------------------
def plot_layer_change(change: Table, stages: Stages | None = None, title: str = ""):
    """Change of neurons per layer by type (paper Fig. 4), bars grouped by layer, stages shaded."""
    recs = change.records()
    layers = _unique(r["layer"] for r in recs)
    types = [t for t in ("specific", "related", "general", "unassigned")
             if any(r["change"] for r in recs if r["type"] == t) or t != "unassigned"]
    width = 0.8 / len(types)
    fig, ax = plt.subplots(figsize=(max(6, 0.32 * len(layers) + 3), 3.4))
    if stages is not None:
        _shade_stages(ax, stages)
    for i, t in enumerate(types):
        values = [next(r["change"] for r in recs if r["layer"] == layer and r["type"] == t) for layer in layers]
        ax.bar(np.asarray(layers) + (i - (len(types) - 1) / 2) * width, values, width, color=TYPE_COLORS[t], label=t)
    ax.axhline(0, color="black", lw=0.6)
    return _finish_bars(fig, ax, "layer", "after - before", title)


def plot_shared_by(shared: Table, title: str = ""):
    """Neurons shared by N languages before and after (paper Fig. 5 / 15)."""
    recs = shared.records()
    n = np.asarray([r["N"] for r in recs])
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    ax.bar(n - 0.2, [r["before"] for r in recs], 0.4, color="tab:gray", label="before")
    ax.bar(n + 0.2, [r["after"] for r in recs], 0.4, color="tab:green", label="after")
    for r in recs:
        ax.text(r["N"], max(r["before"], r["after"]), f"{r['change']:+d}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(n)
    return _finish_bars(fig, ax, "N (languages sharing the neuron)", "neurons", title)


def _finish_bars(fig, ax, xlabel: str, ylabel: str, title: str):
    """Axis labels, legend, tick size and title of a one-panel bar chart, then the tight layout."""
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


# ---- (d) overlaps ----------------------------------------------------------------------------------------------------
def _heatmap(ax, matrix: np.ndarray, rows: Sequence[str], cols: Sequence[str], cmap: str, vmin=None, vmax=None,
             fmt: Any = "{:.2f}", log: bool = False):
    if log:  # values spanning orders of magnitude (a model broken by zeroing its general neurons)
        from matplotlib.colors import LogNorm

        im = ax.imshow(matrix, cmap=cmap, norm=LogNorm(vmin=vmin, vmax=vmax), aspect="auto")
    else:
        im = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols], fontsize=7, rotation=45 if len(cols) > 6 else 0,
                  ha="right" if len(cols) > 6 else "center")
    ax.set_yticks(range(len(rows)), [str(r) for r in rows], fontsize=7)
    if matrix.size <= 200:
        for (i, j), v in np.ndenumerate(matrix):
            if np.isfinite(v):
                ax.text(j, i, fmt(v) if callable(fmt) else fmt.format(v), ha="center", va="center", fontsize=6)
    return im


def plot_overlap_steps(overlaps: Table):
    """Per run, each language's overlap with the run's first checkpoint at every step."""
    recs = overlaps.records()
    runs = _unique(r["run"] for r in recs)
    fig, axes = plt.subplots(1, max(1, len(runs)), figsize=(3.6 * max(1, len(runs)) + 0.8, 3.6), squeeze=False)
    im = None
    for ax, run in zip(axes[0], runs):
        mine = [r for r in recs if r["run"] == run]
        steps, langs = _unique(r["step"] for r in mine), _unique(r["lang"] for r in mine)
        m = np.full((len(langs), len(steps)), np.nan)
        for r in mine:
            m[langs.index(r["lang"]), steps.index(r["step"])] = r["vs first"]
        im = _heatmap(ax, m, langs, steps, "viridis", 0, 1)
        ax.set_title(run, fontsize=8)
        ax.set_xlabel("step", fontsize=8)
    if im is not None:
        fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label="Jaccard vs first checkpoint")
    return fig


def plot_overlap_pairs(pairs: Table, title: str = ""):
    """Per language (rows) and pair of sources (columns): the Jaccard overlap of the language's neuron sets."""
    recs = pairs.records()
    cols = _unique(f"{r['a']}\nvs {r['b']}" for r in recs)
    langs = _unique(r["lang"] for r in recs)
    m = np.full((len(langs), len(cols)), np.nan)
    for r in recs:
        m[langs.index(r["lang"]), cols.index(f"{r['a']}\nvs {r['b']}")] = r["jaccard"]
    fig, ax = plt.subplots(figsize=(2.2 * len(cols) + 2.5, 0.3 * len(langs) + 1.8))
    im = _heatmap(ax, m, langs, cols, "viridis", 0, 1)
    fig.colorbar(im, ax=ax, label="Jaccard")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


# ---- (e) spontaneous alignment ---------------------------------------------------------------------------------------
def plot_spontaneous(per_language: Table):
    """Per run (rows): change of each language's specific / related neurons and accuracy; trained languages solid,
    untrained hatched."""
    recs = per_language.records()
    runs = _unique(r["run"] for r in recs)
    keys = ("specific change", "related change", "accuracy change")
    fig, axes = plt.subplots(max(1, len(runs)), 3, figsize=(12, 2.6 * max(1, len(runs)) + 0.4), squeeze=False)
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
    fig.tight_layout()
    return fig


# ---- (f) deactivation ------------------------------------------------------------------------------------------------
def _factor(v: float) -> str:
    """2.1x, 158x, 6e5x: short enough for a heatmap cell."""
    if v < 10:
        return f"{v:.1f}x"
    return f"{v:.0f}x" if v < 1000 else f"{v:.0e}x".replace("e+0", "e").replace("e+", "e")


def plot_deactivation(result, title: str = ""):
    """Per mode: perplexity ratio (deactivated / baseline) with language A's neurons zeroed (rows) on language B
    (columns); a second row of heatmaps with the accuracy change when accuracy was measured."""
    modes = list(result.modes)
    with_acc = result.accuracy is not None
    nrows = 2 if with_acc else 1
    size = 0.42 * max(len(result.langs), 4) + 1.5
    fig, axes = plt.subplots(nrows, len(modes), figsize=(size * len(modes), size * nrows), squeeze=False)
    for j, mode in enumerate(modes):
        ratio = np.asarray(result.ratio(mode))
        top, bottom = max(1.01, float(np.nanmax(ratio))), min(1.0, float(np.nanmin(ratio)))
        # small effects read best as a percentage, large ones as a factor, huge ones on a log scale
        label = (lambda v: f"{(v - 1) * 100:+.1f}%") if top < 2 else _factor
        im = _heatmap(axes[0][j], ratio, result.deactivated, result.langs, "Reds", bottom, top, fmt=label,
                      log=top / max(bottom, 1e-9) > 20)
        axes[0][j].set_title(f"zeroed: {mode}\nperplexity / baseline", fontsize=8)
        axes[0][j].set_xlabel("measured language", fontsize=7)
        axes[0][j].set_ylabel("deactivated language", fontsize=7)
        fig.colorbar(im, ax=axes[0][j], shrink=0.8)
        if with_acc:
            change = np.asarray(result.accuracy_change(mode))
            bound = max(0.05, float(np.nanmax(np.abs(change))))
            im = _heatmap(axes[1][j], change, result.deactivated, result.langs, "RdBu", -bound, bound)
            axes[1][j].set_title("accuracy change", fontsize=8)
            fig.colorbar(im, ax=axes[1][j], shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def close(fig) -> None:
    plt.close(fig)
