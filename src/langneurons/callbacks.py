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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from datasets import Dataset
from transformers import TrainerCallback

from . import evaluation
from .errors import HarnessError
from .metrics import load_math_accuracy
from .neurons import GeneralRule, Identification, NeuronStats, collect_stats, identify, layer_distribution, make_batches
from .neurons.dynamics import LANG_TYPES, lang_types, overlap, transitions
from .neurons.forward import all_reduce_sum, distributed_world, is_main_process

log = logging.getLogger(__name__)

PROBES = ("responses", "gold", "text")
STEP_DIR = "step-{step}"


def _rank() -> int:
    return torch.distributed.get_rank() if distributed_world() > 1 else 0


@dataclass
class NeuronCheckpoint:
    """Everything measured at one step."""

    step: int
    stats: NeuronStats
    ident: Identification | None
    accuracy: dict[str, float]
    samples: list[dict[str, Any]]
    since_previous: dict[str, torch.Tensor] | None = None
    since_start: dict[str, torch.Tensor] | None = None
    overlap_start: dict[str, float] | None = None
    seconds: float = 0.0
    path: Path | None = None
    notes: list[str] = field(default_factory=list)

    def lang_type_counts(self) -> dict[str, dict[str, int]]:
        """Neurons of each type per language (specific / related owned by it; general is shared by all)."""
        if self.ident is None:
            return {}
        types = lang_types(self.ident)
        counts = torch.stack([(types == t).sum(1) for t in range(len(LANG_TYPES))], 1)
        return {lang: dict(zip(LANG_TYPES, counts[k].tolist())) for k, lang in enumerate(self.ident.langs)}


