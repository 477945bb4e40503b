"""Benchmark of the CPU kernel pin (not a test): what AVX2 kernels cost on this CPU, against its own.

    python benchmarks/bench_cpu_kernels.py                    # all three workloads below
    python benchmarks/bench_cpu_kernels.py --only tiny --repeats 3
    python benchmarks/bench_cpu_kernels.py --only generate --n 4      # greedy answers on Gemma

The entry points pin torch's CPU kernels and MKL's code branch to AVX2 (``langneurons.cpu_numerics``), so that a
run computes the same numbers on every x86 CPU. On a CPU with AVX-512 that gives up its wider kernels. Each
workload runs in fresh processes, pinned and on the CPU's own kernels (``ATEN_CPU_CAPABILITY=<this CPU's best>``,
``MKL_CBWR=AUTO``), alternately, so that a noisy machine slows both alike:

- ``tiny``: ``--steps`` steps of the tiny base's pretraining (``conf/model/tiny.yaml``, one thread, as the cached
  build runs them); also prints the final loss, which shows whether the two kernel sets compute the same numbers;
- ``gemma``: the harness's counting pass on Gemma 3 270M (``benchmarks/bench_real_models.py``'s probe batches,
  2 threads); also prints a digest of the activation counts (the same digest: the same counts, bit for bit);
  skipped with a line when its offline copy is not installed;
- ``generate``: greedy answers to ``--n`` generated problems per language (the same 4 languages) on Gemma 3 270M,
  as a neuron checkpoint answers them (the preset's prompts, stops and ``eval.max_new_tokens``; 2 threads); also
  prints a digest of the answers.

Prints each process's seconds, the median per kernel set and the ratio pinned / own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from langneurons.cpu_numerics import PINNED  # torch-free: this process does not pin itself

ROOT = Path(__file__).resolve().parents[1]


def child_tiny(steps: int) -> dict:
    from omegaconf import OmegaConf

    from langneurons.base import cache
    from langneurons.overrides import compose_training
    from langneurons.settings import ModelSettings

    cfg = OmegaConf.to_container(compose_training(ROOT / "conf", [f"model.pretrain.steps={steps}"]), resolve=True)
    model_cfg = ModelSettings.of(cfg["model"])
    with tempfile.TemporaryDirectory(prefix="bench-kernels-") as tmp:
        started = time.perf_counter()
        entry = cache.build(model_cfg, Path(tmp) / "entry", progress=False)
        seconds = time.perf_counter() - started
        report = json.loads((entry / cache.MANIFEST).read_text())["report"]
    return {"seconds": seconds, "final_loss": report["final_loss"]}


def child_gemma(n: int, batch_size: int) -> dict:
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_real_models import setup

    from langneurons.neurons import ActivationCounter

    torch.set_num_threads(2)
    _, loaded, langs, batches = setup("gemma3_270m", n, batch_size)

    def count():
        with ActivationCounter(loaded.model, langs) as counter:
            for b in batches:
                counter.update(b)
        return counter.stats()

    count()  # warm-up
    started = time.perf_counter()
    stats = count()
    return {"seconds": time.perf_counter() - started,
            "digest": hashlib.sha256(stats.counts.numpy().tobytes()).hexdigest()[:12]}


def child_generate(n: int, batch_size: int) -> dict:
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_real_models import load

    from langneurons import evaluation

    torch.set_num_threads(2)
    cfg, loaded, fmt, problems = load("gemma3_270m", n)
    prompts = [p for rows in problems.values() for p in rows["prompt"]]
    stops = evaluation.AnswerStops(loaded.model, loaded.tokenizer, fmt.stop)

    def answer():
        return evaluation.generate(loaded.model, loaded.tokenizer, prompts, stops=stops, batch_size=batch_size,
                                   max_new_tokens=int(cfg["eval"]["max_new_tokens"]))

    answer()  # warm-up
    started = time.perf_counter()
    answers = answer()
    return {"seconds": time.perf_counter() - started,
            "digest": hashlib.sha256("\n".join(answers).encode()).hexdigest()[:12]}


# workload: (its child, what its result's "digest" / "final_loss" shows)
WORKLOADS = {"tiny": (lambda args: child_tiny(args.steps), "final loss"),
             "gemma": (lambda args: child_gemma(args.n, args.batch_size), "digest of the activation counts"),
             "generate": (lambda args: child_generate(args.n, args.batch_size), "digest of the answers")}


def own_capability() -> str:
    """This CPU's best kernel set as torch picks it unpinned (a fresh process, the pinned variables cleared)."""
    env = {k: v for k, v in os.environ.items() if k not in PINNED}
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                         env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().lower()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=list(WORKLOADS), default=None, help="one workload")
    parser.add_argument("--repeats", type=int, default=2, help="processes per kernel set and workload")
    parser.add_argument("--steps", type=int, default=400, help="tiny: pretraining steps")
    parser.add_argument("--n", type=int, default=16, help="gemma, generate: problems per language (4 languages)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--child", choices=list(WORKLOADS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = WORKLOADS[args.child][0](args)
        import torch

        result["capability"] = torch.backends.cpu.get_cpu_capability()
        print(json.dumps(result))
        return

    own = own_capability()
    kernel_sets = {"pinned (avx2)": PINNED, f"own ({own})": {"ATEN_CPU_CAPABILITY": own, "MKL_CBWR": "AUTO"}}
    print(f"CPU kernels: pinned {PINNED} against this CPU's own ({own}, MKL_CBWR=AUTO); {args.repeats} processes "
          "each, alternately")
    for workload in [args.only] if args.only else list(WORKLOADS):
        times: dict[str, list[float]] = {name: [] for name in kernel_sets}
        seen: dict[str, set] = {name: set() for name in kernel_sets}
        runs = [name for _ in range(args.repeats) for name in kernel_sets]
        for name in runs:
            proc = subprocess.run([sys.executable, __file__, "--child", workload, "--steps", str(args.steps),
                                   "--n", str(args.n), "--batch-size", str(args.batch_size)],
                                  env={**os.environ, **kernel_sets[name]}, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
                print(f"{workload}: skipped ({last})")
                break
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            times[name].append(result["seconds"])
            seen[name].add(result["final_loss"] if workload == "tiny" else result["digest"])
            print(f"  {workload} {name} [torch: {result['capability']}]: {result['seconds']:.1f} s")
        else:
            pinned, native = (statistics.median(v) for v in times.values())
            what = WORKLOADS[workload][1]
            print(f"{workload}: pinned {pinned:.1f} s, own {native:.1f} s (medians): pinned / own = "
                  f"{pinned / native:.2f}x; {what}: " + "; ".join(f"{n} {sorted(v)}" for n, v in seen.items()))


if __name__ == "__main__":
    main()
