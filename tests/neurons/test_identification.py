"""Identification: hand-checked toy cases, the lam search, and agreement with slow reference-style loops."""

from __future__ import annotations

import json
import math

import pytest
import torch

from langneurons.errors import HarnessError
from langneurons.neurons import (
    GeneralRule,
    Identification,
    Identifier,
    NeuronStats,
    UnknownMethodError,
    identify,
    layer_distribution,
)
from langneurons.neurons.identify import norm_max


def stats_from_probs(p: torch.Tensor, langs) -> NeuronStats:
    """Stats whose probs() are exactly ``p`` (p in multiples of 1/100)."""
    counts = torch.round(p * 100).long()
    return NeuronStats(counts, torch.full((p.shape[-1],), 100), tuple(langs))


# ---- hand-checked toy cases ------------------------------------------------------------------------------------

def toy_ternary() -> NeuronStats:
    """Layer 0: specific (en), related (en+zh), general (all), weak (below tau); layer 1: four dead neurons.

    24 probabilities, 17 of them 0 and one 0.05: with bar 0.75, tau = the 18th smallest = 0.05.
    """
    p = torch.zeros(2, 4, 3)
    p[0, 0] = torch.tensor([0.9, 0.0, 0.0])
    p[0, 1] = torch.tensor([0.8, 0.7, 0.0])
    p[0, 2] = torch.tensor([0.9, 0.9, 0.9])
    p[0, 3] = torch.tensor([0.05, 0.0, 0.0])
    return stats_from_probs(p, ("en", "zh", "sw"))


def test_ternary_toy_case_by_hand():
    # Selecting 3 of 8 at lam = 0 takes the lowest entropies: specific (e~0), weak (e~0), related (e=0.63).
    ident = identify(toy_ternary(), top_rate=3 / 8, lam=0.0, bar=0.75)
    assert ident.tau == pytest.approx(0.05)
    assert ident.selected.tolist() == [0, 1, 3]
    assert ident.n_langs.tolist() == [1, 2, 0]
    assert ident.histogram == [1, 1, 1, 0]
    assert ident.per_language == {"en": 2, "zh": 1, "sw": 0}
    assert ident.totals == {"specific": 1, "related": 1, "general": 1, "unassigned": 1}
    assert ident.general.tolist() == [2]
    assert as_lists(ident.to_reference_mask()) == [[[0, 1], []], [[1], []], [[], []]]
    assert [t.tolist() for t in ident.units("en")] == [[0, 1], []]
    assert [t.tolist() for t in ident.units("zh", types=["related"])] == [[1], []]
    assert [t.tolist() for t in ident.units(types=["unassigned"])] == [[3], []]
    assert [t.tolist() for t in ident.units(["zh", "sw"], types=["specific", "related", "general"])] == [[1, 2], []]
    dist = layer_distribution(ident)
    assert dist.total.tolist() == [[1, 1, 1, 1], [0, 0, 0, 0]]
    assert dist.per_lang[:, 0].tolist() == [[1, 1, 1], [0, 1, 1], [0, 0, 1]]
    assert dist.to_dict()["all"]["general"] == [1, 0]
    assert {"layer": 0, "type": "related", "lang": "zh", "count": 1} in dist.rows()


def test_general_rule_is_configurable():
    stats = toy_ternary()
    # Two languages above tau are enough: related and general neurons both qualify.
    loose = identify(stats, top_rate=3 / 8, lam=0.0, bar=0.75, general=GeneralRule(min_langs=2))
    assert loose.general.tolist() == [1, 2] and loose.general_rule["min_langs"] == 2
    # A higher bar for general: threshold 0.9 (the 24th smallest) leaves nothing strictly above it.
    strict = identify(stats, top_rate=3 / 8, lam=0.0, bar=0.75, general=GeneralRule(bar=1.0))
    assert strict.general.numel() == 0 and strict.general_rule["threshold"] == pytest.approx(0.9)


def test_lape_toy_case_by_hand():
    # Neuron 3 has zero entropy but fires too rarely (filter); neurons 4, 5 never fire (filter as well).
    p = torch.zeros(1, 6, 3)
    p[0, 0] = torch.tensor([0.9, 0.0, 0.0])
    p[0, 1] = torch.tensor([0.0, 0.8, 0.0])
    p[0, 2] = torch.tensor([0.9, 0.9, 0.9])
    p[0, 3] = torch.tensor([0.01, 0.0, 0.0])
    stats = stats_from_probs(p, ("en", "zh", "sw"))
    # 18 probabilities, 12 zeros then 0.01: filter_rate 0.7 -> k = round(12.6) = 13 -> t_f = 0.01.
    ident = identify(stats, "lape", top_rate=2 / 6, filter_rate=0.7, bar=0.7)
    assert ident.selected.tolist() == [0, 1]
    assert [[t.tolist() for t in m] for m in ident.to_reference_mask()] == [[[0]], [[1]], [[]]]
    assert ident.lam is None and ident.filter_rate == 0.7
    # Without the filter's effect (t_f = 0), the rarely-firing zero-entropy neuron 3 wins over neuron 1.
    unfiltered = identify(stats, "lape", top_rate=2 / 6, filter_rate=12 / 18, bar=0.7)
    assert 3 in unfiltered.selected.tolist()


