"""(c) and (e): what alignment changed between two checkpoints.

- :func:`layer_change`: neurons per layer and type before and after (paper Fig. 4), and :func:`stage_change`, the
  same summed over the four stages; :func:`language_layer_change`, per language and layer;
- :func:`shared_by`: neurons shared by N = 1..K languages before and after (Fig. 5 / 15);
- :func:`spontaneous_alignment`: for a run aligned on some languages, the change of each language's specific /
  related neurons and accuracy, trained vs untrained languages (Table 2).
"""

from __future__ import annotations

from typing import Sequence

from ..errors import DataError
from ..neurons import TYPES, Identification, layer_distribution
from .layers import stages_of
from .sources import Checkpoint, Run
from .stages import STAGE_NAMES, Stages
from .table import Table


def _check(before: Identification, after: Identification) -> None:
    if (before.num_layers, before.num_units) != (after.num_layers, after.num_units) or before.langs != after.langs:
        raise DataError(f"cannot compare identifications of {before.num_layers}x{before.num_units} {list(before.langs)} "
                        f"and {after.num_layers}x{after.num_units} {list(after.langs)}: compare checkpoints of one "
                        "model probed on the same languages")


def layer_change(before: Identification, after: Identification) -> Table:
    """Per layer and type (specific, related, general, unassigned): neurons before, after and the change."""
    _check(before, after)
    a, b = layer_distribution(before).total.tolist(), layer_distribution(after).total.tolist()
    rows = [[layer, name, a[layer][t], b[layer][t], b[layer][t] - a[layer][t]]
            for layer in range(len(a)) for t, name in enumerate(TYPES)]
    return Table("layer_change", "Neurons per layer before -> after", ["layer", "type", "before", "after", "change"],
                 rows)


def language_layer_change(before: Identification, after: Identification) -> Table:
    """Per language, layer and type (specific, related: the neurons the language owns): before, after, change."""
    _check(before, after)
    a, b = layer_distribution(before).per_lang.tolist(), layer_distribution(after).per_lang.tolist()
    rows = [[lang, layer, name, a[k][layer][t], b[k][layer][t], b[k][layer][t] - a[k][layer][t]]
            for k, lang in enumerate(before.langs) for layer in range(before.num_layers)
            for t, name in enumerate(("specific", "related"))]
    return Table("language_layer_change", "Neurons each language owns per layer before -> after",
                 ["lang", "layer", "type", "before", "after", "change"], rows)


def stage_change(before: Identification, after: Identification, stages: Stages | None = None) -> Table:
    """Per stage and type: neurons before, after and the change, with the stages of ``before`` unless given."""
    _check(before, after)
    if stages is None:
        stages = stages_of(layer_distribution(before))
    a, b = layer_distribution(before).total, layer_distribution(after).total
    rows = []
    for i, (lo, hi) in enumerate(stages.ranges):
        before_t, after_t = a[lo:hi + 1].sum(0).tolist(), b[lo:hi + 1].sum(0).tolist()
        span = f"{lo}-{hi}" if lo != hi else str(lo)
        for t, name in enumerate(TYPES):
            rows.append([i + 1, STAGE_NAMES[i], span, name, before_t[t], after_t[t], after_t[t] - before_t[t]])
        rows.append([i + 1, STAGE_NAMES[i], span, "specific+related", before_t[0] + before_t[1],
                     after_t[0] + after_t[1], after_t[0] + after_t[1] - before_t[0] - before_t[1]])
    return Table("stage_change", f"Change per stage (stages {stages.label()})",
                 ["stage", "name", "layers", "type", "before", "after", "change"], rows)


def shared_counts(ident: Identification) -> list[int]:
    """Neurons shared by N = 1..K languages: N < K from the selection, N = K the general set (general neurons are
    kept out of the selection by the lam search, so the general set is what "shared by all" means)."""
    hist = ident.histogram
    return [hist[n] for n in range(1, ident.num_langs)] + [int(ident.general.numel())]


def shared_by(before: Identification, after: Identification) -> Table:
    """Neurons shared by N = 1..K languages before and after (see :func:`shared_counts`)."""
    _check(before, after)
    a, b = shared_counts(before), shared_counts(after)
    rows = [[n + 1, a[n], b[n], b[n] - a[n]] for n in range(len(a))]
    return Table("shared_by", "Neurons shared by N languages before -> after", ["N", "before", "after", "change"],
                 rows, note=f"N < {before.num_langs}: selected neurons owned by N languages; "
                            f"N = {before.num_langs}: the general set")


def spontaneous_alignment(run: Run, before: Checkpoint, after: Checkpoint,
                          trained: Sequence[str] | None = None) -> tuple[Table, Table]:
    """Per language: change of specific / related neurons it owns and of its accuracy between two checkpoints, and
    (second table) their sums and means over the trained and the untrained languages.

    ``trained``: the aligned languages (default: the run's config ``lang``).
    """
    trained = tuple(trained) if trained is not None else run.aligned_langs
    if trained is None:
        raise DataError(f"{run.label}: the aligned languages are unknown (no run config): pass trained=[...]")
    a, b = before.lang_type_counts, after.lang_type_counts
    if not a or not b:
        raise DataError(f"{run.label}: steps {before.step} and {after.step} need identifications")
    acc_a, acc_b = before.accuracy, after.accuracy
    rows = []
    for lang in a:
        if lang not in b:
            continue
        da = acc_b[lang] - acc_a[lang] if lang in acc_a and lang in acc_b else None
        rows.append([run.label, lang, lang in trained, a[lang]["specific"], b[lang]["specific"],
                     b[lang]["specific"] - a[lang]["specific"], a[lang]["related"], b[lang]["related"],
                     b[lang]["related"] - a[lang]["related"], acc_a.get(lang), acc_b.get(lang), da])
    columns = ["run", "lang", "trained", "specific before", "specific after", "specific change", "related before",
               "related after", "related change", "accuracy before", "accuracy after", "accuracy change"]
    per_lang = Table("spontaneous_per_language", f"{run.label}: change per language, step {before.step} -> "
                     f"{after.step} (trained: {'+'.join(trained)})", columns, rows)
    summary = []
    for group, flag in (("trained", True), ("untrained", False)):
        members = [r for r in per_lang.records() if r["trained"] is flag]
        if not members:
            continue
        accs = [r["accuracy change"] for r in members if r["accuracy change"] is not None]
        summary.append([run.label, group, len(members),
                        sum(r["specific change"] for r in members), sum(r["related change"] for r in members),
                        sum(r["specific change"] for r in members) / len(members),
                        sum(r["related change"] for r in members) / len(members),
                        sum(accs) / len(accs) if accs else None])
    groups = Table("spontaneous", f"{run.label}: trained vs untrained languages, step {before.step} -> {after.step}",
                   ["run", "languages", "n", "specific change (sum)", "related change (sum)",
                    "specific change (mean)", "related change (mean)", "accuracy change (mean)"], summary)
    return per_lang, groups
