"""The analysis tables on hand-made identifications: every number checked against sets and sums built by hand."""

import html

import pytest
import torch

from langneurons.analysis.change import layer_change, shared_by, spontaneous_alignment, stage_change
from langneurons.analysis.counts import counts_over_steps
from langneurons.analysis.overlaps import jaccard, overlap_across_checkpoints, overlap_between
from langneurons.analysis.sources import Checkpoint, Run
from langneurons.analysis.stages import find_stages
from langneurons.analysis.table import Table
from langneurons.errors import DataError
from langneurons.neurons import Identification

LANGS = ("a", "b", "c")
UNITS = 4  # per layer; 4 layers -> flat neuron index = layer * 4 + unit


def ident(owned: dict[int, str], general: list[int], layers: int = 4) -> Identification:
    """Selected neurons ``{flat index: owning languages}`` ("" = owned by none) and the general set."""
    selected = sorted(owned)
    owners = [[lang in owned[s] for lang in LANGS] for s in selected]
    return Identification(
        langs=LANGS, method="ternary", num_layers=layers, num_units=UNITS, top_rate=0.5, lam=0.1, bar=0.9, tau=0.5,
        selected=torch.tensor(selected, dtype=torch.int64), owners=torch.tensor(owners, dtype=torch.bool).reshape(-1, 3),
        general=torch.tensor(general, dtype=torch.int64), shared_by_all=torch.zeros(4, dtype=torch.int64))


# before: 0 a-specific, 1 a+b related, 5 b-specific, 9 unassigned; general 14, 15
BEFORE = ident({0: "a", 1: "ab", 5: "b", 9: ""}, [14, 15])
# after: 0 a+c related, 2 b-specific, 5 b-specific, 6 c-specific; general 13, 14, 15
AFTER = ident({0: "ac", 2: "b", 5: "b", 6: "c"}, [13, 14, 15])


def language_set(owned: dict[int, str], lang: str) -> set[int]:
    """A language's neuron set by hand: the selected neurons it owns that not every language owns."""
    return {n for n, langs in owned.items() if lang in langs and len(langs) < len(LANGS)}


def test_jaccard_matches_sets_built_by_hand():
    before_sets = {lang: language_set({0: "a", 1: "ab", 5: "b", 9: ""}, lang) for lang in LANGS}
    after_sets = {lang: language_set({0: "ac", 2: "b", 5: "b", 6: "c"}, lang) for lang in LANGS}
    got = jaccard(BEFORE, AFTER)
    for lang in LANGS:
        x, y = before_sets[lang], after_sets[lang]
        assert got[lang] == pytest.approx(len(x & y) / len(x | y) if x | y else 1.0)
    assert got == {"a": pytest.approx(1 / 2), "b": pytest.approx(1 / 3), "c": 0.0}


def test_overlap_tables_across_checkpoints_and_between_sources():
    run = Run("r", "r", "stats", [Checkpoint(0, ident=BEFORE), Checkpoint(5, ident=AFTER),
                                 Checkpoint(9, ident=BEFORE)])
    table = overlap_across_checkpoints([run])
    rows = {(r["step"], r["lang"]): r for r in table.records()}
    assert rows[(0, "a")]["vs first"] == 1.0
    assert rows[(5, "b")]["vs first"] == pytest.approx(1 / 3) and rows[(5, "b")]["vs previous"] == pytest.approx(1 / 3)
    assert rows[(9, "b")]["vs first"] == 1.0 and rows[(9, "b")]["vs previous"] == pytest.approx(1 / 3)
    pairs, notes = overlap_between([("x", BEFORE), ("y", AFTER), ("other model", ident({0: "a"}, [], layers=5))])
    mean = next(r for r in pairs.records() if (r["a"], r["b"], r["lang"]) == ("x", "y", "mean"))["jaccard"]
    assert mean == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)
    assert len(notes) == 2 and all("one model" in n for n in notes)


def test_layer_change_is_after_minus_before_per_layer_and_type():
    table = layer_change(BEFORE, AFTER)
    got = {(r["layer"], r["type"]): (r["before"], r["after"], r["change"]) for r in table.records()}
    # layer 0 (neurons 0-3): specific {0} -> {2}; related {1} -> {0}
    assert got[(0, "specific")] == (1, 1, 0) and got[(0, "related")] == (1, 1, 0)
    # layer 1 (4-7): specific {5} -> {5, 6}
    assert got[(1, "specific")] == (1, 2, 1)
    # layer 2 (8-11): unassigned {9} -> {}
    assert got[(2, "unassigned")] == (1, 0, -1)
    # layer 3 (12-15): general {14, 15} -> {13, 14, 15}
    assert got[(3, "general")] == (2, 3, 1)
    for t, total_before, total_after in (("specific", 2, 3), ("related", 1, 1), ("general", 2, 3)):
        assert sum(r["change"] for r in table.records() if r["type"] == t) == total_after - total_before
    stages = find_stages([2, 1, 0, 0], [0, 0, 1, 3])
    per_stage = stage_change(BEFORE, AFTER, stages)
    for r in per_stage.records():
        if r["type"] in ("specific", "related", "general", "unassigned"):
            lo, hi = map(int, r["layers"].split("-")) if "-" in r["layers"] else (int(r["layers"]),) * 2
            assert r["change"] == sum(got[(layer, r["type"])][2] for layer in range(lo, hi + 1))