def lam_case(with_general: bool = True, with_specific: bool = True) -> Identifier:
    """K = 2, 10 neurons, 1 selected. General A = (1.0, 0.01) (e = 0.080), specific B = (0.1, 0) (e ~ 0).

    A's score e_A - lam * 1 / 0.75 drops below B's -lam * 0.1 / 0.75 once lam > lam* = 0.75 e_A / 0.9 = 0.06678.
    """
    p = torch.zeros(1, 10, 2)
    if with_general:
        p[0, 0] = torch.tensor([1.0, 0.01])
    if with_specific:
        p[0, 1] = torch.tensor([0.1, 0.0])
    return Identifier(p, ("en", "zh"))


def test_lam_search_by_hand():
    ident = lam_case()
    lam_star = float(ident.entropy[0] - ident.entropy[1]) / ((1.0 - 0.1) / norm_max(2))
    assert 0.06640625 < lam_star < 0.0671875
    lam, trace = ident.search_lam(top_rate=0.1, bar=0.8)
    # lo, hi, then the bisection midpoints; each ok midpoint raises lo, each failing one lowers hi.
    expected = [(0.0, True), (0.2, False), (0.1, False), (0.05, True), (0.075, False), (0.0625, True),
                (0.06875, False), (0.065625, True), (0.0671875, False), (0.06640625, True)]
    assert [(pytest.approx(t["lam"]), t["ok"]) for t in trace] == expected
    assert lam == pytest.approx(0.06640625)
    result = ident.ternary(lam="auto", top_rate=0.1, bar=0.8)
    assert result.lam == lam and result.lam_search == trace and result.histogram == [0, 1, 0]


def test_lam_search_edges():
    # No general neuron anywhere: hi is acceptable and returned after two evaluations.
    lam, trace = lam_case(with_general=False).search_lam(top_rate=0.1, bar=0.8)
    assert lam == 0.2 and len(trace) == 2
    # Only the general neuron can win: even lam = 0 selects it, so lo is returned and the trace says so.
    lam, trace = lam_case(with_specific=False).search_lam(top_rate=0.1, bar=0.8)
    assert lam == 0.0 and [t["ok"] for t in trace] == [False, False]
    with pytest.raises(HarnessError, match="lo < hi"):
        lam_case().search_lam(lo=0.2, hi=0.1)


def test_bad_settings_are_refused():
    stats = toy_ternary()
    with pytest.raises(UnknownMethodError, match="'entropy'"):
        identify(stats, "entropy")
    with pytest.raises(HarnessError, match="top_rate"):
        identify(stats, top_rate=0.0, lam=0.1)
    with pytest.raises(HarnessError, match="bar"):
        identify(stats, top_rate=0.5, lam=0.1, bar=1.5)
    with pytest.raises(HarnessError, match="'best'"):
        identify(stats, lam="best")


def test_identification_save_load_and_summary(tmp_path):
    ident = identify(toy_ternary(), top_rate=3 / 8, lam="auto", bar=0.75)
    ident.save(tmp_path)
    back = Identification.load(tmp_path)
    assert back.summary() == ident.summary()
    assert torch.equal(back.owners, ident.owners) and torch.equal(back.selected, ident.selected)
    summary = json.loads(json.dumps(ident.summary()))
    assert summary["lam"] == 0.2 and summary["totals"]["general"] == 1 and len(summary["lam_search"]) == 2


# ---- agreement with slow, reference-style loops on random inputs with many ties ------------------------------------

def slow_threshold(p: torch.Tensor, rate: float) -> float:
    values = sorted(p.flatten().tolist())
    return values[round(rate * len(values)) - 1]


def slow_mask(p: torch.Tensor, selected: torch.Tensor, tau: float) -> list[list[list[int]]]:
    L, H, K = p.shape
    mask = [[[] for _ in range(L)] for _ in range(K)]
    for index in selected.tolist():
        layer, unit = index // H, index % H
        for k in range(K):
            if float(p[layer, unit, k]) > tau:
                mask[k][layer].append(unit)
    return [[sorted(units) for units in per_lang] for per_lang in mask]


