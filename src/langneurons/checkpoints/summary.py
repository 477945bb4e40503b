"""The end-of-run summary: a run's first and last neuron checkpoints side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from . import record

TYPES_SHOWN = ("specific", "related")


def checkpoint_summary(run_dir: str | Path, aligned: Sequence[str] = ()) -> list[str]:
    """The first and last neuron checkpoints of a run side by side, per language (the ``aligned`` ones starred):
    accuracy and the specific and related neurons it owns (``start->end``), the general neurons, and the command that
    analyses the run. Empty when the run took no checkpoint."""
    run_dir = Path(run_dir)
    folders = record.step_folders(run_dir / "neurons")
    if not folders:
        return []
    steps = [step for step, _ in folders]
    first, last = record.read_record(folders[0][1]), record.read_record(folders[-1][1])
    acc0, acc1 = first.get("accuracy", {}), last.get("accuracy", {})
    counts0, counts1 = first.get("lang_type_counts", {}), last.get("lang_type_counts", {})
    langs = [lang for lang in acc0 if lang != "avg"] + [lang for lang in counts0 if lang not in acc0]

    def row(name: str, cell) -> str:
        return f"  {name:<10}" + "".join(f"{cell(lang):>11}" for lang in langs)

    def change(a: Mapping[str, Any], b: Mapping[str, Any], fmt: str):
        return lambda lang: f"{a[lang]:{fmt}}->{b[lang]:{fmt}}" if lang in a and lang in b else "-"

    lines = [f"Neuron checkpoints at steps {', '.join(map(str, steps))}: step {steps[0]} -> {steps[-1]}"
             + (" (* the aligned languages)" if aligned else ""),
             row("", lambda lang: f"{lang}*" if lang in aligned else lang)]
    if acc0 and acc1:
        lines.append(row("accuracy", change(acc0, acc1, ".2f")))
    for t in TYPES_SHOWN:
        lines.append(row(t, change({k: v[t] for k, v in counts0.items()}, {k: v[t] for k, v in counts1.items()},
                                   "d")))
    general = [c.get("identification", {}).get("totals", {}).get("general") for c in (first, last)]
    if None not in general:
        lines.append(f"  general neurons (shared by all languages): {general[0]}->{general[1]}")
    lines.append(f"  analyse it:  python analyze.py report runs=[{run_dir}] out={run_dir / 'report'}")
    return lines