def test_shared_by_counts_owners_and_puts_the_general_set_at_n_equals_k():
    table = shared_by(BEFORE, AFTER)
    assert [(r["N"], r["before"], r["after"]) for r in table.records()] == [(1, 2, 3), (2, 1, 1), (3, 2, 3)]
    with pytest.raises(DataError, match="one model"):
        shared_by(BEFORE, ident({0: "a"}, [], layers=5))


def test_spontaneous_alignment_splits_trained_and_untrained_languages():
    before = Checkpoint(0, record={"accuracy": {"a": 0.1, "b": 0.2, "c": 0.3, "avg": 0.2}}, ident=BEFORE)
    after = Checkpoint(8, record={"accuracy": {"a": 0.5, "b": 0.2, "c": 0.6, "avg": 0.43}}, ident=AFTER)
    run = Run("r", "r", "run", [before, after], trained=("a",))
    per_lang, groups = spontaneous_alignment(run, before, after)
    rows = {r["lang"]: r for r in per_lang.records()}
    # a: specific {0} -> {} , related {1} -> {0}; b: specific {5} -> {2, 5}, related {1} -> {}; c: {} -> related {0},
    # specific {6}
    assert (rows["a"]["specific change"], rows["a"]["related change"]) == (-1, 0)
    assert (rows["b"]["specific change"], rows["b"]["related change"]) == (1, -1)
    assert (rows["c"]["specific change"], rows["c"]["related change"]) == (1, 1)
    assert rows["a"]["trained"] and not rows["b"]["trained"]
    assert rows["c"]["accuracy change"] == pytest.approx(0.3)
    summary = {r["languages"]: r for r in groups.records()}
    assert summary["trained"]["n"] == 1 and summary["untrained"]["n"] == 2
    assert summary["untrained"]["specific change (sum)"] == 2 and summary["untrained"]["related change (mean)"] == 0
    assert summary["untrained"]["accuracy change (mean)"] == pytest.approx(0.15)
    with pytest.raises(DataError, match="trained="):
        spontaneous_alignment(Run("s", "s", "stats", [before, after]), before, after)


def test_counts_over_steps_per_language_and_in_total():
    run = Run("r", "r", "run", [Checkpoint(0, record={"accuracy": {"a": 0.25, "avg": 0.1}}, ident=BEFORE)])
    rows = {r["lang"]: r for r in counts_over_steps([run]).records()}
    assert rows["all"]["specific"] == 2 and rows["all"]["related"] == 1 and rows["all"]["general"] == 2
    assert rows["all"]["unassigned"] == 1 and rows["all"]["accuracy"] == 0.1
    assert (rows["a"]["specific"], rows["a"]["related"], rows["a"]["general"]) == (1, 1, 2)
    assert (rows["b"]["specific"], rows["b"]["related"]) == (1, 1) and rows["a"]["accuracy"] == 0.25
    assert rows["c"]["accuracy"] is None


def test_tables_escape_html_and_write_csv():
    table = Table("t", "a <title>", ["x", "y"], [["<script>", 1.5], [None, 3]])
    page = table.to_html()
    assert "<script>" not in page and html.escape("<script>") in page
    assert table.to_csv().splitlines() == ["x,y", "<script>,1.5", ",3"]
    with pytest.raises(ValueError):
        Table("bad", "bad", ["x"], [[1, 2]])


def test_a_checkpoint_without_identification_notes_it_once():
    # sw has no probe tokens: no identification, said once however often the checkpoint is asked
    import torch

    from langneurons.analysis.sources import Checkpoint
    from langneurons.neurons import NeuronStats

    stats = NeuronStats(torch.ones(2, 8, 2, dtype=torch.int64), torch.tensor([10, 0]), ("en", "sw"))
    ckpt = Checkpoint(3, stats=stats)
    assert ckpt.ident is None and ckpt.ident is None and ckpt.lang_type_counts == {}
    assert ckpt.notes == ["step 3: no probe tokens for sw: no identification"]


def test_deactivation_heatmaps_read_small_and_huge_effects():
    """Small ratios are percentages on a linear scale; ratios over orders of magnitude (general neurons off) are
    factors on a log scale, so that one broken cell does not wash out the rest."""
    from matplotlib.colors import LogNorm

    from langneurons.analysis.deactivation import DeactivationResult
    from langneurons.analysis.figures import _factor, close, plot_deactivation

    langs = ("en", "sw")
    small = {"en": {"en": 1.05, "sw": 1.0}, "sw": {"en": 0.99, "sw": 1.2}}
    huge = {"en": {"en": 44.0, "sw": 3.0e4}, "sw": {"en": 1.5, "sw": 6.7e5}}
    result = DeactivationResult(langs, langs, ("specific", "all"), {"en": 1.0, "sw": 1.0},
                                {"specific": small, "all": huge}, {"specific": {"en": 1, "sw": 1}, "all": {"en": 9,
                                                                                                        "sw": 9}})
    fig = plot_deactivation(result)
    lin, log = (ax.images[0] for ax in fig.axes if ax.images)
    assert not isinstance(lin.norm, LogNorm) and isinstance(log.norm, LogNorm)
    texts = [[t.get_text() for t in ax.texts] for ax in fig.axes if ax.images]
    assert texts[0] == ["+5.0%", "+0.0%", "-1.0%", "+20.0%"] and texts[1] == ["44x", "3e4x", "1.5x", "7e5x"]
    assert [_factor(v) for v in (2.14, 158.0, 6.7e5)] == ["2.1x", "158x", "7e5x"]
    close(fig)
