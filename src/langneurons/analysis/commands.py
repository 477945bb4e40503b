"""The analysis subcommands behind ``analyze.py``: each takes its settings (:mod:`analysis.settings`, parsed from
conf/analyze/<name>.yaml and the command line), writes figures / tables / HTML into ``out`` when given, and returns a
JSON-able digest."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import tracking
from ..errors import HarnessError
from ..files import atomic_write
from ..neurons import Identification
from . import wandb_io, wandb_views
from .progress import Bar, interactive, note, phase
from .report import check_wandb, finish, write_outputs
from .settings import (
    CompareSettings,
    CountsSettings,
    DeactivateSettings,
    OverlapSettings,
    ReportSettings,
    SpontaneousSettings,
    StagesSettings,
    WandbReportSettings,
    WorkspaceSettings,
)
from .sections import (
    change_section,
    counts_section,
    deactivation_section,
    overlap_section,
    overview_section,
    run_pairs,
    spontaneous_section,
    stages_section,
)
from .sources import Run, has_config, load_run, load_runs, read_config


def _checked_steps(runs: list[Run], *steps: int | str) -> list[int | str]:
    """``steps``, each checked against every run: a step a run lacks is a typo, said in one line before any work."""
    for run in runs:
        for which in steps:
            run.checkpoint(which)
    return list(steps)


def _runs(settings: Any) -> list[Run]:
    return load_runs(list(settings.runs), settings.identify_settings(), labels=settings.labels,
                     reidentify=settings.reidentify, cache=settings.cache, trained=getattr(settings, "trained", None))


@dataclass
class _Command:
    """One subcommand at work: its settings, its sources and the W&B mode (checked before any work), its clock."""

    name: str
    cfg: Any
    runs: list[Run]
    mode: str
    started: float

    def finish(self, sections: Sequence[Any]) -> dict[str, Any]:
        """Write and log ``sections``; the command's JSON digest so far."""
        return finish(sections, self.runs, self.cfg, self.name, self.started, self.mode)


def _start(name: str, cfg: Any, load: Callable[[], list[Run]] | None = None) -> _Command:
    """Load the sources (``cfg.runs``, or ``load()``) and check ``wandb=`` against them."""
    started = time.perf_counter()
    runs = load() if load is not None else _runs(cfg)
    return _Command(name, cfg, runs, check_wandb(cfg.wandb, runs, cfg.out), started)


def _identify_all(name: str, runs: list[Run]) -> None:
    """Identify, up front and with a progress bar, every checkpoint that has no saved identification to load (or
    all of them with reidentify=true): a phase of its own, the slow one on a large model."""
    todo = [c for r in runs for c in r.checkpoints if c._ident is None and not c._no_ident
            and (c.reidentify or c.path is None or not Identification.is_saved(c.path))]
    if not todo:
        return
    # a bar on a terminal needs its own line; elsewhere the phase is one line (Bar's lines, if any, interrupt it)
    with phase(f"{name}: identification of {len(todo)} checkpoint{'s' * (len(todo) != 1)}", chatty=interactive()):
        bar = Bar(len(todo), "identification", "checkpoint")
        for ckpt in todo:
            bar.set_postfix_str(f"step {ckpt.step}")
            ckpt.ident  # noqa: B018 (computed and kept)
            bar.update()
        bar.close()


def _passes(runs: list[Run], step: Any, options: dict[str, Any]) -> str:
    """`` (31 passes)``: the model passes a deactivation makes (the intact model + every mode x language), or ""."""
    total = 0
    for run in runs:
        try:
            ident = run.checkpoint(step).ident
        except HarnessError:
            continue
        if ident is not None:
            total += 1 + len(options["modes"]) * len(options["deactivated"] or ident.langs)
    return f" ({total} passes)" if total else ""


def _report_sections(name: str, runs: list[Run], step: Any, before: Any, after: Any) -> list[Any]:
    """The report's analyses of ``runs`` (deactivation aside), each a section, in the page's order."""
    _identify_all(name, runs)
    sections = []
    for what, build in (("counts", lambda: counts_section(runs)), ("stages", lambda: stages_section(runs, step)),
                        ("change", lambda: change_section(run_pairs(runs, before, after))),
                        ("overlap", lambda: overlap_section(runs)),
                        ("spontaneous", lambda: spontaneous_section(runs, before, after))):
        with phase(f"{name}: {what}"):
            sections.append(build())
    return sections


