"""The pretrained tiny base at step 0: how long it takes to build, how well it answers in each language, and which
language neurons the identification finds on its own answers (the paper's probe).

    python benchmarks/tiny_base.py                      # the default config (reuses the cache when built)
    python benchmarks/tiny_base.py --fresh              # time a first build (into a temporary cache folder)
    python benchmarks/tiny_base.py --n 100 model.pretrain.steps=3000 neurons.top_rate=0.02   # any overrides

Prints the build (or load) time, wall and CPU, accuracy per language on the evaluation problems (ids from
``data.offset``), the neuron counts per language and type at step 0, and the Jaccard overlap of the languages'
neuron sets (specific + related). ``--json PATH`` also writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fresh", action="store_true", help="build into a temporary cache folder (a first build)")
    parser.add_argument("--n", type=int, default=100, help="evaluation problems per language (default 100)")
    parser.add_argument("--probe", default="responses", help="neurons.probe for the step-0 identification")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model.pretrain.steps=3000")
    args = parser.parse_args()

    from langneurons import cpu_numerics

    cpu_numerics.pin()  # before torch: the base train.py builds, on every x86 CPU
    import torch
    from omegaconf import OmegaConf

    from langneurons.base import cache_key, tiny_base
    from langneurons.checkpoints.measure import NeuronCheckpointer
    from langneurons.data import load_problems
    from langneurons.neurons.dynamics import language_sets
    from langneurons.overrides import compose_training
    from langneurons.settings import RunSettings

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = OmegaConf.to_container(compose_training(ROOT / "conf", [
        "model.pretrain.enabled=true", f"data.n={args.n}", f"neurons.probe={args.probe}", *args.overrides]),
        resolve=True)
    tmp = None
    if args.fresh:
        tmp = tempfile.TemporaryDirectory(prefix="tiny-base-")
        cfg["model"]["pretrain"]["cache_dir"] = tmp.name
    settings = RunSettings.from_config(cfg)  # every value checked, as train.py does
    model_cfg = settings.model
    wall, cpu = time.perf_counter(), cpu_seconds()
    loaded = tiny_base(model_cfg)
    build = {"wall_s": round(time.perf_counter() - wall, 1), "cpu_s": round(cpu_seconds() - cpu, 1),
             "fresh": args.fresh, "key": cache_key(model_cfg),
             "threads": model_cfg.pretrain.threads or torch.get_num_threads(),
             "params": loaded.model.num_parameters()}

    langs = settings.probe_langs
    problems = load_problems(settings.data, langs, model_cfg.prompt_template)
    with tempfile.TemporaryDirectory(prefix="tiny-base-neurons-") as out:
        checkpointer = NeuronCheckpointer(tokenizer=loaded.tokenizer, problems=problems, probe_langs=langs,
                                          eval_langs=langs, neurons=settings.neurons, eval_cfg=settings.eval,
                                          out_dir=Path(out), model_id=loaded.model_id)
        wall = time.perf_counter()
        ckpt = checkpointer.take(loaded.model, step=0)
        measure_s = time.perf_counter() - wall
    result = {"build": build, "accuracy": {k: round(v, 3) for k, v in ckpt.accuracy.items()},
              "measure_s": round(measure_s, 1), "samples": {s["lang"]: s["answer"] for s in ckpt.samples}}
    if ckpt.ident is not None:
        ident = ckpt.ident
        sets = language_sets(ident).float()
        inter = sets @ sets.T
        union = sets.sum(1)[:, None] + sets.sum(1)[None, :] - inter
        jaccard = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
        result["neurons"] = {"selected": int(ident.selected.numel()), "lam": ident.lam, "tau": ident.tau,
                             "totals": ident.totals, "histogram": ident.histogram,
                             "per_lang": ckpt.lang_type_counts(),
                             "jaccard": {a: {b: round(float(jaccard[i, j]), 2) for j, b in enumerate(ident.langs)}
                                         for i, a in enumerate(ident.langs)}}
    report(result, langs)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    if tmp is not None:
        tmp.cleanup()


def report(result: dict, langs) -> None:
    b = result["build"]
    what = "first build" if b["fresh"] else "build or cache load"
    print(f"\n{what}: {b['wall_s']} s wall, {b['cpu_s']} s CPU ({b['threads']} torch threads while pretraining), "
          f"{b['params']} parameters, cache key {b['key']}")
    acc = result["accuracy"]
    print("step-0 accuracy: " + "  ".join(f"{lang} {acc[lang]:.2f}" for lang in langs) + f"  | avg {acc['avg']:.2f}"
          f"   (answering + counting + identification took {result['measure_s']} s)")
    if "neurons" not in result:
        print("no identification (a language had no probe tokens)")
        return
    n = result["neurons"]
    print(f"identification: {n['selected']} selected, lam {n['lam']}, tau {n['tau']:.3f}, totals {n['totals']}, "
          f"shared-by-N histogram {n['histogram']}")
    print("lang  " + "  ".join(f"{t:>8}" for t in ("specific", "related", "general")) + "   jaccard with: " +
          " ".join(f"{lang:>4}" for lang in langs))
    for lang in langs:
        c = n["per_lang"][lang]
        row = " ".join(f"{n['jaccard'][lang][other]:4.2f}" for other in langs)
        print(f"{lang:<4}  {c['specific']:>8}  {c['related']:>8}  {c['general']:>8}                 {row}")


if __name__ == "__main__":
    sys.exit(main())
