"""MAPO pairs: sampling -> scoring -> pairing on planted cases, the real tiny-model path, the pair cache, scorers."""

from __future__ import annotations

import pytest
import torch

from langneurons.alignment import mapo_training_set
from langneurons.data import load_problems, mapo
from langneurons.data.mapo import build_pairs, mapo_pairs, split_ids
from langneurons.errors import HarnessError, ModelLoadError
from langneurons.experiment import load_model
from langneurons.prompts import is_correct
from langneurons.scoring import (CorrectnessScorer, NumbersScorer, TranslationScorer, build_scorer, build_tiny_scorer,
                                 scorer_identity)
from langneurons.settings import ModelSettings, scorer_settings

from conftest import problem_settings, settings

# Complete settings from the YAML (model=tiny, scorer=tiny, alignment=mapo), made smaller for these tests.
_BASE = settings("scorer=tiny", "alignment=mapo")
# a tiny model with random weights and its own small tokenizer (no pretrained base)
TINY_MODEL = ModelSettings.of({
    **_BASE.model.dump(), "prompt_template": "mathoctopus", "vocab_size": 400, "split_digits": False,
    "pretrain": None,
    "arch": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 1, "max_position_embeddings": 512, "tie_word_embeddings": True}}).dump()
TINY_SCORER = scorer_settings({
    **_BASE.scorer.dump(), "name_or_path": None, "vocab_size": 400, "corpus_size": 30, "seed": 0,
    "arch": {"d_model": 16, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32}, "batch_size": 64,
    "max_length": 64}).dump()
NLLB = settings("scorer=nllb").scorer.dump()
MAPO = {**_BASE.alignment.dump(), "questions": problem_settings(n=6, offset=0, seed=0).dump(), "k": 2,
        "temperature": 0.8, "top_p": 1.0, "max_new_tokens": 12, "sample_batch_size": 8, "sampler": "hf",
        "include_gold": True, "eval_fraction": 0.0}


# ---- MAPO's rules on planted answers ----------------------------------------------------------------------------
def test_rules_rank_by_reward_and_pair_each_correct_answer_with_everything_below_it():
    texts = ["A ok", "B wrong", "C ok", "D wrong", "E ok", "A ok", "F wrong"]
    rewards = [0.9, 0.95, 0.5, 0.5, 0.3, 0.1, 0.3]
    correct = [True, False, True, False, True, True, False]
    pairs = {(texts[i], texts[j]) for i, j in mapo_pairs(texts, rewards, correct)}
    # ranking: B .95, A .9, C .5, D .5, E .3, F .3, A' .1 (ties keep sampling order)
    assert pairs == {
        ("A ok", "C ok"), ("A ok", "D wrong"), ("A ok", "E ok"), ("A ok", "F wrong"),  # not A' (same text)
        ("C ok", "E ok"), ("C ok", "F wrong"), ("C ok", "A ok"),                       # not D (equal reward)
        ("E ok", "A ok"),                                                               # not F (equal reward)
    }
    assert len(mapo_pairs(texts, rewards, correct)) == len(pairs)  # each text pair once
    assert mapo_pairs(["x 1", "y 2"], [0.2, 0.1], [False, False]) == []  # nothing correct: no pair


def test_split_holds_out_a_tenth_of_questions_by_id():
    held = split_ids(range(40), 0.1, seed=3)
    assert len(held) == 4 and held <= set(range(40))
    assert held == split_ids(range(40), 0.1, seed=3) and held != split_ids(range(40), 0.1, seed=4)
    assert split_ids([5], 0.5, seed=0) == set()  # training keeps at least one question


class PlantedSampler:
    """Fixed answers per prompt: the English question gets two English answers; each x question gets the gold
    answer, a wrong answer and a duplicate of the gold answer."""

    def __init__(self, problems):
        self.by_prompt = {}
        for lang, ds in problems.items():
            for row in ds:
                gold = int(row["answer"])
                if lang == "en":
                    self.by_prompt[row["prompt"]] = [f"en-a {gold}", f"en-b {gold}"]
                else:
                    self.by_prompt[row["prompt"]] = [f"{lang} ok {gold}", f"{lang} bad {gold + 1}", f"{lang} ok {gold}"]
        self.calls = 0

    def sample(self, prompts, k):
        self.calls += 1
        return [self.by_prompt[p][:k] for p in prompts]


