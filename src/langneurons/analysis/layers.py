"""(b) Where neurons sit: per-layer distribution of specific / related / general neurons, and the four stages."""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from ..neurons import Identification, LayerDistribution, layer_distribution
from .sources import Run
from .stages import SIGNIFICANCE, STAGE_NAMES, Stages, find_stages, profile, ranges_label
from .table import Table


PERMUTATIONS = 49  # layer shuffles behind the p-value of the stages of all neurons (resolution 0.02)


def stages_of(dist: LayerDistribution, lang: str | None = None, permutations: int = 0) -> Stages:
    """The four stages of all neurons (``lang`` None) or of one language's neurons (its specific + related vs the
    general set); ``permutations`` > 0 adds a p-value (see :func:`find_stages`)."""
    if lang is None:
        language, general = profile(dist.total.numpy())
    else:
        per = dist.per_lang[dist.langs.index(lang)].numpy()
        language, general = per[:, 0] + per[:, 1], per[:, 2]
    return _cached_stages(tuple(language.tolist()), tuple(general.tolist()), permutations)


@lru_cache(maxsize=256)
def _cached_stages(language: tuple[float, ...], general: tuple[float, ...], permutations: int) -> Stages:
    # the stages table and the per-run layer table fit the same profiles; the permutation p-value is the costly part
    return find_stages(language, general, permutations=permutations)


def layer_table(ident: Identification, name: str = "layers", title: str = "Neurons per layer") -> tuple[Table, Stages]:
    """Per layer: neurons of each type, the language score and the stage (with the stages themselves)."""
    dist = layer_distribution(ident)
    stages = stages_of(dist, permutations=PERMUTATIONS)
    t = dist.total.tolist()
    rows = [[layer, *t[layer], t[layer][0] + t[layer][1], stages.scores[layer], stages.stage_of(layer) + 1]
            for layer in range(len(t))]
    columns = ["layer", "specific", "related", "general", "unassigned", "language", "score", "stage"]
    return Table(name, title, columns, rows, note="language = specific + related; score: the centred log ratio of "
                 "language to general neurons the stage finder segments"), stages


def stages_table(runs: Sequence[Run], step: int | str = "last", per_language: bool = True) -> Table:
    """The stages found at one checkpoint of every run, for all neurons and (``per_language``) for each language."""
    rows = []
    for run in runs:
        ckpt = run.checkpoint(step)
        if ckpt.ident is None or ckpt.ident.num_layers < 4:
            continue
        dist = layer_distribution(ckpt.ident)
        for lang in [None, *(dist.langs if per_language else ())]:
            st = stages_of(dist, lang, permutations=PERMUTATIONS if lang is None else 0)
            rows.append([run.label, ckpt.step, lang or "all", *(f"{a}-{b}" if a != b else str(a) for a, b in st.ranges),
                         " ".join("yes" if c else "no" for c in st.consistent), round(st.r2, 3), st.p_value,
                         {True: "yes", False: "no", None: ""}[st.significant],
                         ranges_label(st.runners_up[0][0], st.num_layers) if st.runners_up else ""])
    columns = ["run", "step", "lang", *(f"stage {i + 1}: {n}" for i, n in enumerate(STAGE_NAMES)),
               "contrast as expected", "r2", "p", "significant", "runner-up"]
    return Table("stages", "The four stages (layer ranges)", columns, rows,
                 note="stages 1 and 3: specific + related over-represented; 2 and 4: general over-represented. "
                      "'contrast as expected': each stage's mean score against its neighbours'; r2: variance of the "
                      f"layer scores the fit explains; p: share of {PERMUTATIONS} layer shuffles fitting as well "
                      f"(all neurons only); significant: p <= {SIGNIFICANCE} (otherwise the boundaries mean little)")
