"""The tiny base model's pretraining corpus: generated problems with their gold answers, in a skewed language mix.

Real pretraining corpora are dominated by English and hold little text in languages such as Swahili, Thai or
Bengali; the mix here is skewed the same way on purpose, so the base answers well in the rich languages and poorly
in the rare ones: the gap multilingual alignment is meant to close.

Documents come from their own id range of the generated problem set (``offset``, far above the evaluation ids
100000.. and the alignment ids 0..), and any document whose problem equals one of the held-out evaluation
problems (same operation, numbers, name and item, hence the same text in every language) is skipped, so no
evaluation question is ever seen verbatim. The arithmetic facts themselves do recur: the set has only a few
thousand distinct (operation, a, b) triples, and knowing them is the skill the base must bring to evaluation.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .. import languages
from ..data import synthetic
from ..errors import HarnessError
from ..settings import CorpusSettings
from ..prompts import format_number, format_prompt, format_response

# Document kinds: a question in the prompt template followed by its gold response (what evaluation asks of the
# model), and a bare equation ("12 + 5 = 17."): language-neutral arithmetic practice, cheap in tokens.
KINDS = ("prompted", "equation")


@dataclass(frozen=True)
class Document:
    kind: str
    lang: str | None  # None for equations
    parts: tuple[str, ...]  # tokenized one by one: a prompt and its answer meet at the token boundary they have
                            # when the model answers the prompt (and in the alignment and probe sets)

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _problem_key(p: synthetic.Problem) -> tuple:
    return (p.op, p.a, p.b, p.name, p.item)


def held_out_keys(seed: int, offset: int, n: int) -> frozenset[tuple]:
    """The problems of ids ``offset .. offset + n - 1`` (the evaluation range), as comparable keys."""
    return frozenset(_problem_key(synthetic.problem(seed, pid)) for pid in range(offset, offset + n))


def check_mix(mix: Mapping[str, Any]) -> dict[str, float]:
    """The language weights of ``mix`` as floats; a one-line error for unknown codes or unusable weights."""
    out = {}
    for code, weight in mix.items():
        if code not in synthetic.SYNTHETIC_LANGS:
            languages.get(code)  # an unknown code gets the table's message
            raise HarnessError(f"model.pretrain.corpus.mix: the generated problems have no {code!r} texts; "
                               f"use codes among {', '.join(synthetic.SYNTHETIC_LANGS)}")
        try:
            out[code] = float(weight)
        except (TypeError, ValueError):
            raise HarnessError(f"model.pretrain.corpus.mix.{code}={weight!r}: a weight must be a number") from None
        if out[code] < 0:
            raise HarnessError(f"model.pretrain.corpus.mix.{code}={weight}: weights must be >= 0")
    if not out or sum(out.values()) <= 0:
        raise HarnessError("model.pretrain.corpus.mix: give at least one language a positive weight, e.g. {en: 1}")
    return out


def documents(corpus: "CorpusSettings | Mapping[str, Any]", template: str, n: int, seed: int) -> list[Document]:
    """``n`` pretraining documents drawn as ``corpus`` (``model.pretrain.corpus``) describes; a pure function of its
    arguments: ``seed`` (problem set), ``offset`` (first problem id), ``mix`` ({lang: weight}), ``equations`` (share
    of bare-equation documents), ``holdout`` ({offset, n}: problems never used). ``seed`` orders the draw of
    languages and kinds.
    """
    corpus = CorpusSettings.of(corpus)
    mix = check_mix(corpus.mix)
    share = corpus.equations
    if not 0.0 <= share < 1.0:
        raise HarnessError(f"model.pretrain.corpus.equations={share}: a share in [0, 1)")
    data_seed = corpus.seed
    skip = held_out_keys(data_seed, corpus.holdout.offset, corpus.holdout.n)
    rng = random.Random(f"langneurons-pretrain/{seed}")
    langs: Sequence[str] = list(mix)
    weights = [mix[lang] for lang in langs]
    out: list[Document] = []
    pid = corpus.offset
    while len(out) < n:
        p = synthetic.problem(data_seed, pid)
        pid += 1
        if _problem_key(p) in skip:
            continue
        if rng.random() < share:
            out.append(Document("equation", None, (f"{synthetic.expression(p)} = {format_number(p.answer)}.",)))
            continue
        lang = rng.choices(langs, weights)[0]
        prompt = format_prompt(synthetic.render_question(p, lang), lang, template)
        # A space before the answer, as the gold probe and the alignment pairs write it.
        out.append(Document("prompted", lang, (prompt, " " + format_response(p.answer, lang, synthetic.expression(p)))))
    return out


def fingerprint(corpus: "CorpusSettings | Mapping[str, Any]", template: str) -> str:
    """A hash of how the corpus renders: one problem of every operation in every language of the mix, and an
    equation. It changes when the generated texts, the prompt template or the answer format change."""
    corpus = CorpusSettings.of(corpus)
    digest = hashlib.sha256()
    seed, pid = corpus.seed, corpus.offset
    samples: dict[str, synthetic.Problem] = {}
    while len(samples) < len(synthetic.OPS):
        p = synthetic.problem(seed, pid)
        samples.setdefault(p.op, p)
        pid += 1
    for op in synthetic.OPS:
        p = samples[op]
        digest.update(f"{synthetic.expression(p)} = {format_number(p.answer)}.".encode())
        for lang in check_mix(corpus.mix):
            digest.update(format_prompt(synthetic.render_question(p, lang), lang, template).encode())
            digest.update(format_response(p.answer, lang, synthetic.expression(p)).encode())
    return digest.hexdigest()[:16]
