"""The pretrained tiny base: its corpus, its cache (key, reuse, atomic builds, concurrent builders) and, on the
default configuration, that it really learnt something (slow)."""

import copy
import json
import threading
import time
from pathlib import Path

import pytest
import torch

from langneurons.base import cache, cache_key, documents, held_out_keys, tiny_base
from langneurons.data import synthetic
from langneurons.errors import HarnessError
from langneurons.experiment import load_model
from langneurons.settings import ModelSettings

from conftest import problem_settings, settings

TINY = settings("model=tiny").model.dump()  # model=tiny's complete settings, from the YAML


def micro_cfg(cache_dir: Path) -> dict:
    """A model config (model=tiny's, made smaller) whose base builds in about a second: the mechanics, not the
    learning."""
    return ModelSettings.of({
        **TINY,
        "prompt_template": "mathoctopus", "vocab_size": 300, "split_digits": True,
        "arch": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                 "num_key_value_heads": 1, "max_position_embeddings": 512, "tie_word_embeddings": True},
        "pretrain": {"enabled": True, "cache_dir": str(cache_dir), "seed": 0, "steps": 3, "batch_size": 4,
                     "lr": 1e-3, "warmup_steps": 1, "weight_decay": 0.0, "max_length": 256, "threads": 1,
                     "tokenizer_alpha": 0.3,
                     "corpus": {"seed": 0, "offset": 1000000, "holdout": {"offset": 100000, "n": 50},
                                "equations": 0.25, "mix": {"en": 3, "sw": 1}}},
    }).dump()


