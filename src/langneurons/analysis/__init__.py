"""Analysis over finished (or running) runs: the subcommands behind ``analyze.py``, and the same pieces for notebooks.

``cli`` turns ``analyze.py <subcommand> key=value ...`` into a composed config and calls the subcommand
(``commands``, ``identify``). Every figure is a data function returning numbers / tables plus a plotting function::

    from langneurons.analysis import load_runs, counts_over_steps, plot_counts_totals
    runs = load_runs(["outputs/2026-11-22/10-00-00", "outputs/2026-11-22/11-00-00"])
    fig = plot_counts_totals(counts_over_steps(runs))

Names are imported on first use, so ``analyze.py --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    # sources
    "load_run": "sources", "load_runs": "sources", "Run": "sources", "Checkpoint": "sources",
    "IdentifySettings": "sources",
    # (a) counts
    "counts_over_steps": "counts",
    # (b) layers and stages
    "find_stages": "stages", "Stages": "stages", "language_scores": "stages", "stages_of": "layers",
    "layer_table": "layers", "stages_table": "layers",
    # (c) before -> after, (e) spontaneous alignment
    "layer_change": "change", "stage_change": "change", "shared_by": "change", "shared_counts": "change",
    "spontaneous_alignment": "change", "language_layer_change": "change",
    # (d) overlaps
    "jaccard": "overlaps", "overlap_across_checkpoints": "overlaps", "overlap_across_runs": "overlaps",
    "overlap_between": "overlaps",
    # (f) deactivation
    "deactivation_effects": "deactivation", "load_checkpoint_model": "deactivation",
    "load_probe_problems": "deactivation", "DeactivationResult": "deactivation",
    # figures
    "plot_counts_totals": "figures", "plot_counts_languages": "figures", "plot_stages": "figures",
    "plot_layer_change": "figures", "plot_shared_by": "figures", "plot_overlap_steps": "figures",
    "plot_overlap_pairs": "figures", "plot_spontaneous": "figures", "plot_deactivation": "figures",
    "plot_language_layer_change": "figures",
    # output
    "Table": "table", "write_outputs": "report", "logged_history": "wandb_io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
