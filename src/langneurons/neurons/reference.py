"""The reference implementation's file formats: activation folders in, language masks out.

An activation folder holds ``activation.{lang}.{tag}.pt`` (prompt+response counts) and optionally
``prefix.activation.{lang}.{tag}.pt`` (prompt-only counts, which switch on the two-pass subtraction); each file is
``{"total_tokens": int, "over_zero": int64 [L, H]}``. A mask is a list over languages of lists over layers of sorted
int64 unit indices.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import torch

from ..errors import DataError
from .stats import NeuronStats, now_iso

# The reference stacks languages in this order; it decides tie-breaking in top-k and the layout of its masks.
REFERENCE_LANG_ORDER: tuple[str, ...] = ("en", "ru", "es", "fr", "de", "zh", "ja", "bn", "th", "sw")

_ACTIVATION_FILE = re.compile(r"^(?P<prefix>prefix\.)?activation\.(?P<lang>[^.]+)\.(?P<tag>.+)\.pt$")


def _scan(folder: Path) -> dict[tuple[bool, str], dict[str, Path]]:
    """(is_prefix, lang) -> {tag: path} for every activation file in ``folder``."""
    found: dict[tuple[bool, str], dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        match = _ACTIVATION_FILE.match(path.name)
        if match and path.is_file():
            found.setdefault((bool(match["prefix"]), match["lang"]), {})[match["tag"]] = path
    return found


def is_reference_folder(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return folder.is_dir() and any(not is_prefix for is_prefix, _ in _scan(folder))


def _read_activation(path: Path) -> tuple[int, torch.Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"{path}: cannot be read as a reference activation file ({type(exc).__name__}: it is damaged "
                        "or of another format): copy it again from the reference repository, or point at another "
                        "folder") from None
    if not isinstance(data, dict) or "over_zero" not in data or "total_tokens" not in data:
        raise DataError(f"{str(path)!r} is not a reference activation file: expected keys total_tokens and over_zero")
    over_zero = data["over_zero"]
    if not isinstance(over_zero, torch.Tensor) or over_zero.dim() != 2:
        raise DataError(f"{str(path)!r}: over_zero must be a [layers, units] tensor")
    return int(data["total_tokens"]), over_zero.to(torch.int64)


def load_reference_stats(
    folder: str | os.PathLike, langs: Sequence[str] | None = None, tag: str | None = None
) -> NeuronStats:
    """Import a reference activation folder as :class:`NeuronStats`.

    Languages are stacked in :data:`REFERENCE_LANG_ORDER` (any others after them, sorted) unless ``langs`` is given.
    When ``prefix.`` files are present (they must be for every language), the reference's subtraction applies:
    counts = clamp(full - prefix, min=0), tokens = tokens_full - tokens_prefix. ``tag`` picks one model when the
    folder holds files of several.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"no such folder {str(folder)!r}: give the folder holding activation.<lang>.*.pt files")
    found = _scan(folder)
    full_langs = [lang for is_prefix, lang in found if not is_prefix]
    if not full_langs:
        raise DataError(f"{str(folder)!r} holds no activation.<lang>.<model>.pt files: not a reference folder")
    if langs is None:
        langs = [lang for lang in REFERENCE_LANG_ORDER if lang in full_langs]
        langs += sorted(lang for lang in full_langs if lang not in REFERENCE_LANG_ORDER)
    else:
        missing = [lang for lang in langs if lang not in full_langs]
        if missing:
            raise DataError(f"{str(folder)!r} has no activation file for {missing}: it has {sorted(full_langs)}")
    use_prefix = any(is_prefix for is_prefix, _ in found)

    def pick(is_prefix: bool, lang: str) -> Path:
        kind = "prefix.activation" if is_prefix else "activation"
        tags = found.get((is_prefix, lang), {})
        if not tags:
            raise DataError(f"{str(folder)!r} has prefix files but no {kind}.{lang}.*.pt: every language needs both")
        if tag is not None:
            if tag not in tags:
                raise DataError(f"{str(folder)!r} has no {kind}.{lang}.{tag}.pt (tags there: {sorted(tags)})")
            return tags[tag]
        if len(tags) > 1:
            raise DataError(f"{str(folder)!r} holds {kind}.{lang} files of several models {sorted(tags)}: pass tag=")
        return next(iter(tags.values()))

    counts, tokens, tags = [], [], set()
    for lang in langs:
        path = pick(False, lang)
        tags.add(_ACTIVATION_FILE.match(path.name)["tag"])
        n, over_zero = _read_activation(path)
        if use_prefix:
            n_prefix, over_zero_prefix = _read_activation(pick(True, lang))
            if over_zero_prefix.shape != over_zero.shape:
                raise DataError(f"{str(folder)!r}: prefix and full counts of {lang} have different shapes")
            over_zero, n = (over_zero - over_zero_prefix).clamp(min=0), n - n_prefix
        counts.append(over_zero)
        tokens.append(n)
    shapes = {tuple(c.shape) for c in counts}
    if len(shapes) != 1:
        raise DataError(f"{str(folder)!r}: activation files have different shapes {sorted(shapes)}: mixed models")
    layers, units = counts[0].shape
    metadata = {
        "source": str(folder),
        "format": "reference",
        "model": ",".join(sorted(tags)),
        "count": "subtract" if use_prefix else "all",
        "layers": layers,
        "units": units,
        "created": now_iso(),
    }
    return NeuronStats(torch.stack(counts, dim=-1), torch.tensor(tokens, dtype=torch.int64), tuple(langs), metadata)


def load_stats(source: str | os.PathLike, langs: Sequence[str] | None = None) -> NeuronStats:
    """Load statistics from our own directory (``stats.json`` + ``stats.safetensors``) or a reference folder.

    ``langs`` reorders / restricts the languages of the result.
    """
    source = Path(source)
    if not source.exists():
        raise DataError(f"no such path {str(source)!r}: give a saved stats directory or a reference activation folder")
    if NeuronStats.is_saved(source):
        stats = NeuronStats.load(source)
        return stats if langs is None else stats.select(langs)
    if is_reference_folder(source):
        return load_reference_stats(source, langs=langs)
    raise DataError(
        f"{str(source)!r} is neither a saved stats directory (stats.json + stats.safetensors) nor a reference "
        "folder (activation.<lang>.<model>.pt files)"
    )


def load_reference_mask(path: str | os.PathLike) -> list[list[torch.Tensor]]:
    """Read a reference mask file: a list over languages of lists over layers of int64 unit indices."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no such mask file {str(path)!r}")
    try:
        mask = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged or foreign file
        raise DataError(f"{path}: cannot be read as a reference mask ({type(exc).__name__}: it is damaged or of "
                        "another format): write it again, or point at another file") from None
    ok = isinstance(mask, list) and all(
        isinstance(per_lang, list) and all(isinstance(t, torch.Tensor) for t in per_lang) for per_lang in mask
    )
    if not ok:
        raise DataError(f"{str(path)!r} is not a reference mask (list over languages of lists over layers of tensors)")
    return mask