def entries(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


@pytest.fixture
def builds(monkeypatch):
    """Counts the real builds behind ``tiny_base``."""
    calls = []
    real = cache.build

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(cache, "build", counting)
    return calls


def test_corpus_follows_the_mix_and_never_holds_an_evaluation_problem():
    corpus = {"seed": 0, "offset": 1000000, "holdout": {"offset": 100000, "n": 2000}, "equations": 0.2,
              "mix": {"en": 8, "zh": 2, "sw": 0.5}}
    docs = documents(corpus, "mathoctopus", 2000, seed=0)
    assert len(docs) == 2000 and documents(corpus, "mathoctopus", 2000, seed=0) == docs
    counts = {k: sum(d.lang == k for d in docs) for k in ("en", "zh", "sw")}
    equations = sum(d.kind == "equation" for d in docs)
    assert 300 < equations < 500
    assert counts["en"] > 3 * counts["zh"] > 3 * counts["sw"] > 0
    # rendered eval questions (any language) never occur in the corpus
    held = held_out_keys(0, 100000, 2000)
    questions = {synthetic.render_question(synthetic.problem(0, pid), lang)
                 for pid in range(100000, 102000) for lang in ("en", "zh", "sw")}
    assert not any(q in d.text for d in docs if d.kind == "prompted" for q in questions)
    # ... while without the holdout some of them would (the check above can fail)
    loose = documents({**corpus, "holdout": {"offset": 0, "n": 0}}, "mathoctopus", 2000, seed=0)
    assert any(q in d.text for d in loose if d.kind == "prompted" for q in questions)
    assert len(held) > 500


def test_bad_mix_is_a_one_line_error(tmp_path):
    cfg = micro_cfg(tmp_path)
    cfg["pretrain"]["corpus"]["mix"] = {"en": 1, "xx": 1}
    with pytest.raises(HarnessError, match=r"^model\.pretrain\.corpus\.mix=.*unknown language code 'xx'") as err:
        tiny_base(cfg, progress=False)
    assert "\n" not in str(err.value)
    cfg["pretrain"]["corpus"]["mix"] = {"te": 1}
    with pytest.raises(HarnessError, match=r"^model\.pretrain\.corpus\.mix=.*no 'te' texts"):
        tiny_base(cfg, progress=False)
    # the settings are complete: a key left out is an error naming it, not a default
    del cfg["pretrain"]["corpus"]["equations"]
    with pytest.raises(HarnessError, match=r"^model\.pretrain\.corpus\.equations is missing from the config"):
        tiny_base(cfg, progress=False)


@pytest.mark.parametrize("path, value", [
    (("arch", "hidden_size"), 32),
    (("vocab_size",), 400),
    (("split_digits",), False),
    (("prompt_template",), "plain"),
    (("pretrain", "steps"), 4),
    (("pretrain", "seed"), 1),
    (("pretrain", "corpus", "seed"), 1),
    (("pretrain", "corpus", "mix", "sw"), 2),
    (("pretrain", "tokenizer_alpha"), 1.0),
    (("pretrain", "threads"), 2),
])
def test_cache_key_changes_with_what_the_weights_depend_on(tmp_path, path, value):
    cfg = micro_cfg(tmp_path)
    changed = copy.deepcopy(cfg)
    node = changed
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    assert cache_key(changed) != cache_key(cfg)


def test_cache_key_changes_with_the_cpu_kernels(tmp_path, monkeypatch):
    """A base computed with other kernels (ATEN_CPU_CAPABILITY / MKL_CBWR exported) is another base."""
    from langneurons import cpu_numerics

    cfg = micro_cfg(tmp_path)
    before = cache_key(cfg)
    monkeypatch.setattr(cpu_numerics, "describe", lambda: {"torch_cpu_capability": "AVX512", "mkl_cbwr": "AUTO"})
    assert cache_key(cfg) != before


def test_cache_key_ignores_where_and_whether(tmp_path):
    cfg = micro_cfg(tmp_path)
    moved = copy.deepcopy(cfg)
    moved["pretrain"]["cache_dir"] = str(tmp_path / "elsewhere")
    moved["pretrain"]["enabled"] = False
    assert cache_key(moved) == cache_key(cfg)


def test_cache_key_changes_with_the_generated_texts(tmp_path, monkeypatch):
    cfg = micro_cfg(tmp_path)
    before = cache_key(cfg)
    english = synthetic.TEXTS["en"]
    monkeypatch.setitem(synthetic.TEXTS, "en", type(english)(**{**english.__dict__, "names": ("Zoe",) * 4}))
    assert cache_key(cfg) != before


def test_base_is_built_once_then_reused(tmp_path, builds, caplog):
    cfg = micro_cfg(tmp_path / "cache")
    first = tiny_base(cfg, progress=False)
    assert len(builds) == 1
    [entry] = entries(tmp_path / "cache")
    assert entry.name == cache_key(cfg)
    manifest = json.loads((entry / "pretrain.json").read_text())
    assert manifest["report"]["steps"] == 3 and manifest["material"]["pretrain"]["corpus"]["mix"] == {"en": 3, "sw": 1}
    with caplog.at_level("INFO", logger="langneurons.base.cache"):
        second = tiny_base(cfg, progress=False)
    assert len(builds) == 1
    assert any("reusing the cached" in r.message for r in caplog.records)
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(first.model(ids).logits, second.model(ids).logits)
    assert first.tokenizer.get_vocab() == second.tokenizer.get_vocab()
    # another configuration is another entry
    other = copy.deepcopy(cfg)
    other["pretrain"]["steps"] = 2
    tiny_base(other, progress=False)
    assert len(builds) == 2 and len(entries(tmp_path / "cache")) == 2


def test_pretraining_lowers_the_loss_and_changes_the_weights(tmp_path):
    cfg = micro_cfg(tmp_path)
    cfg["pretrain"]["steps"] = 30
    cfg["pretrain"]["lr"] = 1e-2
    loaded = tiny_base(cfg, progress=False)
    report = json.loads((tmp_path / cache_key(cfg) / "pretrain.json").read_text())["report"]
    assert report["final_loss"] < report["losses"][0] - 1.0
    # the same architecture and initialisation seed with pretraining off: training moved the weights
    random_model = load_model({**cfg, "pretrain": {**cfg["pretrain"], "enabled": False}},
                              seed=int(cfg["pretrain"]["seed"])).model
    trained = dict(loaded.model.named_parameters())
    assert trained.keys() == dict(random_model.named_parameters()).keys()
    assert any(not torch.equal(p, trained[name]) for name, p in random_model.named_parameters())
    assert loaded.model_id.startswith("tiny-llama-") and cache_key(cfg)[:8] in loaded.model_id


@pytest.mark.parametrize("template", ["plain", "mathoctopus"])
@pytest.mark.parametrize("pretrained", [True, False])
def test_no_token_spans_a_prompt_and_its_answer(tmp_path, template, pretrained):
    # TRL tokenizes prompt + answer joined, evaluation and the probes tokenize them apart: both must agree.
    from langneurons.data import load_problems

    cfg = micro_cfg(tmp_path)
    cfg["prompt_template"] = template
    cfg["vocab_size"] = 1024  # enough merges that one across the boundary would be learnt if it could be
    cfg["pretrain"]["enabled"] = pretrained
    tok = load_model(cfg, seed=0).tokenizer
    problems = load_problems(problem_settings(n=20, offset=100000, seed=0), ["en", "sw", "zh"], template)
    for ds in problems.values():
        for row in ds:
            joined = tok(row["prompt"] + " " + row["response"], add_special_tokens=False)["input_ids"]
            apart = (tok(row["prompt"], add_special_tokens=False)["input_ids"]
                     + tok(" " + row["response"], add_special_tokens=False)["input_ids"])
            assert joined == apart, row["prompt"][-30:]


def test_the_build_repeats_bit_for_bit(tmp_path):
    a = tiny_base(micro_cfg(tmp_path / "a"), progress=False)
    b = tiny_base(micro_cfg(tmp_path / "b"), progress=False)
    assert a.tokenizer.get_vocab() == b.tokenizer.get_vocab()
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), name


