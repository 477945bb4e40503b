import re

import pytest

from langneurons import languages
from langneurons.errors import UnknownLanguageError
from langneurons.prompts import format_prompt, last_number, parse_number


def test_the_paper_languages_are_in_the_table_with_every_field():
    assert languages.PAPER_LANGS == ("en", "zh", "ru", "de", "fr", "es", "ja", "sw", "th", "bn")
    for code in languages.PAPER_LANGS:
        lang = languages.get(code)
        assert lang.mgsm_file == f"mgsm_{code}.tsv"
        assert lang.msvamp_file == f"test_{lang.name}.json"
        assert re.fullmatch(r"[a-z]{3}_[A-Z][a-z]{3}", lang.nllb)
        assert "{x}" in lang.answer


@pytest.mark.parametrize("spec, expected", [
    ("sw", ("sw",)),
    (["zh", "de"], ("zh", "de")),
    ("zh,de", ("zh", "de")),
    ("all", languages.PAPER_LANGS),
    (["all"], languages.PAPER_LANGS),
    (["de", "de", "zh"], ("de", "zh")),
])
def test_resolve_accepts_one_several_or_all(spec, expected):
    assert languages.resolve(spec) == expected


@pytest.mark.parametrize("spec", ["xx", ["zh", "klingon"], [], ""])
def test_unknown_or_empty_languages_are_rejected_with_the_supported_list(spec):
    with pytest.raises(UnknownLanguageError) as err:
        languages.resolve(spec)
    message = str(err.value)
    assert "\n" not in message
    assert "en, zh, ru, de, fr, es, ja, sw, th, bn" in message


def test_prompt_is_the_mathoctopus_template_in_the_asked_language():
    prompt = format_prompt("Wie viel ist 2 + 2?", "de")
    assert prompt.startswith("Below is an instruction")
    assert "request in German. Please answer in German." in prompt
    assert prompt.endswith("### Instruction:\nWie viel ist 2 + 2?\n\n### Response:")


@pytest.mark.parametrize("text, number", [("2,125", 2125.0), ("8.0", 8.0), ("-3", -3.0), ("114,200", 114200.0),
                                          ("abc", None)])
def test_parse_number(text, number):
    assert parse_number(text) == number


def test_last_number_takes_the_final_answer():
    assert last_number("3 + 4 = 7. The answer is 7.") == 7.0
    assert last_number("He pays $276,000 in total") == 276000.0
    assert last_number("no idea") is None