def report(cfg: ReportSettings) -> dict[str, Any]:
    """Every analysis on ``runs``: counts, stages, before -> after, overlaps, spontaneous alignment (and
    deactivation when ``deactivation.enabled``), as PNGs, CSVs and one HTML page."""
    job = _start("report", cfg)
    runs = job.runs
    step, before, after = _checked_steps(runs, cfg.step, cfg.before, cfg.after)
    deactivation = cfg.deactivation
    deactivation_step = step if deactivation.step is None else deactivation.step
    sections = _report_sections("report", runs, step, before, after)
    if deactivation.enabled:
        options = deactivation.options()
        with phase(f"report: deactivation{_passes(runs, deactivation_step, options)}", chatty=interactive()):
            sections.append(deactivation_section(runs, deactivation_step, **options))
    # last, so that it holds the notes of checkpoints identified along the way
    sections.insert(0, overview_section(runs))
    result = job.finish(sections)
    result["stages"] = {label: d["stages"] for label, d in sections[2].data.items()}
    return result


def counts(cfg: CountsSettings) -> dict[str, Any]:
    """(a) neuron counts per type and accuracy over steps."""
    job = _start("counts", cfg)
    runs = job.runs
    _identify_all("counts", runs)
    with phase("counts: neuron counts over steps"):
        section = counts_section(runs)
    result = job.finish([overview_section(runs), section])
    result["counts"] = section.data
    return result


def stages(cfg: StagesSettings) -> dict[str, Any]:
    """(b) the layer distribution and the four stages at one checkpoint of each source."""
    job = _start("stages", cfg)
    runs = job.runs
    (step,) = _checked_steps(runs, cfg.step)
    with phase("stages: layer distribution and stages"):
        section = stages_section(runs, step, cfg.per_language)
    result = job.finish([section])
    result["stages"] = section.data
    if cfg.per_language and section.tables:
        table = section.tables[0]
        result["per_language"] = {f"{r['run']}|{r['lang']}": " / ".join(str(r[c]) for c in table.columns[3:7])
                                  for r in table.records() if r["lang"] != "all"}
    return result


def compare(cfg: CompareSettings) -> dict[str, Any]:
    """(c) before -> after: ``before`` (its first checkpoint unless ``@step``) against ``after`` (its last)."""
    settings = cfg.identify_settings()
    options = {"reidentify": cfg.reidentify, "cache": cfg.cache}
    job = _start("compare", cfg, lambda: [load_run(cfg.before, settings, **options),
                                         load_run(cfg.after, settings, **options)])
    before_run, after_run = job.runs
    b, a = before_run.checkpoint("first"), after_run.checkpoint("last")
    label = (before_run.label if before_run.source.split("@")[0] == after_run.source.split("@")[0]
             else f"{before_run.label} -> {after_run.label}")
    with phase("compare: change"):
        change = change_section([(label, b, a)])
    with phase("compare: overlap"):
        overlap = overlap_section([], extra=[(f"before: {before_run.label}@{b.step}", b.ident),
                                             (f"after: {after_run.label}@{a.step}", a.ident)])
    result = job.finish([change, overlap])
    result["change"] = change.data.get(label, {})
    pairs = overlap.tables[0].records() if overlap.tables else []
    result["overlap"] = {r["lang"]: r["jaccard"] for r in pairs}
    return result


def overlap(cfg: OverlapSettings) -> dict[str, Any]:
    """(d) overlap of each language's neuron set across checkpoints and between runs."""
    job = _start("overlap", cfg)
    runs = job.runs
    _identify_all("overlap", runs)
    with phase("overlap: overlaps"):
        section = overlap_section(runs)
    result = job.finish([overview_section(runs), section])
    steps = next((t for t in section.tables if t.name == "overlap_steps"), None)
    if steps is not None:
        last = {}
        for r in steps.records():
            last.setdefault(r["run"], {})[r["lang"]] = r["vs first"]  # the last step's value wins
        result["last_vs_first"] = last
    result.update({f"between_runs_{k}": v for k, v in section.data.items()})
    return result


def spontaneous(cfg: SpontaneousSettings) -> dict[str, Any]:
    """(e) trained vs untrained languages: change of specific / related neurons and accuracy."""
    job = _start("spontaneous", cfg)
    runs = job.runs
    before, after = _checked_steps(runs, cfg.before, cfg.after)
    with phase("spontaneous: trained vs untrained languages"):
        section = spontaneous_section(runs, before, after)
    result = job.finish([section])
    result["spontaneous"] = section.data
    return result


