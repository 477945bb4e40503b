"""The analysis subcommands behind ``analyze.py``: each takes its settings (:mod:`analysis.settings`, parsed from
conf/analyze/<name>.yaml and the command line), writes figures / tables / HTML into ``out`` when given, and returns a
JSON-able digest."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..errors import HarnessError
from ..neurons import Identification
from .progress import Bar, interactive, phase
from .report import check_wandb, finish
from .settings import (
    CompareSettings,
    CountsSettings,
    DeactivateSettings,
    OverlapSettings,
    ReportSettings,
    SpontaneousSettings,
    StagesSettings,
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
from .sources import Run, load_run, load_runs


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


def report(cfg: ReportSettings) -> dict[str, Any]:
    """Every analysis on ``runs``: counts, stages, before -> after, overlaps, spontaneous alignment (and
    deactivation when ``deactivation.enabled``), as PNGs, CSVs and one HTML page."""
    job = _start("report", cfg)
    runs = job.runs
    step, before, after = _checked_steps(runs, cfg.step, cfg.before, cfg.after)
    deactivation = cfg.deactivation
    deactivation_step = step if deactivation.step is None else deactivation.step
    _identify_all("report", runs)
    sections = []
    for what, build in (("counts", lambda: counts_section(runs)), ("stages", lambda: stages_section(runs, step)),
                        ("change", lambda: change_section(run_pairs(runs, before, after))),
                        ("overlap", lambda: overlap_section(runs)),
                        ("spontaneous", lambda: spontaneous_section(runs, before, after))):
        with phase(f"report: {what}"):
            sections.append(build())
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
