"""Identify language neurons from activation probabilities: LAPE and the paper's ternary method.

Definitions and sources: docs/science.md, sections LAPE identification, Ternary identification, The lam search
and General neurons.

Everything is vectorised over the [L, H, K] probability tensor; the only Python loops are over lam values of the
search and over layers/languages when exporting. The numerics follow the reference exactly (float32, clamp 1e-12,
renormalise, log(q + 1e-30), ``topk(largest=False)`` on the flattened [L*H] scores, ``kthvalue`` on the flattened
[L*H*K] probabilities with Python's ``round``), which is what makes the selection boundary and ties identical.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from ..errors import DataError, HarnessError
from . import storage
from .stats import NeuronStats

METHODS = ("ternary", "lape")
TYPES = ("specific", "related", "general", "unassigned")
SPECIFIC, RELATED, GENERAL, UNASSIGNED = range(4)
STEM = "identification"
_TENSOR_FIELDS = ("selected", "owners", "general", "shared_by_all")

# Defaults of docs/science.md (LAPE identification, Ternary identification, The lam search): the reference's.
DEFAULT_TOP_RATE = 0.01
DEFAULT_BAR = 0.95
DEFAULT_FILTER_RATE = 0.95
DEFAULT_LAM_RANGE = (0.0, 0.2)
DEFAULT_LAM_EPS = 1e-3


class UnknownMethodError(HarnessError, ValueError):
    pass


@dataclass(frozen=True)
class GeneralRule:
    """Which neurons are *general*: ``p > threshold`` in at least ``min_langs`` languages, over all L*H neurons.

    ``bar``: the threshold is ``kthvalue(round(bar * numel))`` of all p; None uses the identification's own
    ownership threshold (tau). ``min_langs``: None means all K languages (the paper's definition).
    """

    bar: float | None = None
    min_langs: int | None = None


def norm_max(num_langs: int) -> float:
    """(sum_{m=1..K} 1/m) / K: the normaliser of the ternary method's effectiveness term (0.29290 for K = 10)."""
    return sum(1.0 / m for m in range(1, num_langs + 1)) / num_langs


def kth_threshold(flat_probs: torch.Tensor, rate: float, what: str = "bar") -> torch.Tensor:
    """``kthvalue(round(rate * numel))`` of the flattened probabilities (1-based k, Python's round), as a 0-d tensor."""
    k = round(rate * flat_probs.numel())
    if not 1 <= k <= flat_probs.numel():
        raise HarnessError(f"{what}={rate} gives k={k} outside 1..{flat_probs.numel()}: use a value in (0, 1]")
    return flat_probs.kthvalue(k).values


def ternary_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Normalised entropy e = E / ln K per neuron ([L, H]) with the reference's numerics, in float32."""
    num_langs = probs.shape[-1]
    total = probs.sum(-1, keepdim=True)
    # A neuron that never fires gets the uniform distribution (maximal entropy), as in the reference.
    q = torch.where(total > 0, probs / total, torch.full_like(probs, 1.0 / num_langs))
    q = q.clamp(min=1e-12)
    q = q / q.sum(-1, keepdim=True)
    entropy = -(q * torch.log(q + 1e-30)).sum(-1)
    return entropy / math.log(num_langs)


def lape_entropy(probs: torch.Tensor) -> torch.Tensor:
    """LAPE's entropy per neuron ([L, H]): q = p / sum p (0 where the sum is 0), 0 log 0 = 0, natural log."""
    total = probs.sum(-1, keepdim=True)
    q = torch.where(total > 0, probs / total, torch.zeros_like(probs))
    log_q = torch.where(q > 0, q.log(), torch.zeros_like(q))
    return -(q * log_q).sum(-1)


@dataclass
class Identification:
    """Result of one identification: which neurons were selected and which languages own them.

    ``selected``: flat neuron indices (layer * units + unit), ascending. ``owners[s, k]``: language k owns selected
    neuron s (``p > tau``). ``general``: flat indices of every general neuron (see :class:`GeneralRule`), selected or
    not. ``shared_by_all[n]``: number of neurons, among all L*H, active above tau in exactly n languages.
    """

    langs: tuple[str, ...]
    method: str
    num_layers: int
    num_units: int
    top_rate: float
    lam: float | None
    bar: float
    tau: float
    selected: torch.Tensor  # [S] int64
    owners: torch.Tensor  # [S, K] bool
    general: torch.Tensor  # [G] int64
    shared_by_all: torch.Tensor  # [K + 1] int64
    general_rule: dict[str, Any] = field(default_factory=dict)
    filter_rate: float | None = None
    lam_search: list[dict[str, Any]] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    # ---- derived views -------------------------------------------------------------------------------------------
    @property
    def num_langs(self) -> int:
        return len(self.langs)

    @cached_property
    def layers(self) -> torch.Tensor:
        """Layer of every selected neuron, [S] int64."""
        return torch.div(self.selected, self.num_units, rounding_mode="floor")

    @cached_property
    def n_langs(self) -> torch.Tensor:
        """N, the number of languages owning each selected neuron, [S] int64."""
        return self.owners.sum(1)

    @cached_property
    def type_codes(self) -> torch.Tensor:
        """Type of each selected neuron as an index into :data:`TYPES` ([S] int64)."""
        n = self.n_langs
        codes = torch.full_like(n, RELATED)
        codes[n == 1] = SPECIFIC
        codes[n == self.num_langs] = GENERAL
        codes[n == 0] = UNASSIGNED
        return codes

    @property
    def histogram(self) -> list[int]:
        """Selected neurons by N = 0..K."""
        return torch.bincount(self.n_langs, minlength=self.num_langs + 1).tolist()

    @property
    def per_language(self) -> dict[str, int]:
        """Selected neurons owned by each language (a neuron owned by n languages counts n times)."""
        return dict(zip(self.langs, self.owners.sum(0).tolist()))

    @property
    def totals(self) -> dict[str, int]:
        """specific / related / unassigned among the selected neurons; general = the whole general set."""
        by_type = torch.bincount(self.type_codes, minlength=len(TYPES)).tolist()
        return {
            "specific": by_type[SPECIFIC],
            "related": by_type[RELATED],
            "general": int(self.general.numel()),
            "unassigned": by_type[UNASSIGNED],
        }

    def _lang_index(self, lang: str) -> int:
        if lang not in self.langs:
            raise DataError(f"language {lang!r} is not in this identification (it has {', '.join(self.langs)})")
        return self.langs.index(lang)

    def _per_layer(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Split ascending flat indices into a list over layers of unit indices (int64)."""
        flat = torch.unique(flat)  # sorted, duplicates from unions removed
        layer = torch.div(flat, self.num_units, rounding_mode="floor")
        sizes = torch.bincount(layer, minlength=self.num_layers).tolist()
        return [part.clone() for part in torch.split(flat % self.num_units, sizes)]

    def units(
        self, langs: str | Iterable[str] | None = None, types: Iterable[str] = ("specific", "related")
    ) -> list[torch.Tensor]:
        """Units per layer (list of L sorted int64 tensors) of the given type(s), owned by any of ``langs``.

        ``langs`` None means every language (and, for "unassigned", the neurons nobody owns). "general" adds the
        general set (general neurons are active in every language, so they belong to each language's set).
        """
        types = tuple(types)
        unknown = [t for t in types if t not in TYPES]
        if unknown:
            raise HarnessError(f"unknown neuron type(s) {unknown}: choose from {', '.join(TYPES)}")
        type_mask = torch.zeros(len(TYPES), dtype=torch.bool)
        type_mask[[TYPES.index(t) for t in types]] = True
        keep = type_mask[self.type_codes]
        if langs is not None:
            langs = [langs] if isinstance(langs, str) else list(langs)
            cols = [self._lang_index(lang) for lang in langs]
            keep &= self.owners[:, cols].any(1)
        parts = [self.selected[keep]]
        if "general" in types:
            parts.append(self.general)
        return self._per_layer(torch.cat(parts))

    def to_reference_mask(self) -> list[list[torch.Tensor]]:
        """The reference's mask: for each language (in ``langs`` order), per layer, sorted int64 units it owns."""
        return [self._per_layer(self.selected[self.owners[:, k]]) for k in range(self.num_langs)]

    def summary(self) -> dict[str, Any]:
        """A JSON-able digest: settings, tau, lam, per-language counts, histogram over N, type totals."""
        out: dict[str, Any] = {
            "method": self.method,
            "langs": list(self.langs),
            "top_rate": self.top_rate,
            "lam": self.lam,
            "bar": self.bar,
            "tau": self.tau,
            "layers": self.num_layers,
            "units": self.num_units,
            "selected": int(self.selected.numel()),
            "entries": int(self.owners.sum()),
            "per_language": self.per_language,
            "histogram": self.histogram,
            "totals": self.totals,
            "selected_general": int((self.n_langs == self.num_langs).sum()),
            "shared_by_all": self.shared_by_all.tolist(),
            "general_rule": self.general_rule,
        }
        if self.filter_rate is not None:
            out["filter_rate"] = self.filter_rate
        if self.lam_search is not None:
            out["lam_search"] = self.lam_search
        return out

    # ---- storage -------------------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``identification.safetensors`` + ``identification.json`` into ``directory`` atomically."""
        tensors = {name: getattr(self, name) for name in _TENSOR_FIELDS}
        meta = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _TENSOR_FIELDS}
        meta["langs"] = list(self.langs)
        return storage.write_pair(directory, STEM, "identification", tensors, meta)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Identification":
        tensors, meta = storage.read_pair(directory, STEM, "identification")
        for key in ("format", "version", "write_id"):
            meta.pop(key, None)
        meta["langs"] = tuple(meta["langs"])
        try:
            return cls(**meta, **tensors)
        except TypeError as exc:
            raise DataError(f"{str(directory)!r}: identification checkpoint of another version ({exc})") from None

    @staticmethod
    def is_saved(directory: str | os.PathLike) -> bool:
        return storage.has_pair(directory, STEM)


class Identifier:
    """Identification on one probability tensor, with everything that does not depend on lam computed once.

    ``probs``: float32 [L, H, K] activation probabilities; ``langs``: the K language codes of the last axis.
    """

    def __init__(self, probs: torch.Tensor, langs: Sequence[str], metadata: dict[str, Any] | None = None):
        if probs.dim() != 3 or probs.shape[-1] != len(langs):
            raise DataError(f"probabilities must be [L, H, K] with K = {len(langs)}, got {tuple(probs.shape)}")
        if len(langs) < 2:
            raise DataError(f"identification needs at least 2 languages, got {list(langs)}")
        self.probs = probs.to(torch.float32).contiguous()
        self.langs = tuple(langs)
        self.metadata = dict(metadata or {})
        self.num_layers, self.num_units, self.num_langs = self.probs.shape
        self.flat_probs = self.probs.reshape(-1)
        self.neuron_probs = self.probs.reshape(-1, self.num_langs)  # [L*H, K]
        self._thresholds: dict[float, torch.Tensor] = {}
        self._n_above: dict[float, torch.Tensor] = {}

    @classmethod
    def from_stats(cls, stats: NeuronStats) -> "Identifier":
        return cls(stats.probs(), stats.langs, stats.metadata)

    # ---- lam-independent pieces (computed once) -------------------------------------------------------------------
    @cached_property
    def entropy(self) -> torch.Tensor:
        """Normalised entropy e of every neuron, flat [L*H] float32."""
        return ternary_entropy(self.probs).reshape(-1)

    @cached_property
    def max_prob(self) -> torch.Tensor:
        """max_k p of every neuron, flat [L*H] float32."""
        return self.neuron_probs.max(-1).values

    def threshold(self, rate: float, what: str = "bar") -> torch.Tensor:
        if rate not in self._thresholds:
            self._thresholds[rate] = kth_threshold(self.flat_probs, rate, what)
        return self._thresholds[rate]

    def _n_above_threshold(self, rate: float, what: str = "bar") -> torch.Tensor:
        """Languages with p above the ``rate`` threshold, for every neuron ([L*H] int64)."""
        if rate not in self._n_above:
            self._n_above[rate] = (self.neuron_probs > self.threshold(rate, what)).sum(-1)
        return self._n_above[rate]

    def _num_selected(self, top_rate: float) -> int:
        total = self.num_layers * self.num_units
        k = round(top_rate * total)
        if not 1 <= k <= total:
            raise HarnessError(f"top_rate={top_rate} selects {k} of {total} neurons: use a value in (0, 1]")
        return k

    # ---- ternary ---------------------------------------------------------------------------------------------------
    def ternary_selection(self, lam: float, top_rate: float) -> torch.Tensor:
        """Flat indices of the round(top_rate * L * H) neurons with the lowest ternary score (top-k order)."""
        score = self.entropy - lam * self.max_prob / norm_max(self.num_langs)
        return score.topk(self._num_selected(top_rate), largest=False).indices

    def has_general_selected(self, lam: float, top_rate: float, bar: float) -> bool:
        """Whether the selection at ``lam`` contains a neuron owned by all K languages."""
        owned = self.neuron_probs[self.ternary_selection(lam, top_rate)] > self.threshold(bar)
        return bool((owned.sum(1) == self.num_langs).any())

    def search_lam(
        self,
        top_rate: float = DEFAULT_TOP_RATE,
        bar: float = DEFAULT_BAR,
        lo: float = DEFAULT_LAM_RANGE[0],
        hi: float = DEFAULT_LAM_RANGE[1],
        eps: float = DEFAULT_LAM_EPS,
    ) -> tuple[float, list[dict[str, Any]]]:
        """The largest lam on the bisection grid of [lo, hi] whose selection has no N = K neuron, and the trace.

        lo and hi are evaluated first: hi is returned when it is acceptable; otherwise the midpoint of [lo, hi] is
        tested while hi - lo > eps, an acceptable midpoint moving lo up, an unacceptable one moving hi down; lo is
        returned. When even lo is unacceptable, lo is returned and the trace shows it (no lam keeps general neurons
        out). The trace lists every evaluated lam with ``ok``.
        """
        if not (lo < hi and eps > 0):
            raise HarnessError(f"lam search needs lo < hi and eps > 0, got lo={lo} hi={hi} eps={eps}")
        trace: list[dict[str, Any]] = []

        def ok(lam: float) -> bool:
            good = not self.has_general_selected(lam, top_rate, bar)
            trace.append({"lam": lam, "ok": good})
            return good

        ok_lo, ok_hi = ok(lo), ok(hi)
        if ok_hi:
            return hi, trace
        if not ok_lo:
            return lo, trace
        while hi - lo > eps:
            mid = (lo + hi) / 2
            if ok(mid):
                lo = mid
            else:
                hi = mid
        return lo, trace

    def ternary(
        self,
        lam: float | str = "auto",
        top_rate: float = DEFAULT_TOP_RATE,
        bar: float = DEFAULT_BAR,
        general: GeneralRule = GeneralRule(),
        lam_range: tuple[float, float] = DEFAULT_LAM_RANGE,
        lam_eps: float = DEFAULT_LAM_EPS,
    ) -> Identification:
        """The paper's ternary identification at ``lam`` (or the automatically searched lam when ``lam="auto"``)."""
        search = None
        if isinstance(lam, str):
            if lam != "auto":
                raise HarnessError(f"lam={lam!r} is neither a number nor 'auto'")
            lam, search = self.search_lam(top_rate, bar, lam_range[0], lam_range[1], lam_eps)
        selected = self.ternary_selection(float(lam), top_rate)
        return self._result("ternary", selected, top_rate=top_rate, lam=float(lam), bar=bar, general=general,
                            lam_search=search)

    # ---- LAPE ------------------------------------------------------------------------------------------------------
    def lape(
        self,
        top_rate: float = DEFAULT_TOP_RATE,
        filter_rate: float = DEFAULT_FILTER_RATE,
        bar: float = DEFAULT_BAR,
        general: GeneralRule = GeneralRule(),
    ) -> Identification:
        """LAPE (Tang et al.): lowest entropy among neurons with some language above the filter threshold."""
        entropy = lape_entropy(self.probs).reshape(-1)
        entropy = entropy.masked_fill(self._n_above_threshold(filter_rate, "filter_rate") == 0, math.inf)
        selected = entropy.topk(self._num_selected(top_rate), largest=False).indices
        return self._result("lape", selected, top_rate=top_rate, lam=None, bar=bar, general=general,
                            filter_rate=filter_rate)

    # ---- shared ----------------------------------------------------------------------------------------------------
    def _result(
        self,
        method: str,
        selected: torch.Tensor,
        *,
        top_rate: float,
        lam: float | None,
        bar: float,
        general: GeneralRule,
        filter_rate: float | None = None,
        lam_search: list | None = None,
    ) -> Identification:
        tau = self.threshold(bar)
        selected = torch.sort(selected).values
        owners = self.neuron_probs[selected] > tau
        general_bar = bar if general.bar is None else general.bar
        min_langs = self.num_langs if general.min_langs is None else general.min_langs
        if not 1 <= min_langs <= self.num_langs:
            raise HarnessError(f"general min_langs={min_langs} must lie in 1..{self.num_langs}")
        general_idx = torch.nonzero(self._n_above_threshold(general_bar, "general_bar") >= min_langs).flatten()
        threshold = float(self.threshold(general_bar, "general_bar"))
        rule = {"bar": general_bar, "threshold": threshold, "min_langs": min_langs}
        return Identification(
            langs=self.langs,
            method=method,
            num_layers=self.num_layers,
            num_units=self.num_units,
            top_rate=top_rate,
            lam=lam,
            bar=bar,
            tau=float(tau),
            selected=selected,
            owners=owners,
            general=general_idx,
            shared_by_all=torch.bincount(self._n_above_threshold(bar), minlength=self.num_langs + 1),
            general_rule=rule,
            filter_rate=filter_rate,
            lam_search=lam_search,
            metadata=dict(self.metadata),
        )


def identify(
    stats: NeuronStats,
    method: str = "ternary",
    *,
    top_rate: float = DEFAULT_TOP_RATE,
    lam: float | str = "auto",
    bar: float = DEFAULT_BAR,
    filter_rate: float = DEFAULT_FILTER_RATE,
    general: GeneralRule = GeneralRule(),
    lam_range: tuple[float, float] = DEFAULT_LAM_RANGE,
    lam_eps: float = DEFAULT_LAM_EPS,
) -> Identification:
    """Identify language neurons in ``stats`` with ``method`` ("ternary": the paper; "lape": Tang et al.).

    ``lam`` is used by ternary only ("auto": binary search, see :meth:`Identifier.search_lam`); ``filter_rate`` by
    LAPE only.
    """
    if method not in METHODS:
        raise UnknownMethodError(f"unknown identification method {method!r}: choose one of {', '.join(METHODS)}")
    identifier = Identifier.from_stats(stats)
    if method == "lape":
        return identifier.lape(top_rate=top_rate, filter_rate=filter_rate, bar=bar, general=general)
    return identifier.ternary(
        lam=lam, top_rate=top_rate, bar=bar, general=general, lam_range=lam_range, lam_eps=lam_eps
    )


@dataclass
class LayerDistribution:
    """Neuron counts per layer and type: ``total[layer, t]`` for t in :data:`TYPES`; ``per_lang[k, layer, t]`` for
    t in ``("specific", "related", "general")`` (the neurons of each type that language k owns)."""

    langs: tuple[str, ...]
    total: torch.Tensor  # [L, 4] int64
    per_lang: torch.Tensor  # [K, L, 3] int64
    lang_types: tuple[str, ...] = ("specific", "related", "general")

    def rows(self) -> list[dict[str, Any]]:
        """Long-format rows {layer, type, lang, count} ("all" for the totals), e.g. for a table."""
        out = []
        for layer in range(self.total.shape[0]):
            for t, name in enumerate(TYPES):
                out.append({"layer": layer, "type": name, "lang": "all", "count": int(self.total[layer, t])})
            for k, lang in enumerate(self.langs):
                for t, name in enumerate(self.lang_types):
                    out.append({"layer": layer, "type": name, "lang": lang, "count": int(self.per_lang[k, layer, t])})
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: {"all": {type: [per layer]}, lang: {type: [per layer]}}."""
        out: dict[str, Any] = {"all": {name: self.total[:, t].tolist() for t, name in enumerate(TYPES)}}
        for k, lang in enumerate(self.langs):
            out[lang] = {name: self.per_lang[k, :, t].tolist() for t, name in enumerate(self.lang_types)}
        return out


def layer_distribution(ident: Identification) -> LayerDistribution:
    """How the selected neurons of each type, and the general set, spread over layers (overall and per language)."""
    L, K = ident.num_layers, ident.num_langs
    # Selected neurons typed "general" (N = K) are general neurons too; counting the general set covers them.
    not_general = ident.type_codes != GENERAL
    flat_sel = (ident.layers * len(TYPES) + ident.type_codes)[not_general]
    general_layers = torch.div(ident.general, ident.num_units, rounding_mode="floor")
    flat_gen = general_layers * len(TYPES) + GENERAL
    total = torch.bincount(torch.cat([flat_sel, flat_gen]), minlength=L * len(TYPES)).reshape(L, len(TYPES))

    per_lang = torch.zeros(K, L, 3, dtype=torch.int64)
    # (lang, layer, type) of every owned selected specific/related neuron; unassigned ones have no owner.
    sel_of, lang_of = torch.nonzero(ident.owners & not_general[:, None], as_tuple=True)
    codes = ident.type_codes[sel_of]
    flat = (lang_of * L + ident.layers[sel_of]) * 3 + codes
    per_lang += torch.bincount(flat, minlength=K * L * 3).reshape(K, L, 3)
    per_lang[:, :, 2] = total[:, GENERAL]  # general neurons are active in every language
    return LayerDistribution(ident.langs, total, per_lang)
