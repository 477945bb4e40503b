"""Probe batches from (prompt, response, language) text triples, in the form :func:`collect_stats` reads."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch

from ..errors import DataError, HarnessError
from .probing import COUNT_MODES, check_langs

Example = tuple[str, str, str]  # (prompt, response, language code)


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its eos id (many causal LM tokenizers define no pad token)."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, list):  # some configs list several eos ids
            value = value[0] if value else None
        if value is not None:
            return int(value)
    raise HarnessError(f"{type(tokenizer).__name__} has neither a pad nor an eos token: set tokenizer.pad_token")


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    # An empty prompt still gets the tokenizer's special tokens (BOS); an empty response is no tokens.
    if not text and not special:
        return []
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _collate(rows: list[tuple[list[int], list[bool], int]], pad_id: int, padding_side: str) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    counted = torch.zeros((len(rows), width), dtype=torch.bool)
    for r, (ids, mask, _) in enumerate(rows):
        span = slice(width - len(ids), width) if padding_side == "left" else slice(0, len(ids))
        input_ids[r, span] = torch.tensor(ids, dtype=torch.long)
        attention[r, span] = 1
        counted[r, span] = torch.tensor(mask, dtype=torch.bool)
    lang_ids = torch.tensor([lang for _, _, lang in rows], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention, "count_mask": counted, "lang_ids": lang_ids}


def _batched(rows: list, batch_size: int, pad_id: int, padding_side: str) -> list[dict[str, torch.Tensor]]:
    return [_collate(rows[i : i + batch_size], pad_id, padding_side) for i in range(0, len(rows), batch_size)]


def _check(examples: list[Example], langs: tuple[str, ...], batch_size: int, padding_side: str) -> None:
    if not examples:
        raise DataError("empty probe set: give at least one (prompt, response, lang) example")
    if batch_size < 1:
        raise HarnessError(f"batch_size must be >= 1, got {batch_size}")
    if padding_side not in ("left", "right"):
        raise HarnessError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    for i, example in enumerate(examples):
        if len(example) != 3:
            raise DataError(f"probe example {i} is not a (prompt, response, lang) triple")
        if example[2] not in langs:
            raise DataError(f"probe example {i} has language {example[2]!r}, which is not in langs {list(langs)}")


def make_batches(
    tokenizer: Any,
    examples: Iterable[Example],
    langs: Sequence[str],
    *,
    batch_size: int = 8,
    count: str = "response",
    padding_side: str = "right",
    max_length: int | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Tokenise (prompt, response, lang) triples into padded probe batches (input_ids, attention_mask, count_mask,
    lang_ids).

    The prompt is tokenised with the tokenizer's special tokens (BOS...), the response without, and the two id lists
    are concatenated, so the boundary is exact: with ``count="response"`` only response tokens are counted, with
    ``count="all"`` every token. Rows are cut to ``max_length`` tokens (the response's end goes first). Padding uses
    the pad token, else eos, on ``padding_side``.
    """
    if count not in COUNT_MODES:
        raise DataError(f"unknown count mode {count!r}: choose one of {', '.join(COUNT_MODES)}")
    langs = check_langs(langs)
    examples = list(examples)
    _check(examples, langs, batch_size, padding_side)
    rows = []
    for prompt, response, lang in examples:
        prompt_ids = _ids(tokenizer, prompt, True)
        response_ids = _ids(tokenizer, response, False)
        ids = (prompt_ids + response_ids)[:max_length]
        if not ids:
            raise DataError(f"probe example with prompt {prompt[:40]!r} tokenises to nothing")
        mask = ([count == "all"] * len(prompt_ids) + [True] * len(response_ids))[: len(ids)]
        rows.append((ids, mask, langs.index(lang)))
    return _batched(rows, batch_size, pad_token_id(tokenizer), padding_side)


def make_two_pass_batches(
    tokenizer: Any,
    examples: Iterable[Example],
    langs: Sequence[str],
    *,
    batch_size: int = 8,
    padding_side: str = "right",
    max_length: int | None = None,
) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """Batches for the reference's two-pass mode (:func:`collect_stats_two_pass`): prompt+response tokenised as one
    text, and the prompt tokenised alone, every non-pad token counted in both."""
    langs = check_langs(langs)
    examples = list(examples)
    _check(examples, langs, batch_size, padding_side)
    full, prompts = [], []
    for prompt, response, lang in examples:
        k = langs.index(lang)
        full_ids = _ids(tokenizer, prompt + response, True)[:max_length]
        prompt_ids = _ids(tokenizer, prompt, True)[:max_length]
        if not full_ids or not prompt_ids:
            raise DataError(f"probe example with prompt {prompt[:40]!r} tokenises to nothing")
        full.append((full_ids, [True] * len(full_ids), k))
        prompts.append((prompt_ids, [True] * len(prompt_ids), k))
    pad_id = pad_token_id(tokenizer)
    return _batched(full, batch_size, pad_id, padding_side), _batched(prompts, batch_size, pad_id, padding_side)
