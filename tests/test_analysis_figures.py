"""The analysis figures read right at a glance: compared panels share their axes, changes sit on diverging scales
centred on "no change", layer and step ticks are integers, titles clear every label, languages without neurons say
so, and stages whose fit is not significant say so (in the figure and in summary.json). On hand-made
identifications, so that every expected value is known."""

import json

import numpy as np
import pytest

from langneurons.analysis import figures
from langneurons.analysis.change import language_layer_change, layer_change
from langneurons.analysis.counts import counts_over_steps
from langneurons.analysis.deactivation import DeactivationResult
from langneurons.analysis.layers import stages_of
from langneurons.analysis.overlaps import overlap_across_checkpoints
from langneurons.analysis.report import write_outputs
from langneurons.analysis.sections import change_section, stages_section
from langneurons.analysis.sources import Checkpoint, Run
from langneurons.analysis.stages import find_stages
from langneurons.neurons import layer_distribution

from test_analysis_data import AFTER, BEFORE, ident


@pytest.fixture
def close_all():
    made = []
    yield made.append
    for fig in made:
        figures.close(fig)


# a 4-layer toy whose stage fit is poor: r2 0.49, p 0.64 over 49 shuffles
TOY = ident({0: "a", 1: "ab"}, [14])
# c owns no neuron at either step
NO_C = ident({0: "a", 1: "ab", 5: "b"}, [14, 15])


def two_runs():
    r = Run("tiny mapo a synthetic", "r", "run",
            [Checkpoint(0, record={"accuracy": {"a": 0.1, "b": 0.2, "c": 0.3, "avg": 0.2}}, ident=BEFORE),
             Checkpoint(8, record={"accuracy": {"a": 0.5, "b": 0.2, "c": 0.6, "avg": 0.43}}, ident=AFTER)],
            trained=("a",))
    s = Run("tiny mapo b synthetic", "s", "run", [Checkpoint(0, ident=NO_C), Checkpoint(8, ident=NO_C)],
            trained=("b",))
    return [r, s]


def texts(ax):
    return [t.get_text() for t in ax.texts]


def integer_ticks(ax, axis="x"):
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    ticks = [t for t in (ax.get_xticks() if axis == "x" else ax.get_yticks()) if lo <= t <= hi]
    return bool(ticks) and all(float(t).is_integer() for t in ticks)


