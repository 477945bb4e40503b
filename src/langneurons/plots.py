"""Figures of neuron results (matplotlib, no display needed). Each returns a Figure; callers save or log it."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .neurons.identify import LayerDistribution  # noqa: E402

TYPE_COLORS = {"specific": "tab:red", "related": "tab:orange", "general": "tab:blue", "unassigned": "tab:gray"}


def layer_distribution_figure(dist: LayerDistribution, title: str = ""):
    """Neurons per layer by type: one panel for all languages together, then one per language."""
    panels = ["all", *dist.langs]
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False, sharex=True)
    layers = range(dist.total.shape[0])
    data = dist.to_dict()
    for ax, panel in zip(axes.flat, panels):
        for name, counts in data[panel].items():
            if name == "unassigned" and not any(counts):
                continue
            ax.plot(layers, counts, marker=".", label=name, color=TYPE_COLORS[name])
        ax.set_title(panel, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("layer", fontsize=8)
    fig.supylabel("neurons", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
