"""The parts of a report: each builder turns runs into a :class:`Section` (text, figures, tables, a JSON digest).

Sections are what ``analyze.py`` writes (PNG + CSV + HTML) and logs to W&B; the numbers come from the data functions
(counts, layers, change, overlaps, deactivation) and the pictures from ``figures``.
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..errors import HarnessError
from ..neurons import layer_distribution
from ..prompts import prompt_format
from . import figures
from .change import language_layer_change, layer_change, shared_by, spontaneous_alignment, stage_change
from .counts import counts_over_steps
from .layers import PERMUTATIONS, layer_table, stages_of, stages_table
from .overlaps import overlap_across_checkpoints, overlap_across_runs, overlap_between
from .progress import interactive, say
from .sources import Checkpoint, Run
from .stages import SIGNIFICANCE, STAGE_NAMES
from .table import Table


@dataclass
class FigureItem:
    name: str  # file stem and W&B key
    caption: str
    figure: Any  # a matplotlib Figure (closed once written)
    runs: tuple[str, ...] = ()  # labels of the runs it is about; () = all


@dataclass
class Section:
    key: str
    title: str
    intro: str = ""
    figures: list[FigureItem] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "run"


def concat(tables: Sequence[Table], name: str, title: str, note: str = "") -> Table:
    """Rows of tables with the same columns, one after the other."""
    if not tables:
        return Table(name, title, [], [], note)
    columns = tables[0].columns
    return Table(name, title, list(columns), [row for t in tables for row in t.rows], note or tables[0].note)


def with_run(table: Table, label: str) -> Table:
    return Table(table.name, table.title, ["run", *table.columns], [[label, *row] for row in table.rows], table.note)


def guarded(section: Section, what: str, func: Callable[[], Any]) -> Any:
    """Run one part of a section; a problem with the input becomes a note instead of stopping the report."""
    try:
        return func()
    except HarnessError as exc:
        section.notes.append(f"{what}: {exc}")
        return None


# ---- the sections ------------------------------------------------------------------------------------------------
def overview_section(runs: Sequence[Run]) -> Section:
    table = Table.from_records("runs", "Runs", [r.describe() for r in runs])
    notes = [f"{r.label}: {note}" for r in runs for note in [*r.notes, *(n for c in r.checkpoints for n in c.notes)]]
    return Section("runs", "Runs", tables=[table], notes=notes, data={"runs": [r.describe() for r in runs]})


def counts_section(runs: Sequence[Run]) -> Section:
    """(a) neuron counts per type over steps, per language and in total, runs overlaid, accuracy beside them."""
    table = counts_over_steps(runs)
    section = Section("counts", "Neuron counts over steps", intro=(
        "Distinct neurons of each type, and per language the specific / related neurons it owns, at every neuron "
        "checkpoint of every run, beside accuracy (the numbers logged as neurons/* and eval/acc/*)."), tables=[table])
    section.figures.append(FigureItem("counts_totals", "Neurons of each type and average accuracy over steps",
                                      figures.plot_counts_totals(table)))
    if any(r["lang"] != "all" for r in table.records()):
        section.figures.append(FigureItem("counts_languages", "Per language: specific, related, accuracy",
                                          figures.plot_counts_languages(table)))
    section.data = {run.label: {str(c.step): c.ident.totals for c in run.checkpoints if c.ident is not None}
                    for run in runs}
    return section


def stages_section(runs: Sequence[Run], step: int | str = "last", per_language: bool = True) -> Section:
    """(b) per-layer distribution of the types at one checkpoint, with the four stages located."""
    section = Section("stages", "Layer distribution and the four stages", intro=(
        "Neurons of each type per layer. Each layer's language score is the log ratio of its specific + related to "
        "its general neurons (add-one smoothed); the stages are the three boundaries of the least-squares fit of a "
        "step function with one level on stages 1 and 3 and a lower one on stages 2 and 4 (exact, over every "
        "boundary triple). The lower panel shows the scores centred between the two fitted levels. Stages: "
        + ", ".join(f"{i + 1} {n}" for i, n in enumerate(STAGE_NAMES)) + "."))
    for run in runs:
        ckpt = guarded(section, run.label, lambda: run.checkpoint(step))
        if ckpt is None:
            continue
        if ckpt.ident is None:
            section.notes.append(f"{run.label} step {ckpt.step}: no identification")
            continue
        if ckpt.ident.num_layers < 4:
            section.notes.append(f"{run.label}: {ckpt.ident.num_layers} layers, too few for four stages")
            continue
        table, stages = layer_table(ckpt.ident, name=f"layers_{slug(run.label)}",
                                    title=f"{run.label}, step {ckpt.step}: neurons per layer")
        section.tables.append(with_run(table, run.label))
        section.figures.append(FigureItem(f"stages_{slug(run.label)}", f"{run.label}, step {ckpt.step}: "
                                          f"{figures.stages_title(stages)}", figures.plot_stages(table, stages,
                                                                                   f"{run.label}, step {ckpt.step}"),
                                          (run.label,)))
        section.data[run.label] = {"step": ckpt.step, **stages.to_dict()}
        if stages.significant is False:
            section.notes.append(f"{run.label}, step {ckpt.step}: the stage fit is not significant (p "
                                 f"{stages.p_value:.2f} > {SIGNIFICANCE}, r2 {stages.r2:.2f}): its boundaries mean "
                                 "little")
    table = guarded(section, "stages", lambda: stages_table(runs, step, per_language))
    if table is not None:
        section.tables.insert(0, table)
    return section


def change_section(pairs: Sequence[tuple[str, Checkpoint, Checkpoint]]) -> Section:
    """(c) before -> after: per-layer change by type (Fig. 4) with the per-stage sums, and shared-by-N (Fig. 5)."""
    section = Section("change", "Before -> after alignment", intro=(
        "Change of the neurons of each type per layer (stages of the 'before' checkpoint shaded), summed per stage, "
        "per language and layer (the specific and related neurons each language owns), and the number of neurons "
        "shared by N languages before and after."))
    layer_tables, stage_tables, shared_tables, language_tables = [], [], [], []
    for label, before, after in pairs:
        a, b = before.ident, after.ident
        if a is None or b is None:
            section.notes.append(f"{label}: steps {before.step} -> {after.step} need identifications")
            continue
        what = f"{label}, step {before.step} -> {after.step}"
        change = guarded(section, what, lambda: layer_change(a, b))
        if change is None:
            continue
        stages, per_stage = None, None
        if a.num_layers >= 4:
            stages = stages_of(layer_distribution(a), permutations=PERMUTATIONS)
            per_stage = stage_change(a, b, stages)
            stage_tables.append(with_run(per_stage, what))
        layer_tables.append(with_run(change, what))
        shared = shared_by(a, b)
        shared_tables.append(with_run(shared, what))
        section.figures.append(FigureItem(f"layer_change_{slug(label)}", f"{what}: change per layer",
                                          figures.plot_layer_change(change, stages, what), (label,)))
        per_language = language_layer_change(a, b)
        language_tables.append(with_run(per_language, what))
        section.figures.append(FigureItem(f"language_layer_change_{slug(label)}", f"{what}: change per language "
                                          "and layer", figures.plot_language_layer_change(per_language, what),
                                          (label,)))
        section.figures.append(FigureItem(f"shared_by_{slug(label)}", f"{what}: neurons shared by N languages",
                                          figures.plot_shared_by(shared, what), (label,)))
        section.data[label] = {"before": before.step, "after": after.step,
                               "shared_by": {str(r["N"]): [r["before"], r["after"]] for r in shared.records()}}
        if per_stage is not None:
            section.data[label]["stage_change"] = [r for r in per_stage.records()
                                                   if r["type"] in ("specific+related", "general")]
    section.tables += [t for t in (concat(stage_tables, "stage_change", "Change per stage"),
                                   concat(shared_tables, "shared_by", "Neurons shared by N languages"),
                                   concat(layer_tables, "layer_change", "Change per layer"),
                                   concat(language_tables, "language_layer_change",
                                          "Change per language and layer")) if t.rows]
    return section


def run_pairs(runs: Sequence[Run], before: int | str, after: int | str) -> list[tuple[str, Checkpoint, Checkpoint]]:
    """(label, before, after) for every run with two distinct checkpoints at ``before`` and ``after``."""
    pairs = []
    for run in runs:
        try:
            a, b = run.checkpoint(before), run.checkpoint(after)
        except HarnessError:
            continue
        if a.step != b.step:
            pairs.append((run.label, a, b))
    return pairs


def overlap_section(runs: Sequence[Run], extra: Sequence[tuple[str, Any]] = ()) -> Section:
    """(d) Jaccard overlap of each language's neuron set across checkpoints, across runs (and so probe sets)."""
    section = Section("overlap", "Overlap of language neuron sets", intro=(
        "Jaccard overlap |A & B| / |A | B| of each language's neuron set (the specific and related neurons it owns) "
        "across the checkpoints of a run, and between runs at their first and last checkpoints. Runs of one model "
        "that differ in their probe set (data= or neurons.probe=) compare probe sets (paper Table 4)."))
    steps = guarded(section, "overlap across checkpoints", lambda: overlap_across_checkpoints(runs))
    if steps is not None and steps.rows:
        section.tables.append(steps)
        if any(len(r.checkpoints) > 1 for r in runs):
            section.figures.append(FigureItem("overlap_steps", "Overlap with the first checkpoint",
                                              figures.plot_overlap_steps(steps)))
    if len(runs) > 1:
        for which in ("first", "last"):
            pairs = guarded(section, f"overlap at {which}", lambda: overlap_across_runs(runs, which))
            if pairs is None:
                continue
            table, notes = pairs
            section.notes += notes
            if table.rows:
                section.tables.append(table)
                section.figures.append(FigureItem(f"overlap_runs_{which}", f"Overlap between runs ({which} "
                                                  "checkpoint)", figures.plot_overlap_pairs(table)))
                section.data[which] = {f"{r['a']} | {r['b']}": r["jaccard"] for r in table.records()
                                       if r["lang"] == "mean"}
    if extra:
        table, notes = overlap_between(extra)
        section.notes += notes
        if table.rows:
            section.tables.append(table)
            section.figures.append(FigureItem("overlap_pairs", "Overlap between sources",
                                              figures.plot_overlap_pairs(table)))
    return section


