"""Benchmark of the neuron science on a real model (not a test): counting speed and peak memory on Gemma 3 270M.

    python benchmarks/bench_real_models.py                         # model=gemma3_270m, 2 threads
    python benchmarks/bench_real_models.py --preset smollm2_135m --threads 1

Side by side in one process, on the same probe batches (the fewshot prompts of generated problems with their gold
responses, response tokens counted), repeated and interleaved so that a noisy machine slows all three alike:

- ``decoder``: a plain forward of the decoder stack, no hooks: the computation counting needs;
- ``counting``: the harness's counting pass (the decoder stack with the act_fn hooks and the count matmuls);
- ``hf forward``: the model's own forward with ``logits_to_keep=1`` (the last position's logits through the LM head),
  how counting ran before it skipped the head.

Prints tokens per second of each, the overhead of counting over the plain decoder forward (target: at most 1.05x),
and its gain over the model's forward. Then, each in a fresh process, the peak resident memory of
counting and of DPO steps of the harness's trainer (LoRA, the preset's trainer settings), next to the memory of
the loaded model alone (Linux: the kernel's peak resident set, reset once the model is loaded). On a CUDA machine it
also prints torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
from langneurons import cpu_numerics  # noqa: E402

cpu_numerics.pin()  # before torch: the same kernels on every x86 CPU

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def config(preset: str, *overrides: str) -> dict:
    """The composed config of ``model=<preset>`` with ``overrides``, checked by the settings layer as train.py
    checks it (a plain dict: every block is complete, and the modules take it)."""
    from omegaconf import OmegaConf

    from langneurons.overrides import compose_training
    from langneurons.settings import RunSettings

    cfg = OmegaConf.to_container(compose_training(REPO / "conf", [f"model={preset}", *overrides]), resolve=True)
    RunSettings.from_config(cfg)
    return cfg


def dpo_alignment(cfg: dict, n: int = 16):
    """The preset's preference settings (beta, loss) as plain DPO on ``n`` generated questions per language."""
    from langneurons.settings import DpoSettings, ProblemSettings

    preference = {k: v for k, v in cfg["alignment"].items() if k in DpoSettings.model_fields}
    return DpoSettings.of({**preference, "method": "dpo", "pairs": None,
                           "questions": ProblemSettings(source="synthetic", path=None, n=n, offset=0, seed=0)},
                          "alignment.")


LANGS = ["en", "zh", "sw", "th"]


def load(preset: str, n: int):
    """The preset's config, model and prompt format, and ``n`` generated problems in each of :data:`LANGS`."""
    from langneurons.data import load_problems
    from langneurons.experiment import load_model
    from langneurons.prompts import prompt_format
    from langneurons.settings import ProblemSettings

    cfg = config(preset)
    loaded = load_model(cfg["model"], seed=0)
    fmt = prompt_format(cfg["model"]["prompt_template"], loaded.tokenizer)
    problems = load_problems(ProblemSettings(source="synthetic", path=None, n=n, offset=100000, seed=0), LANGS, fmt)
    return cfg, loaded, fmt, problems


