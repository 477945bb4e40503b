"""Training sets built from problem sets: preference pairs for DPO and prompt/completion pairs for SFT."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Mapping, Sequence

from datasets import Dataset, concatenate_datasets

from ..errors import DataError
from ..prompts import format_response


def wrong_result(answer: float, rng: random.Random) -> float:
    """A plausible wrong result: off by a little, by ten, or doubled; never the gold number."""
    candidates = {answer + d for d in (-2, -1, 1, 2, 10)} | {answer * 2}
    candidates.discard(answer)
    if answer >= 0:
        candidates = {c for c in candidates if c >= 0}
    return rng.choice(sorted(candidates))


def correctness_pairs(problems: Mapping[str, Dataset], seed: int = 0, sep: str = " ") -> Dataset:
    """One DPO pair per problem and language: chosen states the gold number in the asked language, rejected a
    wrong one (same language, same form), so the preference is about correctness alone.

    Columns: prompt, chosen, rejected, lang, id. TRL's DPOTrainer reads prompt/chosen/rejected. ``sep``: what the
    prompt format writes between a prompt and its response.
    """
    rng = random.Random(seed)

    def pair(row: dict) -> dict:
        wrong = wrong_result(row["answer"], rng)
        wrong_response = format_response(wrong, row["lang"], row["expression"])
        return {"chosen": sep + row["response"], "rejected": sep + wrong_response}

    parts = [ds.map(pair).select_columns(["prompt", "chosen", "rejected", "lang", "id"]) for ds in problems.values()]
    return concatenate_datasets(parts).shuffle(seed=seed)


def sft_examples(problems: Mapping[str, Dataset], seed: int = 0, sep: str = " ") -> Dataset:
    """Prompt/completion pairs (the gold response) for SFT; TRL computes the loss on the completion only."""
    parts = [ds.map(lambda r: {"completion": sep + r["response"]})
             .select_columns(["prompt", "completion", "lang", "id"]) for ds in problems.values()]
    return concatenate_datasets(parts).shuffle(seed=seed)


def load_jsonl(path: str | Path, fields: Sequence[str]) -> Dataset:
    """A user's JSON Lines file with at least ``fields`` in every row (e.g. prompt/chosen/rejected)."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"training file {file} does not exist: give a JSON Lines file with fields {', '.join(fields)}")
    from .problems import numbered_lines

    rows = []
    for lineno, line in numbered_lines(file):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{file} line {lineno}: not a JSON line ({e.msg} at column {e.colno}); every line is one "
                            f"JSON object with fields {', '.join(fields)}") from None
        if not isinstance(row, dict):
            raise DataError(f"{file} line {lineno}: expected a JSON object with fields {', '.join(fields)}, got a "
                            f"{type(row).__name__}")
        missing = [f for f in fields if not isinstance(row.get(f), str)]
        if missing:
            raise DataError(f"{file} line {lineno}: missing text field{'s' * (len(missing) > 1)} "
                            f"{', '.join(missing)}; every row needs {', '.join(fields)} (texts)")
        rows.append(row)
    if not rows:
        raise DataError(f"training file {file} has no rows: give a JSON Lines file with fields {', '.join(fields)}")
    try:
        return Dataset.from_list(rows)
    except (TypeError, ValueError) as e:  # pyarrow's ArrowInvalid / ArrowTypeError are ValueError / TypeError
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise DataError(f"training file {file}: its rows do not form one table ({reason}); give every row the same "
                        "fields with the same types") from None