def slow_ternary(p: torch.Tensor, lam: float, top_rate: float, bar: float) -> list[list[list[int]]]:
    """The reference's recipe neuron by neuron: float32 K-vectors, entropy, score, then topk over the scores."""
    L, H, K = p.shape
    nm = sum(1 / m for m in range(1, K + 1)) / K
    scores = torch.empty(L * H, dtype=torch.float32)
    for index in range(L * H):
        v = p[index // H, index % H]
        q = v / v.sum() if float(v.sum()) > 0 else torch.full((K,), 1.0 / K)
        q = q.clamp(min=1e-12)
        q = q / q.sum()
        e = -(q * torch.log(q + 1e-30)).sum() / math.log(K)
        scores[index] = e - lam * v.max() / nm
    # torch.topk is the reference's own selection primitive, so its tie-breaking is part of what must match.
    selected = scores.topk(round(top_rate * L * H), largest=False).indices
    return slow_mask(p, selected, slow_threshold(p, bar))


def slow_lape(p: torch.Tensor, top_rate: float, filter_rate: float, bar: float) -> list[list[list[int]]]:
    L, H, K = p.shape
    t_f = slow_threshold(p, filter_rate)
    entropy = torch.empty(L * H, dtype=torch.float32)
    for index in range(L * H):
        v = p[index // H, index % H]
        q = v / v.sum() if float(v.sum()) > 0 else torch.zeros(K)
        e = -(q * torch.where(q > 0, q.log(), torch.zeros(K))).sum()
        entropy[index] = e if any(float(x) > t_f for x in v) else math.inf
    selected = entropy.topk(round(top_rate * L * H), largest=False).indices
    return slow_mask(p, selected, slow_threshold(p, bar))


def random_stats(seed: int, K: int, L: int = 3, H: int = 40, levels: int = 30) -> NeuronStats:
    """Coarse counts (0..levels-1 of levels-1 tokens), every neuron present twice in its layer.

    Duplicated neurons have equal scores, so an odd number of selected neurons always splits a tied pair at the
    selection boundary; coarse levels put many probabilities exactly at tau.
    """
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, levels, (L, H, K), generator=gen)
    counts[0, :3] = 0  # dead neurons: the uniform-q branch
    counts[1, :3] = levels - 2  # neurons firing on almost every token of every language: general
    counts[:, H // 2 :] = counts[:, : H // 2]
    return NeuronStats(counts, torch.full((K,), levels - 1), tuple(f"l{k}" for k in range(K)))


def as_lists(mask):
    return [[t.tolist() for t in per_lang] for per_lang in mask]


SETTINGS = [  # (seed, K, top_rate, lam, bar); top_rate * 120 is odd in each
    (0, 3, 0.075, 0.0, 0.95),
    (1, 4, 0.125, 0.05, 0.8),
    (2, 10, 0.075, 0.109375, 0.95),
    (3, 10, 0.175, 0.2, 0.8),
    (4, 5, 0.125, 0.13, 0.7),
]


@pytest.mark.parametrize("seed,K,top_rate,lam,bar", SETTINGS)
def test_ternary_equals_slow_reference_loop(seed, K, top_rate, lam, bar):
    stats = random_stats(seed, K)
    identifier = Identifier.from_stats(stats)
    scores = (identifier.entropy - lam * identifier.max_prob / norm_max(K)).sort().values
    k = round(top_rate * stats.num_layers * stats.num_units)
    assert scores[k - 1] == scores[k]  # the case has a tie at the selection boundary
    assert (identifier.flat_probs == identifier.threshold(bar)).sum() > 1  # and ties at tau
    fast = identify(stats, top_rate=top_rate, lam=lam, bar=bar)
    assert as_lists(fast.to_reference_mask()) == slow_ternary(stats.probs(), lam, top_rate, bar)
    assert sum(fast.histogram) == k and sum(fast.per_language.values()) > 0


@pytest.mark.parametrize("seed,K,top_rate,bar", [(0, 3, 0.075, 0.95), (5, 4, 0.175, 0.8), (6, 10, 0.125, 0.9)])
def test_lape_equals_slow_reference_loop(seed, K, top_rate, bar):
    stats = random_stats(seed, K)
    fast = identify(stats, "lape", top_rate=top_rate, filter_rate=bar, bar=bar)
    assert as_lists(fast.to_reference_mask()) == slow_lape(stats.probs(), top_rate, bar, bar)
    assert sum(fast.per_language.values()) > 0


def test_lam_search_equals_slow_bisection():
    # Neurons firing on 1-2 of 5 tokens in every language (moderate entropy, low max p) compete with six general
    # neurons (4-5 of 5 everywhere): raising lam lets the general ones in somewhere inside [0, 0.2].
    gen = torch.Generator().manual_seed(0)
    counts = torch.randint(1, 3, (3, 40, 4), generator=gen)
    counts[1, :6] = torch.randint(4, 6, (6, 4), generator=gen)
    stats = NeuronStats(counts, torch.full((4,), 5), ("l0", "l1", "l2", "l3"))
    probs = stats.probs()

    def has_general(lam: float) -> bool:
        mask = slow_ternary(probs, lam, 0.1, 0.9)
        owners: dict[tuple[int, int], int] = {}
        for per_lang in mask:
            for layer, units in enumerate(per_lang):
                for unit in units:
                    owners[layer, unit] = owners.get((layer, unit), 0) + 1
        return any(n == probs.shape[-1] for n in owners.values())

    lo, hi = 0.0, 0.2
    assert not has_general(lo) and has_general(hi)  # the search has something to find
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if not has_general(mid) else (lo, mid)
    assert identify(stats, top_rate=0.1, lam="auto", bar=0.9).lam == lo