class PlantedScorer:
    """Rewards by a planted table; records what it was asked."""

    needs_english = True

    def __init__(self):
        self.seen = []

    def score(self, answers, lang, english_answers, *, gold=None):
        self.seen.append((lang, list(answers), list(english_answers), gold))
        table = {"ok": 0.5, "bad": 0.8}
        return [0.1 if a.startswith("The answer") or "=" in a else table[a.split()[1]] for a in answers]


def test_planted_sampling_scoring_and_pairing_give_the_known_pairs():
    problems = load_problems(problem_settings(n=10, offset=0, seed=0), ["en", "sw", "zh"], "mathoctopus")
    sampler, scorer = PlantedSampler(problems), PlantedScorer()
    built = build_pairs(problems, sampler, scorer, k=3, include_gold=True, eval_fraction=0.2, seed=0)
    assert sampler.calls == 1
    # every x question: "bad" (0.8, wrong) ranks first and is never chosen; "ok" (0.5, correct) is chosen over the
    # gold response (0.1); its duplicate gives no second pair and "ok" vs "ok" is skipped
    pairs = built.train + built.eval
    assert len(pairs) == 2 * 10
    for p in pairs:
        gold = int(problems[p["lang"]][p["id"]]["answer"])
        assert p["chosen"] == f" {p['lang']} ok {gold}"
        assert p["rejected"] == " " + problems[p["lang"]][p["id"]]["response"]
        assert p["prompt"] == problems[p["lang"]][p["id"]]["prompt"]
        assert (p["chosen_reward"], p["rejected_reward"]) == (0.5, 0.1)
    # the scorer saw each x answer with the English answers of the parallel question (+ the English gold)
    lang, answers, english, gold = scorer.seen[0]
    row = problems[lang][0]
    assert english == [f"en-a {int(row['answer'])}", f"en-b {int(row['answer'])}", problems["en"][0]["response"]]
    assert gold == row["answer"] and answers[-1] == row["response"]
    # split by question: a held-out question is held out in every language
    held = {p["id"] for p in built.eval}
    assert len(held) == 2 and not held & {p["id"] for p in built.train}
    assert all(sum(p["id"] == i for p in built.eval) == 2 for i in held)
    stats = built.stats
    assert stats["pairs"] == {"train": {"sw": 8, "zh": 8}, "eval": {"sw": 2, "zh": 2}}
    assert stats["correct_fraction"] == {"en": 1.0, "sw": pytest.approx(2 / 3), "zh": pytest.approx(2 / 3)}
    assert stats["questions_with_pairs"] == {"sw": 10, "zh": 10}


def test_without_gold_a_question_with_no_correct_sample_gives_no_pair():
    problems = load_problems(problem_settings(n=4, offset=0, seed=0), ["en", "sw"], "mathoctopus")
    sampler = PlantedSampler(problems)
    for row in problems["sw"]:
        sampler.by_prompt[row["prompt"]] = ["sw bad 1000001", "sw ok 1000002"]  # never the gold number
    built = build_pairs(problems, sampler, PlantedScorer(), k=2, include_gold=False)
    assert built.train == [] and built.eval == [] and built.stats["correct_fraction"]["sw"] == 0.0
    assert "include_gold=true" in mapo.empty_reason(built.stats)


def test_correctness_scorer_pairs_correct_over_wrong_and_samples_no_english():
    problems = load_problems(problem_settings(n=3, offset=0, seed=0), ["en", "de"], "mathoctopus")
    sampler = PlantedSampler(problems)
    built = build_pairs(problems, sampler, CorrectnessScorer(), k=3, include_gold=False)
    assert len(built.train) == 3 and "en" not in built.stats["correct_fraction"]
    for p in built.train:
        gold = problems["de"][p["id"]]["answer"]
        assert is_correct(p["chosen"], gold) and not is_correct(p["rejected"], gold)


