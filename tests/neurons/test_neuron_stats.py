"""Statistics as data: probabilities, crash-safe save/load, import of the reference's activation folders."""

from __future__ import annotations

import json
import os

import pytest
import torch

from langneurons.errors import DataError
from langneurons.neurons import REFERENCE_LANG_ORDER, NeuronStats, load_reference_stats, load_stats
from langneurons.neurons import storage
from neuron_helpers import write_reference_folder


def make_stats(seed: int = 0, langs=("en", "zh", "sw"), layers: int = 2, units: int = 8) -> NeuronStats:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(50, 100, (len(langs),), generator=gen)
    counts = (torch.rand(layers, units, len(langs), generator=gen) * tokens).long()
    return NeuronStats(counts, tokens, langs, {"model": "tiny", "step": 3})


def test_probs_are_counts_over_tokens_in_float32():
    stats = make_stats()
    p = stats.probs()
    assert p.dtype == torch.float32 and p.shape == (2, 8, 3)
    assert torch.equal(p, stats.counts.float() / stats.tokens.float())


def test_probs_without_tokens_name_the_language():
    stats = make_stats()
    stats.tokens[1] = 0
    with pytest.raises(DataError, match=r"language\(s\) zh:"):
        stats.probs()


def test_save_load_round_trip(tmp_path):
    stats = make_stats()
    stats.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["stats.json", "stats.safetensors"]
    back = NeuronStats.load(tmp_path / "ckpt")
    assert torch.equal(back.counts, stats.counts) and torch.equal(back.tokens, stats.tokens)
    assert back.langs == stats.langs and back.metadata == stats.metadata
    meta = json.loads((tmp_path / "ckpt" / "stats.json").read_text())
    assert meta["tokens"] == dict(zip(stats.langs, stats.tokens.tolist())) and meta["layers"] == 2


def test_crash_mid_save_never_leaves_a_loadable_mix(tmp_path, monkeypatch):
    old, new = make_stats(seed=1), make_stats(seed=2)
    old.save(tmp_path)
    real_replace = os.replace
    calls = []

    def crash_on_json(src, dst):
        calls.append(str(dst))
        if str(dst).endswith(".json"):
            raise OSError("disk gone")
        real_replace(src, dst)

    monkeypatch.setattr(storage.os, "replace", crash_on_json)
    with pytest.raises(OSError):
        new.save(tmp_path)
    monkeypatch.setattr(storage.os, "replace", real_replace)
    # The tensors were replaced, the JSON was not: the pair is detected as half-written, not silently mixed.
    with pytest.raises(DataError, match="half-written"):
        NeuronStats.load(tmp_path)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no temp files left behind
    new.save(tmp_path)
    assert torch.equal(NeuronStats.load(tmp_path).counts, new.counts)


def test_crash_before_any_rename_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    old = make_stats(seed=1)
    old.save(tmp_path)

    def crash(src, dst):
        raise OSError("killed")

    monkeypatch.setattr(storage.os, "replace", crash)
    with pytest.raises(OSError):
        make_stats(seed=2).save(tmp_path)
    monkeypatch.undo()
    assert torch.equal(NeuronStats.load(tmp_path).counts, old.counts)


def test_add_select_and_subtract():
    a, b = make_stats(seed=1), make_stats(seed=2)
    total = a + b
    assert torch.equal(total.counts, a.counts + b.counts)
    sel = total.select(["sw", "en"])
    assert sel.langs == ("sw", "en") and torch.equal(sel.counts[..., 0], total.counts[..., 2])
    sub = total.subtract_prefix(b)
    assert torch.equal(sub.counts, a.counts) and torch.equal(sub.tokens, a.tokens)
    with pytest.raises(DataError, match="different models or language sets"):
        a + make_stats(langs=("en", "zh", "de"))
    with pytest.raises(DataError, match="'fr'"):
        a.select(["fr"])


def test_reference_folder_import_with_prefix_subtraction(tmp_path):
    langs = ["sw", "en", "zh", "ru"]  # files on disk in no particular order
    expected = write_reference_folder(tmp_path, langs)
    stats = load_reference_stats(tmp_path)
    # Stacked in the reference's order, whatever the order on disk.
    assert stats.langs == tuple(lang for lang in REFERENCE_LANG_ORDER if lang in langs) == ("en", "ru", "zh", "sw")
    for k, lang in enumerate(stats.langs):
        assert torch.equal(stats.counts[..., k], expected[lang][0])
        assert int(stats.tokens[k]) == expected[lang][1]
    assert (stats.counts >= 0).all() and stats.metadata["count"] == "subtract"
    assert stats.metadata["model"] == "Tiny-abc"


def test_reference_folder_without_prefix_and_auto_detect(tmp_path):
    expected = write_reference_folder(tmp_path / "ref", ["en", "zh"], prefix=False)
    stats = load_stats(tmp_path / "ref")
    assert torch.equal(stats.counts[..., 1], expected["zh"][0]) and stats.tokens.tolist() == [1000, 1000]
    stats.save(tmp_path / "ours")
    again = load_stats(tmp_path / "ours", langs=["zh", "en"])
    assert again.langs == ("zh", "en") and torch.equal(again.counts[..., 0], expected["zh"][0])


def test_reference_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no such path"):
        load_stats(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither a saved stats directory"):
        load_stats(tmp_path / "empty")
    with pytest.raises(DataError, match="no activation"):
        load_reference_stats(tmp_path / "empty")
    write_reference_folder(tmp_path / "partial", ["en", "zh"])
    (tmp_path / "partial" / "prefix.activation.zh.Tiny-abc.pt").unlink()
    with pytest.raises(DataError, match=r"prefix\.activation\.zh"):
        load_stats(tmp_path / "partial")
    write_reference_folder(tmp_path / "two", ["en", "zh"], prefix=False)
    write_reference_folder(tmp_path / "two", ["en", "zh"], prefix=False, tag="Other-def")
    with pytest.raises(DataError, match="several models"):
        load_stats(tmp_path / "two")
    assert load_reference_stats(tmp_path / "two", tag="Other-def").metadata["model"] == "Other-def"
