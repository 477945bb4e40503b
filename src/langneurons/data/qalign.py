"""Question alignment (QAlign; "spontaneous multilingual learners", arXiv 2405.13816): SFT on question translation.

The model sees a question in language x and learns to write the parallel English question; no answers are shown.
Prompt: the model's prompt template around the x question, asking for a response in English (mathoctopus:
"... completes the request in English. Please answer in English.\\n\\n### Instruction:\\n{x question}\\n\\n
### Response:"); completion: the English question (after a space in text formats). Loss on the completion only.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from datasets import Dataset

from ..errors import HarnessError
from ..prompts import PromptFormat, format_prompt, prompt_format

ENGLISH = "en"


def translation_langs(langs: Sequence[str], method: str = "qalign") -> list[str]:
    """The aligned languages other than English, the language they are aligned to (qalign, mapo)."""
    out = [lang for lang in langs if lang != ENGLISH]
    if not out:
        raise HarnessError(f"alignment={method} aligns other languages to English: choose at least one language "
                           "besides en (e.g. lang=[zh,de])")
    return out


def question_translation(problems: Mapping[str, Dataset], template: "str | PromptFormat",
                         seed: int = 0) -> Dataset:
    """Prompt/completion rows (columns prompt, completion, lang, id) for every non-English language in
    ``problems``, whose ``en`` set holds the parallel English questions."""
    if ENGLISH not in problems:
        raise HarnessError("alignment=qalign needs the parallel English questions: the problem set must include 'en'")
    english = {row["id"]: row["question"] for row in problems[ENGLISH]}
    sep = prompt_format(template).sep
    rows = []
    for lang in translation_langs(list(problems)):
        for row in problems[lang]:
            if row["id"] not in english:
                raise HarnessError(f"alignment=qalign: {lang} question id {row['id']} has no parallel English question")
            rows.append({"prompt": format_prompt(row["question"], ENGLISH, template),
                         "completion": sep + english[row["id"]], "lang": lang, "id": int(row["id"])})
    return Dataset.from_list(rows).shuffle(seed=seed)