def test_numbers_scorer_ranks_answers_by_agreement_with_the_english_reasoning():
    scorer = build_scorer({"kind": "numbers"})
    assert isinstance(scorer, NumbersScorer) and scorer.needs_english
    english = ["46 + 31 = 77. The answer is 77.", "46 + 31 = 77. The answer is 77."]
    right, sloppy, wrong = "46 + 31 = 77. Jibu ni 77.", "5 + 72 = 77. Jibu ni 77.", "5 + 31 = 36. Jibu ni 36."
    rewards = scorer.score([right, sloppy, wrong, "Jibu ni"], "sw", english)
    assert rewards[0] == 1.0 and rewards[0] > rewards[1] > rewards[2] > rewards[3] == 0.0
    # the mean over the English answers: agreeing with one of two is half the reward
    assert scorer.score([right], "sw", [english[0], "1 2 3 4"]) == [pytest.approx(0.5)]
    # MAPO's rules then pair the faithful correct answer over the correct-by-luck one, and both over the wrong one
    texts = [sloppy, right, wrong]
    correct = [is_correct(t, 77) for t in texts]
    assert sorted(mapo_pairs(texts, scorer.score(texts, "sw", english), correct)) == [(0, 2), (1, 0), (1, 2)]
    with pytest.raises(HarnessError, match="scorer=numbers needs at least one English answer"):
        scorer.score([right], "sw", [])
    assert scorer_identity({"kind": "numbers"}) == {"kind": "numbers"}
    with pytest.raises(HarnessError, match=r"unknown config key 'scorer\.unused'"):
        scorer_identity({"kind": "numbers", "unused": 1})


# ---- the translation scorer ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_scorer():
    model, tokenizer = build_tiny_scorer(TINY_SCORER["arch"], vocab_size=400, corpus_size=30)
    return TranslationScorer(model, tokenizer, batch_size=4)


def test_translation_reward_is_the_mean_inverse_cross_entropy_over_english_answers(tiny_scorer):
    tok, model = tiny_scorer.tokenizer, tiny_scorer.model
    answer, english = "Jibu ni 3.", ["The answer is 3.", "3 apples"]
    src = [tok.convert_tokens_to_ids("swh_Latn"), *tok(answer, add_special_tokens=False)["input_ids"], tok.eos_token_id]
    expected = []
    for text in english:
        tgt = [tok.convert_tokens_to_ids("eng_Latn"), *tok(text, add_special_tokens=False)["input_ids"],
               tok.eos_token_id]
        labels = torch.tensor([[-100, *tgt[1:]]])  # the forced eng_Latn token is not scored
        decoder_input = torch.tensor([[model.config.decoder_start_token_id, *tgt[:-1]]])
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([src]), decoder_input_ids=decoder_input, labels=labels).loss
        expected.append(1 / loss.item())
    got = tiny_scorer.score([answer, "Ответ: 3."], "sw", english)
    assert got[0] == pytest.approx(sum(expected) / 2, rel=1e-4)
    # batching and padding do not change a reward
    assert tiny_scorer.score([answer], "sw", english)[0] == pytest.approx(got[0], rel=1e-4)


def test_scorer_configs_and_their_errors(tmp_path, monkeypatch):
    assert isinstance(build_scorer({"kind": "correctness"}), CorrectnessScorer)
    with pytest.raises(HarnessError, match=r"^scorer\.kind=bleu: unknown choice; use one of translation, numbers, "
                                           r"correctness"):
        scorer_settings({"kind": "bleu"})
    with pytest.raises(HarnessError, match=r"^scorer\.max_length is missing from the config"):
        build_scorer({key: value for key, value in NLLB.items() if key != "max_length"})
    with pytest.raises(ModelLoadError, match=r"scorer model '/no/such/nllb': no such local folder.*scorer=tiny"):
        build_scorer({**NLLB, "name_or_path": "/no/such/nllb"})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        build_scorer({**NLLB, "name_or_path": "facebook/nllb-200-distilled-600M"})
    assert "HF_HUB_OFFLINE" in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        build_scorer({**NLLB, "name_or_path": str(tmp_path)})
    plain = TranslationScorer(*build_tiny_scorer(TINY_SCORER["arch"], vocab_size=400, corpus_size=30))
    plain.tokenizer = load_model(TINY_MODEL, 0).tokenizer  # a tokenizer without language codes
    with pytest.raises(HarnessError, match="no language token 'swh_Latn'"):
        plain.score(["x"], "sw", ["y"])


# ---- the real tiny path and the pair cache ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def policy():
    return load_model(TINY_MODEL, 0)