def spontaneous_section(runs: Sequence[Run], before: int | str = "first", after: int | str = "last") -> Section:
    """(e) trained vs untrained languages: change of specific / related neurons and of accuracy (Table 2)."""
    section = Section("spontaneous", "Spontaneous multilingual alignment", intro=(
        "For a run aligned on some languages (its config `lang`), the change of each language's specific and "
        "related neurons and of its accuracy between two checkpoints, summed and averaged over the trained and the "
        "untrained languages."))
    per_lang, groups = [], []
    for run in runs:
        got = guarded(section, run.label, lambda: _spontaneous(run, before, after))
        if got is None:
            continue
        per_lang.append(got[0])
        groups.append(got[1])
        section.data[run.label] = {r["languages"]: r for r in got[1].records()}
    if groups:
        summary = concat(groups, "spontaneous", "Trained vs untrained languages")
        per_language = concat(per_lang, "spontaneous_per_language", "Change per language")
        section.tables += [summary, per_language]
        section.figures.append(FigureItem("spontaneous", "Change per language (trained: solid, untrained: hatched)",
                                          figures.plot_spontaneous(per_language)))
    return section


def _spontaneous(run: Run, before: int | str, after: int | str) -> tuple[Table, Table]:
    a, b = run.checkpoint(before), run.checkpoint(after)
    if a.step == b.step:
        raise HarnessError(f"only one checkpoint (step {a.step}): nothing changed")
    return spontaneous_alignment(run, a, b)