def deactivate(cfg: DeactivateSettings) -> dict[str, Any]:
    """(f) deactivation heatmaps for one checkpoint of ``source``."""
    job = _start("deactivate", cfg, lambda: [load_run(cfg.source, cfg.identify_settings(), reidentify=cfg.reidentify,
                                                      cache=cfg.cache)])
    (run,) = job.runs
    (step,) = _checked_steps([run], cfg.step)
    options = cfg.options()
    with phase(f"deactivate: deactivation{_passes([run], step, options)}", chatty=interactive()):
        section = deactivation_section([run], step, **options)
    if run.label not in section.data:
        raise HarnessError(section.notes[-1] if section.notes else f"{run.label}: deactivation failed")
    result = job.finish([section])
    data = section.data[run.label]
    digest = {}
    for m in data["modes"]:
        own = [data["ppl"][m][a][a] / data["baseline"][a] for a in data["deactivated"] if a in data["langs"]]
        other = [data["ppl"][m][a][b] / data["baseline"][b] for a in data["deactivated"] for b in data["langs"]
                 if b != a]
        digest[m] = {"ratio_own_language": sum(own) / len(own) if own else None,
                     "ratio_other_languages": sum(other) / len(other) if other else None}
    result.update(step=data["step"], baseline=data["baseline"], deactivation=digest)
    return result


# ---- saved W&B views ------------------------------------------------------------------------------------------------
def _write_json(out: str, name: str, spec: dict[str, Any]) -> str:
    path = Path(out) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(spec, indent=1, ensure_ascii=False) + "\n").encode())
    return str(path)


def _local_facts(spec: str) -> tuple[wandb_views.RunFacts, Path]:
    """What the views need of a local run dir (its config and its W&B run), before anything is built."""
    path = Path(spec)
    if not path.is_dir() or not has_config(path):
        raise HarnessError(f"runs: {spec} is not a run dir of this harness (no .hydra/config.yaml or run.json in it): "
                           "give runs=[outputs/<date>/<time>,...]")
    config = read_config(path)
    ref = wandb_io.local_ref(path, config)
    if ref is None:
        raise HarnessError(f"runs: {spec} logged no W&B run (logger=none): a view has nothing to show of it")
    return wandb_views.RunFacts.of(config, spec, ref.run_id, offline=wandb_io.is_offline_only(ref)), path


def _unlogged(label: str, panels: Sequence[wandb_views.PanelKey], logged: dict[str, str]) -> list[str]:
    """Notes for the panels whose keys run ``label`` did not log (the first few, by name)."""
    problems = wandb_views.check_keys(panels, logged)
    if not problems:
        return []
    shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    return [f"{label} did not log {len(problems)} key{'s' * (len(problems) != 1)} the view charts: {shown}"]


def _saved(result: dict[str, Any], online: bool, unsaved: str, notes: list[str], started: float,
           quiet: Sequence[str] = ()) -> dict[str, Any]:
    """The digest of a view or report command: ``notes`` said (one ``note:`` line each; offline, that ``unsaved``
    and where its JSON is) and kept with the ``quiet`` ones (the analyses' own notes), whether it was saved, the
    seconds it took."""
    if not online:
        notes = [*notes, f"W&B is offline here: {unsaved}, its JSON is {result['json']} (wandb login, then run this "
                         "again to save it)"]
    for text in notes:
        note(text)
    result["saved"] = online
    if notes or quiet:
        result["notes"] = [*notes, *quiet]
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def workspace(cfg: WorkspaceSettings) -> dict[str, Any]:
    """The saved workspace view of ``entity/project`` for this study (:func:`wandb_views.workspace_view`): saved over
    the project's view of the same name (or as a new one) when W&B is online, recorded for the end of a run to print
    (``tracking.record_view``); its JSON written to ``out``, which offline is all it makes."""
    started = time.perf_counter()
    online = wandb_io.can_save("the view", cfg.out)  # before any work: no login and no out= is one line
    local = [_local_facts(spec) for spec in cfg.runs or ()]
    facts = [f for f, _ in local]
    if not local and online:
        with phase(f"workspace: the runs of {cfg.entity}/{cfg.project}"):
            found = wandb_io.project_runs(cfg.entity, cfg.project, cfg.group, cfg.timeout)
        facts = [wandb_views.RunFacts.of(config, name, run_id) for config, run_id, name in found]
    layout = wandb_views.Layout.of(facts, cfg.langs)
    view = wandb_views.workspace_view(cfg.entity, cfg.project, cfg.name, layout, facts, cfg.group)
    panels = wandb_views.panel_keys(view)
    notes = []
    for run, path in local:
        if cfg.group and run.group != cfg.group:
            notes.append(f"{run.label} is in W&B group {run.group}, not {cfg.group}: the view's filter hides it")
        with phase(f"workspace: checking the panels against what {run.label} logged"):
            notes += _unlogged(run.label, panels, wandb_io.logged_keys(path))
    result: dict[str, Any] = {"view": cfg.name, "entity": cfg.entity, "project": cfg.project, "group": cfg.group,
                              "langs": list(layout.langs), "runs": len(facts), "sections": len(view.sections),
                              "panels": sum(len(s.panels) for s in view.sections)}
    if cfg.out:
        result["json"] = _write_json(cfg.out, "workspace.json", wandb_views.view_spec(view))
    if online:
        with phase(f"workspace: saving the view {cfg.name!r} to {cfg.entity}/{cfg.project}"):
            result["url"] = wandb_io.save_view(view, cfg.timeout)
        tracking.record_view(cfg.entity, cfg.project, cfg.name, result["url"])
    return _saved(result, online, "the view is not saved", notes, started)


