"""Parity with the reference's released mask (data/README.md, reference-mistral-mgsm); skips without the data."""

from __future__ import annotations

import pytest
import torch

from neuron_helpers import reference_dir
from langneurons.neurons import REFERENCE_LANG_ORDER, identify, load_reference_mask, load_stats

README_PER_LANG = {
    "en": 142, "ru": 556, "es": 523, "fr": 821, "de": 941, "zh": 412, "ja": 676, "bn": 948, "th": 622, "sw": 666
}
README_HISTOGRAM = [1369, 1866, 617, 310, 153, 127, 59, 40, 27, 20, 0]


@pytest.fixture(scope="module")
def reference_stats():
    return load_stats(reference_dir())


@pytest.fixture(scope="module")
def released(reference_stats):
    return identify(reference_stats, top_rate=0.01, lam=0.109375, bar=0.95)


def test_reference_folder_loads_in_reference_order(reference_stats):
    assert reference_stats.langs == REFERENCE_LANG_ORDER
    assert reference_stats.counts.shape == (32, 14336, 10)
    assert reference_stats.metadata["count"] == "subtract"


def test_released_mask_reproduced_tensor_by_tensor(released):
    (mask_file,) = (reference_dir() / "mask-top0.01-lambda0.109375").iterdir()
    expected = load_reference_mask(mask_file)
    ours = released.to_reference_mask()
    assert len(ours) == len(expected) == 10
    for k, (mine, theirs) in enumerate(zip(ours, expected)):
        assert len(mine) == len(theirs) == 32
        for layer, (a, b) in enumerate(zip(mine, theirs)):
            assert a.dtype == b.dtype == torch.int64, (k, layer)
            assert torch.equal(a, b), (REFERENCE_LANG_ORDER[k], layer)


def test_readme_figures(released):
    assert sum(released.per_language.values()) == 6307
    assert released.per_language == README_PER_LANG
    assert released.histogram == README_HISTOGRAM
    assert int(released.selected.numel()) == 4588
    assert round(released.tau, 4) == 0.5644


def test_automatic_lam_search_finds_the_released_lam(reference_stats):
    ident = identify(reference_stats, top_rate=0.01, lam="auto", bar=0.95)
    assert ident.lam == 0.109375
    assert len(ident.lam_search) == 10  # lo, hi and 8 midpoints down to width 1e-3
    assert ident.histogram[-1] == 0 and ident.histogram == README_HISTOGRAM