@contextmanager
def quiet_hub_bars():
    """transformers' own loading bars off while a model loads, unless stderr is a terminal (a log gets lines)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if was and not interactive():
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def deactivation_section(runs: Sequence[Run], step: int | str = "last", *, model: str | None = None,
                         adapter: str | None = None, data: dict[str, Any] | None = None, n: int | None = None,
                         modes: Sequence[str] = ("specific", "specific+related", "all"),
                         deactivated: Sequence[str] | None = None, accuracy: bool = False, batch_size: int = 8,
                         max_new_tokens: int = 64) -> Section:
    """(f) deactivation heatmaps for one checkpoint of every run (its base model + the adapter of that step)."""
    from .deactivation import deactivation_effects, load_checkpoint_model, load_probe_problems, run_prompt_template

    section = Section("deactivation", "Deactivating language neurons", intro=(
        "Language A's neurons are zeroed after act_fn (specific; specific + related; + the general set) and the "
        "perplexity of the gold responses of every language B is measured, relative to the intact model"
        + (", with greedy accuracy." if accuracy else ".")))
    tables = []
    for run in runs:
        def one(run=run):
            ckpt = run.checkpoint(step)
            if ckpt.ident is None:
                raise HarnessError(f"step {ckpt.step} has no identification")
            started = time.perf_counter()
            say(f"deactivation: {run.label}, step {ckpt.step}: loading the model and the problems ...")
            with quiet_hub_bars():
                loaded = load_checkpoint_model(run, ckpt.step, model=model, adapter=adapter)
            fmt = prompt_format(run_prompt_template(run), loaded.tokenizer)
            problems = load_probe_problems(run, ckpt.ident.langs, data, n, template=fmt)
            say(f"deactivation: {run.label}, step {ckpt.step}: loaded in {time.perf_counter() - started:.1f} s")
            result = deactivation_effects(loaded.model, loaded.tokenizer, ckpt.ident, problems, modes=modes,
                                          deactivated=deactivated, accuracy=accuracy, batch_size=batch_size,
                                          max_new_tokens=max_new_tokens, template=fmt, progress=True)
            return ckpt, result

        got = guarded(section, run.label, one)
        if got is None:
            continue
        ckpt, result = got
        what = f"{run.label}, step {ckpt.step}"
        section.notes += [f"{what}: {note}" for note in result.notes]
        tables.append(with_run(result.table(), what))
        section.figures.append(FigureItem(f"deactivation_{slug(run.label)}", f"{what}: deactivation",
                                          figures.plot_deactivation(result, what), (run.label,)))
        section.data[run.label] = {"step": ckpt.step, **result.to_dict()}
    if tables:
        section.tables.append(concat(tables, "deactivation", "Deactivation: perplexity per measured language"))
    return section
