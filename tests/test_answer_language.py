"""The answer-language check: a correct number in the wrong language is reported, and with `require` not counted."""

import pytest

from langneurons.answer_language import detect, in_language
from langneurons.checkpoints.measure import NeuronCheckpointer
from langneurons.data import load_problems
from langneurons.errors import HarnessError
from langneurons.languages import PAPER_LANGS
from langneurons.prompts import format_response

from conftest import problem_settings, settings

RUN = settings("neurons.probe=gold")  # complete neuron and eval settings, from the YAML


@pytest.mark.parametrize("lang", PAPER_LANGS)
def test_each_language_answer_sentence_is_recognised_as_its_language(lang):
    text = format_response(8, lang, "5 + 3")
    assert detect([text], PAPER_LANGS) == [lang]
    assert in_language([text], lang, PAPER_LANGS) == [True]


def test_a_bare_number_is_in_no_language():
    assert detect(["8", "5 + 3 = 8.", ""], PAPER_LANGS) == [None, None, None]
    assert in_language(["8"], "en", PAPER_LANGS) == [False]


def checkpointer(mode: str) -> NeuronCheckpointer:
    langs = ["en", "sw"]
    problems = load_problems(problem_settings(n=2, offset=100000, seed=0), langs, "mathoctopus")
    return NeuronCheckpointer(tokenizer=None, problems=problems, probe_langs=langs, eval_langs=langs,
                              neurons=RUN.neurons, eval_cfg={**RUN.eval.dump(), "answer_lang": mode},
                              out_dir="unused", model_id="none")


def test_require_counts_a_right_number_in_the_wrong_language_as_wrong():
    ckpt = checkpointer("require")
    gold = {lang: [format_response(a, lang) for a in ckpt.problems[lang]["answer"]] for lang in ("en", "sw")}
    # Swahili questions answered correctly, but in English
    answers = {"en": gold["en"], "sw": [format_response(a, "en") for a in ckpt.problems["sw"]["answer"]]}
    acc, in_lang = ckpt._accuracy(answers)
    assert in_lang == {"en": 1.0, "sw": 0.0}
    assert acc["en"] == 1.0 and acc["sw"] == 0.0
    # report only: the same answers are correct, and the share in the asked language is still logged
    acc, in_lang = checkpointer("report")._accuracy(answers)
    assert acc["sw"] == 1.0 and in_lang["sw"] == 0.0
    acc, in_lang = checkpointer("off")._accuracy(answers)
    assert acc["sw"] == 1.0 and in_lang == {}


def test_an_unknown_mode_is_named():
    # the settings layer's one line, before any checkpoint is taken
    with pytest.raises(HarnessError, match=r"^eval\.answer_lang=strict: unknown choice; use one of off, report, "
                                           r"require") as err:
        checkpointer("strict")._accuracy({"en": ["1", "2"], "sw": ["1", "2"]})
    assert "\n" not in str(err.value)
