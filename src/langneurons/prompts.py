"""Prompt templates and answer formatting: how questions are put to a model and answers written back."""

from __future__ import annotations

import re

from . import languages
from .errors import HarnessError

# The template of MathOctopus / MAPO models (SCIENCE.md section 4). Responses follow "### Response:" directly.
TEMPLATES: dict[str, str] = {
    "mathoctopus": (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request "
        "in {language}. Please answer in {language}.\n\n### Instruction:\n{query}\n\n### Response:"
    ),
    # For base models that were never instruction-tuned: the question, then the answer on the next line.
    "plain": "{query}\n",
}


def format_prompt(question: str, lang: str, template: str = "mathoctopus") -> str:
    """The prompt for ``question`` written in language ``lang`` under the named template."""
    try:
        fmt = TEMPLATES[template]
    except KeyError:
        raise HarnessError(
            f"unknown prompt template {template!r}: use one of {', '.join(TEMPLATES)} (model.prompt_template=...)"
        ) from None
    return fmt.format(language=languages.get(lang).name, query=question)


def format_number(x: float) -> str:
    """A number as a person would write it: integers without a decimal point."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def format_answer(x: float, lang: str) -> str:
    """The final-answer sentence ("The answer is 12.") in language ``lang``."""
    return languages.get(lang).answer.format(x=format_number(x))


def format_response(result: float, lang: str, expression: str = "") -> str:
    """A response stating ``result``: the worked step ("12 + 5 = 17. ") when an expression is known, then the
    final-answer sentence in ``lang``. Gold and deliberately wrong responses are both written by this."""
    sentence = format_answer(result, lang)
    return f"{expression} = {format_number(result)}. {sentence}" if expression else sentence


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def parse_number(text: str) -> float | None:
    """A number written in a data file or an answer ("2,125", "8.0", "-3") as a float; None if there is none."""
    match = _NUMBER.fullmatch(text.strip())
    if match is None:
        return None
    return float(match.group(0).replace(",", ""))


def all_numbers(text: str) -> list[float]:
    """Every number in ``text``, in order ("2,125" is 2125; the pattern always parses once commas are dropped)."""
    return [float(raw.replace(",", "")) for raw in _NUMBER.findall(text)]


def last_number(text: str) -> float | None:
    """The last number in a model's answer, the evaluation convention of MGSM/MSVAMP papers; None if none."""
    numbers = all_numbers(text)
    return numbers[-1] if numbers else None