def test_a_failed_build_leaves_no_cache_entry(tmp_path, monkeypatch):
    cfg = micro_cfg(tmp_path / "cache")

    def crash(step):
        if step == 1:
            raise RuntimeError("power cut")

    real = cache.pretrain
    monkeypatch.setattr(cache, "pretrain", lambda *a, **k: real(*a, **{**k, "on_step": crash}))
    with pytest.raises(RuntimeError, match="power cut"):
        tiny_base(cfg, progress=False)
    assert entries(tmp_path / "cache") == [] and not list((tmp_path / "cache").glob(".tmp-*"))
    # ... and a later build succeeds
    monkeypatch.setattr(cache, "pretrain", real)
    tiny_base(cfg, progress=False)
    assert [p.name for p in entries(tmp_path / "cache")] == [cache_key(cfg)]


def test_a_crash_while_saving_leaves_no_cache_entry(tmp_path, monkeypatch):
    cfg = micro_cfg(tmp_path / "cache")
    from transformers import PreTrainedTokenizerFast

    def broken_save(self, folder, *a, **k):
        (Path(folder) / "tokenizer.json").write_text("{half")
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", broken_save)
    with pytest.raises(OSError, match="disk full"):
        tiny_base(cfg, progress=False)
    assert entries(tmp_path / "cache") == []


def test_concurrent_builders_leave_one_complete_entry(tmp_path, builds, monkeypatch, caplog):
    # Two threads hold two separate opens of the lock file, which exclude each other like two processes do.
    cfg = micro_cfg(tmp_path / "cache")
    cfg["pretrain"]["steps"] = 8
    results, errors = [None, None], []
    start = threading.Barrier(2)
    counted = cache.build

    def slow_build(*args, **kwargs):  # the second builder surely arrives while the first one is building
        time.sleep(1.0)
        return counted(*args, **kwargs)

    monkeypatch.setattr(cache, "build", slow_build)
    # from_pretrained is not thread-safe (it patches torch globally while loading): the threads stop at the path
    monkeypatch.setattr(cache, "load_entry", lambda entry: entry)

    def run(i):
        try:
            start.wait()
            results[i] = tiny_base(cfg, progress=False)
        except Exception as e:  # surfaced below
            errors.append(e)

    caplog.set_level("INFO", logger="langneurons.files")  # the shared build-once cache logs the wait
    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and len(builds) == 1
    assert any("waiting" in r.message for r in caplog.records)
    [entry] = entries(tmp_path / "cache")
    assert json.loads((entry / "pretrain.json").read_text())["key"] == entry.name
    assert results == [entry, entry]  # the second waited for the first and took its build
    assert not list((tmp_path / "cache").glob(".tmp-*"))


def test_unwritable_cache_dir_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(HarnessError, match="cannot be created") as err:
        tiny_base(micro_cfg(blocker / "cache"), progress=False)
    assert "\n" not in str(err.value) and "LANGNEURONS_CACHE" in str(err.value)


def test_load_model_picks_the_pretrained_or_the_random_base(tmp_path, builds):
    cfg = micro_cfg(tmp_path)
    pretrained = load_model(cfg, seed=0)
    assert len(builds) == 1 and "-base-" in pretrained.model_id
    off = {**cfg, "pretrain": {**cfg["pretrain"], "enabled": False}}
    a, b = load_model(off, seed=0), load_model(off, seed=1)
    assert len(builds) == 1 and "-base-" not in a.model_id
    ids = torch.tensor([[5, 6, 7]])
    assert not torch.allclose(a.model(ids).logits, b.model(ids).logits)  # the run seed drives the random base
    # digits are single tokens in both
    for tok in (pretrained.tokenizer, a.tokenizer):
        assert len(tok("12345", add_special_tokens=False)["input_ids"]) == 5


@pytest.mark.slow
def test_default_base_answers_english_well_and_rare_languages_worse():
    """The shipped configuration (built once, then cached where `python train.py` keeps it) knows arithmetic in
    English and much less in the rare languages."""
    from langneurons import evaluation
    from langneurons.data import load_problems
    from langneurons.prompts import last_number

    model_cfg = settings("model.pretrain.enabled=true").model
    loaded = tiny_base(model_cfg)
    problems = load_problems(problem_settings(n=64, offset=100000, seed=0), ["en", "sw", "th", "bn"],
                             model_cfg.prompt_template)
    acc = {}
    for lang, ds in problems.items():
        answers = evaluation.generate(loaded.model, loaded.tokenizer, ds["prompt"], max_new_tokens=64, batch_size=32)
        acc[lang] = sum(last_number(a) == g for a, g in zip(answers, ds["answer"])) / len(ds)
    assert acc["en"] >= 0.5, acc
    assert max(acc["sw"], acc["th"], acc["bn"]) < acc["en"] - 0.15, acc
