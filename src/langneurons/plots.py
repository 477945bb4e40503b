"""Figures of neuron results (matplotlib, no display needed). Each returns a Figure; callers save or log it."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .neurons.identify import LayerDistribution  # noqa: E402

TYPE_COLORS = {"specific": "tab:red", "related": "tab:orange", "general": "tab:blue", "unassigned": "tab:gray"}


def layer_distribution_figure(dist: LayerDistribution, title: str = ""):
    """Neurons per layer by type: all languages together (one line per type), then a languages x layers heatmap of
    the specific and of the related neurons each language owns (general neurons belong to every language alike), on
    one colour scale; the row of a language that owns none says ``no neurons``.

    Three panels with a fixed layout whatever the number of languages: built and rendered to PNG in about 0.12 s at
    every checkpoint, where a panel per language laid out by ``tight_layout`` took 0.4-0.65 s."""
    data = dist.to_dict()
    layers = list(range(dist.total.shape[0]))
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.8 + 0.28 * max(len(dist.langs), 8)),
                             gridspec_kw={"width_ratios": [1.0, 1.2, 1.2]})
    fig.subplots_adjust(left=0.05, right=0.97, bottom=0.16, top=0.84, wspace=0.3)
    ax = axes[0]
    for name, counts in data["all"].items():
        if name == "unassigned" and not any(counts):
            continue
        ax.plot(layers, counts, marker=".", label=name, color=TYPE_COLORS[name])
    ax.set_title("all languages", fontsize=9)
    ax.set_xlabel("layer", fontsize=8)
    ax.set_ylabel("neurons", fontsize=8)
    ax.legend(fontsize=7)
    grids = {kind: dist.per_lang[:, :, dist.lang_types.index(kind)].numpy() for kind in ("specific", "related")}
    # the two heatmaps are compared: one colour scale; a language owning no neuron of either type says so in its row
    top = max([1, *(int(g.max()) for g in grids.values() if g.size)])
    empty = (grids["specific"].sum(1) + grids["related"].sum(1)) == 0
    for ax, kind in zip(axes[1:], ("specific", "related")):
        grid = grids[kind]
        image = ax.imshow(grid, aspect="auto", cmap="Reds" if kind == "specific" else "Oranges", vmin=0, vmax=top,
                          interpolation="nearest")
        ax.set_yticks(range(len(dist.langs)), dist.langs)
        for row in empty.nonzero()[0].tolist():
            ax.text((len(layers) - 1) / 2, row, "no neurons", ha="center", va="center", fontsize=7, color="dimgray",
                    style="italic")
        ax.set_xlabel("layer", fontsize=8)
        ax.set_title(f"{kind} neurons per language", fontsize=9)
        bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
        bar.ax.tick_params(labelsize=7)
        bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes:
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
