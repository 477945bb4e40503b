"""Greedy answers to problem prompts (scored per language with the shipped math_accuracy metric).

One generation pass per checkpoint serves twice: its answers are scored for accuracy, and the same answers,
force-decoded after their prompts, are the probe set the neuron statistics count (the paper's protocol).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch

from . import console
from .neurons.probing import evaluating
from .prompts import INSTRUCTION_STOPS, trim_answer

# End-of-turn tokens of common chat formats (Gemma, ChatML, Llama 3): a chat model ends its answer with one.
END_OF_TURN_TOKENS = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>")


@contextmanager
def padding_side(tokenizer: Any, side: str) -> Iterator[None]:
    before = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield
    finally:
        tokenizer.padding_side = before


def end_of_answer_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """Every token id that ends an answer: the model's EOS id(s) from its generation config (a chat model may list
    its end-of-turn token there), the tokenizer's EOS, and the end-of-turn tokens of common chat formats that the
    vocabulary holds."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in ([configured] if isinstance(configured, int) else list(configured or [])) + [tokenizer.eos_token_id]:
        if value is not None and int(value) not in ids:
            ids.append(int(value))
    vocab = tokenizer.get_vocab()
    for token in END_OF_TURN_TOKENS:
        if token in vocab and vocab[token] not in ids:
            ids.append(vocab[token])
    return ids


class AnswerStops:
    """What ends a generated answer, for ``model.generate``: the end-of-answer token ids and a stopping criterion
    for the format's stop strings, built once (on a 262k-token vocabulary it costs a second) and reused for
    every batch. Generation stops early on them; :meth:`trim` cuts the decoded text at the same strings."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, stops: Sequence[str] = ()):
        from transformers import StoppingCriteriaList, StopStringCriteria

        self.stops = tuple(stops)
        self.eos_ids = end_of_answer_ids(model, tokenizer)
        self.criteria = StoppingCriteriaList([StopStringCriteria(tokenizer, list(self.stops))] if self.stops else [])

    def generate_kwargs(self) -> dict[str, Any]:
        return {"eos_token_id": self.eos_ids, "stopping_criteria": self.criteria}

    def trim(self, text: str) -> str:
        return trim_answer(text, self.stops)


def generate(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = 64,
             batch_size: int = 16, progress: bool = False, desc: str = "generating",
             synced_gpus: bool | None = None, stops: Sequence[str] | AnswerStops = INSTRUCTION_STOPS,
             bar: Any = None) -> list[str]:
    """Greedy continuations of ``prompts`` (left-padded batches), each ending at the model's end-of-answer tokens
    or the first of ``stops`` (generation stops there; the text is cut there). ``synced_gpus`` (None:
    transformers decides) keeps all ranks decoding until every rank's batch is done. ``bar``: a progress bar of
    the caller's to advance by one per batch (instead of a bar of its own, shown with ``progress``)."""
    device = next(model.parameters()).device
    end = stops if isinstance(stops, AnswerStops) else AnswerStops(model, tokenizer, stops)
    out: list[str] = []
    batches = range(0, len(prompts), batch_size)
    with evaluating(model), padding_side(tokenizer, "left"):
        own = console.bar(len(batches), desc) if bar is None and progress else None
        bar = bar if bar is not None else own
        for start in batches:
            chunk = list(prompts[start:start + batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
            ids = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, synced_gpus=synced_gpus,
                                 pad_token_id=tokenizer.pad_token_id, **end.generate_kwargs())
            new = ids[:, enc["input_ids"].shape[1]:]
            out.extend(end.trim(t) for t in tokenizer.batch_decode(new, skip_special_tokens=True))
            if bar is not None:
                bar.update()
        if own is not None:
            own.close()
    return out
