"""Saved W&B views of a study, built with W&B's own library for them (``wandb-workspaces``): a workspace view of a
project laid out for comparing neuron dynamics (``analyze.py workspace``), and a W&B report of the HTML report's
content (``analyze.py wandb-report``); and the check that a view charts only keys that runs logged.

Every key a panel charts comes from :class:`tracking.Keys`, the table the loggers log from, so a view cannot chart
a key under another name than the runs log it; :func:`check_keys` compares a view's panels with what a run logged
(read back with ``wandb leet inspect``: :func:`wandb_io.logged_keys`), :func:`uncharted` the other way round.
Building touches no server: only :mod:`wandb_io`'s ``save_view`` / ``save_report`` do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from .. import languages
from ..errors import HarnessError
from ..tracking import Key, Keys, analysis_figure_key, run_identity, shared_by_counts, transition_pairs

if TYPE_CHECKING:
    from .sections import Section

RUNS, ANALYSIS = "runs", "analysis"  # the report's two run sets: the runs studied, the analysis run of its tables

# One colour per language, in the order of languages.LANGUAGES (matplotlib's tab10, then two more); a run aligned on
# several languages takes one of MIXED, by the order the view meets such runs in.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f", "#393b79")
MIXED = ("#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d")
LANG_COLORS = dict(zip(languages.LANGUAGES, PALETTE))

# The key families a view promises to chart: every key of these a run logged has a panel (:func:`uncharted`).
CHARTED: tuple[Key, ...] = (Keys.accuracy, Keys.specific, Keys.related, Keys.total, Keys.shared_by, Keys.transition,
                            Keys.transition_since_start, Keys.overlap_with_start, Keys.loss, Keys.reward_margins,
                            Keys.layers, Keys.layers_image, Keys.samples)


# wandb-workspaces imports wandb and pydantic models by the hundred (a second or more): only the commands that build
# views pay for it, not every import of the analysis package.
def _workspaces():
    import wandb_workspaces.workspaces as ws

    return ws


def _reports():
    import wandb_workspaces.reports.v2 as wr

    return wr


def _expr():
    from wandb_workspaces import expr

    return expr


# ---- what runs log -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunFacts:
    """What a view needs to know of one run: its W&B run, group, and the languages and method it logged."""

    label: str
    run_id: str | None
    group: str | None
    aligned: tuple[str, ...]
    eval_langs: tuple[str, ...]
    probe_langs: tuple[str, ...]
    method: str | None
    offline: bool = False  # logged offline only: on the server once `wandb sync` uploads it

    @classmethod
    def of(cls, config: Mapping[str, Any], label: str, run_id: str | None = None,
           offline: bool = False) -> "RunFacts":
        """From a run's composed config (``.hydra/config.yaml`` or the W&B run's config)."""
        run = config.get("run") or {}  # what the run itself recorded in its W&B config
        probe = languages.resolve(run.get("probe_langs") or config.get("probe_langs"))
        evaluated = languages.resolve(run.get("eval_langs") or config.get("eval_langs") or probe)
        spec = run.get("aligned_langs") or config.get("lang")
        aligned = languages.resolve(spec) if spec else ()
        method = (config.get("alignment") or {}).get("method")
        logger = config.get("logger") or {}
        preset = (config.get("model") or {}).get("preset")
        group = logger.get("group") or (run_identity(preset, method, aligned)["group"] if preset and method else None)
        return cls(label=label, run_id=run_id, group=group, aligned=aligned, eval_langs=evaluated,
                   probe_langs=probe, method=method, offline=offline)


@dataclass(frozen=True)
class Layout:
    """What the panels chart: the languages evaluated and probed, the aligned ones, and whether the Trainer logs
    reward statistics (a DPO-family method)."""

    eval_langs: tuple[str, ...]
    probe_langs: tuple[str, ...]
    aligned: tuple[str, ...] = ()
    rewards: bool = True

    @property
    def langs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self.eval_langs, *self.probe_langs]))

    @classmethod
    def of(cls, runs: Sequence[RunFacts], langs: Sequence[str] | None = None) -> "Layout":
        """The union of what ``runs`` logged (the paper's ten languages when there are no runs); ``langs`` keeps
        those languages only, each of which some run must have logged (a one-line error otherwise)."""
        if not runs:
            every = tuple(langs) if langs else languages.PAPER_LANGS
            return cls(eval_langs=every, probe_langs=every)
        evaluated = tuple(dict.fromkeys(c for r in runs for c in r.eval_langs))
        probed = tuple(dict.fromkeys(c for r in runs for c in r.probe_langs))
        if langs:
            missing = [c for c in langs if c not in evaluated and c not in probed]
            if missing:
                raise HarnessError(f"langs: the runs logged no {', '.join(missing)} (they evaluated "
                                   f"{', '.join(evaluated)}): give some of those, or langs=null for all")
            evaluated = tuple(c for c in langs if c in evaluated)
            probed = tuple(c for c in langs if c in probed)
        return cls(eval_langs=evaluated, probe_langs=probed,
                   aligned=tuple(dict.fromkeys(c for r in runs for c in r.aligned)),
                   rewards=any(r.method is None or trains_with_rewards(r.method) for r in runs))


def trains_with_rewards(method: str) -> bool:
    """Whether alignment ``method`` trains with TRL's DPO trainer, which logs reward statistics."""
    from ..alignment import TRAINERS

    return TRAINERS.get(method) == "dpo"


def run_colors(runs: Sequence[RunFacts]) -> dict[str, str]:
    """{run id: colour} by the language(s) each run was aligned on."""
    mixed: dict[tuple[str, ...], str] = {}
    out = {}
    for run in runs:
        if run.run_id is None or not run.aligned:
            continue
        if len(run.aligned) == 1:
            out[run.run_id] = LANG_COLORS[run.aligned[0]]
        else:
            out[run.run_id] = mixed.setdefault(run.aligned, MIXED[len(mixed) % len(MIXED)])
    return out


# ---- panels --------------------------------------------------------------------------------------------------------
def _line(title: str, keys: Iterable[str], y_title: str | None = None):
    return _reports().LinePlot(title=title, x=Keys.step(), y=list(keys), title_x="step", title_y=y_title)


def _lang_title(code: str) -> str:
    return f"{code} ({languages.get(code).name})"


def training_panels(layout: Layout) -> list[Any]:
    panels = [_line("training loss", [Keys.loss()], "loss")]
    if layout.rewards:
        panels.append(_line("DPO reward margin (chosen - rejected)", [Keys.reward_margins()], "margin"))
    if layout.eval_langs:
        panels.append(_line("accuracy, average over the evaluated languages", [Keys.accuracy(lang="avg")],
                            "accuracy"))
    return panels


def language_panels(code: str, layout: Layout) -> list[Any]:
    """A language's accuracy beside its specific and related neuron counts (and its neurons' overlap with step 0)."""
    panels = []
    if code in layout.eval_langs:
        panels.append(_line(f"{code}: accuracy", [Keys.accuracy(lang=code)], "accuracy"))
    if code in layout.probe_langs:
        panels += [_line(f"{code}: specific neurons", [Keys.specific(lang=code)], "neurons"),
                   _line(f"{code}: related neurons", [Keys.related(lang=code)], "neurons"),
                   _line(f"{code}: overlap of its neurons with step 0", [Keys.overlap_with_start(lang=code)],
                         "Jaccard")]
    return panels


def type_total_panels() -> list[Any]:
    from ..neurons.identify import TYPES

    return [_line(f"{kind} neurons, in all", [Keys.total(kind=kind)], "neurons") for kind in TYPES]


def shared_by_panel(layout: Layout):
    return _line("selected neurons shared by N languages",
                 [Keys.shared_by(n=n) for n in shared_by_counts(len(layout.probe_langs))], "neurons")


def transition_panels(key: Key, since: str) -> list[Any]:
    """One panel per type a neuron leaves: how many changed to each other type ``since``."""
    pairs = list(transition_pairs())
    sources = list(dict.fromkeys(src for src, _ in pairs))
    return [_line(f"neurons of type {src} that changed type since {since}",
                  [key(src=s, dst=d) for s, d in pairs if s == src], "neurons") for src in sources]


def latest_checkpoint_panels() -> list[Any]:
    """The per-layer figure and the tables of the latest checkpoint (the runs' summary holds the last logged)."""
    wr = _reports()
    return [wr.MediaBrowser(media_keys=[Keys.layers_image()], layout=wr.Layout(w=12, h=10)),
            wr.WeavePanelSummaryTable(table_name=Keys.layers(), layout=wr.Layout(w=12, h=10)),
            wr.WeavePanelSummaryTable(table_name=Keys.samples(), layout=wr.Layout(w=24, h=10))]


# ---- the workspace view --------------------------------------------------------------------------------------------
def workspace_view(entity: str, project: str, name: str, layout: Layout, runs: Sequence[RunFacts] = (),
                   group: str | None = None):
    """The project's workspace view ``name`` for this study (``wandb_workspaces.workspaces.Workspace``, not saved):
    a section per language, totals and shared-by-N, transitions, the latest checkpoint, training; every chart over
    ``train/global_step``; the runset filtered to ``group`` (all runs when None), grouped by W&B group and then by
    aligned language (config ``lang``), runs coloured by their aligned language."""
    ws, expr = _workspaces(), _expr()
    step = Keys.step()

    def section(title: str, panels: list[Any], is_open: bool = False):
        return ws.Section(name=title, panels=panels, is_open=is_open,
                          panel_settings=ws.SectionPanelSettings(x_axis=step),
                          layout_settings=ws.SectionLayoutSettings(columns=4 if len(panels) >= 4 else 3))

    aligned = set(layout.aligned)
    sections = [section("Training", training_panels(layout), is_open=True)]
    for code in layout.langs:
        title = _lang_title(code) + (", aligned" if code in aligned else "")
        sections.append(section(title, language_panels(code, layout), is_open=code in aligned))
    totals = type_total_panels() + ([shared_by_panel(layout)] if layout.probe_langs else [])
    sections += [section("Neuron totals and neurons shared by N languages", totals, is_open=True),
                 section("Transitions since the previous checkpoint", transition_panels(Keys.transition,
                                                                                        "the previous checkpoint")),
                 section("Transitions since step 0", transition_panels(Keys.transition_since_start, "step 0")),
                 section("Latest checkpoint: neurons per layer, generations", latest_checkpoint_panels())]
    groups = sorted({r.group for r in runs if r.group} | ({group} if group else set()))
    group_colors = {ws.GroupPath(g, r.aligned[0]): LANG_COLORS[r.aligned[0]] for g in groups for r in runs
                    if r.group == g and len(r.aligned) == 1}
    runset = ws.RunsetSettings(
        filters=expr.And(expr.Metric("Group") == group) if group else "",
        groupby=[expr.Metric("Group"), expr.Config("lang")],
        group_colors=group_colors,
        run_settings={run_id: ws.RunSettings(color=color) for run_id, color in run_colors(runs).items()},
    )
    return ws.Workspace(entity=entity, project=project, name=name, sections=sections,
                        settings=ws.WorkspaceSettings(x_axis=step, smoothing_type="none", max_runs=20),
                        runset_settings=runset)


def view_spec(workspace) -> dict[str, Any]:
    """The view as ``Workspace.save()`` sends it (the library's model, dumped to JSON values)."""
    return workspace._to_model().model_dump(mode="json", by_alias=True, exclude_none=True)


# ---- the report ----------------------------------------------------------------------------------------------------
def _section_panels(key: str, layout: Layout) -> list[Any]:
    """Charts of the logged metrics behind the figures of the HTML report's section ``key``."""
    wr = _reports()
    if key == "runs":
        return [wr.RunComparer(diff_only="split", layout=wr.Layout(w=24, h=10))]
    if key == "counts":
        return [*type_total_panels(),
                _line("accuracy, average", [Keys.accuracy(lang="avg")], "accuracy"),
                _line("specific neurons per language", [Keys.specific(lang=c) for c in layout.probe_langs], "neurons"),
                _line("related neurons per language", [Keys.related(lang=c) for c in layout.probe_langs], "neurons"),
                _line("accuracy per language", [Keys.accuracy(lang=c) for c in layout.eval_langs], "accuracy")]
    if key == "stages":
        return latest_checkpoint_panels()[:2]
    if key == "change":
        return [shared_by_panel(layout), *transition_panels(Keys.transition_since_start, "step 0")]
    if key == "overlap":
        return [_line("overlap of each language's neurons with step 0",
                      [Keys.overlap_with_start(lang=c) for c in layout.probe_langs], "Jaccard")]
    if key == "spontaneous":
        trained = [c for c in layout.eval_langs if c in layout.aligned]
        untrained = [c for c in layout.eval_langs if c not in layout.aligned]
        panels = [_line(f"{what} languages: accuracy", [Keys.accuracy(lang=c) for c in langs], "accuracy")
                  for what, langs in (("trained", trained), ("untrained", untrained)) if langs]
        for kind, key_of in (("specific", Keys.specific), ("related", Keys.related)):
            panels += [_line(f"{what} languages: {kind} neurons", [key_of(lang=c) for c in langs], "neurons")
                       for what, langs in (("trained", trained), ("untrained", untrained))
                       if langs and set(langs) <= set(layout.probe_langs)]
        return panels
    return []


def study_report(entity: str, project: str, title: str, sections: Sequence["Section"], runs: Sequence[RunFacts],
                 layout: Layout, analysis_run: str | None = None, description: str = ""):
    """The HTML report's content as a W&B report (``wandb_workspaces.reports.v2.Report``, not saved): per section its
    text, a panel grid charting the runs' logged metrics behind its figures, and a grid of its tables (W&B tables)
    and figures as the analysis run ``analysis_run`` logged them (``analysis/<name>``; None: not logged yet, the
    grid selects the analysis run named ``title``)."""
    wr, expr = _reports(), _expr()
    ids = [r.run_id for r in runs if r.run_id]
    colors = run_colors(runs)

    def studied():
        return wr.Runset(entity=entity, project=project, name=RUNS, filters=expr.And(expr.Metric("ID").isin(ids)),
                         run_settings={i: wr.RunSettings(color=c) for i, c in colors.items()})

    def analysis():
        chosen = (expr.And(expr.Metric("ID") == analysis_run) if analysis_run else
                  expr.And(expr.Metric("JobType") == "analysis", expr.Metric("Name") == title))
        return wr.Runset(entity=entity, project=project, name=ANALYSIS, filters=chosen)

    table_names = [t.name for s in sections for t in s.tables]
    blocks: list[Any] = [wr.TableOfContents()]
    for s in sections:
        blocks.append(wr.H2(s.title))
        if s.intro:
            blocks.append(wr.P(s.intro))
        if s.notes:
            blocks.append(wr.UnorderedList(items=list(s.notes)))
        panels = _section_panels(s.key, layout) if ids else []
        if panels:
            blocks.append(wr.PanelGrid(runsets=[studied()], panels=panels))
        results = [wr.WeavePanelSummaryTable(table_name=Keys.analysis(name=t.name), layout=wr.Layout(w=24, h=10))
                   for t in s.tables]
        if s.figures:
            figures = [analysis_figure_key(f.name, table_names) for f in s.figures]
            results.append(wr.MediaBrowser(media_keys=figures, layout=wr.Layout(w=24, h=14)))
        if results:
            blocks.append(wr.PanelGrid(runsets=[analysis()], panels=results))
    return wr.Report(entity=entity, project=project, title=title[:128], description=description, blocks=blocks,
                     width="fluid")


def load_view(path: str | Path) -> Any:
    """A ``workspace.json`` (:func:`view_spec`) read back as the library's ``Workspace``, with its own loader (the
    one ``Workspace.from_url`` uses)."""
    from wandb_workspaces.workspaces import internal

    return _workspaces().Workspace._from_model(internal.View.model_validate(json.loads(Path(path).read_text())))


def load_report(path: str | Path) -> Any:
    """A ``wandb_report.json`` (:func:`report_spec`) read back as the library's ``Report``, with its own loader."""
    from wandb_workspaces.reports.v2 import internal

    spec = internal.ReportViewspec.model_validate(json.loads(Path(path).read_text()))
    return _reports().Report._from_model(spec)


def report_spec(report) -> dict[str, Any]:
    """The report as ``Report.save()`` sends it, built without the server: the library looks a run set's project id
    up on the server when it builds a run set, so run sets are built without their project and given it by name
    (the id is the server's)."""
    wr = _reports()
    runsets = [rs for block in report.blocks if isinstance(block, wr.PanelGrid) for rs in block.runsets]
    saved = [(rs, rs.entity, rs.project) for rs in runsets]
    try:
        for rs, _, _ in saved:
            rs.entity, rs.project = "", ""
        model = report._to_model()
    finally:
        for rs, entity, project in saved:
            rs.entity, rs.project = entity, project
    spec = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    grids = [b for b in spec["spec"]["blocks"] if b.get("type") == "panel-grid"]
    named = iter(saved)
    for grid in grids:
        for runset in grid["metadata"]["runSets"]:
            _, entity, project = next(named)
            runset["project"] = {"entityName": entity, "name": project}
    return spec


# ---- the keys a view charts, and the check -------------------------------------------------------------------------
@dataclass(frozen=True)
class PanelKey:
    """One key a panel charts: where (section and panel), the key, the kind of value it needs, the run set."""

    where: str
    key: str
    kind: str
    runset: str = RUNS


def _name(metric: Any) -> str:
    """A panel's metric as its key: a plain name, or a ``Metric`` (what the library reads back from JSON)."""
    return str(getattr(metric, "name", metric))


def _keys_of(panel: Any, where: str, runset: str) -> list[PanelKey]:
    wr = _reports()
    title = getattr(panel, "title", None) or type(panel).__name__
    at = f"{where} / {title}"
    if isinstance(panel, wr.LinePlot):
        x = None if panel.x is None else _name(panel.x)
        keys = [PanelKey(at, x, Keys.step.kind, runset)] if x not in (None, "Step") else []
        return keys + [PanelKey(at, _name(y), Keys.step.kind, runset) for y in panel.y]
    if isinstance(panel, wr.WeavePanelSummaryTable):
        return [PanelKey(at, panel.table_name, Keys.layers.kind, runset)]
    if isinstance(panel, wr.MediaBrowser):
        return [PanelKey(at, key, Keys.layers_image.kind, runset) for key in panel.media_keys or ()]
    return []  # a run comparer charts the runs' configs, no key


def panel_keys(view: Any) -> list[PanelKey]:
    """Every key the panels of ``view`` chart: a ``Workspace`` (its sections) or a ``Report`` (its panel grids)."""
    wr = _reports()
    out: list[PanelKey] = []
    if isinstance(view, wr.Report):
        heading = "report"
        for block in view.blocks:
            if isinstance(block, (wr.H1, wr.H2, wr.H3)):
                heading = str(block.text)
            if isinstance(block, wr.PanelGrid):
                runset = block.runsets[0].name if block.runsets else RUNS
                for panel in block.panels:
                    out += _keys_of(panel, heading, runset)
        return out
    for section in view.sections:
        for panel in section.panels:
            out += _keys_of(panel, section.name, RUNS)
    return out


def check_keys(panels: Sequence[PanelKey], logged: Mapping[str, str], runset: str = RUNS) -> list[str]:
    """One line for every key the panels of run set ``runset`` chart that ``logged`` ({key: kind}, e.g. of
    :func:`wandb_io.logged_keys`) lacks or holds as another kind of value; [] when every panel has its data."""
    problems = []
    for p in panels:
        if p.runset != runset:
            continue
        kind = logged.get(p.key)
        if kind is None:
            problems.append(f"{p.key} (panel {p.where}): not logged")
        elif kind != p.kind:
            problems.append(f"{p.key} (panel {p.where}): logged as {kind}, charted as {p.kind}")
    return list(dict.fromkeys(problems))


def uncharted(panels: Sequence[PanelKey], logged: Mapping[str, str],
              families: Sequence[Key] = CHARTED) -> list[str]:
    """The logged keys of the ``families`` a view promises to chart that none of its panels charts."""
    charted = {p.key for p in panels}
    return sorted(k for k in logged if k not in charted and any(f.matches(k) for f in families))
