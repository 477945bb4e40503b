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
from ..files import is_path
from ..settings import PROBLEM_SOURCES, ProblemSettings
from ..prompts import PromptFormat, format_prompt, format_response, parse_number, prompt_format
from . import synthetic

SOURCES = PROBLEM_SOURCES
HUB_IDS = {"mgsm": "juletxara/mgsm", "msvamp": "Mathoctopus/MSVAMP"}
# The fewshot format's worked examples: generated problems from this id on, far from every id the harness trains
# (0..), evaluates (100000..) or pretrains (1000000..) on.
FEWSHOT_OFFSET = 900000


def load_problems(spec: "ProblemSettings | Mapping[str, Any]", langs: Sequence[str],
                  template: "str | PromptFormat" = "mathoctopus") -> dict[str, Dataset]:
    """Load the problem set described by ``spec`` (:class:`settings.ProblemSettings`, or its complete mapping) for
    each language in ``langs``, prompts in ``template`` (a format name, or a :class:`PromptFormat` bound to the
    model's tokenizer for ``chat``): ``source`` (synthetic | mgsm | msvamp); ``path`` (a local folder or a hub id,
    for mgsm/msvamp); ``n`` (rows to keep, all when null); ``offset`` (first row id); ``seed`` (generated sets).
    """
    spec = ProblemSettings.of(spec)
    source, n, offset = spec.source, spec.n, spec.offset
    if source == "synthetic":
        rows = {lang: _synthetic_rows(spec.seed, offset, int(n), lang) for lang in langs}
    else:
        reader = _read_mgsm if source == "mgsm" else _read_msvamp
        rows = {}
        for lang in langs:
            pairs = reader(spec.path or HUB_IDS[source], lang)  # null: the hub copy
            end = len(pairs) if n is None else min(len(pairs), offset + int(n))
            rows[lang] = [_row(i, lang, q, a) for i, (q, a) in enumerate(pairs)][offset:end]
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


def _local_folder(path: str, what: str, holds: str) -> Path | None:
    """``path`` as a local folder of ``what`` files, None when it is a hub id; a path that names no folder (it does
    not exist, or is a file) is a :class:`DataError` naming it, not a hub lookup that fails later and less clearly."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists():
        raise DataError(f"{what} path {path} is a file, not a folder: give the folder holding {holds}")
    if is_path(path):
        raise DataError(f"{what} folder {path} does not exist: give the folder holding {holds}, or the hub id "
                        f"{HUB_IDS[what.lower()]}")
    return None


def numbered_lines(file: Path) -> list[tuple[int, str]]:
    """The non-blank lines of a local data file with their line numbers (from 1); an unreadable file or a line that
    is not UTF-8 is a :class:`DataError` naming the file (and the line)."""
    try:
        raw = file.read_bytes()
    except OSError as e:
        raise DataError(f"{file} cannot be read ({e.strerror or type(e).__name__}): make it readable "
                        f"(chmod a+r {file}) or give another one") from None
    out = []
    for lineno, chunk in enumerate(raw.split(b"\n"), 1):
        try:
            line = chunk.decode("utf-8-sig" if lineno == 1 else "utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            raise DataError(f"{file} line {lineno}: not UTF-8 text (byte 0x{chunk[e.start]:02x}, the line's byte "
                            f"{e.start + 1}): save the file as UTF-8") from None
        if line.strip():
            out.append((lineno, line))
    return out


def _read_mgsm(path: str, lang: str) -> list[tuple[str, float]]:
    info = languages.get(lang)
    if info.mgsm_file is None:
        raise DataError(f"MGSM has no {info.name} ({lang}) split")
    folder = _local_folder(path, "MGSM", "mgsm_<lang>.tsv files")
    if folder is not None:
        file = folder / info.mgsm_file
        if not file.is_file():
            raise DataError(f"MGSM file {file} is missing: the folder must hold mgsm_<lang>.tsv for every language asked")
        pairs = []
        for lineno, line in numbered_lines(file):
            question, sep, raw = line.rpartition("\t")
            if not sep:
                raise DataError(f"{file} line {lineno}: expected 2 tab-separated fields (question, answer), got 1: "
                                f"{line[:60]!r}")
            number = parse_number(raw)
            if number is None or not question.strip():
                what = f"the answer {raw[:30]!r} is not a number" if number is None else "the question is empty"
                raise DataError(f"{file} line {lineno}: {what}; each line is <question><TAB><number>")
            pairs.append((question, number))
        return pairs
    hub = _load_hub(path, "MGSM", name=lang, split="test")
    return [(r["question"], float(r["answer_number"])) for r in hub]


def _read_msvamp(path: str, lang: str) -> list[tuple[str, float]]:
    info = languages.get(lang)
    if info.msvamp_file is None:
        raise DataError(f"MSVAMP has no {info.name} ({lang}) split")
    folder = _local_folder(path, "MSVAMP", "test_<Language>.json files")
    if folder is not None:
        file = folder / info.msvamp_file
        if not file.is_file():
            raise DataError(f"MSVAMP file {file} is missing: the folder must hold test_<Language>.json for every "
                            "language asked")
        records = []
        for lineno, line in numbered_lines(file):
            try:
                records.append((f"{file} line {lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{file} line {lineno}: not a JSON line ({e.msg} at column {e.colno}); each line "
                                "is one JSON object with m_query and response") from None
    else:
        hub = _load_hub(path, "MSVAMP", data_files=info.msvamp_file, split="train")
        records = [(f"MSVAMP {path} ({info.msvamp_file}) row {i}", r) for i, r in enumerate(hub)]
    pairs = []
    for where, r in records:
        if not isinstance(r, dict):
            raise DataError(f"{where}: expected a JSON object with m_query and response, got {type(r).__name__}")
        missing = [k for k in ("m_query", "response") if k not in r]
        if missing:
            raise DataError(f"{where}: missing field {' and '.join(missing)}; each row needs m_query (the question) "
                            "and response (the answer)")
        number = parse_number(str(r["response"]))
        if number is None or not isinstance(r["m_query"], str):
            what = (f"response {str(r['response'])[:30]!r} is not a number" if number is None
                    else "m_query is not a text")
            raise DataError(f"{where}: {what}")
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
