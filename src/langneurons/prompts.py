"""Prompt formats and answer formatting: how questions are put to a model, where its answer ends, and how answers
are written back.

A *prompt format* is chosen per model (``model.prompt_template``) and used for everything the model reads: the
training pairs, the evaluation questions and the probe set, so the three always agree.

- ``mathoctopus``: the MathOctopus / MAPO instruction template (the paper's models);
- ``plain``: the question, then the answer on the next line (the harness's own tiny base was pretrained on it);
- ``fewshot``: for a pretrained *base* model that was never instruction-tuned: a few worked examples in the asked
  language (generated problems, never an evaluation problem), then ``Question: <q>\\nAnswer:``. The examples show the
  model the answer's form and language; a base model then writes one worked line and goes on with a new question,
  where the answer is cut;
- ``chat``: an instruction-tuned model's own chat template (``tokenizer.apply_chat_template``), the question as the
  user's turn.

Every format names the strings that end an answer (``stop``): generation stops at them (and at the model's EOS /
end-of-turn tokens), and the answer is the text before the first of them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from . import languages
from .errors import HarnessError

# Where a model that keeps writing starts the next instruction of the MathOctopus template.
INSTRUCTION_STOPS = ("\n\n###", "\n### ", "### Instruction")
# A base model given "Question: ...\nAnswer:" examples goes on with a blank line and the next question.
QUESTION_STOPS = ("\n\n", "\nQuestion:", "Question:")

FEWSHOT_EXAMPLE = "Question: {query}\nAnswer: {response}\n\n"
FEWSHOT_QUERY = "Question: {query}\nAnswer:"
# The user's turn of the chat format: the question and the language to answer in. (Asking a 135M model to end
# with a fixed sentence "with N the final number" made it write that sentence with a literal N.)
CHAT_INSTRUCTION = "{query}\n\nAnswer in {language}."


@dataclass(frozen=True)
class PromptFormat:
    """How one model is prompted: a ``str.format`` text with ``{language}`` and ``{query}`` (or the tokenizer's chat
    template when ``chat``), the strings that end an answer, and what goes between a prompt and a response."""

    name: str
    text: str | None = None
    stop: tuple[str, ...] = ()
    sep: str = " "  # responses follow the prompt after a space ("### Response: 12 + 5 = 17. ...")
    shots: int = 0  # fewshot: worked examples before the question
    chat: bool = False
    tokenizer: Any = field(default=None, compare=False, repr=False)
    drop_prefix: str = ""  # chat: dropped from the rendered template (a BOS the tokenizer adds again)

    def identity(self) -> Any:
        """What cache keys record of this format: its name for the fixed text formats (the keys of entries built
        before formats were objects stay valid), else the name, the number of shots and the chat template's hash."""
        if not self.chat and not self.shots:
            return self.name
        out: dict[str, Any] = {"name": self.name, "shots": self.shots}
        if self.chat:
            out["chat_template"] = hashlib.sha256(str(self.tokenizer.chat_template).encode()).hexdigest()[:16]
        return out


FORMATS: dict[str, PromptFormat] = {
    "mathoctopus": PromptFormat(
        "mathoctopus",
        "Below is an instruction that describes a task. Write a response that appropriately completes the request "
        "in {language}. Please answer in {language}.\n\n### Instruction:\n{query}\n\n### Response:",
        stop=INSTRUCTION_STOPS),
    # The tiny base was pretrained on these prompts; it ends its answers with EOS. The instruction stops are kept
    # as the tiny runs always cut answers there.
    "plain": PromptFormat("plain", "{query}\n", stop=INSTRUCTION_STOPS),
    "fewshot": PromptFormat("fewshot", FEWSHOT_QUERY, stop=QUESTION_STOPS, shots=3),
    "chat": PromptFormat("chat", CHAT_INSTRUCTION, stop=(), sep="", chat=True),
}
def check_template(name: str) -> None:
    """A one-line :class:`HarnessError` when ``name`` is not a prompt format."""
    if name not in FORMATS:
        raise HarnessError(f"unknown prompt template {name!r}: use one of {', '.join(FORMATS)} "
                           "(model.prompt_template=...)")


def needs_tokenizer(name: str) -> bool:
    """Whether the format ``name`` is rendered by the model's tokenizer (chat), so prompts wait for the model."""
    return FORMATS[name].chat


def prompt_format(template: "str | PromptFormat", tokenizer: Any = None) -> PromptFormat:
    """The format named ``template`` (``model.prompt_template``), bound to ``tokenizer`` where it needs one (chat).

    Raises a one-line :class:`HarnessError` for an unknown name, or for ``chat`` with a tokenizer that has no chat
    template (a base model: use ``fewshot``)."""
    if isinstance(template, PromptFormat):
        return template
    check_template(template)
    fmt = FORMATS[template]
    if fmt.chat:
        if tokenizer is None:
            raise HarnessError("model.prompt_template=chat renders the model's chat template: it needs the model's "
                               "tokenizer (load the model first)")
        if not getattr(tokenizer, "chat_template", None):
            raise HarnessError(f"model.prompt_template=chat, but the tokenizer {type(tokenizer).__name__} has no chat "
                               "template (a base model?): use model.prompt_template=fewshot or mathoctopus")
        return PromptFormat(fmt.name, fmt.text, fmt.stop, fmt.sep, fmt.shots, True, tokenizer,
                            drop_prefix=_added_bos(tokenizer))
    return fmt


def format_prompt(question: str, lang: str, template: "str | PromptFormat" = "mathoctopus",
                  shots: Sequence[tuple[str, str]] = ()) -> str:
    """The prompt for ``question`` written in language ``lang`` under ``template`` (a name or a format).
    ``shots``: worked (question, response) examples in ``lang``, shown first by the ``fewshot`` format."""
    fmt = prompt_format(template)
    language = languages.get(lang)
    if fmt.chat:
        content = fmt.text.format(query=question, language=language.name)
        text = fmt.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                 add_generation_prompt=True)
        return text[len(fmt.drop_prefix):] if fmt.drop_prefix and text.startswith(fmt.drop_prefix) else text
    prefix = "".join(FEWSHOT_EXAMPLE.format(query=q, response=r) for q, r in shots) if fmt.shots else ""
    return prefix + fmt.text.format(language=language.name, query=question)


def _added_bos(tokenizer: Any) -> str:
    """The BOS token when ``tokenizer`` adds it to every text itself, else "". A chat template that writes BOS too
    would give two: every prompt is tokenized with the tokenizer's special tokens, so the template's own BOS goes."""
    bos = getattr(tokenizer, "bos_token", None)
    if not bos:
        return ""
    ids = tokenizer("x")["input_ids"]
    return bos if ids and ids[0] == tokenizer.bos_token_id else ""


def trim_answer(text: str, stops: Sequence[str] = INSTRUCTION_STOPS) -> str:
    """A generated continuation cut at the first of ``stops``, stripped: what follows (a new question, another
    instruction) is not part of the answer, and its numbers must not decide it."""
    cut = len(text)
    for marker in stops:
        at = text.find(marker)
        if 0 <= at < cut:
            cut = at
    return text[:cut].strip()


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


TOLERANCE = 1e-3  # MAPO's: a final number within 1e-3 of the gold number is correct


def is_correct(answer: str, gold: float, tolerance: float = TOLERANCE) -> bool:
    """Whether the last number of ``answer`` is ``gold`` (within MAPO's tolerance): the one definition of a correct
    answer, used by the accuracy metric, the correctness scorer and MAPO's pairing."""
    number = last_number(answer)
    return number is not None and abs(number - gold) <= tolerance
