"""Benchmark of neuron checkpoints (not a test): how much of a run's wall time they take, and what dominates.

    python benchmarks/bench_checkpoints.py                      # the default experiment (python train.py)
    python benchmarks/bench_checkpoints.py trainer.max_steps=80 # any train.py overrides

Runs the same experiment twice in this process, side by side: first with ``neurons=off``, then with neuron
checkpoints on, timing each phase of the checkpoints (answering the evaluation questions, accuracy, counting
activations, identification, saving, W&B logging). Prints both wall times, the share of the run taken by
checkpoints and the phase table. Both runs log to W&B offline into a temporary folder.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("WANDB_MODE", "offline")
from langneurons import cpu_numerics  # noqa: E402

cpu_numerics.pin()  # before torch: the same kernels on every x86 CPU

from omegaconf import OmegaConf  # noqa: E402

from langneurons import evaluation, tracking  # noqa: E402
from langneurons.checkpoints import measure  # noqa: E402
from langneurons.experiment import run_experiment  # noqa: E402
from langneurons.overrides import compose_training  # noqa: E402
from langneurons.settings import NeuronSettings, RunSettings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PHASES: dict[str, list[float]] = defaultdict(list)


def timed(owner, name: str, phase: str) -> None:
    """Wrap ``owner.name`` so that each call's seconds are added to ``PHASES[phase]``."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            PHASES[phase].append(time.perf_counter() - started)

    setattr(owner, name, wrapper)


def config(overrides: list[str]) -> dict:
    return OmegaConf.to_container(compose_training(REPO / "conf", overrides), resolve=True)


def run(overrides: list[str], folder: Path) -> float:
    started = time.perf_counter()
    run_experiment(config(overrides), folder, overrides=overrides)
    return time.perf_counter() - started


def cached_pair_sets(folder: str | None) -> int:
    """How many MAPO pair sets the pair cache ``folder`` holds (0 without one): a run that adds one built its pairs."""
    return sum(1 for p in Path(folder).expanduser().glob("*/key.json")) if folder else 0


def main(overrides: list[str]) -> None:
    timed(evaluation, "generate", "answer the evaluation questions (generate)")
    timed(measure.NeuronCheckpointer, "_accuracy", "accuracy + answer language")
    timed(measure, "collect_stats", "count activations (probe forwards)")
    timed(NeuronSettings, "identify", "identify neuron types")  # a checkpoint identifies with its neuron settings
    timed(measure.NeuronCheckpointer, "_save", "save neurons/step-N")
    timed(measure.NeuronCheckpointer, "take", "checkpoint total (without W&B)")
    timed(tracking.CheckpointLogger, "__call__", "W&B: metrics, tables, figure, artifact")
    pairs, built = getattr(RunSettings.from_config(config(overrides)).alignment, "cache_dir", None), []  # MAPO's
    with tempfile.TemporaryDirectory() as tmp:
        before = cached_pair_sets(pairs)
        off = run([*overrides, "neurons=off"], Path(tmp) / "off")
        if cached_pair_sets(pairs) > before:
            built.append("off")
        PHASES.clear()
        before = cached_pair_sets(pairs)
        on = run(overrides, Path(tmp) / "on")
        if cached_pair_sets(pairs) > before:
            built.append("on")
        steps = sorted((p.name for p in (Path(tmp) / "on" / "neurons").glob("step-*")), key=lambda n: int(n[5:]))
    checkpoints = sum(PHASES["checkpoint total (without W&B)"]) + sum(
        PHASES["W&B: metrics, tables, figure, artifact"])
    print(f"\nexperiment: python train.py {' '.join(overrides)}")
    print(f"wall time without checkpoints  {off:8.1f} s")
    print(f"wall time with checkpoints     {on:8.1f} s   ({len(steps)} checkpoints: {', '.join(steps)})")
    print(f"checkpoints (timed inside)     {checkpoints:8.1f} s   = {checkpoints / on:.1%} of the run with them")
    print(f"difference of the two runs     {on - off:8.1f} s   = {(on - off) / on:.1%} of the run with them")
    if built:
        print(f"note: the {' and '.join(built)} run built its MAPO pairs (not cached yet): run again to compare like "
              "with like")
    print()
    print(f"{'phase':45s} {'calls':>5s} {'total s':>8s} {'first s':>8s} {'later mean s':>12s}")
    for phase, times in PHASES.items():
        later = times[1:]
        mean = sum(later) / len(later) if later else float("nan")
        print(f"{phase:45s} {len(times):5d} {sum(times):8.2f} {times[0]:8.2f} {mean:12.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
