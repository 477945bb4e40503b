"""The analysis subcommands behind ``analyze.py``: each takes its composed config (a plain dict, see
conf/analyze/<name>.yaml), writes figures / tables / HTML into ``out`` when given, and returns a JSON-able digest."""

from __future__ import annotations

import time
from typing import Any, Mapping

from ..errors import HarnessError
from ..neurons import Identification
from .progress import Bar, interactive, phase
from .report import check_wandb, finish
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
from .sources import IdentifySettings, Run, load_run, load_runs


def _step(value: Any) -> int | str:
    if value in ("first", "last"):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        raise HarnessError(f"step {value!r}: use first, last or a step number") from None


def _checked_steps(runs: list[Run], cfg: Mapping[str, Any], defaults: Mapping[str, str]) -> list[int | str]:
    """The steps ``cfg`` names (``defaults``: key -> default), each checked against every run: a step a run lacks
    is a typo, said in one line before any work."""
    steps = [_step(cfg.get(key, default)) for key, default in defaults.items()]
    for run in runs:
        for which in steps:
            run.checkpoint(which)
    return steps


def _runs(cfg: Mapping[str, Any]) -> list[Run]:
    specs = cfg.get("runs")
    if isinstance(specs, str):
        specs = [specs]
    return load_runs(specs or [], IdentifySettings.from_cfg(cfg), labels=cfg.get("labels"),
                     reidentify=bool(cfg.get("reidentify")), cache=cfg.get("cache"), trained=cfg.get("trained"))


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


def _passes(runs: list[Run], step: Any, options: Mapping[str, Any]) -> str:
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


def _deactivation_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    langs = cfg.get("langs")
    return {"model": cfg.get("model"), "adapter": cfg.get("adapter"), "data": cfg.get("data"), "n": cfg.get("n"),
            "modes": tuple(cfg.get("modes") or ("specific", "specific+related", "all")),
            "deactivated": None if langs is None else tuple([langs] if isinstance(langs, str) else langs),
            "accuracy": bool(cfg.get("accuracy")), "batch_size": int(cfg.get("batch_size") or 8),
            "max_new_tokens": int(cfg.get("max_new_tokens") or 64)}


def report(cfg: dict[str, Any]) -> dict[str, Any]:
    """Every analysis on ``runs``: counts, stages, before -> after, overlaps, spontaneous alignment (and
    deactivation when ``deactivation.enabled``), as PNGs, CSVs and one HTML page."""
    started = time.perf_counter()
    runs = _runs(cfg)
    mode = check_wandb(cfg.get("wandb"), runs, cfg.get("out"))
    step, before, after = _checked_steps(runs, cfg, {"step": "last", "before": "first", "after": "last"})
    deactivation = dict(cfg.get("deactivation") or {})
    deactivation_step = _step(deactivation.get("step") or step)
    _identify_all("report", runs)
    sections = []
    for what, build in (("counts", lambda: counts_section(runs)), ("stages", lambda: stages_section(runs, step)),
                        ("change", lambda: change_section(run_pairs(runs, before, after))),
                        ("overlap", lambda: overlap_section(runs)),
                        ("spontaneous", lambda: spontaneous_section(runs, before, after))):
        with phase(f"report: {what}"):
            sections.append(build())
    if deactivation.get("enabled"):
        options = _deactivation_options(deactivation)
        with phase(f"report: deactivation{_passes(runs, deactivation_step, options)}", chatty=interactive()):
            sections.append(deactivation_section(runs, deactivation_step, **options))
    # last, so that it holds the notes of checkpoints identified along the way
    sections.insert(0, overview_section(runs))
    result = finish(sections, runs, cfg, "report", started, mode)
    result["stages"] = {label: d["stages"] for label, d in sections[2].data.items()}
    return result


def counts(cfg: dict[str, Any]) -> dict[str, Any]:
    """(a) neuron counts per type and accuracy over steps."""
    started = time.perf_counter()
    runs = _runs(cfg)
    mode = check_wandb(cfg.get("wandb"), runs, cfg.get("out"))
    _identify_all("counts", runs)
    with phase("counts: neuron counts over steps"):
        section = counts_section(runs)
    result = finish([overview_section(runs), section], runs, cfg, "counts", started, mode)
    result["counts"] = section.data
    return result


