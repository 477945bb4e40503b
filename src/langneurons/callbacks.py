"""Neuron checkpoints during training: a Trainer callback that adapts the neuron science to the training loop.

At step 0, every ``every_n_steps`` and at the end of training, on the current model (adapters active, eval mode,
no grad, training mode restored afterwards) it:

1. answers the evaluation questions of every language greedily -> accuracy per language;
2. builds the probe set (by default those same answers, force-decoded after their prompts, response tokens only);
3. counts activations per probe language, identifies specific / related / general neurons;
4. compares with the previous checkpoint and with step 0 (type transitions, overlap of each language's set);
5. saves statistics and identification under ``<run dir>/neurons/step-<N>/`` and hands everything to the tracker.

Under torch.distributed every rank answers and counts its share of the problems; counts and accuracies are summed
across ranks, and only rank 0 saves and logs.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from datasets import Dataset
from transformers import TrainerCallback

from . import answer_language, console, evaluation, faults
from .prompts import PromptFormat, prompt_format
from .errors import HarnessError, full_disk_is_one_line
from .metrics import load_math_accuracy
from .settings import EvalSettings, NeuronSettings
from .neurons import Identification, NeuronStats, collect_stats, layer_distribution, make_batches
from .neurons.dynamics import lang_type_counts, overlap, transitions
from .neurons.forward import all_reduce_sum, distributed_world, is_main_process
from .neurons.reference import load_stats
from .distributed import rank_share, share_size

log = logging.getLogger(__name__)

STEP_DIR = "step-{step}"


def saved_steps(folder: Path) -> list[int]:
    """The steps of the complete neuron checkpoints in ``folder`` (a run's ``neurons/``), sorted."""
    return sorted(int(path.name[5:]) for path in Path(folder).glob("step-*")
                  if path.is_dir() and path.name[5:].isdigit() and (path / "checkpoint.json").is_file())


def _rank() -> int:
    return torch.distributed.get_rank() if distributed_world() > 1 else 0


def merged_copy(model: torch.nn.Module) -> torch.nn.Module | None:
    """A copy of a PEFT ``model`` with its adapters merged into the weights (the same function, without the
    adapters' extra matmuls and module calls), or None where that does not apply: a model without adapters,
    several processes (the weights may be sharded), a quantized base (merging would dequantize it) or one spread
    over devices. The model being trained is never touched: merging in place and unmerging afterwards would not
    restore its frozen weights bit for bit."""
    from peft import PeftModel

    if not isinstance(model, PeftModel) or distributed_world() > 1:
        return None
    base = model.get_base_model()
    if getattr(base, "hf_quantizer", None) is not None or getattr(base, "hf_device_map", None):
        return None
    merged = deepcopy(model).merge_and_unload()
    # A forward patched onto an instance (TRL's fused LM head) is copied as a closure over the *original* model's
    # forward: the copy would run the trained model. The copy measures with its class's own forward.
    for module in merged.modules():
        module.__dict__.pop("forward", None)
    return merged


@dataclass
class NeuronCheckpoint:
    """Everything measured at one step."""

    step: int
    stats: NeuronStats
    ident: Identification | None
    accuracy: dict[str, float]
    answer_lang: dict[str, float]  # share of answers written in the asked language (empty: not checked)
    samples: list[dict[str, Any]]
    since_previous: dict[str, torch.Tensor] | None = None
    since_start: dict[str, torch.Tensor] | None = None
    overlap_start: dict[str, float] | None = None
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds: answer, count, identify, save
    path: Path | None = None
    notes: list[str] = field(default_factory=list)

    def lang_type_counts(self) -> dict[str, dict[str, int]]:
        """Neurons of each type per language (specific / related owned by it; general is shared by all)."""
        if self.ident is None:
            return {}
        return lang_type_counts(self.ident)


def checkpoint_line(ckpt: NeuronCheckpoint) -> str:
    """One console line for a checkpoint: its accuracy per language and the neurons of each type."""
    acc = " ".join(f"{lang} {v:.2f}" for lang, v in ckpt.accuracy.items() if lang != "avg")
    line = f"neuron checkpoint at step {ckpt.step} ({ckpt.seconds:.1f} s): accuracy {acc} (avg {ckpt.accuracy.get('avg', 0):.2f})"
    if ckpt.ident is not None:
        t = ckpt.ident.totals
        line += f"; neurons: {t['specific']} specific, {t['related']} related, {t['general']} general"
    return line + "".join(f"; note: {n}" for n in ckpt.notes)


class NeuronCheckpointer:
    """Takes neuron checkpoints of a model; knows nothing of the Trainer (the callback below drives it)."""

    def __init__(self, *, tokenizer: Any, problems: Mapping[str, Dataset], probe_langs: Sequence[str],
                 eval_langs: Sequence[str], neurons: "NeuronSettings | Mapping[str, Any]",
                 eval_cfg: "EvalSettings | Mapping[str, Any]", out_dir: Path, model_id: str,
                 template: "str | PromptFormat" = "mathoctopus"):
        missing = [lang for lang in (*probe_langs, *eval_langs) if lang not in problems]
        if missing:
            raise HarnessError(f"no evaluation problems for {', '.join(missing)}: add them to eval_langs")
        self.tokenizer = tokenizer
        self.problems = problems
        self.probe_langs = tuple(probe_langs)
        self.eval_langs = tuple(eval_langs)
        self.neurons = NeuronSettings.of(neurons)
        self.eval_cfg = EvalSettings.of(eval_cfg)
        self.out_dir = Path(out_dir)
        self.model_id = model_id
        self.format = prompt_format(template, tokenizer)  # the problems' prompts are in it: where answers end
        self._stops: evaluation.AnswerStops | None = None  # built at the first checkpoint, reused
        self.previous: Identification | None = None
        self.start: Identification | None = None

    # ---- history ---------------------------------------------------------------------------------------------------
    def saved_steps(self) -> list[int]:
        return saved_steps(self.out_dir)

    def restore(self, up_to_step: int) -> list[int]:
        """Reload the history of a resumed run: step 0 and the latest checkpoint at or before ``up_to_step``.
        Checkpoints after it (written by the interrupted run past its last trainer save) are moved aside."""
        steps = self.saved_steps()
        for step in [s for s in steps if s > up_to_step and is_main_process()]:  # one rank moves, all read
            stale = self.out_dir / STEP_DIR.format(step=step)
            stale.rename(stale.with_name(f"{stale.name}.superseded-{int(time.time())}"))
        steps = [s for s in steps if s <= up_to_step]
        if steps:
            if Identification.is_saved(self.out_dir / STEP_DIR.format(step=steps[0])):
                self.start = Identification.load(self.out_dir / STEP_DIR.format(step=steps[0]))
            if Identification.is_saved(self.out_dir / STEP_DIR.format(step=steps[-1])):
                self.previous = Identification.load(self.out_dir / STEP_DIR.format(step=steps[-1]))
        return steps

    # ---- one checkpoint --------------------------------------------------------------------------------------------
    # Under FSDP / ZeRO-3 every forward is a collective (parameters are gathered from all ranks), so every rank must
    # run exactly as many forwards as the others or the job hangs. Ranks split the problems round-robin, so their
    # shares differ by at most one row; each rank pads its share to the longest one (share_size) with rows whose
    # results are dropped (answers cut off, count_mask cleared), so every rank makes the same number of generate
    # calls and of probe batches. Inside generate, synced_gpus keeps the ranks stepping together until the longest
    # answer on any rank is done. The padding never changes a result: summed over ranks the statistics and the
    # accuracy are those of one process (tests/test_distributed.py).
    def _share(self, rows: Sequence[Any]) -> list[Any]:
        world = distributed_world()
        return list(rows) if world == 1 else rank_share(rows, _rank(), world)

    def _answers(self, model: torch.nn.Module, langs: Sequence[str], step: int = 0) -> dict[str, list[str]]:
        out = {}
        world = distributed_world()
        if self._stops is None:
            self._stops = evaluation.AnswerStops(model, self.tokenizer, self.format.stop)
        batch_size = self.eval_cfg.batch_size
        bar = console.bar(sum(-(-share_size(len(self.problems[lang]), world) // batch_size) for lang in langs),
                          f"step {step}: answering", unit="batch")
        for lang in langs:
            bar.set_postfix_str(lang, refresh=False)
            prompts = self._share(self.problems[lang]["prompt"])
            real = len(prompts)
            pad = share_size(len(self.problems[lang]), world) - real
            if pad:
                prompts += [self.problems[lang]["prompt"][0]] * pad
            out[lang] = evaluation.generate(
                model, self.tokenizer, prompts, max_new_tokens=self.eval_cfg.max_new_tokens,
                batch_size=batch_size, synced_gpus=True if world > 1 else None, stops=self._stops, bar=bar)[:real]
        bar.close()
        return out

    def _accuracy(self, answers: Mapping[str, list[str]]) -> tuple[dict[str, float], dict[str, float]]:
        """Accuracy per evaluated language (+ avg), and the share of answers written in the asked language (empty
        when ``eval.answer_lang=off``; with ``require`` an answer in another language counts as wrong)."""
        golds = {lang: self._share(self.problems[lang]["answer"]) for lang in self.eval_langs}
        metric = load_math_accuracy()
        mode = self.eval_cfg.answer_lang
        correct, in_lang = [], []
        for lang in self.eval_langs:
            predictions = list(answers[lang])
            if mode != "off":
                ok = answer_language.in_language(predictions, lang, self.eval_langs)
                in_lang.append(float(sum(ok)))
                if mode == "require":
                    predictions = [p if good else "" for p, good in zip(predictions, ok)]
            correct.append(float(metric.compute(predictions=predictions, references=golds[lang])["correct"]))
        sums = [torch.tensor(correct, dtype=torch.float64), torch.tensor(in_lang, dtype=torch.float64),
                torch.tensor([float(len(golds[lang])) for lang in self.eval_langs], dtype=torch.float64)]
        if distributed_world() > 1:
            sums = all_reduce_sum(sums)
        correct_t, in_lang_t, total = sums
        acc = {lang: float(c / t) if t else 0.0 for lang, c, t in zip(self.eval_langs, correct_t, total)}
        acc["avg"] = sum(acc.values()) / len(acc) if acc else 0.0
        shares = {lang: float(k / t) if t else 0.0 for lang, k, t in zip(self.eval_langs, in_lang_t, total)}
        return acc, shares

    def _probe_examples(self, answers: Mapping[str, list[str]]) -> tuple[list[tuple[str, str, str]], str]:
        probe = self.neurons.probe
        examples = []
        for lang in self.probe_langs:
            rows = self.problems[lang]
            prompts = self._share(rows["prompt"])
            sep = self.format.sep
            if probe == "responses":
                # after the format's separator (a space for text formats), as the gold responses and the training
                # pairs write them (the model generated its answer after the prompt; evaluation strips it away)
                texts = [sep + a if a else "" for a in answers[lang]]
            elif probe == "gold":
                texts = [sep + r for r in self._share(rows["response"])]
            else:  # plain text: the question itself, every token counted
                prompts, texts = self._share(rows["question"]), [""] * len(prompts)
            # the first n problems overall (as in one process), not n from every rank's share
            keep = len(range(_rank(), self._probe_limit(lang), distributed_world()))
            examples += [(p, t, lang) for p, t in list(zip(prompts, texts))[:keep]]
        return examples, ("all" if probe == "text" else "response")

    def _probe_limit(self, lang: str) -> int:
        n = self.neurons.n
        return len(self.problems[lang]) if n is None else min(int(n), len(self.problems[lang]))

    def _padded_probe(self, examples: list[tuple[str, str, str]], count: str) -> list[dict[str, torch.Tensor]]:
        """Probe batches of ``examples``, padded to as many rows (hence batches) as the longest rank's share; padded
        rows have an empty count_mask, so they count nothing (count_mask marks every counted token, also for
        count="all")."""
        world = distributed_world()
        rows = sum(share_size(self._probe_limit(lang), world) for lang in self.probe_langs)
        real = len(examples)
        first = self.probe_langs[0]
        examples = examples + [(self.problems[first]["prompt"][0], "", first)] * (rows - real)
        batch_size = self.neurons.batch_size
        batches = make_batches(self.tokenizer, examples, self.probe_langs, count=count, batch_size=batch_size,
                               max_length=self.neurons.max_length)
        for i in range(real, len(examples)):
            batches[i // batch_size]["count_mask"][i % batch_size] = False
        return batches

    def _start_stats(self, model: torch.nn.Module, step: int) -> NeuronStats:
        """Step 0's statistics read from ``neurons.start_stats`` (ours or the reference's format) instead of
        counted: e.g. statistics already measured on the base model, such as the reference's released ones."""
        source = Path(self.neurons.start_stats)
        stats = load_stats(source, self.probe_langs)
        config = getattr(model, "config", None)
        expected = (getattr(config, "num_hidden_layers", None), getattr(config, "intermediate_size", None))
        if None not in expected and (stats.num_layers, stats.num_units) != expected:
            raise HarnessError(f"neurons.start_stats={source} has {stats.num_layers} layers x {stats.num_units} units, "
                               f"the model {expected[0]} x {expected[1]}: give statistics of this model's base")
        stats.metadata = {**stats.metadata, "model_id": self.model_id, "step": step,
                          "probe": {"kind": "start_stats", "source": str(source)}}
        return stats

    def take(self, model: torch.nn.Module, step: int) -> NeuronCheckpoint:
        """Measure ``model`` at training step ``step`` (every rank must call this; only rank 0 writes)."""
        started = time.perf_counter()
        merged = merged_copy(model) if self.neurons.merge_adapters else None
        if merged is not None:
            model = merged
        answer_langs = list(dict.fromkeys([*self.eval_langs, *(
            self.probe_langs if self.neurons.probe == "responses" else [])]))
        phases: dict[str, float] = {}
        mark = time.perf_counter()
        answers = self._answers(model, answer_langs, step)
        accuracy, in_lang = self._accuracy(answers)
        phases["answer"], mark = time.perf_counter() - mark, time.perf_counter()
        if step == 0 and self.neurons.start_stats:
            stats = self._start_stats(model, step)
        else:
            examples, count = self._probe_examples(answers)
            batches = self._padded_probe(examples, count)
            # count="response" counts exactly the count_mask, which _padded_probe cleared on padding rows
            metadata = {"model_id": self.model_id, "step": step, "count": count,
                        "probe": {"kind": self.neurons.probe, "count": count,
                                  "problems_per_lang": {lang: len(self.problems[lang]) for lang in self.probe_langs}}}
            stats = collect_stats(model, batches, self.probe_langs, count="response", progress=console.interactive(),
                                  metadata=metadata, desc=f"step {step}: counting")
        phases["count"], mark = time.perf_counter() - mark, time.perf_counter()
        ckpt = NeuronCheckpoint(step=step, stats=stats, ident=None, accuracy=accuracy, answer_lang=in_lang,
                                samples=self._samples(answers), phases=phases)
        if bool((stats.tokens == 0).any()):
            empty = [lang for lang, t in zip(stats.langs, stats.tokens.tolist()) if t == 0]
            ckpt.notes.append(f"no probe tokens for {', '.join(empty)} (empty answers): identification skipped")
            log.warning("step %d: %s", step, ckpt.notes[-1])
        else:
            hi = self.neurons.lam_hi
            ckpt.ident = self.neurons.identify(stats)
            if ckpt.ident.lam_search and ckpt.ident.lam is not None and ckpt.ident.lam >= hi:
                ckpt.notes.append(f"the lam search ended at the top of its range (lam {hi}): no lam in it lets a "
                                  "general neuron into the selection; neurons.lam_hi=<larger> weights activity more")
            if self.previous is not None:
                ckpt.since_previous = transitions(self.previous, ckpt.ident)
            if self.start is not None:
                ckpt.since_start = transitions(self.start, ckpt.ident)
                ckpt.overlap_start = overlap(self.start, ckpt.ident)
            self.previous = ckpt.ident
            if self.start is None:
                self.start = ckpt.ident
        phases["identify"], mark = time.perf_counter() - mark, time.perf_counter()
        if is_main_process():
            ckpt.path = self._save(ckpt, written=lambda: {"seconds": time.perf_counter() - started,
                                                          "phases": {**phases, "save": time.perf_counter() - mark}})
        phases["save"] = time.perf_counter() - mark
        ckpt.seconds = time.perf_counter() - started
        return ckpt

    def _samples(self, answers: Mapping[str, list[str]]) -> list[dict[str, Any]]:
        k = self.eval_cfg.samples
        rows = []
        for lang in self.eval_langs:
            for i, answer in enumerate(answers[lang][:k]):
                row = self.problems[lang][i * distributed_world() + _rank()]
                rows.append({"lang": lang, "id": row["id"], "question": row["question"], "answer": answer.strip(),
                             "gold": row["answer"]})
        return rows

    def _save(self, ckpt: NeuronCheckpoint, written=None) -> Path:
        """Write the checkpoint into a temporary folder, then rename it into place: a crash never leaves a partial
        ``step-<N>`` folder behind. ``written()`` gives the record's ``seconds`` and ``phases`` once everything else
        is written (so that they include the writing). A full disk is a one-line error; the earlier checkpoints stay
        as they were."""
        final = self.out_dir / STEP_DIR.format(step=ckpt.step)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # a write that a kill cut short
        try:
            with full_disk_is_one_line("the neuron checkpoint", final, run_dir=self.out_dir.parent):
                return self._write(ckpt, tmp, final, written)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _write(self, ckpt: NeuronCheckpoint, tmp: Path, final: Path, written=None) -> Path:
        tmp.mkdir(parents=True)
        ckpt.stats.save(tmp)
        record: dict[str, Any] = {"step": ckpt.step, "accuracy": ckpt.accuracy, "answer_lang": ckpt.answer_lang,
                                  "seconds": ckpt.seconds, "phases": ckpt.phases,
                                  "notes": ckpt.notes, "samples": ckpt.samples}
        if ckpt.ident is not None:
            ckpt.ident.save(tmp)
            record["identification"] = ckpt.ident.summary()
            record["lang_type_counts"] = ckpt.lang_type_counts()
            record["layer_distribution"] = layer_distribution(ckpt.ident).to_dict()
            if ckpt.overlap_start is not None:
                record["overlap_with_start"] = ckpt.overlap_start
            for name, mats in (("since_previous", ckpt.since_previous), ("since_start", ckpt.since_start)):
                if mats is not None:
                    record[f"transitions_{name}"] = {lang: m.tolist() for lang, m in mats.items()}
        if written is not None:
            record.update(written())
        faults.reach("checkpoint.write", tmp)
        (tmp / "checkpoint.json").write_text(json.dumps(record, indent=1, ensure_ascii=False))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        return final


class NeuronCheckpointCallback(TrainerCallback):
    """Drives a :class:`NeuronCheckpointer` from the Trainer: step 0, every ``every_n_steps``, and the end.

    On a step where the Trainer also saves, the neuron checkpoint is taken right *after* the trainer checkpoint
    (``on_save``), so the two always agree: a crash in between leaves a trainer checkpoint without its neuron
    checkpoint, and the resumed run takes exactly that one again, from the same weights. With
    ``every_n_steps`` a multiple of ``trainer.save_steps`` a resumed run repeats no checkpoint step and misses none.
    """

    def __init__(self, checkpointer: NeuronCheckpointer, every_n_steps: int, on_checkpoint=None):
        self.checkpointer = checkpointer
        self.every = int(every_n_steps or 0)
        self.on_checkpoint = on_checkpoint  # called on rank 0 with each NeuronCheckpoint (the tracker's hook)
        self.taken: set[int] = set()
        self.pending: int | None = None

    def _take(self, model: torch.nn.Module, step: int) -> None:
        if step in self.taken:
            return
        ckpt = self.checkpointer.take(model, step)
        self.taken.add(step)
        if is_main_process():
            log.info("%s", checkpoint_line(ckpt))
        if self.on_checkpoint is not None and is_main_process():
            self.on_checkpoint(ckpt)

    def _due(self, step: int) -> bool:
        return step == 0 or (self.every > 0 and step % self.every == 0)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step > 0:  # resumed: continue the saved history instead of starting a new one
            self.taken.update(self.checkpointer.restore(state.global_step))
        if self._due(state.global_step):
            self._take(model, state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self._due(state.global_step):
            if control.should_save:
                self.pending = state.global_step
            else:
                self._take(model, state.global_step)

    def on_save(self, args, state, control, model=None, **kwargs):
        if self.pending == state.global_step:
            self.pending = None
            self._take(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._take(model, state.global_step)
