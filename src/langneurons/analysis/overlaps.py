"""(d) How stable each language's neuron set is: Jaccard overlap across checkpoints, runs and probe sets (Table 4).

A language's neuron set is the specific and related neurons it owns (its deactivation mask); the overlap of two
sets A, B is |A & B| / |A | B| (1.0 when both are empty).
"""

from __future__ import annotations

from itertools import combinations
from typing import Sequence

from ..errors import DataError
from ..neurons import Identification
from ..neurons.dynamics import language_sets
from .sources import Run
from .table import Table


def jaccard(a: Identification, b: Identification) -> dict[str, float]:
    """Per language the two identifications share (in ``a``'s order): Jaccard overlap of its neuron sets."""
    if (a.num_layers, a.num_units) != (b.num_layers, b.num_units):
        raise DataError(f"cannot overlap neurons of a {a.num_layers}x{a.num_units} and a {b.num_layers}x{b.num_units} "
                        "model: overlaps need identifications of one model")
    common = [lang for lang in a.langs if lang in b.langs]
    if not common:
        raise DataError(f"no language in common between {list(a.langs)} and {list(b.langs)}")
    sa, sb = language_sets(a), language_sets(b)
    out = {}
    for lang in common:
        x, y = sa[a.langs.index(lang)], sb[b.langs.index(lang)]
        union = int((x | y).sum())
        out[lang] = int((x & y).sum()) / union if union else 1.0
    return out


def set_sizes(ident: Identification) -> dict[str, int]:
    """Per language: the size of its neuron set (0: the language has no specific or related neuron)."""
    return {lang: int(mask.sum()) for lang, mask in zip(ident.langs, language_sets(ident))}


def overlap_across_checkpoints(runs: Sequence[Run]) -> Table:
    """Per run, step and language: overlap with the run's first checkpoint and with the previous one, and the
    size of the language's set at that step."""
    rows = []
    for run in runs:
        ckpts = [c for c in run.checkpoints if c.ident is not None]
        if not ckpts:
            continue
        first, previous = ckpts[0], ckpts[0]
        for ckpt in ckpts:
            vs_first, vs_prev = jaccard(first.ident, ckpt.ident), jaccard(previous.ident, ckpt.ident)
            sizes = set_sizes(ckpt.ident)
            for lang in vs_first:
                rows.append([run.label, ckpt.step, lang, vs_first[lang], vs_prev[lang], sizes[lang]])
            previous = ckpt
    return Table("overlap_steps", "Overlap of each language's neurons with the first and the previous checkpoint",
                 ["run", "step", "lang", "vs first", "vs previous", "neurons"], rows,
                 note="neurons: the size of the language's set at that step; two empty sets overlap 1.0")


def overlap_between(items: Sequence[tuple[str, Identification]], name: str = "overlap_pairs",
                    title: str = "Overlap of each language's neurons between sources") -> tuple[Table, list[str]]:
    """Every pair of labelled identifications: per language, the Jaccard overlap, plus the mean over languages.
    Pairs of different models are skipped and named in the returned notes."""
    rows, notes = [], []
    for (la, a), (lb, b) in combinations(items, 2):
        try:
            values = jaccard(a, b)
        except DataError as exc:
            notes.append(f"{la} vs {lb}: {exc}")
            continue
        size_a, size_b = set_sizes(a), set_sizes(b)
        for lang, value in values.items():
            rows.append([la, lb, lang, value, size_a[lang], size_b[lang]])
        rows.append([la, lb, "mean", sum(values.values()) / len(values), sum(size_a[lang] for lang in values),
                     sum(size_b[lang] for lang in values)])
    return Table(name, title, ["a", "b", "lang", "jaccard", "neurons a", "neurons b"], rows,
                 note="neurons a / b: the size of the language's set in each (mean: summed); two empty sets overlap "
                      "1.0"), notes


def overlap_across_runs(runs: Sequence[Run], step: int | str = "last") -> tuple[Table, list[str]]:
    """Overlap between every pair of runs at one checkpoint (``first``, ``last`` or a step every run has). Runs that
    differ only in their probe set (``data=`` / ``neurons.probe=``) give the paper's Table 4 at step 0."""
    items = []
    for run in runs:
        ckpt = run.checkpoint(step)
        if ckpt.ident is not None:
            probe = f", {run.probe}" if run.probe else ""
            items.append((f"{run.label}@{ckpt.step}{probe}", ckpt.ident))
    return overlap_between(items, name=f"overlap_runs_{step}", title=f"Overlap between runs ({step} checkpoint)")
