import json

import pytest

from langneurons.data import correctness_pairs, load_jsonl, load_problems, sft_examples
from langneurons.data.synthetic import SYNTHETIC_LANGS, problem
from langneurons.errors import DataError, HarnessError, UnknownLanguageError
from langneurons.languages import PAPER_LANGS
from langneurons.prompts import last_number

from conftest import problem_settings

COLUMNS = {"id", "lang", "question", "answer", "expression", "response", "prompt"}


def test_generated_set_covers_the_paper_languages_and_is_parallel():
    assert set(PAPER_LANGS) <= set(SYNTHETIC_LANGS)
    sets = load_problems(problem_settings(n=20, offset=0, seed=3), PAPER_LANGS)
    ids = [sets[lang]["id"] for lang in PAPER_LANGS]
    answers = [sets[lang]["answer"] for lang in PAPER_LANGS]
    assert all(i == ids[0] for i in ids) and ids[0] == list(range(20))
    assert all(a == answers[0] for a in answers)
    for lang in PAPER_LANGS:
        ds = sets[lang]
        assert set(ds.column_names) == COLUMNS
        for row in ds:
            p = problem(3, row["id"])
            # the problem's numbers appear in every language's text, and the gold response ends on the answer
            assert str(p.a) in row["question"] and str(p.b) in row["question"]
            assert last_number(row["response"]) == row["answer"] == p.answer
    # texts differ across languages (they are translations, not copies)
    assert len({sets[lang][0]["question"] for lang in PAPER_LANGS}) == len(PAPER_LANGS)


def test_generated_problems_depend_only_on_seed_and_id():
    a = load_problems(problem_settings(n=5, offset=10, seed=0), ["en"])["en"]
    b = load_problems(problem_settings(n=30, offset=0, seed=0), ["en"])["en"]
    assert a["question"] == b["question"][10:15]
    c = load_problems(problem_settings(n=30, offset=0, seed=1), ["en"])["en"]
    assert c["question"] != b["question"]


def test_generated_set_rejects_languages_it_has_no_text_for():
    with pytest.raises(UnknownLanguageError, match="te"):
        load_problems(problem_settings(n=2, offset=0, seed=0), ["te"])


def test_correctness_pairs_prefer_the_gold_number_in_the_asked_language():
    sets = load_problems(problem_settings(n=12, offset=0, seed=0), ["sw", "zh"])
    pairs = correctness_pairs(sets, seed=0)
    assert len(pairs) == 24 and set(pairs["lang"]) == {"sw", "zh"}
    gold = {(lang, row["id"]): row["answer"] for lang in sets for row in sets[lang]}
    for row in pairs:
        assert last_number(row["chosen"]) == gold[(row["lang"], row["id"])]
        assert last_number(row["rejected"]) != gold[(row["lang"], row["id"])]
        assert row["chosen"] != row["rejected"]
        assert ("Jibu ni" in row["chosen"]) == (row["lang"] == "sw") == ("Jibu ni" in row["rejected"])


def test_sft_examples_complete_with_the_gold_response():
    sets = load_problems(problem_settings(n=4, offset=0, seed=0), ["de"])
    ex = sft_examples(sets)
    assert set(ex.column_names) >= {"prompt", "completion"}
    assert all("Die Antwort ist" in c for c in ex["completion"])


def test_mgsm_folder_loads_parallel_rows_with_thousands_separators(shared_data):
    sets = load_problems(problem_settings("mgsm", path=str(shared_data / "mgsm")), ["en", "sw", "te"])
    for lang, ds in sets.items():
        assert len(ds) == 250 and ds["id"] == list(range(250))
    assert sets["en"]["answer"] == sets["sw"]["answer"] == sets["te"]["answer"]
    # row 147 is written "2,125" in the file
    assert sets["en"][146]["answer"] == 2125.0
    assert sets["en"][249]["answer"] == 5600.0
    assert sets["sw"][0]["prompt"].endswith("### Response:") and "in Swahili." in sets["sw"][0]["prompt"]


def test_mgsm_limit_and_offset(shared_data):
    ds = load_problems(problem_settings("mgsm", path=str(shared_data / "mgsm"), n=5, offset=100), ["fr"])["fr"]
    assert ds["id"] == [100, 101, 102, 103, 104]


def test_msvamp_folder_loads_parallel_rows(shared_data):
    sets = load_problems(problem_settings("msvamp", path=str(shared_data / "msvamp")), ["en", "zh", "bn"])
    assert {len(ds) for ds in sets.values()} == {1000}
    assert sets["en"]["answer"] == sets["zh"]["answer"] == sets["bn"]["answer"]
    assert sets["zh"][0]["answer"] == 8.0 and "18" in sets["zh"][0]["question"]
    with pytest.raises(DataError, match="MSVAMP has no Telugu"):
        load_problems(problem_settings("msvamp", path=str(shared_data / "msvamp")), ["te"])


def test_missing_folder_file_and_unreachable_hub_are_one_line_errors(tmp_path):
    (tmp_path / "mgsm_en.tsv").write_text("q\t1\n")
    with pytest.raises(DataError, match="mgsm_de.tsv is missing"):
        load_problems(problem_settings("mgsm", path=str(tmp_path)), ["de"])
    with pytest.raises(DataError) as err:
        load_problems(problem_settings("mgsm", path="no-such-org/no-such-set"), ["en"])
    assert "\n" not in str(err.value) and "data.path=" in str(err.value)
    # a source the harness has no reader for: the settings layer's one line, naming the key and the choices
    with pytest.raises(HarnessError, match=r"^data\.source=gsm8k: unknown choice; use one of synthetic, mgsm, msvamp"):
        load_problems({**problem_settings().dump(), "source": "gsm8k"}, ["en"])
    # the settings are complete: a missing key is an error, not a default
    with pytest.raises(HarnessError, match=r"^data\.offset is missing from the config"):
        load_problems({"source": "synthetic", "path": None, "n": 4, "seed": 0}, ["en"])
    with pytest.raises(DataError, match="at least one row"):
        load_problems(problem_settings("mgsm", path=str(tmp_path), offset=5), ["en"])


def test_user_jsonl_is_checked_row_by_row(tmp_path):
    good = tmp_path / "pairs.jsonl"
    good.write_text("\n".join(json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}) for _ in range(3)))
    assert len(load_jsonl(good, ("prompt", "chosen", "rejected"))) == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "c"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl line 1: missing text field rejected"):
        load_jsonl(bad, ("prompt", "chosen", "rejected"))
