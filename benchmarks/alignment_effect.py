"""What the default alignment does, over several seeds: accuracy per language and neuron counts per language and type,
at step 0 and at the end of training, as mean +- standard deviation across seeds.

    python benchmarks/alignment_effect.py                          # the default run, seeds 0 1 2
    python benchmarks/alignment_effect.py --seeds 0 1 2 3 4 alignment=sft lang=th   # any train.py overrides
    python benchmarks/alignment_effect.py --json effect.json       # also write every figure as JSON
    python benchmarks/alignment_effect.py --markdown               # also print the README's two tables

Each seed is one ``python train.py seed=<s> logger=none <overrides>`` (the base model is the same for every seed:
``model.pretrain.seed`` is fixed; the seed moves the adapter's initialisation, the data order and MAPO's sampling).
The figures are read back from the runs' neuron checkpoints (``neurons/step-<N>/checkpoint.json``). Printed: the
total time of each run, then one table per measure with the trained language(s) first, and the change (end - start)
averaged over the trained languages and over the untrained ones.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TYPES = ("specific", "related", "general")


def run_seed(seed: int, overrides: list[str], out: Path) -> dict:
    run_dir = out / f"seed-{seed}"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), f"seed={seed}", "logger=none",
                           f"hydra.run.dir={run_dir}", *overrides], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"seed {seed} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    steps = sorted((run_dir / "neurons").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    first, last = (json.loads((s / "checkpoint.json").read_text()) for s in (steps[0], steps[-1]))
    config = json.loads((run_dir / "run.json").read_text())["config"]
    return {"seed": seed, "seconds": seconds, "first": first, "last": last, "lang": config["lang"]}


def spread(values: list[float], signed: bool = False, digits: int = 3) -> str:
    """``mean ± sd`` over seeds (sd 0 for one seed); ``-`` for no values."""
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):{'+' if signed else ''}.{digits}f} ± {sd:.{digits}f}"


def changes(entry: dict) -> list[float]:
    """Per seed, end - start of one language's measure."""
    return [e - s for s, e in zip(entry["start"], entry["end"])]


def summarise(runs: list[dict]) -> dict:
    langs = [k for k in runs[0]["first"]["accuracy"] if k != "avg"]
    trained = runs[0]["lang"]
    trained = [trained] if isinstance(trained, str) else list(trained)
    trained = langs if trained == ["all"] else trained
    untrained = [lang for lang in langs if lang not in trained]
    order = [*trained, *untrained]
    acc = {lang: {"start": [r["first"]["accuracy"][lang] for r in runs],
                  "end": [r["last"]["accuracy"][lang] for r in runs]} for lang in order}
    counts = {t: {lang: {"start": [r["first"]["lang_type_counts"][lang][t] for r in runs],
                         "end": [r["last"]["lang_type_counts"][lang][t] for r in runs]} for lang in order}
              for t in TYPES}

    def group_change(table: dict, group: list[str]) -> list[float]:
        # per seed: the change averaged over the group's languages
        return [statistics.fmean(per_seed) for per_seed in zip(*(changes(table[lang]) for lang in group))]

    return {"seeds": [r["seed"] for r in runs], "seconds": [r["seconds"] for r in runs], "trained": trained,
            "untrained": untrained, "accuracy": acc, "counts": counts,
            "accuracy_change": {"trained": group_change(acc, trained), "untrained": group_change(acc, untrained)},
            "count_change": {t: {"trained": group_change(counts[t], trained),
                                 "untrained": group_change(counts[t], untrained)} for t in TYPES}}


def markdown(summary: dict) -> str:
    """Two Markdown tables: accuracy per language (step 0, end, change) and the change of each neuron type."""
    langs = list(summary["accuracy"])
    head = "| | " + " | ".join(f"**{lang}**" if lang in summary["trained"] else lang for lang in langs) + " |"
    rule = "| --- " * (len(langs) + 1) + "|"
    acc = summary["accuracy"]
    rows = [head, rule,
            "| step 0 | " + " | ".join(f"{acc[lang]['start'][0]:.2f}" for lang in langs) + " |",
            "| end | " + " | ".join(spread(acc[lang]["end"], digits=2) for lang in langs) + " |",
            "| change | " + " | ".join(spread(changes(acc[lang]), True, 2) for lang in langs) + " |"]
    counts = summary["counts"]
    rows += ["", head, rule]
    for t in TYPES:
        rows.append(f"| {t} | " + " | ".join(
            f"{counts[t][lang]['start'][0]} ({spread(changes(counts[t][lang]), True, 1)})" for lang in langs) + " |")
    return "\n".join(rows)


def print_table(title: str, table: dict) -> None:
    print(f"\n{title}")
    print(f"  {'lang':<6}{'start':>16}{'end':>16}{'end - start':>18}")
    for lang, v in table.items():
        print(f"  {lang:<6}{spread(v['start']):>16}{spread(v['end']):>16}{spread(changes(v), True):>18}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "alignment_effect",
                        help="where the runs go (one folder per seed, replaced when it exists)")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary to this file")
    parser.add_argument("--markdown", action="store_true", help="also print the tables as Markdown (the README's)")
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. alignment=sft trainer.max_steps=80")
    args = parser.parse_args()

    runs = []
    for seed in args.seeds:
        shutil.rmtree(args.out / f"seed-{seed}", ignore_errors=True)
        runs.append(run_seed(seed, args.overrides, args.out))
        print(f"seed {seed}: {runs[-1]['seconds']:.1f} s", flush=True)
    summary = summarise(runs)
    print(f"\noverrides: {' '.join(args.overrides) or '(none: the default run)'}; seeds {args.seeds}; "
          f"trained {summary['trained']}; mean ± sd over seeds")
    print_table("accuracy", summary["accuracy"])
    for t in TYPES:
        print_table(f"{t} neurons per language", summary["counts"][t])
    print("\nchange end - start, averaged over the languages of each group")
    print(f"  accuracy            trained {spread(summary['accuracy_change']['trained'], True)}   "
          f"untrained {spread(summary['accuracy_change']['untrained'], True)}")
    for t in TYPES:
        c = summary["count_change"][t]
        print(f"  {t + ' neurons':<20}trained {spread(c['trained'], True)}   untrained {spread(c['untrained'], True)}")
    if args.markdown:
        print("\n" + markdown(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
