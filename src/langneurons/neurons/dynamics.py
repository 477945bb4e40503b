"""How neurons move between two identifications (checkpoints of one model, or two runs of the same model).

Per language, every neuron of the model has one type *for that language*:

- ``specific``: selected, owned by that language alone (N = 1);
- ``related``: selected, owned by that language and some others (1 < N < K);
- ``general``: in the general set (active above tau in every language);
- ``none``: anything else.

Transitions count neurons per (type before, type after); overlaps compare each language's neuron set (specific +
related, the neurons that make up its language mask) by Jaccard index.
"""

from __future__ import annotations

import torch

from .identify import SPECIFIC, RELATED, Identification

LANG_TYPES = ("specific", "related", "general", "none")
_NONE = LANG_TYPES.index("none")


def lang_types(ident: Identification) -> torch.Tensor:
    """[K, L*H] int64: the type (index into :data:`LANG_TYPES`) of every neuron for every language."""
    n_neurons = ident.num_layers * ident.num_units
    out = torch.full((ident.num_langs, n_neurons), _NONE, dtype=torch.int64)
    out[:, ident.general] = LANG_TYPES.index("general")
    codes = ident.type_codes
    for code, name in ((SPECIFIC, "specific"), (RELATED, "related")):
        sel = codes == code
        lang_idx, sel_idx = torch.nonzero(ident.owners[sel].T, as_tuple=True)
        out[lang_idx, ident.selected[sel][sel_idx]] = LANG_TYPES.index(name)
    return out


def lang_type_counts(ident: Identification) -> dict[str, dict[str, int]]:
    """Per language, how many neurons it has of each type in :data:`LANG_TYPES` (specific / related: the ones it
    owns; general: the general set, the same for every language)."""
    types = lang_types(ident)
    counts = torch.stack([(types == t).sum(1) for t in range(len(LANG_TYPES))], 1)
    return {lang: dict(zip(LANG_TYPES, counts[k].tolist())) for k, lang in enumerate(ident.langs)}


def _check_comparable(before: Identification, after: Identification) -> None:
    if (before.langs, before.num_layers, before.num_units) != (after.langs, after.num_layers, after.num_units):
        raise ValueError(
            f"identifications differ in shape: {before.langs} {before.num_layers}x{before.num_units} vs "
            f"{after.langs} {after.num_layers}x{after.num_units}; compare checkpoints of the same model and languages"
        )


def transitions(before: Identification, after: Identification) -> dict[str, torch.Tensor]:
    """Per language, a [4, 4] int64 matrix: ``m[i, j]`` neurons of type i before and type j after
    (types in :data:`LANG_TYPES` order). The diagonal holds the neurons that kept their type."""
    _check_comparable(before, after)
    a, b = lang_types(before), lang_types(after)
    n = len(LANG_TYPES)
    flat = (a * n + b) + torch.arange(before.num_langs)[:, None] * n * n
    counts = torch.bincount(flat.flatten(), minlength=before.num_langs * n * n).reshape(before.num_langs, n, n)
    return {lang: counts[k] for k, lang in enumerate(before.langs)}


def language_sets(ident: Identification) -> torch.Tensor:
    """[K, L*H] bool: each language's neurons (the specific and related neurons it owns)."""
    types = lang_types(ident)
    return (types == LANG_TYPES.index("specific")) | (types == LANG_TYPES.index("related"))


def overlap(before: Identification, after: Identification) -> dict[str, float]:
    """Jaccard index of each language's neuron set before and after (1.0 when both are empty)."""
    _check_comparable(before, after)
    a, b = language_sets(before), language_sets(after)
    inter = (a & b).sum(1).tolist()
    union = (a | b).sum(1).tolist()
    return {lang: (i / u if u else 1.0) for lang, i, u in zip(before.langs, inter, union)}
