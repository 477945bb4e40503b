"""Parallel math-problem sets as per-language ``datasets.Dataset``s: generated, MGSM and MSVAMP.

Every set has the same columns, so alignment, probing and evaluation never care where problems came from:

- ``id``: the parallel row id (row ``id`` is the same problem in every language)
- ``lang``: language code
- ``question``: the problem in that language
- ``answer``: the gold number (float)
- ``prompt``: the question in the model's prompt template
- ``expression``: the worked step without its result ("12 + 5") where the set has one, else ""
- ``response``: the gold response in that language, ``format_response(answer, lang, expression)``: a worked
  answer for generated problems, the final-answer sentence for MGSM/MSVAMP (which ship only numbers)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from datasets import Dataset

from .. import languages
from ..errors import DataError
from ..prompts import PromptFormat, format_prompt, format_response, parse_number, prompt_format
from . import synthetic

SOURCES = ("synthetic", "mgsm", "msvamp")
HUB_IDS = {"mgsm": "juletxara/mgsm", "msvamp": "Mathoctopus/MSVAMP"}
# The fewshot format's worked examples: generated problems from this id on, far from every id the harness trains
# (0..), evaluates (100000..) or pretrains (1000000..) on.
FEWSHOT_OFFSET = 900000


def load_problems(spec: Mapping[str, Any], langs: Sequence[str],
                  template: "str | PromptFormat" = "mathoctopus") -> dict[str, Dataset]:
    """Load the problem set described by ``spec`` for each language in ``langs``, prompts in ``template`` (a format
    name, or a :class:`PromptFormat` bound to the model's tokenizer for ``chat``).

    ``spec`` keys: ``source`` (synthetic | mgsm | msvamp); ``path`` (a local folder or a hub id, for mgsm/msvamp);
    ``n`` (rows to keep, all when null); ``offset`` (first row id); ``seed`` (generated sets only).
    """
    source = spec.get("source", "synthetic")
    n = spec.get("n")
    offset = int(spec.get("offset") or 0)
    if source == "synthetic":
        if n is None:
            raise DataError("the generated problem set needs a size: set n (e.g. data.n=32)")
        rows = {lang: _synthetic_rows(int(spec.get("seed", 0)), offset, int(n), lang) for lang in langs}
    elif source in ("mgsm", "msvamp"):
        path = spec.get("path") or HUB_IDS[source]
        reader = _read_mgsm if source == "mgsm" else _read_msvamp
        rows = {}
        for lang in langs:
            pairs = reader(str(path), lang)
            end = len(pairs) if n is None else min(len(pairs), offset + int(n))
            rows[lang] = [_row(i, lang, q, a) for i, (q, a) in enumerate(pairs)][offset:end]
    else:
        raise DataError(f"unknown problem source {source!r}: use one of {', '.join(SOURCES)}")
    for lang, lang_rows in rows.items():
        if not lang_rows:
            raise DataError(f"the {source} problem set has no rows for {lang!r} (n={n}, offset={offset}): "
                            "ask for at least one row")
    return with_prompts(rows, template)


def with_prompts(problems: Mapping[str, Any], template: "str | PromptFormat") -> dict[str, Dataset]:
    """``problems`` (per language, rows or a Dataset) with their prompts written in ``template``: as they are
    loaded, or anew once the model's tokenizer is there (the chat format)."""
    fmt = prompt_format(template)
    out = {}
    for lang, rows in problems.items():
        shots = fewshot_examples(lang, fmt.shots)
        # from_list, not map: map would hash the closure, and with it a chat model's whole tokenizer
        out[lang] = Dataset.from_list([{**r, "prompt": format_prompt(r["question"], lang, fmt, shots)} for r in rows])
    return out


def fewshot_examples(lang: str, n: int) -> list[tuple[str, str]]:
    """``n`` worked (question, response) examples in ``lang`` for the fewshot format: generated problems with their
    gold responses, the same ids in every language (so the examples are parallel too)."""
    examples = []
    for pid in range(FEWSHOT_OFFSET, FEWSHOT_OFFSET + n):
        p = synthetic.problem(0, pid)
        examples.append((synthetic.render_question(p, lang), format_response(p.answer, lang, synthetic.expression(p))))
    return examples


def _row(pid: int, lang: str, question: str, answer: float, expression: str = "") -> dict[str, Any]:
    return {"id": pid, "lang": lang, "question": question, "answer": float(answer), "expression": expression,
            "response": format_response(answer, lang, expression)}


def _synthetic_rows(seed: int, offset: int, n: int, lang: str) -> list[dict[str, Any]]:
    out = []
    for pid in range(offset, offset + n):
        p = synthetic.problem(seed, pid)
        out.append(_row(pid, lang, synthetic.render_question(p, lang), p.answer, synthetic.expression(p)))
    return out


def _read_mgsm(path: str, lang: str) -> list[tuple[str, float]]:
    info = languages.get(lang)
    if info.mgsm_file is None:
        raise DataError(f"MGSM has no {info.name} ({lang}) split")
    folder = Path(path)
    if folder.is_dir():
        file = folder / info.mgsm_file
        if not file.is_file():
            raise DataError(f"MGSM file {file} is missing: the folder must hold mgsm_<lang>.tsv for every language asked")
        pairs = []
        for lineno, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            question, sep, raw = line.rpartition("\t")
            number = parse_number(raw) if sep else None
            if number is None:
                raise DataError(f"{file}:{lineno}: expected 'question<TAB>number', got {line[:60]!r}")
            pairs.append((question, number))
        return pairs
    hub = _load_hub(path, "MGSM", name=lang, split="test")
    return [(r["question"], float(r["answer_number"])) for r in hub]


def _read_msvamp(path: str, lang: str) -> list[tuple[str, float]]:
    info = languages.get(lang)
    if info.msvamp_file is None:
        raise DataError(f"MSVAMP has no {info.name} ({lang}) split")
    folder = Path(path)
    if folder.is_dir():
        file = folder / info.msvamp_file
        if not file.is_file():
            raise DataError(f"MSVAMP file {file} is missing: the folder must hold test_<Language>.json for every "
                            "language asked")
        records = []
        for lineno, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{file}:{lineno}: not a JSON line ({e.msg})") from None
    else:
        records = list(_load_hub(path, "MSVAMP", data_files=info.msvamp_file, split="train"))
    pairs = []
    for i, r in enumerate(records):
        number = parse_number(str(r.get("response", "")))
        if number is None or "m_query" not in r:
            raise DataError(f"MSVAMP {lang} row {i}: expected fields m_query and a numeric response")
        pairs.append((r["m_query"], number))
    return pairs


def _load_hub(path: str, what: str, **kwargs: Any) -> Dataset:
    from datasets import load_dataset

    try:
        return load_dataset(path, **kwargs)
    except Exception as e:  # the hub raises many types; all mean the same to the user
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise DataError(
            f"could not load {what} from {path!r} ({type(e).__name__}: {reason}); it is neither a local folder nor "
            f"a reachable hub data set: download it and pass the folder (e.g. data.path=/data/{what.lower()})"
        ) from None