def wandb_report(cfg: WandbReportSettings) -> dict[str, Any]:
    """The report's analyses of ``runs`` published as a W&B report (:func:`wandb_views.study_report`): its tables and
    figures logged as a new analysis run of ``entity/project``, the report saved, when W&B is online; with ``out``,
    report.html, its figures and tables and ``wandb_report.json`` there, which offline is all it makes."""
    started = time.perf_counter()
    online = wandb_io.can_save("the report", cfg.out)  # before any work
    runs = _runs(cfg)
    step, before, after = _checked_steps(runs, cfg.step, cfg.before, cfg.after)
    sections = _report_sections("wandb-report", runs, step, before, after)
    sections.insert(0, overview_section(runs))  # last, so that it holds the notes of checkpoints identified
    title = cfg.title or "langneurons report: " + ", ".join(r.label for r in runs)
    facts, notes = [], []
    for run in runs:
        if run.wandb is None:
            notes.append(f"{run.label}: no W&B run (a statistics folder, or logger=none): the report charts none of "
                         "its metrics")
            continue
        if wandb_io.is_offline_only(run.wandb):
            notes.append(f"{run.label} was logged offline: the report shows it once `wandb sync "
                         f"{run.wandb.folders[-1]}` uploads it")
        facts.append(wandb_views.RunFacts.of(run.config, run.label, run.wandb.run_id,
                                             offline=wandb_io.is_offline_only(run.wandb)))
    layout = wandb_views.Layout.of(facts) if facts else wandb_views.Layout((), ())
    if cfg.trained is not None:
        layout = wandb_views.Layout(layout.eval_langs, layout.probe_langs, tuple(cfg.trained), layout.rewards)
    out = Path(cfg.out) if cfg.out else Path(tempfile.mkdtemp(prefix="wandb-report-"))  # the figures to log
    try:
        return _publish(cfg, runs, sections, title, facts, layout, notes, out, online, started)
    finally:
        if not cfg.out:
            shutil.rmtree(out, ignore_errors=True)


def _publish(cfg: WandbReportSettings, runs: list[Run], sections: list[Any], title: str,
             facts: list[wandb_views.RunFacts], layout: wandb_views.Layout, notes: list[str], out: Path, online: bool,
             started: float) -> dict[str, Any]:
    meta = {"sources": ", ".join(r.source for r in runs)}
    with phase(f"wandb-report: writing the figures, tables and report.html to {out}"):
        written = write_outputs(sections, out, title, meta)
    result: dict[str, Any] = {"title": title, "entity": cfg.entity, "project": cfg.project,
                              "runs": [r.label for r in runs], "sections": len(sections),
                              "figures": len(written["figures"]), "tables": len(written["tables"])}
    analysis_run = None
    if online:
        tables = [t for s in sections for t in s.tables]
        with phase(f"wandb-report: logging the figures and tables to {cfg.entity}/{cfg.project}"):
            logged = wandb_io.bounded("logging the analysis run", lambda: wandb_io.log_new_run(
                list(written["figures"]), tables, out, {"analysis": "wandb-report", **cfg.dump()}, cfg.project,
                cfg.entity, title, timeout=cfg.timeout), cfg.timeout)
        analysis_run = logged["run_id"]
        result["analysis_run"] = analysis_run
    report_obj = wandb_views.study_report(cfg.entity, cfg.project, title, sections, facts, layout, analysis_run,
                                          description=meta["sources"])
    if cfg.out:
        result.update(out=str(out), html=written["html"],
                      json=_write_json(cfg.out, "wandb_report.json", wandb_views.report_spec(report_obj)))
    if online:
        with phase(f"wandb-report: saving the report to {cfg.entity}/{cfg.project}"):
            result["url"] = wandb_io.save_report(report_obj, cfg.timeout)
    return _saved(result, online, "the report is not published", notes, started,
                  [n for s in sections for n in s.notes])
