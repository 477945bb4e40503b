"""Writing analysis results: PNG figures, CSV tables, one self-contained HTML report, optionally W&B.

The HTML file needs nothing beside it: images are embedded as base64 PNG, tables inline, the style in the page, no
script and no external link, so it opens offline and can be mailed or attached as it is.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import HarnessError
from ..files import atomic_write
from . import figures as figs
from . import wandb_io
from .progress import phase
from .sections import Section
from .sources import Run

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
h4 { margin: 1em 0 .3em; }
nav a { margin-right: 1em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #555; }
table { border-collapse: collapse; font-size: .8em; margin-bottom: .5em; }
th, td { border: 1px solid #ddd; padding: 2px 6px; } th { background: #f3f3f3; } td.num { text-align: right; }
.note, .meta { color: #666; font-size: .85em; }
ul.notes { color: #a33; font-size: .85em; }
details { margin: .5em 0; }
"""


def png_bytes(fig, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def render_html(sections: Sequence[Section], images: Mapping[str, bytes], title: str, meta: Mapping[str, Any]) -> str:
    """The report page: a section per analysis, figures embedded from ``images`` (figure name -> PNG bytes)."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{esc(title)}</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>{esc(title)}</h1>",
             '<p class="meta">' + " &middot; ".join(f"{esc(str(k))}: {esc(str(v))}" for k, v in meta.items()) + "</p>",
             "<nav>" + "".join(f'<a href="#{esc(s.key)}">{esc(s.title)}</a>' for s in sections) + "</nav>"]
    for s in sections:
        parts.append(f'<section id="{esc(s.key)}"><h2>{esc(s.title)}</h2>')
        if s.intro:
            parts.append(f"<p>{esc(s.intro)}</p>")
        if s.notes:
            parts.append('<ul class="notes">' + "".join(f"<li>{esc(n)}</li>" for n in s.notes) + "</ul>")
        if not s.figures and not s.tables and not s.notes:
            parts.append('<p class="note">nothing to show for these sources</p>')
        for item in s.figures:
            data = base64.b64encode(images[item.name]).decode("ascii")
            parts.append(f'<figure id="figure-{esc(item.name)}"><img alt="{esc(item.name)}" '
                         f'src="data:image/png;base64,{data}"><figcaption>{esc(item.caption)}</figcaption></figure>')
        for i, table in enumerate(s.tables):
            # the first table of a section is its digest; longer ones fold away
            if i == 0 or len(table) <= 40:
                parts.append(table.to_html())
            else:
                parts.append(f"<details><summary>{esc(table.title)} ({len(table)} rows)</summary>{table.to_html()}"
                             "</details>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _unique_names(sections: Sequence[Section]) -> None:
    for kind in ("figures", "tables"):
        seen: dict[str, int] = {}
        for s in sections:
            for item in getattr(s, kind):
                n = seen.get(item.name, 0)
                seen[item.name] = n + 1
                if n:
                    item.name = f"{item.name}-{n + 1}"


def write_outputs(sections: Sequence[Section], out: str | Path, title: str,
                  meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``out/figures/<name>.png``, ``out/tables/<name>.csv``, ``out/report.html`` and ``out/summary.json``
    (each file atomically); close the figures. Returns the paths."""
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    _unique_names(sections)
    images: dict[str, bytes] = {}
    written_figs, written_tables = [], []
    for s in sections:
        for item in s.figures:
            images[item.name] = png_bytes(item.figure)
            figs.close(item.figure)
            path = out / "figures" / f"{item.name}.png"
            atomic_write(path, images[item.name])
            written_figs.append((item.name, path))
        for table in s.tables:
            path = out / "tables" / f"{table.name}.csv"
            atomic_write(path, table.to_csv().encode())
            written_tables.append(path)
    page = out / "report.html"
    atomic_write(page, render_html(sections, images, title, meta or {}).encode())
    summary = {s.key: s.data for s in sections if s.data}
    summary["notes"] = [n for s in sections for n in s.notes]
    atomic_write(out / "summary.json", json.dumps(summary, indent=1, ensure_ascii=False, default=str).encode())
    return {"html": str(page), "figures": written_figs, "tables": written_tables}


def check_wandb(mode: Any, runs: Sequence[Run], out: Any) -> str:
    """Validate ``wandb=`` before any work: logging needs ``out`` (the figures are logged from there), and
    ``resume`` a source with a W&B run."""
    mode = wandb_io.check_log_mode(mode)
    if mode != "off" and not out:
        raise HarnessError(f"wandb={mode} needs out=<folder> for the figures it logs")
    if mode == "resume" and not any(r.wandb for r in runs):
        raise HarnessError("wandb=resume: none of the sources has a W&B run to log onto (statistics folders and runs "
                           "made with logger=none have none): use wandb=new")
    return mode


def log_to_wandb(mode: str, sections: Sequence[Section], runs: Sequence[Run], written: Mapping[str, Any], out: Path,
                 config: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    """Log the written figures and the tables: as one new analysis run, or onto each source run (the figures about
    it and every table)."""
    if mode == "off":
        return []
    tables = [t for s in sections for t in s.tables]
    paths = dict(written["figures"])
    if mode == "new":
        first = next((r.config.get("logger") or {} for r in runs if r.config), {})
        return [wandb_io.log_new_run(list(paths.items()), tables, out, dict(config), first.get("project"),
                                     first.get("entity"), name)]
    results = []
    for run in runs:
        if run.wandb is None:
            results.append({"run": run.label, "skipped": "no W&B run"})
            continue
        about = [(item.name, paths[item.name]) for s in sections for item in s.figures
                 if not item.runs or run.label in item.runs]
        results.append({"run": run.label, **wandb_io.log_onto_run(run.wandb, run.path, about, tables,
                                                                  run.checkpoints[-1].step)})
    return results


def finish(sections: Sequence[Section], runs: Sequence[Run], cfg: Any, name: str, started: float,
           mode: str = "off") -> dict[str, Any]:
    """Write the sections where ``cfg.out`` says (nothing when null), log them as ``mode`` says, and return the
    paths and notes for the command's JSON line. ``cfg``: the subcommand's settings."""
    result: dict[str, Any] = {}
    out = cfg.out
    if out:
        title = cfg.title or f"langneurons {name}: " + ", ".join(r.label for r in runs)
        meta = {"generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "sources": ", ".join(r.source for r in runs)}
        count = sum(len(s.figures) for s in sections)
        with phase(f"{name}: writing {count} figure{'s' * (count != 1)} and report.html to {out}"):
            written = write_outputs(sections, out, title, meta)
        result.update(out=str(out), html=written["html"], figures=len(written["figures"]),
                      tables=len(written["tables"]))
        if mode != "off":
            with phase(f"{name}: logging to W&B (wandb={mode})", chatty=True):
                result["wandb"] = log_to_wandb(mode, sections, runs, written, Path(out),
                                               {"analysis": name, **cfg.dump()}, title)
    else:
        for s in sections:
            for item in s.figures:
                figs.close(item.figure)
    notes = [n for s in sections for n in s.notes]
    if notes:
        result["notes"] = notes
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result
