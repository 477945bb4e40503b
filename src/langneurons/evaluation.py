"""Greedy answers to problem prompts (scored per language with the shipped math_accuracy metric).

One generation pass per checkpoint serves twice: its answers are scored for accuracy, and the same answers,
force-decoded after their prompts, are the probe set the neuron statistics count (the paper's protocol).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from tqdm.auto import tqdm


# Where a base model that keeps writing starts the next instruction: the answer ends before it.
STOP_MARKERS = ("\n\n###", "\n### ", "### Instruction")


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model in eval mode for the block; its previous mode restored afterwards, also on error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def padding_side(tokenizer: Any, side: str) -> Iterator[None]:
    before = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield
    finally:
        tokenizer.padding_side = before


def trim_answer(text: str) -> str:
    """A generated continuation cut at the first marker of a new turn, stripped."""
    for marker in STOP_MARKERS:
        cut = text.find(marker)
        if cut >= 0:
            text = text[:cut]
    return text.strip()


def generate(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = 64,
             batch_size: int = 16, progress: bool = False, desc: str = "generating",
             synced_gpus: bool | None = None) -> list[str]:
    """Greedy continuations of ``prompts`` (left-padded batches), cut at the end of the answer. ``synced_gpus``
    (None: transformers decides) keeps all ranks decoding until every rank's batch is done."""
    device = next(model.parameters()).device
    out: list[str] = []
    batches = range(0, len(prompts), batch_size)
    with eval_mode(model), torch.no_grad(), padding_side(tokenizer, "left"):
        for start in tqdm(batches, desc=desc, disable=not progress, leave=False):
            chunk = list(prompts[start:start + batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True).to(device)
            ids = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, synced_gpus=synced_gpus,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new = ids[:, enc["input_ids"].shape[1]:]
            out.extend(trim_answer(t) for t in tokenizer.batch_decode(new, skip_special_tokens=True))
    return out

