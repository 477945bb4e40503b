"""Is an answer written in the language it was asked in? (py3langid, restricted to the evaluated languages.)

The paper's deactivation protocol counts an answer only when it is in the asked language; a model that answers a
Swahili question correctly in English has not used its Swahili output path. A text with no letters (a bare
number) carries no evidence of any language and is not counted as written in the asked one.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from .errors import HarnessError

MODES = ("off", "report", "require")  # eval.answer_lang


@lru_cache(maxsize=8)
def _identifier(candidates: tuple[str, ...]):
    try:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier
    except ImportError:
        raise HarnessError("the answer-language check needs py3langid: pip install py3langid "
                           "(or eval.answer_lang=off)") from None
    ident = LanguageIdentifier.from_model_file(MODEL_FILE)
    ident.set_languages(list(candidates))
    return ident


def detect(texts: Sequence[str], candidates: Sequence[str]) -> list[str | None]:
    """The most likely language of each text among ``candidates`` (ISO 639-1 codes); None for a text with no
    letters."""
    ident = _identifier(tuple(sorted(set(candidates))))
    return [ident.classify(t)[0] if any(ch.isalpha() for ch in t) else None for t in texts]


def in_language(texts: Sequence[str], lang: str, candidates: Sequence[str]) -> list[bool]:
    """Whether each text is written in ``lang`` rather than in one of the other ``candidates``."""
    return [found == lang for found in detect(texts, [*candidates, lang])]
