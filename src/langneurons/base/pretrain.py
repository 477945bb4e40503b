"""Pretraining the tiny base model from scratch on CPU: a plain torch loop (next-token loss on whole documents).

A plain loop: a build needs none of the Trainer's features (no checkpoints, evaluation or devices: it is short and
cached as a whole). Eager mode: ``torch.compile(dynamic=True)`` was no faster over 3000 steps on a CPU (137.6 s
against 139.0 s) and 2.4x slower over 600, its compile time never paid back.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from .. import faults
from ..console import interactive
from ..settings import PretrainSettings
from .corpus import Document

log = logging.getLogger(__name__)

# Batches are cut from windows of this many batches sorted by length, so a batch holds documents of similar
# length (little padding) while the order of batches stays random.
_WINDOW = 16


@dataclass
class PretrainReport:
    steps: int
    seconds: float
    tokens: int
    final_loss: float  # mean loss of the last 5% of steps
    docs_per_lang: dict[str, int] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)  # loss every `log_every` steps

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "seconds": round(self.seconds, 2), "tokens": self.tokens,
                "final_loss": self.final_loss, "docs_per_lang": self.docs_per_lang, "losses": self.losses}


def _batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    order = list(range(len(lengths)))
    rng.shuffle(order)
    out = []
    for start in range(0, len(order), batch_size * _WINDOW):
        window = sorted(order[start:start + batch_size * _WINDOW], key=lambda i: lengths[i])
        out += [window[j:j + batch_size] for j in range(0, len(window), batch_size)]
    rng.shuffle(out)
    return out


def tokenize(tokenizer: Any, docs: Sequence[Document], max_length: int) -> list[list[int]]:
    """Token ids of every document: its parts tokenized separately and joined, then the end-of-sequence token
    (so generation learns where an answer stops); cut to ``max_length``."""
    width = max(len(d.parts) for d in docs)
    columns = [[d.parts[i] if i < len(d.parts) else "" for d in docs] for i in range(width)]
    encoded = [tokenizer(col, add_special_tokens=False)["input_ids"] for col in columns]
    eos = tokenizer.eos_token_id
    return [[t for col in encoded for t in col[row]][:max_length - 1] + [eos] for row in range(len(docs))]


def lr_factor(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to ``floor`` of the peak at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def pretrain(model: torch.nn.Module, tokenizer: Any, docs: Sequence[Document],
             cfg: "PretrainSettings | Mapping[str, Any]", *, progress: bool = True,
             on_step: Callable[[int], None] | None = None, log_every: int = 50) -> PretrainReport:
    """Train ``model`` in place for ``cfg.steps`` steps of ``cfg.batch_size`` documents (every document used once:
    ``len(docs)`` must be ``steps * batch_size``), next-token loss on every document token; the loss is logged every
    ``log_every`` steps. ``cfg``: ``model.pretrain``."""
    cfg = PretrainSettings.of(cfg)
    steps, batch_size = cfg.steps, cfg.batch_size
    max_length = cfg.max_length
    ids = tokenize(tokenizer, docs, max_length)
    rng = random.Random(f"langneurons-pretrain-order/{cfg.seed}")
    batches = _batches([len(s) for s in ids], batch_size, rng)[:steps]
    lr = cfg.lr
    warmup = cfg.warmup_steps
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    log_every = max(1, int(log_every))
    pad = tokenizer.pad_token_id
    losses: list[float] = []
    tail: list[float] = []
    tokens = 0
    started = time.perf_counter()
    model.train()
    bar = tqdm(batches, desc="pretraining the tiny base", unit="step", disable=not progress or not interactive(),
               dynamic_ncols=True)
    every_tenth = max(1, steps // 10) if progress and not interactive() else 0  # a line each, for log files
    for step, batch in enumerate(bar):
        faults.reach("base.pretrain")
        width = max(len(ids[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            input_ids[row, :len(ids[i])] = torch.tensor(ids[i])
            mask[row, :len(ids[i])] = 1
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(step, steps, warmup)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=input_ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
        value = float(loss.detach())
        if step >= steps - max(1, steps // 20):
            tail.append(value)
        if step % log_every == 0 or step == steps - 1:
            losses.append(round(value, 4))
            bar.set_postfix(loss=f"{value:.3f}")
        if every_tenth and (step + 1) % every_tenth == 0 and step + 1 < steps:
            log.info("pretraining the tiny base: step %d/%d (%d%%), loss %.3f, %.0f s", step + 1, steps,
                     100 * (step + 1) // steps, value, time.perf_counter() - started)
        if on_step is not None:
            on_step(step)
    model.eval()
    per_lang: dict[str, int] = {}
    for d in docs:
        key = d.lang or d.kind
        per_lang[key] = per_lang.get(key, 0) + 1
    return PretrainReport(steps=len(batches), seconds=time.perf_counter() - started, tokens=tokens,
                          final_loss=round(sum(tail) / max(1, len(tail)), 4), docs_per_lang=per_lang, losses=losses)