def test_tiny_policy_and_tiny_scorer_build_pairs_by_the_rules(policy):
    problems = load_problems(problem_settings(n=4, offset=0, seed=0), ["en", "sw"], "mathoctopus")
    sampler = mapo.HFSampler(policy.model, policy.tokenizer, max_new_tokens=12, batch_size=8, seed=1)
    samples = sampler.sample([problems["sw"][0]["prompt"]], 3)
    assert len(samples) == 1 and len(samples[0]) == 3 and len(set(samples[0])) > 1  # sampled, not greedy
    assert sampler.sample([problems["sw"][0]["prompt"]], 3) == samples  # seeded
    scorer = build_scorer(TINY_SCORER)
    built = build_pairs(problems, sampler, scorer, k=3, include_gold=True, seed=0)
    assert built.train, "gold answers are candidates: some must rank above a sample"
    for p in built.train:
        gold = problems["sw"][p["id"]]["answer"]
        assert is_correct(p["chosen"], gold)
        assert p["chosen_reward"] > p["rejected_reward"] and p["chosen"] != p["rejected"]


def test_a_rerun_reuses_the_cached_pairs_and_a_changed_input_rebuilds(policy, tmp_path, monkeypatch):
    calls = []
    real = mapo.HFSampler.sample
    monkeypatch.setattr(mapo.HFSampler, "sample", lambda self, prompts, k: calls.append(len(prompts)) or
                        real(self, prompts, k))
    cfg = {**MAPO, "cache_dir": str(tmp_path / "cache")}
    first = mapo_training_set(cfg, ["sw"], "mathoctopus", 0, policy=policy, scorer=TINY_SCORER,
                              out_dir=tmp_path / "run1")
    assert calls == [12] and first.stats["cache"]["hit"] is False  # 6 sw + 6 en prompts, one call
    second = mapo_training_set(cfg, ["sw"], "mathoctopus", 0, policy=policy, scorer=TINY_SCORER,
                               out_dir=tmp_path / "run2")
    assert calls == [12] and second.stats["cache"]["hit"] is True  # no sampling at all
    assert second.train.to_list() == first.train.to_list()
    assert (tmp_path / "run2" / "train.jsonl").read_text() == (tmp_path / "run1" / "train.jsonl").read_text()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [second.stats["cache"]["path"].split("/")[-1]]
    mapo_training_set({**cfg, "k": 3}, ["sw"], "mathoctopus", 0, policy=policy, scorer=TINY_SCORER)
    assert len(calls) == 2  # another k is another pair set
    mapo_training_set(cfg, ["sw"], "mathoctopus", 0, policy=policy, scorer={**TINY_SCORER, "seed": 1})
    assert len(calls) == 3  # so is another scorer
    mapo_training_set(cfg, ["sw"], "mathoctopus", 0, policy=load_model(TINY_MODEL, 1), scorer=TINY_SCORER)
    assert len(calls) == 4  # and another policy (same architecture, other weights)


def test_an_empty_pair_set_and_a_missing_vllm_are_one_line_errors(policy, monkeypatch):
    cfg = {**MAPO, "include_gold": False, "cache_dir": None}
    monkeypatch.setattr(mapo.HFSampler, "sample", lambda self, prompts, k: [["no number here"] * k for _ in prompts])
    with pytest.raises(HarnessError) as err:
        mapo_training_set(cfg, ["sw"], "mathoctopus", 0, policy=policy, scorer={"kind": "correctness"})
    assert "no preference pairs" in str(err.value) and "include_gold=true" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(HarnessError, match="alignment=mapo aligns other languages to English"):
        mapo_training_set(cfg, ["en"], "mathoctopus", 0, policy=policy, scorer={"kind": "correctness"})
    with pytest.raises(HarnessError, match=r"^scorer\.kind=nope: unknown choice"):
        mapo_training_set(cfg, ["sw"], "mathoctopus", 0, policy=policy, scorer={"kind": "nope"})
    with pytest.raises(HarnessError, match=r"^alignment\.sampler=fast: unknown choice; use one of hf, vllm"):
        mapo_training_set({**cfg, "sampler": "fast"}, ["sw"], "mathoctopus", 0, policy=policy,
                          scorer={"kind": "correctness"})
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(HarnessError, match="needs vLLM, which is not installed"):
            mapo_training_set({**cfg, "sampler": "vllm"}, ["sw"], "mathoctopus", 0, policy=policy,
                              scorer={"kind": "correctness"})