def stages(cfg: dict[str, Any]) -> dict[str, Any]:
    """(b) the layer distribution and the four stages at one checkpoint of each source."""
    started = time.perf_counter()
    runs = _runs(cfg)
    mode = check_wandb(cfg.get("wandb"), runs, cfg.get("out"))
    (step,) = _checked_steps(runs, cfg, {"step": "last"})
    with phase("stages: layer distribution and stages"):
        section = stages_section(runs, step, bool(cfg.get("per_language", True)))
    result = finish([section], runs, cfg, "stages", started, mode)
    result["stages"] = section.data
    if cfg.get("per_language", True) and section.tables:
        table = section.tables[0]
        result["per_language"] = {f"{r['run']}|{r['lang']}": " / ".join(str(r[c]) for c in table.columns[3:7])
                                  for r in table.records() if r["lang"] != "all"}
    return result


def compare(cfg: dict[str, Any]) -> dict[str, Any]:
    """(c) before -> after: ``before`` (its first checkpoint unless ``@step``) against ``after`` (its last)."""
    started = time.perf_counter()
    settings = IdentifySettings.from_cfg(cfg)
    options = {"reidentify": bool(cfg.get("reidentify")), "cache": cfg.get("cache")}
    before_run = load_run(cfg["before"], settings, **options)
    after_run = load_run(cfg["after"], settings, **options)
    runs = [before_run, after_run]
    mode = check_wandb(cfg.get("wandb"), runs, cfg.get("out"))
    b, a = before_run.checkpoint("first"), after_run.checkpoint("last")
    label = (before_run.label if before_run.source.split("@")[0] == after_run.source.split("@")[0]
             else f"{before_run.label} -> {after_run.label}")
    with phase("compare: change"):
        change = change_section([(label, b, a)])
    with phase("compare: overlap"):
        overlap = overlap_section([], extra=[(f"before: {before_run.label}@{b.step}", b.ident),
                                             (f"after: {after_run.label}@{a.step}", a.ident)])
    result = finish([change, overlap], runs, cfg, "compare", started, mode)
    result["change"] = change.data.get(label, {})
    pairs = overlap.tables[0].records() if overlap.tables else []
    result["overlap"] = {r["lang"]: r["jaccard"] for r in pairs}
    return result


def overlap(cfg: dict[str, Any]) -> dict[str, Any]:
    """(d) overlap of each language's neuron set across checkpoints and between runs."""
    started = time.perf_counter()
    runs = _runs(cfg)
    mode = check_wandb(cfg.get("wandb"), runs, cfg.get("out"))
    _identify_all("overlap", runs)
    with phase("overlap: overlaps"):
        section = overlap_section(runs)
    result = finish([overview_section(runs), section], runs, cfg, "overlap", started, mode)
    steps = next((t for t in section.tables if t.name == "overlap_steps"), None)
    if steps is not None:
        last = {}
        for r in steps.records():
            last.setdefault(r["run"], {})[r["lang"]] = r["vs first"]  # the last step's value wins
        result["last_vs_first"] = last
    result.update({f"between_runs_{k}": v for k, v in section.data.items()})
    return result


def spontaneous(cfg: dict[str, Any]) -> dict[str, Any]:
    """(e) trained vs untrained languages: change of specific / related neurons and accuracy."""
    started = time.perf_counter()
    runs = _runs(cfg)
    mode = check_wandb(cfg.get("wandb"), runs, cfg.get("out"))
    before, after = _checked_steps(runs, cfg, {"before": "first", "after": "last"})
    with phase("spontaneous: trained vs untrained languages"):
        section = spontaneous_section(runs, before, after)
    result = finish([section], runs, cfg, "spontaneous", started, mode)
    result["spontaneous"] = section.data
    return result


def deactivate(cfg: dict[str, Any]) -> dict[str, Any]:
    """(f) deactivation heatmaps for one checkpoint of ``source``."""
    started = time.perf_counter()
    run = load_run(cfg["source"], IdentifySettings.from_cfg(cfg), reidentify=bool(cfg.get("reidentify")),
                   cache=cfg.get("cache"))
    mode = check_wandb(cfg.get("wandb"), [run], cfg.get("out"))
    (step,) = _checked_steps([run], cfg, {"step": "last"})
    options = _deactivation_options(cfg)
    with phase(f"deactivate: deactivation{_passes([run], step, options)}", chatty=interactive()):
        section = deactivation_section([run], step, **options)
    if run.label not in section.data:
        raise HarnessError(section.notes[-1] if section.notes else f"{run.label}: deactivation failed")
    result = finish([section], [run], cfg, "deactivate", started, mode)
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
