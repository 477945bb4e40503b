"""Locate the four stages of multilingual inference in a per-layer neuron profile.

Definitions and sources: docs/science.md, section Stages of multilingual inference.

The paper describes the layer distribution of the three neuron types as four contiguous stages:
(1) multilingual understanding: language-specific / related neurons high; (2) shared semantic reasoning: general
neurons dominate; (3) multilingual output-space transformation: specific / related high again; (4) vocabulary-space
outputting: general neurons at their maximum. It gives no layer indices. This module finds them.

Method: a change-point segmentation into four segments whose levels follow the expected pattern.

1. Every layer l gets a *language score* ``r_l = log((language_l + 1) / (general_l + 1))``, ``language_l`` the
   specific + related neurons in the layer, ``general_l`` the general ones (add-one smoothing keeps empty layers
   finite). The log ratio weighs a layer by how lopsided it is, not by how many neurons it holds, and a constant
   factor on either count (top_rate, tau and the general rule move the overall ratio) only shifts every score.
2. The model: the scores are a step function with two levels, ``mu_lang`` on stages 1 and 3 and ``mu_gen`` on stages
   2 and 4, ``mu_lang > mu_gen``, plus noise. The boundaries ``0 < b1 < b2 < b3 < L`` and the two levels are the
   least-squares fit (the maximum-likelihood segmentation under Gaussian noise): for given boundaries the levels are
   the means of the scores on each pair of stages, so the fit maximises the between-level sum of squares
   ``S_lang^2 / n_lang + S_gen^2 / n_gen - S^2 / L`` (S: sums of scores, n: numbers of layers). Every boundary
   triple is tried (O(L^3) with prefix sums; well under a second for 160 layers); ties go to the earliest
   boundaries. A shift of all scores leaves the fit unchanged, so step 1's invariance carries through.
3. Reported per layer: the score centred on the midpoint of the two levels (> 0: nearer the language level). Per
   stage, ``consistent`` says whether the stage's mean score stands out from its neighbouring stages' in the
   expected direction (the pattern is a contrast between neighbours: the last layer can be general-dominated
   compared with the layers before it without reaching the level of the middle layers). A profile without the
   pattern still gets boundaries, and the flags (and a small ``r2``, the share of the scores' variance the fit
   explains) tell that they mean little. The runners-up show how sharp the boundaries are.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from ..errors import DataError

STAGE_NAMES = ("understanding", "reasoning", "output transformation", "vocabulary output")
STAGE_SIGNS = (1, -1, 1, -1)  # +1: language (specific + related) neurons high, -1: general neurons high
SIGNIFICANCE = 0.05  # a fit is significant when its p-value (layer shuffles fitting as well) is at most this


def ranges_label(boundaries: Sequence[int], num_layers: int) -> str:
    """``0-4 / 5-17 / 18-29 / 30-31`` (a one-layer stage is written as its layer)."""
    starts, ends = (0, *boundaries), (*boundaries, num_layers)
    return " / ".join(f"{a}-{b - 1}" if a != b - 1 else f"{a}" for a, b in zip(starts, ends))


@dataclass(frozen=True)
class Stages:
    """Four contiguous stages of ``num_layers`` layers: stage i spans layers ``ranges[i][0]..ranges[i][1]``."""

    boundaries: tuple[int, int, int]  # first layer of stages 2, 3 and 4
    num_layers: int
    scores: tuple[float, ...]  # every layer's language score, centred on the midpoint of the two levels
    levels: tuple[float, float]  # (mu_lang, mu_gen) of the raw scores
    objective: float  # between-level sum of squares of these boundaries
    r2: float  # objective / total sum of squares of the scores (0..1)
    runners_up: tuple[tuple[tuple[int, int, int], float], ...] = field(default=())
    p_value: float | None = None  # share of layer shuffles fitting at least as well (None: not computed)

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """(first layer, last layer) of each stage, inclusive."""
        starts = (0, *self.boundaries)
        ends = (*self.boundaries, self.num_layers)
        return [(a, b - 1) for a, b in zip(starts, ends)]

    def stage_of(self, layer: int) -> int:
        """Index (0..3) of the stage holding ``layer``."""
        if not 0 <= layer < self.num_layers:
            raise DataError(f"layer {layer} is outside 0..{self.num_layers - 1}")
        return sum(layer >= b for b in self.boundaries)

    @property
    def consistent(self) -> list[bool]:
        """Per stage: does its mean score stand out from its neighbouring stages' in the expected direction
        (language stages above each neighbour, general stages below)?"""
        s = np.asarray(self.scores)
        means = [s[a:b + 1].mean() for a, b in self.ranges]
        return [all(sign * (means[i] - means[j]) > 0 for j in (i - 1, i + 1) if 0 <= j < 4)
                for i, sign in enumerate(STAGE_SIGNS)]

    def label(self) -> str:
        return ranges_label(self.boundaries, self.num_layers)

    @property
    def significant(self) -> bool | None:
        """Does the fit stand out from shuffled layers (``p_value <= SIGNIFICANCE``)? None without a p-value."""
        return None if self.p_value is None else bool(self.p_value <= SIGNIFICANCE)

    def verdict(self) -> str:
        """``p 0.02, r2 0.83`` or ``not significant: p 0.64, r2 0.18`` (``r2 0.83`` without a p-value)."""
        fit = f"r2 {self.r2:.2f}"
        if self.p_value is None:
            return fit
        p = f"p {self.p_value:.2f}, {fit}"
        return p if self.significant else f"not significant: {p}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "stages": self.label(),
            "ranges": [list(r) for r in self.ranges],
            "boundaries": list(self.boundaries),
            "consistent": self.consistent,
            "levels": list(self.levels),
            "objective": self.objective,
            "r2": self.r2,
            "p_value": self.p_value,
            "significant": self.significant,
            "p_threshold": SIGNIFICANCE,
            "runners_up": [{"stages": ranges_label(b, self.num_layers), "objective": f} for b, f in self.runners_up],
        }


def language_scores(language: Sequence[float], general: Sequence[float]) -> np.ndarray:
    """``r_l = log((language_l + 1) / (general_l + 1))`` per layer (step 1 of the module docstring)."""
    lang = np.asarray(language, dtype=np.float64)
    gen = np.asarray(general, dtype=np.float64)
    if lang.shape != gen.shape or lang.ndim != 1:
        raise DataError(f"language and general profiles must be two per-layer vectors of one length, got "
                        f"{lang.shape} and {gen.shape}")
    if (lang < 0).any() or (gen < 0).any():
        raise DataError("neuron counts per layer cannot be negative")
    return np.log((lang + 1.0) / (gen + 1.0))


def _fits(prefix: np.ndarray, b1: int, L: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For a fixed b1: (between-level sum of squares, ok, (b2, b3) grid) over every b1 < b2 < b3 < L."""
    b2, b3 = np.meshgrid(np.arange(L + 1), np.arange(L + 1), indexing="ij")
    s_lang = prefix[b1] + prefix[b3] - prefix[b2]
    n_lang = b1 + b3 - b2
    s_gen, n_gen = prefix[L] - s_lang, L - n_lang
    valid = (b1 < b2) & (b2 < b3) & (b3 < L)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = s_lang ** 2 / n_lang + s_gen ** 2 / n_gen - prefix[L] ** 2 / L
        ordered = s_lang / n_lang > s_gen / n_gen
    return np.where(valid, between, -np.inf), valid & ordered, np.stack([b2, b3], -1)


