"""The one table of languages. Every language code, name, script and file name in the project comes from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from .errors import UnknownLanguageError


@dataclass(frozen=True)
class Language:
    code: str  # ISO 639-1, as MGSM names its files
    name: str  # English name, as the MathOctopus prompt and MSVAMP file names spell it
    script: str
    nllb: str  # FLORES-200 code used by NLLB translation models
    mgsm_file: str | None  # file name in an MGSM folder; None when MGSM lacks the language
    msvamp_file: str | None  # file name in an MSVAMP folder; None when MSVAMP lacks the language
    answer: str  # "The answer is {x}." in this language: how the harness writes a final answer


def _lang(code: str, name: str, script: str, nllb: str, answer: str, mgsm: bool = True, msvamp: bool = True) -> Language:
    return Language(
        code=code,
        name=name,
        script=script,
        nllb=nllb,
        answer=answer,
        mgsm_file=f"mgsm_{code}.tsv" if mgsm else None,
        msvamp_file=f"test_{name}.json" if msvamp else None,
    )


LANGUAGES: dict[str, Language] = {
    lang.code: lang
    for lang in (
        _lang("en", "English", "Latin", "eng_Latn", "The answer is {x}."),
        _lang("zh", "Chinese", "Han", "zho_Hans", "答案是{x}。"),
        _lang("ru", "Russian", "Cyrillic", "rus_Cyrl", "Ответ: {x}."),
        _lang("de", "German", "Latin", "deu_Latn", "Die Antwort ist {x}."),
        _lang("fr", "French", "Latin", "fra_Latn", "La réponse est {x}."),
        _lang("es", "Spanish", "Latin", "spa_Latn", "La respuesta es {x}."),
        _lang("ja", "Japanese", "Japanese", "jpn_Jpan", "答えは{x}です。"),
        _lang("sw", "Swahili", "Latin", "swh_Latn", "Jibu ni {x}."),
        _lang("th", "Thai", "Thai", "tha_Thai", "คำตอบคือ {x}"),
        _lang("bn", "Bengali", "Bengali", "ben_Beng", "উত্তর হল {x}।"),
        _lang("te", "Telugu", "Telugu", "tel_Telu", "సమాధానం {x}.", msvamp=False),
    )
}

# The ten languages of the paper, in the order the paper reports them.
PAPER_LANGS: tuple[str, ...] = ("en", "zh", "ru", "de", "fr", "es", "ja", "sw", "th", "bn")


def supported() -> str:
    return ", ".join(LANGUAGES)


def get(code: str) -> Language:
    try:
        return LANGUAGES[code]
    except KeyError:
        raise UnknownLanguageError(
            f"unknown language code {code!r}: supported codes are {supported()} (or 'all' for the paper's ten)"
        ) from None


def resolve(spec: str | Iterable[str] | None, default: Sequence[str] = PAPER_LANGS) -> tuple[str, ...]:
    """Turn a user's language choice into a tuple of known codes, in the order given, without duplicates.

    Accepts one code ("sw"), a comma-separated string ("zh,de"), a list (["zh", "de"]), "all" (the paper's ten),
    or None (``default``).
    """
    if spec is None:
        codes: list[str] = list(default)
    elif isinstance(spec, str):
        codes = [c.strip() for c in spec.split(",") if c.strip()]
    else:
        codes = [str(c).strip() for c in spec]
    if codes == ["all"]:
        codes = list(PAPER_LANGS)
    if not codes:
        raise UnknownLanguageError(f"empty language list: give one or more of {supported()}, or 'all'")
    out: list[str] = []
    for code in codes:
        get(code)
        if code not in out:
            out.append(code)
    return tuple(out)
