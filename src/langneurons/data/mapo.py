"""MAPO preference pairs (She et al. 2024; docs/science.md, "MAPO reward and pairing") from the policy's own answers.

For every question of a parallel set asked in a non-English language x, the policy samples k answers; it also
samples k answers to the parallel English question. A scorer rewards each x answer (MAPO: how well a translation
model turns it into the English answers). Answers are ranked by reward; an answer whose final number is correct
is *chosen* over every answer ranked below it, except answers with the same reward or the same text. Questions are
split 9:1 (train/eval) by parallel id, so a problem never sits on both sides in any language.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import torch
from datasets import Dataset

from ..errors import HarnessError
from ..evaluation import AnswerStops, padding_side
from ..neurons.probing import evaluating
from ..prompts import INSTRUCTION_STOPS, is_correct, trim_answer
from ..scoring import Scorer

ENGLISH = "en"
FORMAT = 1  # bump when the pairs built from the same inputs change: it is part of every cache key


class Sampler(Protocol):
    def sample(self, prompts: Sequence[str], k: int) -> list[list[str]]:
        """``k`` sampled answers to each prompt, in prompt order."""
        ...


@dataclass
class PairSet:
    """MAPO pairs split by question, with the statistics a run logs about them."""

    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)


def mapo_pairs(texts: Sequence[str], rewards: Sequence[float], correct: Sequence[bool]) -> list[tuple[int, int]]:
    """(chosen, rejected) indices into ``texts`` by MAPO's rules: rank by reward (ties keep sampling order); a
    correct answer is chosen over every lower-ranked answer, skipping equal rewards and identical texts. Each
    (chosen text, rejected text) pair appears once."""
    ranked = sorted(range(len(texts)), key=lambda i: -rewards[i])
    out, seen = [], set()
    for pos, i in enumerate(ranked):
        if not correct[i]:
            continue
        for j in ranked[pos + 1:]:
            if rewards[j] == rewards[i] or texts[j] == texts[i] or (texts[i], texts[j]) in seen:
                continue
            seen.add((texts[i], texts[j]))
            out.append((i, j))
    return out


def split_ids(ids: Sequence[int], eval_fraction: float, seed: int) -> set[int]:
    """The question ids held out for evaluation: ``round(eval_fraction * len(ids))`` of them, drawn with ``seed``."""
    unique = sorted(set(ids))
    n_eval = int(round(eval_fraction * len(unique)))
    if n_eval >= len(unique):
        n_eval = len(unique) - 1  # training needs at least one question
    return set(random.Random(f"mapo-split/{seed}").sample(unique, max(n_eval, 0)))


def build_pairs(problems: Mapping[str, Dataset], sampler: Sampler, scorer: Scorer, *, k: int,
                include_gold: bool = False, eval_fraction: float = 0.1, seed: int = 0, sep: str = " ") -> PairSet:
    """MAPO pairs for every non-English language in ``problems`` (which must hold ``en``, the parallel English
    questions, with the same ids). ``include_gold`` adds each question's gold response as a candidate and as an
    English reference. One sampler call for all prompts; one scorer call per question. ``sep``: what the prompt
    format writes between a prompt and its response."""
    if ENGLISH not in problems:
        raise HarnessError("MAPO needs the parallel English questions: the problem set must include 'en'")
    aligned = [lang for lang in problems if lang != ENGLISH]
    if not aligned:
        raise HarnessError("MAPO aligns non-English languages to English: choose at least one language besides en "
                           "(e.g. lang=sw)")
    english = {row["id"]: row for row in problems[ENGLISH]}
    rows = {lang: list(problems[lang]) for lang in aligned}
    for lang in aligned:
        missing = [r["id"] for r in rows[lang] if r["id"] not in english]
        if missing:
            raise HarnessError(f"MAPO: {lang} question id {missing[0]} has no parallel English question")
    needed = sorted({r["id"] for lang in aligned for r in rows[lang]})
    en_rows = [english[i] for i in needed] if scorer.needs_english else []
    prompts = [r["prompt"] for r in en_rows] + [r["prompt"] for lang in aligned for r in rows[lang]]
    samples = iter(sampler.sample(prompts, k))

    references: dict[int, list[str]] = {}
    correct_counts: dict[str, list[int]] = {}
    for row in en_rows:
        texts = [t for t in next(samples) if t.strip()]
        _count(correct_counts, ENGLISH, texts, row["answer"])
        references[row["id"]] = texts + ([row["response"]] if include_gold else [])

    held_out = split_ids(needed, eval_fraction, seed)
    train, held = [], []
    with_pairs = {lang: 0 for lang in aligned}
    for lang in aligned:
        for row in rows[lang]:
            sampled = [t for t in next(samples) if t.strip()]
            _count(correct_counts, lang, sampled, row["answer"])
            texts = sampled + ([row["response"]] if include_gold else [])
            if not texts:
                continue
            rewards = scorer.score(texts, lang, references.get(row["id"], []), gold=row["answer"])
            correct = [is_correct(t, row["answer"]) for t in texts]
            pairs = mapo_pairs(texts, rewards, correct)
            with_pairs[lang] += bool(pairs)
            for i, j in pairs:
                record = {"prompt": row["prompt"], "chosen": sep + texts[i], "rejected": sep + texts[j],
                          "lang": lang, "id": int(row["id"]), "chosen_reward": float(rewards[i]),
                          "rejected_reward": float(rewards[j])}
                (held if row["id"] in held_out else train).append(record)
    stats = {
        "k": k, "include_gold": include_gold,
        "questions": {lang: len(rows[lang]) for lang in aligned},
        "questions_with_pairs": with_pairs,
        "pairs": {"train": _per_lang(train, aligned), "eval": _per_lang(held, aligned)},
        "correct_fraction": {lang: (c / n if n else 0.0) for lang, (c, n) in correct_counts.items()},
    }
    return PairSet(train=train, eval=held, stats=stats)


def _count(counts: dict[str, list[int]], lang: str, texts: Sequence[str], gold: float) -> None:
    c = counts.setdefault(lang, [0, 0])
    c[0] += sum(is_correct(t, gold) for t in texts)
    c[1] += len(texts)


def _per_lang(records: Sequence[Mapping[str, Any]], langs: Sequence[str]) -> dict[str, int]:
    out = {lang: 0 for lang in langs}
    for r in records:
        out[r["lang"]] += 1
    return out


def empty_reason(stats: Mapping[str, Any]) -> str:
    """Why a pair set has no training pairs, and what to change: one line."""
    correct = stats.get("correct_fraction", {})
    langs = list(stats.get("questions", {}))
    if not stats.get("include_gold") and all(correct.get(lang, 0.0) == 0.0 for lang in langs):
        return (f"MAPO built no preference pairs: none of the policy's {stats.get('k')} sampled answers per question "
                f"was correct in {', '.join(langs)}, and a pair needs a correct chosen answer; set "
                "alignment.include_gold=true (adds the gold answer as a candidate), raise alignment.k, or start from "
                "a model that solves some of the questions")
    return ("MAPO built no training pairs: no correct answer ranked above another answer with a different reward "
            f"(questions with pairs: {dict(stats.get('questions_with_pairs', {}))}); use more questions "
            "(alignment.questions.n), a larger alignment.k, or scorer=correctness")


# ---- sampling from the policy ------------------------------------------------------------------------------------
class HFSampler:
    """Temperature sampling with transformers ``generate``: batches of prompts, k answers each, a fixed seed
    (the global random state is left untouched, so training is the same whether pairs were cached or not)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, temperature: float = 0.8, top_p: float = 1.0,
                 max_new_tokens: int = 64, batch_size: int = 8, seed: int = 0,
                 stops: Sequence[str] = INSTRUCTION_STOPS):
        self.model, self.tokenizer = model, tokenizer
        self.stops = tuple(stops)
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.max_new_tokens, self.batch_size, self.seed = int(max_new_tokens), int(batch_size), int(seed)

    def sample(self, prompts: Sequence[str], k: int) -> list[list[str]]:
        from ..console import bar

        device = next(self.model.parameters()).device
        cuda = [device.index or 0] if device.type == "cuda" else []
        out: list[list[str]] = []
        end = AnswerStops(self.model, self.tokenizer, self.stops)
        with torch.random.fork_rng(devices=cuda), evaluating(self.model), \
                padding_side(self.tokenizer, "left"):
            torch.manual_seed(self.seed)
            batches = range(0, len(prompts), self.batch_size)
            progress = bar(len(batches), "MAPO: sampling", unit="batch")
            for start in batches:
                enc = self.tokenizer(list(prompts[start:start + self.batch_size]), return_tensors="pt",
                                     padding=True).to(device)
                ids = self.model.generate(**enc, do_sample=True, temperature=self.temperature, top_p=self.top_p,
                                          top_k=0, num_return_sequences=k, max_new_tokens=self.max_new_tokens,
                                          pad_token_id=self.tokenizer.pad_token_id, **end.generate_kwargs())
                texts = self.tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                out.extend([end.trim(t) for t in texts[i:i + k]] for i in range(0, len(texts), k))
                progress.update()
            progress.close()
        return out


class VLLMSampler:
    """Temperature sampling with vLLM (``alignment.sampler=vllm``), for long answers from large models."""

    def __init__(self, model_path: str, *, temperature: float = 0.8, top_p: float = 1.0, max_new_tokens: int = 64,
                 seed: int = 0, gpu_memory_utilization: float = 0.4, stops: Sequence[str] = INSTRUCTION_STOPS):
        from vllm import LLM, SamplingParams  # checked by require_vllm before we get here

        self.llm = LLM(model=model_path, seed=seed, gpu_memory_utilization=gpu_memory_utilization)
        self.stops = tuple(stops)
        self.params = dict(temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed,
                           stop=list(self.stops) or None)
        self._sampling_params = SamplingParams

    def sample(self, prompts: Sequence[str], k: int) -> list[list[str]]:
        params = self._sampling_params(n=k, **self.params)
        results = self.llm.generate(list(prompts), params)
        return [[trim_answer(o.text, self.stops) for o in r.outputs] for r in results]


def require_vllm() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise HarnessError("alignment.sampler=vllm needs vLLM, which is not installed: `pip install vllm` (on a "
                           "CUDA machine), or use alignment.sampler=hf") from None
