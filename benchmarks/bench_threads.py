"""Benchmark of torch's CPU thread count for a whole run (not a test): which ``threads=`` setting is fastest, on an
idle machine and on one where another process takes a core.

    python benchmarks/bench_threads.py                           # the default run, threads=1 and threads=2
    python benchmarks/bench_threads.py --threads 1 2 auto --repeats 2
    python benchmarks/bench_threads.py --load 1                  # also with one busy process beside each run
    python benchmarks/bench_threads.py trainer.max_steps=200     # any train.py overrides

Each run is ``python train.py threads=<t> logger=none <overrides>`` in a fresh process (the tiny base and the MAPO
pairs must be cached already: run ``python train.py`` once first, or the first run's time includes building them).
Settings are interleaved (1, 2, 1, 2, ...) so that a drift of the machine falls on all of them alike. ``--load N``
runs every setting a second time with N busy processes beside it (plain Python loops, one core each: a stand-in
for another job on a shared machine). Printed per run: wall time, CPU time (user + system) of the run, its training
time (the Trainer's ``train_runtime``, which includes the neuron checkpoints taken during training) and the mean
seconds of a neuron checkpoint; then the medians per setting and their ratios to the first setting.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _spin(stop) -> None:  # a busy process: one core's worth of load
    while not stop.is_set():
        sum(range(10_000))


def run_once(threads: str, overrides: list[str], out: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # threads=auto: torch's own choice
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), f"threads={threads}", "logger=none",
                           f"hydra.run.dir={out}", *overrides], cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"threads={threads} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    checkpoints = [json.loads(p.read_text()) for p in sorted(out.glob("neurons/step-*/checkpoint.json"))]
    seconds = [c["seconds"] for c in checkpoints if "seconds" in c]
    log = (out / "train.log").read_text() if (out / "train.log").is_file() else ""
    found = re.findall(r"""["']train_runtime["']: ["']?([0-9.]+)""", proc.stdout + log)
    train_runtime = float(found[-1]) if found else None
    return {"threads": threads, "wall": wall, "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "train": train_runtime, "checkpoint": statistics.fmean(seconds) if seconds else None}


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", nargs="+", default=["1", "2"], help="settings to compare (counts or auto)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per setting (interleaved)")
    parser.add_argument("--load", type=int, default=0, help="also run each setting beside N busy processes")
    parser.add_argument("overrides", nargs="*", help="train.py overrides")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; overrides: {' '.join(args.overrides) or '(none: the default run)'}", flush=True)
    loads = [0] + ([args.load] if args.load else [])
    results: dict[tuple[int, str], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
        for load in loads:
            for rep in range(args.repeats):
                for threads in args.threads:
                    stop = multiprocessing.Event()
                    spinners = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(load)]
                    for p in spinners:
                        p.start()
                    try:
                        r = run_once(threads, args.overrides, Path(tmp) / f"load{load}-t{threads}-{rep}")
                    finally:
                        stop.set()
                        for p in spinners:
                            p.join()
                    results.setdefault((load, threads), []).append(r)
                    print(f"busy processes {load}  threads={threads:<5} wall {fmt(r['wall'])} s  cpu {fmt(r['cpu'])} s  "
                          f"training {fmt(r['train'])} s  checkpoint {fmt(r['checkpoint'], 2)} s", flush=True)
    print("\nmedians per setting (ratio: wall time / that of the first setting, same load)")
    for load in loads:
        base = statistics.median(r["wall"] for r in results[(load, args.threads[0])])
        for threads in args.threads:
            rs = results[(load, threads)]
            wall = statistics.median(r["wall"] for r in rs)
            ckpt = [r["checkpoint"] for r in rs if r["checkpoint"] is not None]
            train = [r["train"] for r in rs if r["train"] is not None]
            print(f"  busy processes {load}  threads={threads:<5} wall {wall:7.1f} s  x{wall / base:.2f}  "
                  f"cpu {statistics.median(r['cpu'] for r in rs):7.1f} s  "
                  f"training {fmt(statistics.median(train) if train else None)} s  "
                  f"checkpoint {fmt(statistics.median(ckpt) if ckpt else None, 2)} s")


if __name__ == "__main__":
    main()