def setup(preset: str, n: int, batch_size: int):
    """:func:`load`, and the problems with their gold responses as probe batches."""
    from langneurons.neurons import make_batches

    cfg, loaded, fmt, problems = load(preset, n)
    examples = [(r["prompt"], fmt.sep + r["response"], lang) for lang in LANGS for r in problems[lang]]
    batches = make_batches(loaded.tokenizer, examples, LANGS, batch_size=batch_size)
    return cfg, loaded, LANGS, batches


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def start_peak() -> float:
    """The resident memory now, with the kernel's peak (VmHWM) reset to it, so that the peak read afterwards is the
    phase's own and not the model load's (reading the weights file briefly holds it twice)."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:  # "5": reset the peak resident set size (Linux >= 4.0)
        fh.write("5")
    return _status_mb("VmRSS")


def peak_mb() -> float:
    return _status_mb("VmHWM")


def speed(args) -> None:
    from langneurons.neurons import ActivationCounter
    from langneurons.neurons.probing import decoder_stack, evaluating, model_inputs

    _, loaded, langs, batches = setup(args.preset, args.n, args.batch_size)
    model = loaded.model
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    decoder = decoder_stack(model)

    def run_decoder():
        with evaluating(model):
            for b in batches:
                decoder(**model_inputs(b, torch.device("cpu"), True), use_cache=False)

    def run_counting():
        with ActivationCounter(model, langs) as counter:
            for b in batches:
                counter.update(b)
        counter.stats()

    def run_hf():
        with evaluating(model):
            for b in batches:
                model(**model_inputs(b, torch.device("cpu"), True), use_cache=False, logits_to_keep=1)

    runs = {"decoder": run_decoder, "counting": run_counting, "hf forward": run_hf}
    run_counting()  # warm-up (allocations, first-call costs)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    print(f"{args.preset}: {len(batches)} batches of {args.batch_size}, {tokens} tokens, {args.threads} threads, "
          f"{args.repeats} interleaved repeats")
    print(f"{'pass':<12}{'median s':>10}{'min s':>9}{'tokens/s':>10}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, values in times.items():
        print(f"{name:<12}{med[name]:>10.2f}{min(values):>9.2f}{tokens / med[name]:>10.0f}")
    print(f"counting / decoder forward: {med['counting'] / med['decoder']:.3f}x (median), "
          f"{min(times['counting']) / min(times['decoder']):.3f}x (best of each)")
    print(f"counting / model forward with logits_to_keep=1: {med['counting'] / med['hf forward']:.3f}x")


def memory_counting(args) -> dict:
    from langneurons.neurons import collect_stats

    _, loaded, langs, batches = setup(args.preset, args.n, args.batch_size)
    loaded_rss = start_peak()
    started = time.perf_counter()
    collect_stats(loaded.model, batches, langs, progress=False)
    return {"phase": "counting", "loaded_mb": loaded_rss, "peak_mb": peak_mb(),
            "seconds": time.perf_counter() - started}


def memory_dpo(args) -> dict:
    import tempfile

    from langneurons.alignment import build_trainer, training_set
    from langneurons.prompts import prompt_format

    cfg, loaded, _, _ = setup(args.preset, 1, 1)
    fmt = prompt_format(cfg["model"]["prompt_template"], loaded.tokenizer)
    alignment = dpo_alignment(cfg, 16)
    data = training_set(alignment, ["sw"], fmt, 0)
    trainer_cfg = {**cfg["trainer"], "max_steps": args.steps, "save_steps": 0, "logging_steps": 1}
    loaded_rss = start_peak()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(alignment, trainer_cfg, loaded.model, loaded.tokenizer, data.train, Path(tmp), 0)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    out = {"phase": "dpo step", "loaded_mb": loaded_rss, "peak_mb": peak_mb(), "seconds": seconds / args.steps,
           "batch": int(trainer_cfg["per_device_train_batch_size"])}
    if torch.cuda.is_available():
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="gemma3_270m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n", type=int, default=16, help="problems per language (4 languages)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="DPO steps timed (the first includes warm-up)")
    parser.add_argument("--phase", choices=["speed", "counting", "dpo"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.phase == "counting":
        print(json.dumps(memory_counting(args)))
        return
    if args.phase == "dpo":
        print(json.dumps(memory_dpo(args)))
        return
    speed(args)
    print("\npeak resident memory of each phase, each in a fresh process (VmHWM reset after the model loaded):")
    for phase in ("counting", "dpo"):
        cmd = [sys.executable, __file__, "--phase", phase, *sys.argv[1:]]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        extra = f", batch {r['batch']}, {r['seconds']:.1f} s per step" if "batch" in r else \
            f", {r['seconds']:.1f} s"
        cuda = f", CUDA peak {r['cuda_peak_mb']:.0f} MB" if "cuda_peak_mb" in r else ""
        print(f"  {r['phase']:<10} peak {r['peak_mb']:.0f} MB (model loaded: {r['loaded_mb']:.0f} MB){extra}{cuda}")


if __name__ == "__main__":
    main()
