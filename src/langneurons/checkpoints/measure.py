"""The measurement at a neuron checkpoint, on the current model (adapters active, eval mode, no grad, training mode
restored afterwards):

1. answer the evaluation questions of every language greedily -> accuracy per language (and, with
   ``eval.answer_lang``, the share of answers written in the asked language);
2. build the probe set (by default those same answers, force-decoded after their prompts, response tokens only);
3. count activations per probe language, identify specific / related / general neurons;
4. compare with the previous checkpoint and with step 0 (type transitions, overlap of each language's set);
5. save the checkpoint (:mod:`.record`) and hand it to the tracker.

Under torch.distributed every rank answers and counts its share of the problems; counts and accuracies are summed
across ranks, and only rank 0 saves and logs. :class:`NeuronCheckpointer` knows nothing of the Trainer: the callback
(:mod:`.callback`) drives it during training, ``analyze.py probe`` on any saved model.
"""

from __future__ import annotations

import logging
import time
from copy import deepcopy
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from datasets import Dataset

from .. import answer_language, console, evaluation
from ..distributed import all_reduce_sum, is_rank_zero, process_rank, rank_share, share_size, world_size
from ..errors import HarnessError
from ..metrics import load_math_accuracy
from ..neurons import Identification, NeuronStats, collect_stats, make_batches
from ..neurons.dynamics import overlap, transitions
from ..neurons.reference import load_stats
from ..prompts import PromptFormat, prompt_format
from ..settings import EvalSettings, NeuronSettings
from . import record
from .record import NeuronCheckpoint

log = logging.getLogger(__name__)


def merged_copy(model: torch.nn.Module) -> torch.nn.Module | None:
    """A copy of a PEFT ``model`` with its adapters merged into the weights (the same function, without the
    adapters' extra matmuls and module calls), or None where that does not apply: a model without adapters,
    several processes (the weights may be sharded), a quantized base (merging would dequantize it) or one spread
    over devices. The model being trained is never touched: merging in place and unmerging afterwards would not
    restore its frozen weights bit for bit."""
    from peft import PeftModel

    if not isinstance(model, PeftModel) or world_size() > 1:
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
        return record.saved_steps(self.out_dir)

    def restore(self, up_to_step: int) -> list[int]:
        """Reload the history of a resumed run: step 0 and the latest checkpoint at or before ``up_to_step``.
        Checkpoints after it (written by the interrupted run past its last trainer save) are moved aside."""
        steps = self.saved_steps()
        for step in [s for s in steps if s > up_to_step and is_rank_zero()]:  # one rank moves, all read
            record.supersede(self.out_dir, step)
        steps = [s for s in steps if s <= up_to_step]
        if steps:
            self.start = record.load_identification(self.out_dir, steps[0])
            self.previous = record.load_identification(self.out_dir, steps[-1])
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
        world = world_size()
        return list(rows) if world == 1 else rank_share(rows, process_rank(), world)

    def _answers(self, model: torch.nn.Module, langs: Sequence[str], step: int = 0) -> dict[str, list[str]]:
        out = {}
        world = world_size()
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
        if world_size() > 1:
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
            keep = len(range(process_rank(), self._probe_limit(lang), world_size()))
            examples += [(p, t, lang) for p, t in list(zip(prompts, texts))[:keep]]
        return examples, ("all" if probe == "text" else "response")

    def _probe_limit(self, lang: str) -> int:
        n = self.neurons.n
        return len(self.problems[lang]) if n is None else min(int(n), len(self.problems[lang]))

    def _padded_probe(self, examples: list[tuple[str, str, str]], count: str) -> list[dict[str, torch.Tensor]]:
        """Probe batches of ``examples``, padded to as many rows (hence batches) as the longest rank's share; padded
        rows have an empty count_mask, so they count nothing (count_mask marks every counted token, also for
        count="all")."""
        world = world_size()
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
        if is_rank_zero():
            ckpt.path = self._save(ckpt, timings=lambda: {"seconds": time.perf_counter() - started,
                                                          "phases": {**phases, "save": time.perf_counter() - mark}})
        phases["save"] = time.perf_counter() - mark
        ckpt.seconds = time.perf_counter() - started
        return ckpt

    def _samples(self, answers: Mapping[str, list[str]]) -> list[dict[str, Any]]:
        k = self.eval_cfg.samples
        rows = []
        for lang in self.eval_langs:
            for i, answer in enumerate(answers[lang][:k]):
                row = self.problems[lang][i * world_size() + process_rank()]
                rows.append({"lang": lang, "id": row["id"], "question": row["question"], "answer": answer.strip(),
                             "gold": row["answer"]})
        return rows

    def _save(self, ckpt: NeuronCheckpoint, timings=None) -> Path:
        return record.write(ckpt, self.out_dir, timings)
