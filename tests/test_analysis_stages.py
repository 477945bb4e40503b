"""The stage finder: planted boundaries come back, and on the released Mistral statistics the stages sit where the
paper's figure puts them."""

import json
import subprocess
import sys

import numpy as np
import pytest

from langneurons.analysis.stages import find_stages, language_scores
from langneurons.errors import DataError

from conftest import ROOT


def planted(boundaries, num_layers, seed, high=60.0, low=4.0, general_scale=3.0, ramp=False):
    """Poisson counts per layer: language neurons high in stages 1 and 3, general neurons high in 2 and 4."""
    rng = np.random.default_rng(seed)
    stage = np.searchsorted(np.asarray(boundaries), np.arange(num_layers), side="right")
    language_high = (stage % 2 == 0)
    lang_rate = np.where(language_high, high, low)
    gen_rate = np.where(language_high, low, high) * general_scale
    if ramp:  # language neurons grow through stage 3, as in real models
        lang_rate = lang_rate * np.where(stage == 2, np.linspace(0.5, 2.0, num_layers), 1.0)
    return rng.poisson(lang_rate), rng.poisson(gen_rate)


@pytest.mark.parametrize("boundaries,num_layers", [((5, 18, 30), 32), ((2, 6, 9), 12), ((1, 2, 3), 4),
                                                   ((10, 40, 70), 80), ((3, 4, 20), 24)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_boundaries_are_found(boundaries, num_layers, seed):
    language, general = planted(boundaries, num_layers, seed, ramp=seed == 2)
    stages = find_stages(language, general)
    assert stages.boundaries == boundaries
    assert stages.consistent == [True, True, True, True]
    assert stages.ranges[0][0] == 0 and stages.ranges[-1][1] == num_layers - 1


def test_the_overall_share_of_general_neurons_does_not_move_the_stages():
    language, general = planted((6, 14, 22), 25, seed=3)
    found = {find_stages(language, general * k).boundaries for k in (1, 10, 100)}
    found |= {find_stages(language * k, general).boundaries for k in (10, 100)}
    assert found == {(6, 14, 22)}


def between_by_hand(r, b):
    """Between-level sum of squares of the two-level step fit with boundaries b, and whether mu_lang > mu_gen."""
    lang = np.concatenate([r[:b[0]], r[b[1]:b[2]]])
    gen = np.concatenate([r[b[0]:b[1]], r[b[2]:]])
    fitted = np.concatenate([np.full(b[0], lang.mean()), np.full(b[1] - b[0], gen.mean()),
                             np.full(b[2] - b[1], lang.mean()), np.full(len(r) - b[2], gen.mean())])
    return ((r - r.mean()) ** 2).sum() - ((r - fitted) ** 2).sum(), lang.mean() > gen.mean()


def test_the_fit_is_the_best_two_level_step_function_over_every_boundary_triple():
    rng = np.random.default_rng(7)
    language, general = rng.poisson(20, 15), rng.poisson(20, 15)
    stages = find_stages(language, general, runners_up=2)
    r = language_scores(language, general)
    objective, ordered = between_by_hand(r, stages.boundaries)
    assert ordered and stages.objective == pytest.approx(objective)
    fits = [between_by_hand(r, (a, b, c)) for a in range(1, 13) for b in range(a + 1, 14) for c in range(b + 1, 15)]
    assert stages.objective == pytest.approx(max(f for f, ok in fits if ok))
    assert all(f <= stages.objective for _, f in stages.runners_up)
    assert 0 <= stages.r2 <= 1
    # the reported scores are centred on the midpoint of the two fitted levels
    assert np.allclose(np.asarray(stages.scores), r - sum(stages.levels) / 2)


def test_a_profile_without_the_pattern_is_told_apart_from_one_with_it():
    language, general = planted((5, 10, 15), 20, seed=0)
    found = find_stages(language, general, permutations=49)
    flipped = find_stages(general, language, permutations=49)  # general high where language should be
    rng = np.random.default_rng(0)
    noise = find_stages(rng.poisson(30, 20), rng.poisson(30, 20), permutations=49)
    assert found.p_value <= 0.02 and found.r2 > 0.8
    assert flipped.r2 < found.r2 / 2 and noise.r2 < found.r2 / 2
    assert flipped.p_value > 0.05 and noise.p_value > 0.05


def test_too_few_layers_or_bad_profiles_are_one_line_errors():
    with pytest.raises(DataError, match="at least 4 layers"):
        find_stages([1, 2, 3], [3, 2, 1])
    with pytest.raises(DataError, match="one length"):
        find_stages([1, 2, 3, 4], [1, 2, 3])
    with pytest.raises(DataError, match="negative"):
        find_stages([1, -2, 3, 4], [1, 2, 3, 4])


def test_stages_of_the_released_mistral_mask_sit_near_the_papers(shared_data):
    """The released mask (top_rate 0.01, lam 0.109375, bar 0.95): docs/science.md (Stages of multilingual inference)
    puts the stages near layers 0-4 / 5-17 / 18-29 / 30-31 of 32."""
    ref = shared_data / "reference-mistral-mgsm"
    out = subprocess.run([sys.executable, str(ROOT / "analyze.py"), "stages", f"runs=[{ref}]", "top_rate=0.01",
                          "lam=0.109375", "bar=0.95"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout)["stages"]["reference-mistral-mgsm"]
    assert all(abs(got - paper) <= 2 for got, paper in zip(found["boundaries"], (5, 18, 30)))
    assert found["consistent"] == [True, True, True, True]
    assert found["p_value"] <= 0.05
    assert found["ranges"][0][0] == 0 and found["ranges"][-1][1] == 31
