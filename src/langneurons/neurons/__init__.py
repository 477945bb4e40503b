"""Neuron science: count MLP activations per language, identify language neurons, switch them off.

Plain torch (+ transformers/PEFT model types); nothing here knows about Trainer, Hydra or W&B.

- counting:   :func:`collect_stats` (single pass, response mask), :func:`collect_stats_two_pass` (reference mode)
- batches:    :func:`make_batches` / :func:`make_two_pass_batches` from (prompt, response, lang) triples
- stats:      :class:`NeuronStats` (counts [L, H, K], tokens [K]; ``probs()``, save/load)
- reference:  :func:`load_stats` (our directory or a reference activation folder), reference masks
- identify:   :func:`identify` (ternary / LAPE), :class:`Identification`, :func:`layer_distribution`
- deactivate: :func:`deactivate` (zero units after act_fn), :func:`perplexity`
"""

from .batches import make_batches, make_two_pass_batches
from .counting import ActivationCounter, collect_stats, collect_stats_two_pass
from .deactivate import deactivate, perplexity, union_units
from .hooks import HookError, find_act_fns
from .identify import (
    METHODS,
    TYPES,
    GeneralRule,
    Identification,
    Identifier,
    LayerDistribution,
    UnknownMethodError,
    identify,
    layer_distribution,
)
from .reference import REFERENCE_LANG_ORDER, load_reference_mask, load_reference_stats, load_stats
from .stats import NeuronStats

__all__ = [
    "METHODS",
    "REFERENCE_LANG_ORDER",
    "TYPES",
    "ActivationCounter",
    "GeneralRule",
    "HookError",
    "Identification",
    "Identifier",
    "LayerDistribution",
    "NeuronStats",
    "UnknownMethodError",
    "collect_stats",
    "collect_stats_two_pass",
    "deactivate",
    "find_act_fns",
    "identify",
    "layer_distribution",
    "load_reference_mask",
    "load_reference_stats",
    "load_stats",
    "make_batches",
    "make_two_pass_batches",
    "perplexity",
    "union_units",
]