class NeuronCheckpointer:
    """Takes neuron checkpoints of a model; knows nothing of the Trainer (the callback below drives it)."""

    def __init__(self, *, tokenizer: Any, problems: Mapping[str, Dataset], probe_langs: Sequence[str],
                 eval_langs: Sequence[str], neurons: Mapping[str, Any], eval_cfg: Mapping[str, Any], out_dir: Path,
                 model_id: str):
        probe = neurons.get("probe", "responses")
        if probe not in PROBES:
            raise HarnessError(f"unknown probe set {probe!r}: use neurons.probe=<{'|'.join(PROBES)}>")
        missing = [lang for lang in (*probe_langs, *eval_langs) if lang not in problems]
        if missing:
            raise HarnessError(f"no evaluation problems for {', '.join(missing)}: add them to eval_langs")
        self.tokenizer = tokenizer
        self.problems = problems
        self.probe_langs = tuple(probe_langs)
        self.eval_langs = tuple(eval_langs)
        self.neurons = dict(neurons)
        self.eval_cfg = dict(eval_cfg)
        self.out_dir = Path(out_dir)
        self.model_id = model_id
        self.previous: Identification | None = None
        self.start: Identification | None = None

    # ---- history ---------------------------------------------------------------------------------------------------
    def saved_steps(self) -> list[int]:
        steps = []
        for path in self.out_dir.glob("step-*"):
            if path.is_dir() and path.name[5:].isdigit() and (path / "checkpoint.json").is_file():
                steps.append(int(path.name[5:]))
        return sorted(steps)

    def restore(self, up_to_step: int) -> list[int]:
        """Reload the history of a resumed run: step 0 and the latest checkpoint at or before ``up_to_step``.
        Checkpoints after it (written by the interrupted run past its last trainer save) are moved aside."""
        steps = self.saved_steps()
        for step in [s for s in steps if s > up_to_step]:
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
    def _share(self, rows: Sequence[Any]) -> list[Any]:
        world = distributed_world()
        return list(rows) if world == 1 else list(rows)[_rank()::world]

    def _answers(self, model: torch.nn.Module, langs: Sequence[str]) -> dict[str, list[str]]:
        out = {}
        for lang in langs:
            prompts = self._share(self.problems[lang]["prompt"])
            out[lang] = evaluation.generate(
                model, self.tokenizer, prompts, max_new_tokens=int(self.eval_cfg["max_new_tokens"]),
                batch_size=int(self.eval_cfg["batch_size"]), progress=is_main_process(), desc=f"answering {lang}")
        return out

    def _accuracy(self, answers: Mapping[str, list[str]]) -> dict[str, float]:
        golds = {lang: self._share(self.problems[lang]["answer"]) for lang in self.eval_langs}
        metric = load_math_accuracy()
        correct = torch.tensor([float(metric.compute(predictions=answers[lang], references=golds[lang])["correct"])
                                for lang in self.eval_langs], dtype=torch.float64)
        total = torch.tensor([float(len(golds[lang])) for lang in self.eval_langs], dtype=torch.float64)
        if distributed_world() > 1:
            correct, total = all_reduce_sum([correct, total])
        acc = {lang: float(c / t) if t else 0.0 for lang, c, t in zip(self.eval_langs, correct, total)}
        acc["avg"] = sum(acc.values()) / len(acc) if acc else 0.0
        return acc

    def _probe_examples(self, answers: Mapping[str, list[str]]) -> tuple[list[tuple[str, str, str]], str]:
        probe = self.neurons.get("probe", "responses")
        n = self.neurons.get("n")
        examples = []
        for lang in self.probe_langs:
            rows = self.problems[lang]
            prompts = self._share(rows["prompt"])
            if probe == "responses":
                texts = answers[lang]
            elif probe == "gold":
                texts = [" " + r for r in self._share(rows["response"])]
            else:  # plain text: the question itself, every token counted
                prompts, texts = self._share(rows["question"]), [""] * len(prompts)
            pairs = list(zip(prompts, texts))[: None if n is None else int(n)]
            examples += [(p, t, lang) for p, t in pairs]
        return examples, ("all" if probe == "text" else "response")

    def take(self, model: torch.nn.Module, step: int) -> NeuronCheckpoint:
        """Measure ``model`` at training step ``step`` (every rank must call this; only rank 0 writes)."""
        started = time.perf_counter()
        answer_langs = list(dict.fromkeys([*self.eval_langs, *(
            self.probe_langs if self.neurons.get("probe", "responses") == "responses" else [])]))
        answers = self._answers(model, answer_langs)
        accuracy = self._accuracy(answers)
        examples, count = self._probe_examples(answers)
        batches = make_batches(self.tokenizer, examples, self.probe_langs, count=count,
                               batch_size=int(self.neurons["batch_size"]), max_length=self.neurons.get("max_length"))
        stats = collect_stats(model, batches, self.probe_langs, count=count, progress=is_main_process(), metadata={
            "model_id": self.model_id, "step": step,
            "probe": {"kind": self.neurons.get("probe", "responses"), "count": count,
                      "problems_per_lang": {lang: len(self.problems[lang]) for lang in self.probe_langs}},
        })
        ckpt = NeuronCheckpoint(step=step, stats=stats, ident=None, accuracy=accuracy,
                                samples=self._samples(answers))
        if bool((stats.tokens == 0).any()):
            empty = [lang for lang, t in zip(stats.langs, stats.tokens.tolist()) if t == 0]
            ckpt.notes.append(f"no probe tokens for {', '.join(empty)} (empty answers): identification skipped")
            log.warning("step %d: %s", step, ckpt.notes[-1])
        else:
            ckpt.ident = identify(stats, self.neurons.get("method", "ternary"), top_rate=float(self.neurons["top_rate"]),
                                  lam=self.neurons.get("lam", "auto"), bar=float(self.neurons["bar"]),
                                  general=GeneralRule(min_langs=self.neurons.get("general_min_langs")))
            if self.previous is not None:
                ckpt.since_previous = transitions(self.previous, ckpt.ident)
            if self.start is not None:
                ckpt.since_start = transitions(self.start, ckpt.ident)
                ckpt.overlap_start = overlap(self.start, ckpt.ident)
            self.previous = ckpt.ident
            if self.start is None:
                self.start = ckpt.ident
        ckpt.seconds = time.perf_counter() - started
        if is_main_process():
            ckpt.path = self._save(ckpt)
        return ckpt

    def _samples(self, answers: Mapping[str, list[str]]) -> list[dict[str, Any]]:
        k = int(self.eval_cfg.get("samples", 3))
        rows = []
        for lang in self.eval_langs:
            for i, answer in enumerate(answers[lang][:k]):
                row = self.problems[lang][i * distributed_world() + _rank()]
                rows.append({"lang": lang, "id": row["id"], "question": row["question"], "answer": answer.strip(),
                             "gold": row["answer"]})
        return rows

    def _save(self, ckpt: NeuronCheckpoint) -> Path:
        """Write the checkpoint into a temporary folder, then rename it into place: a crash never leaves a partial
        ``step-<N>`` folder behind."""
        final = self.out_dir / STEP_DIR.format(step=ckpt.step)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        ckpt.stats.save(tmp)
        record: dict[str, Any] = {"step": ckpt.step, "accuracy": ckpt.accuracy, "seconds": ckpt.seconds,
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
        (tmp / "checkpoint.json").write_text(json.dumps(record, indent=1, ensure_ascii=False))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        return final


class NeuronCheckpointCallback(TrainerCallback):
    """Drives a :class:`NeuronCheckpointer` from the Trainer: step 0, every ``every_n_steps``, and the end."""

    def __init__(self, checkpointer: NeuronCheckpointer, every_n_steps: int, on_checkpoint=None):
        self.checkpointer = checkpointer
        self.every = int(every_n_steps)
        self.on_checkpoint = on_checkpoint  # called on rank 0 with each NeuronCheckpoint (the tracker's hook)
        self.taken: set[int] = set()

    def _take(self, model: torch.nn.Module, step: int) -> None:
        if step in self.taken:
            return
        ckpt = self.checkpointer.take(model, step)
        self.taken.add(step)
        if self.on_checkpoint is not None and is_main_process():
            self.on_checkpoint(ckpt)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step > 0:  # resumed: continue the saved history instead of starting a new one
            self.taken.update(self.checkpointer.restore(state.global_step))
        self._take(model, state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every > 0 and state.global_step % self.every == 0:
            self._take(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._take(model, state.global_step)
