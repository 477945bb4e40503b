"""(a) Neuron counts per type over the steps of each run, per language and in total, beside accuracy."""

from __future__ import annotations

from typing import Sequence

from .sources import Run
from .table import Table

COUNT_COLUMNS = ["run", "step", "lang", "specific", "related", "general", "unassigned", "accuracy"]


def counts_over_steps(runs: Sequence[Run]) -> Table:
    """One row per (run, step, language) and one per (run, step) with ``lang = "all"``.

    Per language: the specific / related neurons it owns and the general set (active in every language), as
    ``neurons/specific/<lang>`` ... are logged. ``all``: distinct neurons of each type (``neurons/total/<type>``).
    Accuracy is the language's (``avg`` for ``all``); None where not measured.
    """
    rows = []
    for run in runs:
        for ckpt in run.checkpoints:
            ident, acc = ckpt.ident, ckpt.accuracy
            totals = ident.totals if ident is not None else {}
            rows.append([run.label, ckpt.step, "all", totals.get("specific"), totals.get("related"),
                         totals.get("general"), totals.get("unassigned"), acc.get("avg")])
            langs = ident.langs if ident is not None else tuple(k for k in acc if k != "avg")
            per_lang = ckpt.lang_type_counts
            for lang in langs:
                c = per_lang.get(lang, {})
                rows.append([run.label, ckpt.step, lang, c.get("specific"), c.get("related"), c.get("general"), None,
                             acc.get(lang)])
    return Table("counts", "Neuron counts and accuracy over steps", COUNT_COLUMNS, rows,
                 note="per language: specific / related neurons the language owns, general = the general set; "
                      "all: distinct neurons of each type; accuracy: the language's (all: the average)")