def title_clashes(fig):
    """(title, other text) pairs whose boxes overlap on the drawn figure: the figure's and every panel's title
    against every axis label, tick label, text in a panel and legend, and the figure's title against the panels."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()

    def box(artist):
        with np.errstate(invalid="ignore"):  # a colorbar's tick beyond its scale has no place (NaN): never a clash
            return artist.get_window_extent(renderer).shrunk(0.98, 0.9)

    titles = [t for t in [fig._suptitle, *(ax.title for ax in fig.axes)] if t is not None and t.get_text()]
    others = []
    for ax in fig.axes:
        others += [ax.xaxis.label, ax.yaxis.label, *ax.texts]
        others += [t for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_visible() and t.get_text()]
        if ax.get_legend() is not None:
            others.append(ax.get_legend())
    clashes = [(t.get_text(), o.get_text() if hasattr(o, "get_text") else type(o).__name__)
               for t in titles for o in others if o is not t and o.get_visible() and box(t).overlaps(box(o))]
    if fig._suptitle is not None:
        clashes += [(fig._suptitle.get_text(), "panel") for ax in fig.axes
                    if box(fig._suptitle).overlaps(ax.get_window_extent(renderer))]
    return clashes


def test_compared_panels_share_their_y_axis_and_steps_have_integer_ticks(close_all):
    table = counts_over_steps(two_runs())
    fig = figures.plot_counts_totals(table)
    close_all(fig)
    specific, related, general, accuracy = fig.axes[:4]
    shared = specific.get_shared_y_axes()
    assert shared.joined(specific, related) and shared.joined(specific, general)
    assert not shared.joined(specific, accuracy) and accuracy.get_ylim()[1] <= 1.05
    assert specific.get_ylim()[0] == 0 and specific.get_ylim()[1] >= 3  # the largest count of any type panel
    fig.canvas.draw()
    assert all(integer_ticks(ax) for ax in fig.axes[:4]) and integer_ticks(specific, "y")
    assert not title_clashes(fig)
    fig = figures.plot_counts_languages(table)
    close_all(fig)
    grid = np.asarray(fig.axes[:9]).reshape(3, 3)
    counts_axes = list(grid[:, :2].ravel())
    assert all(counts_axes[0].get_shared_y_axes().joined(counts_axes[0], ax) for ax in counts_axes[1:])
    assert all(grid[0, 2].get_shared_y_axes().joined(grid[0, 2], ax) for ax in grid[1:, 2])
    assert not grid[0, 0].get_shared_y_axes().joined(grid[0, 0], grid[0, 2])
    fig.canvas.draw()
    assert all(integer_ticks(ax) for ax in grid[-1])


def test_a_language_without_neurons_is_marked_not_left_empty(close_all):
    run = two_runs()[1]  # c owns nothing at any step
    fig = figures.plot_counts_languages(counts_over_steps([run]))
    close_all(fig)
    grid = np.asarray(fig.axes[:9]).reshape(3, 3)
    assert grid[2, 0].get_ylabel() == "c\n(no neurons)" and grid[0, 0].get_ylabel() == "a"
    assert texts(grid[2, 0]) == ["no specific neurons"] and texts(grid[2, 1]) == ["no related neurons"]
    assert texts(grid[0, 0]) == [] and texts(grid[1, 1]) == []
    fig = figures.plot_overlap_steps(overlap_across_checkpoints([run]))
    close_all(fig)
    heat = fig.axes[0]
    assert [t.get_text() for t in heat.get_yticklabels()] == ["a", "b", "c (no neurons)"]
    assert texts(heat)[-2:] == ["none", "none"]  # not a perfect overlap of 1.00
    fig = figures.plot_language_layer_change(language_layer_change(BEFORE, NO_C))
    close_all(fig)
    assert all("no neurons" in texts(ax) for ax in fig.axes[:2])
    from langneurons.plots import layer_distribution_figure

    fig = layer_distribution_figure(layer_distribution(NO_C))
    close_all(fig)
    specific, related = fig.axes[1], fig.axes[2]
    assert texts(specific) == texts(related) == ["no neurons"]
    assert specific.images[0].norm.vmax == related.images[0].norm.vmax  # one colour scale for both heatmaps


def test_changes_are_drawn_on_diverging_scales_centred_on_no_change(close_all):
    fig = figures.plot_language_layer_change(language_layer_change(BEFORE, AFTER))
    close_all(fig)
    specific, related = fig.axes[:2]
    for ax in (specific, related):
        image = ax.images[0]
        assert image.get_cmap().name in ("RdBu_r", "RdBu", "coolwarm")
        assert image.norm(0.0) == pytest.approx(0.5) and image.norm.vmin == -image.norm.vmax
    assert specific.images[0].norm is related.images[0].norm  # the two types on one scale
    assert sorted(set(specific.images[0].get_array().ravel().tolist())) == [-1, 0, 1]
    fig.canvas.draw()
    assert integer_ticks(specific) and not title_clashes(fig)
    # the per-layer bars of a change: a y-axis centred on zero
    fig = figures.plot_layer_change(layer_change(BEFORE, AFTER), stages_of(layer_distribution(BEFORE)), "r")
    close_all(fig)
    lo, hi = fig.axes[0].get_ylim()
    assert lo == pytest.approx(-hi)
    fig.canvas.draw()
    assert integer_ticks(fig.axes[0]) and integer_ticks(fig.axes[0], "y")
    # deactivation: perplexity ratios centred on 1 (linear and log), accuracy changes on one scale centred on 0
    langs = ("en", "sw")
    small = {"en": {"en": 1.05, "sw": 1.0}, "sw": {"en": 0.99, "sw": 1.2}}
    huge = {"en": {"en": 44.0, "sw": 3.0e4}, "sw": {"en": 1.5, "sw": 6.7e5}}
    acc = {"en": {"en": 0.1, "sw": 0.5}, "sw": {"en": 0.5, "sw": 0.2}}
    result = DeactivationResult(langs, langs, ("specific", "all"), {"en": 1.0, "sw": 1.0},
                                {"specific": small, "all": huge}, {"specific": {"en": 1, "sw": 1},
                                                                   "all": {"en": 9, "sw": 9}},
                                baseline_accuracy={"en": 0.5, "sw": 0.5}, accuracy={"specific": acc, "all": acc})
    fig = figures.plot_deactivation(result)
    close_all(fig)
    heat = [ax for ax in fig.axes if ax.images]
    ratio_lin, ratio_log, acc_specific, acc_all = heat[0], heat[1], heat[2], heat[3]
    for ax in (ratio_lin, ratio_log):
        assert ax.images[0].norm(1.0) == pytest.approx(0.5)
        assert ax.images[0].get_cmap().name == "RdBu_r"
    for ax in (acc_specific, acc_all):
        assert ax.images[0].norm(0.0) == pytest.approx(0.5) and ax.images[0].norm.vmin == -ax.images[0].norm.vmax
    assert acc_specific.images[0].norm.vmax == acc_all.images[0].norm.vmax == pytest.approx(0.4)
    assert not title_clashes(fig)


def test_a_stage_fit_that_is_not_significant_says_so_in_the_figure_and_the_summary(tmp_path, close_all):
    run = Run("toy", "toy", "run", [Checkpoint(0, ident=TOY)])
    section = stages_section([run], "last")
    data = section.data["toy"]
    assert data["p_value"] == pytest.approx(0.64) and data["r2"] == pytest.approx(0.49, abs=0.01)
    assert data["significant"] is False and data["p_threshold"] == 0.05
    (item,) = section.figures
    title = item.figure._suptitle.get_text()
    assert "stages 0 / 1 / 2 / 3 (not significant: p 0.64, r2 0.49)" in title
    assert "not significant: p 0.64" in item.caption
    assert any("not significant" in n for n in section.notes)
    stages_table = section.tables[0].records()
    assert stages_table[0]["significant"] == "no"
    fig = item.figure
    fig.canvas.draw()
    assert integer_ticks(fig.axes[1]) and not title_clashes(fig)
    write_outputs([section], tmp_path, "toy")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stages"]["toy"]["significant"] is False and summary["stages"]["toy"]["p_value"] == 0.64
    assert summary["stages"]["toy"]["p_threshold"] == 0.05
    # without a p-value there is no verdict; a significant fit says its p-value, without the warning
    assert find_stages([2, 0, 0, 0], [0, 0, 0, 1]).significant is None
    clear = find_stages([60] * 5 + [4] * 5 + [60] * 5 + [4] * 5, [12] * 5 + [180] * 5 + [12] * 5 + [180] * 5,
                        permutations=49)
    assert clear.significant is True and figures.stages_title(clear).endswith(f"(p {clear.p_value:.2f}, r2 "
                                                                            f"{clear.r2:.2f})")
    # the before -> after bars shade stages that are not significant, and say so
    change = change_section([("toy", Checkpoint(0, ident=TOY), Checkpoint(8, ident=AFTER))])
    bars = next(f.figure for f in change.figures if f.name.startswith("layer_change"))
    close_all(bars)
    assert "stages shaded: not significant: p 0.64" in bars.axes[0].get_title()
    assert not title_clashes(bars)
