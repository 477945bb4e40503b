"""What the default alignment does, over several base models and alignment seeds: accuracy per language and neuron
counts per language and type, at step 0 and at the end of training, with both sources of variation.

    python benchmarks/alignment_effect.py                          # the default run: 3 bases x seeds 0 1 2
    python benchmarks/alignment_effect.py --bases 0 --seeds 0 1 2 3 4 alignment=sft lang=th   # any train.py overrides
    python benchmarks/alignment_effect.py --json effect.json       # also write every figure as JSON
    python benchmarks/alignment_effect.py --markdown               # also print the README's tables

Each run is one ``python train.py model.pretrain.seed=<base> seed=<seed> logger=none <overrides>``: ``--bases`` are
builds of the tiny base (``model.pretrain.seed``: its initialisation and data order; each is built once and cached,
about 5 minutes on one core), ``--seeds`` the alignment seeds (the adapter's initialisation, the data order and MAPO's
sampling). The figures are read back from the runs' neuron checkpoints (``neurons/step-<N>/checkpoint.json``).

Printed: the time of each run; per measure and language, step 0 (mean ± sd over the bases: step 0 depends on the
base only), the change end - start (mean ± sd over all runs), the sd of the per-base mean changes (*between bases*),
the mean sd over seeds within a base (*within a base*), and in how many runs the change is positive / zero /
negative; then the same for the change averaged over the trained and over the untrained languages.
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


def run_one(base: int, seed: int, overrides: list[str], out: Path) -> dict:
    run_dir = out / f"base-{base}-seed-{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), f"model.pretrain.seed={base}", f"seed={seed}",
                           "logger=none", f"hydra.run.dir={run_dir}", *overrides], cwd=ROOT, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"base {base} seed {seed} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    steps = sorted((run_dir / "neurons").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    first, last = (json.loads((s / "checkpoint.json").read_text()) for s in (steps[0], steps[-1]))
    from langneurons.settings import RunSettings

    # the run's saved config, read as the run read it: the aligned languages as codes (lang=all, [zh,de], zh,de)
    settings = RunSettings.from_config(json.loads((run_dir / "run.json").read_text())["config"])
    return {"base": base, "seed": seed, "seconds": seconds, "first": first, "last": last, "lang": list(settings.lang),
            "printout": proc.stdout}


def sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def spread(values: list[float], signed: bool = False, digits: int = 2) -> str:
    """``mean ± sd`` (sd 0 for one value); ``-`` for no values."""
    if not values:
        return "-"
    return f"{statistics.fmean(values):{'+' if signed else ''}.{digits}f} ± {sd(values):.{digits}f}"


def effect(starts: list[float], ends: list[float], bases: list[int]) -> dict:
    """One measure over the runs (``bases[i]``: run i's base): step 0 per base, the change per run, its mean and sd,
    the sd between the bases' mean changes, the mean sd within a base, and the signs of the changes."""
    change = [e - s for s, e in zip(starts, ends)]
    by_base: dict[int, list[float]] = {}
    start_of: dict[int, float] = {}
    for b, s, c in zip(bases, starts, change):
        by_base.setdefault(b, []).append(c)
        start_of[b] = s
    eps = 1e-9
    return {"start": list(start_of.values()), "end": ends, "change": change,
            "between_bases": sd([statistics.fmean(v) for v in by_base.values()]),
            "within_base": statistics.fmean(sd(v) for v in by_base.values()),
            "up": sum(c > eps for c in change), "same": sum(abs(c) <= eps for c in change),
            "down": sum(c < -eps for c in change)}


def summarise(runs: list[dict]) -> dict:
    langs = [k for k in runs[0]["first"]["accuracy"] if k != "avg"]
    trained = runs[0]["lang"]
    trained = [trained] if isinstance(trained, str) else list(trained)
    trained = langs if trained == ["all"] else trained
    untrained = [lang for lang in langs if lang not in trained]
    order = [*trained, *untrained]
    bases = [r["base"] for r in runs]

    def acc(r: dict, key: str, lang: str) -> float:
        return r[key]["accuracy"][lang]

    def count(r: dict, key: str, lang: str, t: str) -> float:
        return r[key]["lang_type_counts"][lang][t]

    def group(get, langs_: list[str]) -> dict:
        # per run: the measure averaged over the group's languages
        return effect([statistics.fmean(get(r, "first", lang) for lang in langs_) for r in runs],
                      [statistics.fmean(get(r, "last", lang) for lang in langs_) for r in runs], bases)

    return {"bases": sorted(set(bases)), "seeds": sorted({r["seed"] for r in runs}),
            "runs": [{"base": r["base"], "seed": r["seed"], "seconds": r["seconds"]} for r in runs],
            "trained": trained, "untrained": untrained,
            "accuracy": {lang: effect([acc(r, "first", lang) for r in runs], [acc(r, "last", lang) for r in runs],
                                      bases) for lang in order},
            "counts": {t: {lang: effect([count(r, "first", lang, t) for r in runs],
                                        [count(r, "last", lang, t) for r in runs], bases) for lang in order}
                       for t in TYPES},
            "accuracy_change": {"trained": group(acc, trained), "untrained": group(acc, untrained)},
            "count_change": {t: {"trained": group(lambda r, k, lang: count(r, k, lang, t), trained),
                                 "untrained": group(lambda r, k, lang: count(r, k, lang, t), untrained)}
                             for t in TYPES}}


def signs(e: dict) -> str:
    return f"{e['up']}/{e['same']}/{e['down']}"


def print_table(title: str, table: dict, digits: int) -> None:
    print(f"\n{title}")
    print(f"  {'':<10}{'step 0 (bases)':>17}{'change':>17}{'between bases':>15}{'within a base':>15}{'+/0/-':>9}")
    for name, e in table.items():
        print(f"  {name:<10}{spread(e['start'], digits=digits):>17}{spread(e['change'], True, digits):>17}"
              f"{e['between_bases']:>15.{digits}f}{e['within_base']:>15.{digits}f}{signs(e):>9}")


def markdown(summary: dict) -> str:
    """The README's tables: accuracy per language, and the change of each neuron type per language."""
    langs = list(summary["accuracy"])
    head = "| | " + " | ".join(f"**{lang}**" if lang in summary["trained"] else lang for lang in langs) + " |"
    rule = "| --- " * (len(langs) + 1) + "|"
    acc = summary["accuracy"]
    rows = [head, rule,
            "| step 0 | " + " | ".join(spread(acc[lang]["start"]) for lang in langs) + " |",
            "| change | " + " | ".join(spread(acc[lang]["change"], True) for lang in langs) + " |",
            "| sd between bases / within a base | " + " | ".join(
                f"{acc[lang]['between_bases']:.2f} / {acc[lang]['within_base']:.2f}" for lang in langs) + " |",
            "| runs up / same / down | " + " | ".join(signs(acc[lang]) for lang in langs) + " |"]
    counts = summary["counts"]
    rows += ["", head, rule]
    for t in TYPES:
        rows.append(f"| {t} at step 0 | " + " | ".join(spread(counts[t][lang]["start"], digits=1) for lang in langs)
                    + " |")
        rows.append(f"| {t}: change | " + " | ".join(
            f"{spread(counts[t][lang]['change'], True, 1)} ({signs(counts[t][lang])})" for lang in langs) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bases", type=int, nargs="+", default=[0, 1, 2], help="model.pretrain.seed of each base")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="alignment seeds")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "alignment_effect",
                        help="where the runs go (one folder per base and seed, replaced when it exists)")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary to this file")
    parser.add_argument("--markdown", action="store_true", help="also print the tables as Markdown (the README's)")
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. alignment=sft trainer.max_steps=80")
    args = parser.parse_args()

    runs = []
    for base in args.bases:
        for seed in args.seeds:
            runs.append(run_one(base, seed, args.overrides, args.out))
            print(f"base {base} seed {seed}: {runs[-1]['seconds']:.1f} s", flush=True)
    summary = summarise(runs)
    print(f"\noverrides: {' '.join(args.overrides) or '(none: the default run)'}; bases {args.bases} x seeds "
          f"{args.seeds}; trained {summary['trained']}; mean ± sd; +/0/-: runs in which the change is positive, "
          "zero, negative")
    print_table("accuracy", summary["accuracy"], 3)
    for t in TYPES:
        print_table(f"{t} neurons per language", summary["counts"][t], 2)
    print("\nchange end - start, averaged over the languages of each group")
    print_table("accuracy", summary["accuracy_change"], 3)
    for t in TYPES:
        print_table(f"{t} neurons", summary["count_change"][t], 2)
    first = next(r for r in runs if r["base"] == args.bases[0] and r["seed"] == args.seeds[0])
    tail = first["printout"][first["printout"].find("Neuron checkpoints at steps"):]
    print(f"\nthe end-of-run table of base {args.bases[0]}, seed {args.seeds[0]}:\n{tail.rstrip()}")
    if args.markdown:
        print("\n" + markdown(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
