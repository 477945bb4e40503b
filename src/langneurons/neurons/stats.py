"""Activation statistics as data: how often each MLP unit fired, per language, and on how many tokens."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import DataError
from . import storage

STEM = "stats"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class NeuronStats:
    """Counts of active tokens per (layer, unit, language) and counted tokens per language.

    ``counts[i, j, k]``: counted tokens of language ``langs[k]`` on which unit j of layer i had
    ``act_fn(gate_proj(x)) > 0``; ``tokens[k]``: counted tokens of that language. ``metadata`` is free-form JSON-able
    provenance (model id, step, probe set, created time, ...).
    """

    counts: torch.Tensor  # [L, H, K] int64
    tokens: torch.Tensor  # [K] int64
    langs: tuple[str, ...]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.langs = tuple(self.langs)
        if self.counts.dtype != torch.int64 or self.tokens.dtype != torch.int64:
            raise DataError(f"neuron stats need int64 counts and tokens, not {self.counts.dtype}/{self.tokens.dtype}")
        if self.counts.dim() != 3 or self.tokens.shape != (self.counts.shape[-1],):
            raise DataError(
                f"neuron stats shapes disagree: counts {tuple(self.counts.shape)} must be [L, H, K] and tokens "
                f"{tuple(self.tokens.shape)} must be [K]"
            )
        if len(self.langs) != self.counts.shape[-1] or len(set(self.langs)) != len(self.langs):
            raise DataError(f"neuron stats have {self.counts.shape[-1]} language columns but langs {list(self.langs)}")

    @property
    def num_layers(self) -> int:
        return self.counts.shape[0]

    @property
    def num_units(self) -> int:
        return self.counts.shape[1]

    def probs(self) -> torch.Tensor:
        """``p[i, j, k]`` = counts / tokens as float32 [L, H, K], computed exactly as the reference does.

        Raises :class:`DataError` naming every language with no counted token (its probabilities are undefined).
        """
        empty = [lang for lang, n in zip(self.langs, self.tokens.tolist()) if n <= 0]
        if empty:
            raise DataError(
                f"no counted tokens for language(s) {', '.join(empty)}: the probe set has no (response) tokens in "
                "them; add probe examples or drop the language"
            )
        # int64 / int64 true division yields float32 (both cast to float32, then divided): the reference's own
        # expression, which decides ties at the kthvalue thresholds bit for bit.
        return self.counts / self.tokens.to(self.counts.device)

    def select(self, langs: Sequence[str]) -> "NeuronStats":
        """The same statistics restricted to / reordered as ``langs``."""
        missing = [lang for lang in langs if lang not in self.langs]
        if missing:
            raise DataError(f"languages {missing} are not in these stats (they have {', '.join(self.langs)})")
        idx = torch.tensor([self.langs.index(lang) for lang in langs], dtype=torch.long)
        return NeuronStats(
            self.counts.index_select(-1, idx.to(self.counts.device)),
            self.tokens.index_select(0, idx.to(self.tokens.device)),
            tuple(langs),
            dict(self.metadata),
        )

    def __add__(self, other: "NeuronStats") -> "NeuronStats":
        """Sum of two statistics over disjoint probe sets (same model shape and languages)."""
        self._check_compatible(other)
        return NeuronStats(self.counts + other.counts, self.tokens + other.tokens, self.langs, dict(self.metadata))

    def subtract_prefix(self, prefix: "NeuronStats") -> "NeuronStats":
        """The reference's two-pass compatibility mode: ``self`` counted prompt+response, ``prefix`` the prompt alone.

        counts = clamp(full - prefix, min=0), tokens = tokens_full - tokens_prefix (clamping absorbs the tokens that
        tokenising the prompt alone splits differently).
        """
        self._check_compatible(prefix)
        meta = {**self.metadata, "count": "subtract"}
        return NeuronStats((self.counts - prefix.counts).clamp(min=0), self.tokens - prefix.tokens, self.langs, meta)

    def _check_compatible(self, other: "NeuronStats") -> None:
        if self.langs != other.langs or self.counts.shape != other.counts.shape:
            raise DataError(
                f"cannot combine stats of shape {tuple(self.counts.shape)} {list(self.langs)} with "
                f"{tuple(other.counts.shape)} {list(other.langs)}: they come from different models or language sets"
            )

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``stats.safetensors`` + ``stats.json`` into ``directory`` atomically; return the directory."""
        meta = {
            "langs": list(self.langs),
            "layers": self.num_layers,
            "units": self.num_units,
            "tokens": dict(zip(self.langs, self.tokens.tolist())),
            "metadata": self.metadata,
        }
        return storage.write_pair(directory, STEM, "stats", {"counts": self.counts, "tokens": self.tokens}, meta)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "NeuronStats":
        """Read statistics written by :meth:`save`."""
        tensors, meta = storage.read_pair(directory, STEM, "stats")
        try:
            return cls(tensors["counts"], tensors["tokens"], tuple(meta["langs"]), dict(meta.get("metadata") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            why = f"it lacks {exc}" if isinstance(exc, KeyError) else f"{exc}"
            raise DataError(f"{directory}: the statistics folder is damaged ({why}): re-run the checkpoint (or "
                            "analysis) that wrote it, or point at another folder") from None

    @staticmethod
    def is_saved(directory: str | os.PathLike) -> bool:
        return storage.has_pair(directory, STEM)