def find_stages(language: Sequence[float], general: Sequence[float], runners_up: int = 3, permutations: int = 0,
                seed: int = 0) -> Stages:
    """The four stages of a per-layer profile: ``language[l]`` specific + related neurons and ``general[l]`` general
    neurons in layer l. Exact least-squares fit of the model in the module docstring; ``runners_up`` next-best
    boundary triples are kept for judging how sharp the result is. With ``permutations`` > 0, ``p_value`` is the
    share of random orders of the layers (seeded) whose best fit explains at least as much of the variance (the
    pattern is real when it is small). Needs at least 4 layers."""
    r = language_scores(language, general)
    L = len(r)
    if L < 4:
        raise DataError(f"four stages need at least 4 layers, the profile has {L}")
    stages = _fit(r, runners_up)
    if permutations > 0:
        rng = np.random.default_rng(seed)
        better = sum(_fit(rng.permutation(r), 0).r2 >= stages.r2 - 1e-12 for _ in range(permutations))
        stages = replace(stages, p_value=(1 + better) / (1 + permutations))
    return stages


def _fit(r: np.ndarray, runners_up: int) -> Stages:
    L = len(r)
    prefix = np.concatenate([[0.0], np.cumsum(r)])
    keep = 1 + runners_up
    candidates: list[tuple[float, tuple[int, int, int]]] = []
    fallback: list[tuple[float, tuple[int, int, int]]] = []
    for b1 in range(1, L - 2):
        between, ok, grid = _fits(prefix, b1, L)
        for pool, mask in ((candidates, ok), (fallback, np.isfinite(between))):
            values = np.where(mask, between, -np.inf).reshape(-1)
            top = np.argsort(-values, kind="stable")[:keep]
            pool += [(float(values[k]), (b1, *map(int, grid.reshape(-1, 2)[k]))) for k in top if np.isfinite(values[k])]
    # A flat profile has no triple with mu_lang > mu_gen; then the best unconstrained fit stands (flags say so).
    pool = candidates or fallback
    pool.sort(key=lambda item: (-round(item[0], 9), item[1]))
    (objective, best), rest = pool[0], pool[1:keep]
    b1, b2, b3 = best
    n_lang = b1 + b3 - b2
    mu_lang = (prefix[b1] + prefix[b3] - prefix[b2]) / n_lang
    mu_gen = (prefix[L] - prefix[b1] - prefix[b3] + prefix[b2]) / (L - n_lang)
    total = float(((r - r.mean()) ** 2).sum())
    return Stages(boundaries=best, num_layers=L, scores=tuple(float(x) for x in r - (mu_lang + mu_gen) / 2),
                  levels=(float(mu_lang), float(mu_gen)), objective=objective,
                  r2=objective / total if total > 0 else 0.0, runners_up=tuple((b, f) for f, b in rest))


def profile(totals: Any) -> tuple[np.ndarray, np.ndarray]:
    """(language, general) per layer from a :class:`~langneurons.neurons.LayerDistribution`'s ``total`` [L, 4]
    (columns in ``TYPES`` order): language = specific + related; unassigned neurons (owned by no language) are left
    out of both."""
    t = np.asarray(totals, dtype=np.float64)
    return t[:, 0] + t[:, 1], t[:, 2]

