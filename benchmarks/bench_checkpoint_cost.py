"""Benchmark (not a test): what a neuron checkpoint costs on a real model, next to a training step.

    python benchmarks/bench_checkpoint_cost.py                       # Gemma 3 270M, MGSM, 8 problems x 10 languages
    python benchmarks/bench_checkpoint_cost.py --preset smollm2_135m --n 4 --train-steps 0

In one process, on the same model and problems (MGSM from ../shared/data/mgsm when it is there, else generated
problems), one after the other:

1. one neuron checkpoint as a run takes it (``NeuronCheckpointer.take``), split into its phases: answering (greedy
   generation, accuracy), counting (the probe forward with the act_fn hooks), identification, writing the folder;
2. putting that checkpoint into an offline W&B run (``CheckpointLogger``: metrics, tables, the layer figure, the
   statistics artifact);
3. the same answers generated without the early stop (no stop strings, the tokenizer's EOS only, the text cut at
   the same stops afterwards): the time and tokens the stop saves, and whether the answers are the same;
4. deactivation perplexity of the gold responses with the LM head at every position and at the counted positions
   only (``perplexity(only_scored=...)``), interleaved ``--repeats`` times: the time of each and the largest
   relative difference of the figures;
5. ``--train-steps`` DPO steps of the preset's trainer (LoRA), the first one not timed (warm-up).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("WANDB_MODE", "offline")
from langneurons import cpu_numerics  # noqa: E402

cpu_numerics.pin()  # before torch: the same kernels on every x86 CPU

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_real_models import config, dpo_alignment  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="gemma3_270m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n", type=int, default=8, help="problems per language (10 languages)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mgsm"), help="an MGSM folder")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats of the two perplexity passes")
    parser.add_argument("--train-steps", type=int, default=3, help="DPO steps (the first is warm-up); 0: none")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import wandb

    from langneurons import evaluation
    from langneurons.checkpoints.measure import NeuronCheckpointer
    from langneurons.data import load_problems
    from langneurons.data.problems import with_prompts
    from langneurons.experiment import load_model
    from langneurons.languages import PAPER_LANGS
    from langneurons.neurons import make_batches, perplexity
    from langneurons.prompts import needs_tokenizer, prompt_format
    from langneurons.tracking import CheckpointLogger

    mgsm = ["data=mgsm", f"data.path={args.data}"] if Path(args.data).is_dir() else []  # else: generated problems
    cfg = config(args.preset, *mgsm, f"data.n={args.n}")
    data = cfg["data"]
    started = time.perf_counter()
    loaded = load_model(cfg["model"], seed=0)
    print(f"{args.preset} ({loaded.model_id}) loaded in {time.perf_counter() - started:.1f} s; {args.threads} "
          f"threads; {data['source']}, {args.n} problems x {len(PAPER_LANGS)} languages; eval.max_new_tokens "
          f"{cfg['eval']['max_new_tokens']}, batch {cfg['eval']['batch_size']}")
    name = cfg["model"]["prompt_template"]
    fmt = prompt_format(name, loaded.tokenizer)
    problems = load_problems(data, PAPER_LANGS, "plain" if needs_tokenizer(name) else fmt)
    if needs_tokenizer(name):
        problems = with_prompts(problems, fmt)
    model = loaded.model.eval()

    with tempfile.TemporaryDirectory() as tmp:
        # 1. the checkpoint, phase by phase
        checkpointer = NeuronCheckpointer(tokenizer=loaded.tokenizer, problems=problems, probe_langs=PAPER_LANGS,
                                          eval_langs=PAPER_LANGS, neurons=cfg["neurons"], eval_cfg=cfg["eval"],
                                          out_dir=Path(tmp) / "neurons", model_id=loaded.model_id, template=fmt)
        ckpt = checkpointer.take(model, 0)
        # 2. W&B (offline)
        run = wandb.init(project="bench", dir=tmp, mode="offline", settings=wandb.Settings(silent=True))
        mark = time.perf_counter()
        CheckpointLogger(run)(ckpt)
        logged = time.perf_counter() - mark
        run.finish()
    phases = {**ckpt.phases, "W&B": logged}
    total = ckpt.seconds + logged
    tokens = int(ckpt.stats.tokens.sum())
    print(f"\n1-2. one neuron checkpoint: {total:.1f} s ({tokens} probe tokens counted; accuracy avg "
          f"{ckpt.accuracy['avg']:.3f}; lam {ckpt.ident.lam if ckpt.ident else '-'})")
    for phase, seconds in phases.items():
        print(f"  {phase:<9}{seconds:>8.1f} s  {100 * seconds / total:>5.1f} %")

    # 3. the early stop
    prompts = [p for lang in PAPER_LANGS for p in problems[lang]["prompt"]]
    stops = evaluation.AnswerStops(model, loaded.tokenizer, fmt.stop)
    late = evaluation.AnswerStops(model, loaded.tokenizer, fmt.stop)
    late.eos_ids = [loaded.tokenizer.eos_token_id]
    from transformers import StoppingCriteriaList

    late.criteria = StoppingCriteriaList([])
    timed = {}
    answers = {}
    for label, end in (("early stop", stops), ("no early stop", late)):
        mark = time.perf_counter()
        answers[label] = []
        for lang in PAPER_LANGS:  # per language, as a checkpoint answers
            answers[label] += evaluation.generate(model, loaded.tokenizer, list(problems[lang]["prompt"]),
                                                  max_new_tokens=int(cfg["eval"]["max_new_tokens"]),
                                                  batch_size=int(cfg["eval"]["batch_size"]), stops=end)
        timed[label] = time.perf_counter() - mark
    same = sum(a == b for a, b in zip(answers["early stop"], answers["no early stop"]))
    print(f"\n3. answering {len(prompts)} prompts (up to {cfg['eval']['max_new_tokens']} new tokens): with the early "
          f"stop {timed['early stop']:.1f} s, without {timed['no early stop']:.1f} s: "
          f"{timed['no early stop'] / timed['early stop']:.2f}x; {same} of {len(prompts)} answers identical")

    # 4. deactivation perplexity: the LM head everywhere or at the counted positions only
    examples = [(r["prompt"], fmt.sep + r["response"], lang) for lang in PAPER_LANGS for r in problems[lang]]
    batches = make_batches(loaded.tokenizer, examples, PAPER_LANGS, count="response", batch_size=8, max_length=512)
    counted = sum(int((b["count_mask"] & b["attention_mask"].bool()).sum()) for b in batches)
    positions = sum(int(b["attention_mask"].shape[0] * b["attention_mask"].shape[1]) for b in batches)
    times: dict[bool, list[float]] = {True: [], False: []}
    figures: dict[bool, dict[str, float]] = {}
    for _ in range(args.repeats):
        for only in (False, True):
            mark = time.perf_counter()
            figures[only] = perplexity(model, batches, PAPER_LANGS, only_scored=only)
            times[only].append(time.perf_counter() - mark)
    diff = max(abs(figures[True][k] / figures[False][k] - 1) for k in figures[False])
    full, cheap = statistics.median(times[False]), statistics.median(times[True])
    print(f"\n4. deactivation perplexity, {len(examples)} gold responses ({counted} counted of {positions} positions): "
          f"LM head everywhere {full:.1f} s, at the counted positions {cheap:.1f} s: {full / cheap:.2f}x faster; "
          f"largest relative difference of the figures {diff:.1e} (medians of {args.repeats})")

    # 5. training steps
    if args.train_steps > 0:
        from langneurons.alignment import build_trainer, training_set

        alignment = dpo_alignment(cfg, 16)
        pairs = training_set(alignment, ["sw"], fmt, 0)
        trainer_cfg = {**cfg["trainer"], "max_steps": args.train_steps, "save_steps": 0, "logging_steps": 1}
        step_times: list[float] = []

        from transformers import TrainerCallback

        class Clock(TrainerCallback):
            def on_step_begin(self, *a, **k):
                self.mark = time.perf_counter()

            def on_step_end(self, *a, **k):
                step_times.append(time.perf_counter() - self.mark)

        with tempfile.TemporaryDirectory() as tmp:
            trainer = build_trainer(alignment, trainer_cfg, loaded.model, loaded.tokenizer, pairs.train, Path(tmp), 0,
                                    report_to=[], callbacks=[Clock()])
            trainer.train()
        step = statistics.median(step_times[1:]) if len(step_times) > 1 else step_times[0]
        print(f"\n5. a DPO step (batch {trainer_cfg['per_device_train_batch_size']}): {step:.1f} s (median of "
              f"{max(1, len(step_times) - 1)}); the checkpoint costs {total / step:.1f} steps")


if __name__ == "__main__":
    main()
