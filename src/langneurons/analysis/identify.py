"""``analyze.py identify``: identification on saved statistics or a reference folder; writes the mask."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from .. import languages
from ..errors import HarnessError
from ..neurons import GeneralRule, Identification, identify, load_stats
from ..neurons.storage import atomic_write


def _number(cfg: dict[str, Any], key: str, kind: type = float) -> Any:
    value = cfg[key]
    if value is None:
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise HarnessError(f"{key} must be a{'n integer' if kind is int else ' number'}, got {value!r}") from None


def output_paths(out: str) -> tuple[Path, Path]:
    """(reference mask file, our identification directory) for ``out``: a directory (existing, or written with a
    trailing slash) gets ``mask.pt`` and our files inside; anything else is the mask file, ours beside it."""
    path = Path(out)
    if out.endswith(("/", "\\")) or path.is_dir():
        return path / "mask.pt", path
    return path, path.with_name(path.name + ".identification")


def save_outputs(ident: Identification, out: str) -> dict[str, str]:
    mask_path, ours = output_paths(out)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(ident.to_reference_mask(), buffer)
    atomic_write(mask_path, buffer.getvalue())
    ident.save(ours)
    return {"mask": str(mask_path), "identification": str(ours)}


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Identify neurons as ``cfg`` says (see conf/analyze/identify.yaml); return the summary, plus output paths."""
    langs = None if cfg.get("langs") is None else languages.resolve(cfg["langs"])
    stats = load_stats(cfg["source"], langs=langs)
    lam = cfg["lam"]
    if not (isinstance(lam, str) and lam == "auto"):
        lam = _number(cfg, "lam")
    ident = identify(
        stats,
        str(cfg["method"]),
        top_rate=_number(cfg, "top_rate"),
        lam=lam,
        bar=_number(cfg, "bar"),
        filter_rate=_number(cfg, "filter_rate"),
        general=GeneralRule(bar=_number(cfg, "general_bar"), min_langs=_number(cfg, "general_min_langs", int)),
        lam_range=(_number(cfg, "lam_lo"), _number(cfg, "lam_hi")),
        lam_eps=_number(cfg, "lam_eps"),
    )
    result = {"source": str(cfg["source"]), **ident.summary()}
    if cfg.get("out"):
        result.update(save_outputs(ident, str(cfg["out"])))
    return result
