"""Built MAPO pair sets on disk: a folder per cache key, written atomically, read back on a rerun.

A pair set folder holds ``train.jsonl`` and ``eval.jsonl`` (one pair per line: prompt, chosen, rejected, lang, id,
chosen_reward, rejected_reward), ``stats.json`` (what was built) and ``key.json`` (everything the key hashes).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .. import faults
from ..errors import DataError
from .mapo import PairSet


def model_fingerprint(model: torch.nn.Module, tokenizer: Any, sample: int = 2048) -> str:
    """A cheap fingerprint of a model's weights and its tokenizer's vocabulary: every parameter's name, shape and
    dtype, and an evenly strided sample of its values (a few thousand numbers per tensor, even for 7B models)."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.state_dict().items():
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // sample)
            h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
            h.update(flat[::step][:sample].float().cpu().numpy().tobytes())
    vocab = sorted(tokenizer.get_vocab().items())
    h.update(json.dumps(vocab, ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()


def folder_for(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir).expanduser() / key[:24]


def load(cache_dir: str | Path, key: str) -> PairSet | None:
    """The pair set stored under ``key``, or None when there is none (or it was written by other inputs)."""
    folder = folder_for(cache_dir, key)
    try:
        stored = json.loads((folder / "key.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if stored.get("key") != key:
        return None
    try:
        return PairSet(train=_read(folder / "train.jsonl"), eval=_read(folder / "eval.jsonl"),
                       stats=json.loads((folder / "stats.json").read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cached MAPO pairs in {folder} are unreadable ({type(e).__name__}): delete that folder "
                        "to rebuild them") from None


def save(cache_dir: str | Path, key: str, parts: Mapping[str, Any], pairs: PairSet) -> Path:
    """Store ``pairs`` under ``key``. The folder appears whole or not at all (written aside, then renamed); when
    another job stored the same key first, its copy is kept."""
    folder = folder_for(cache_dir, key)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write(tmp, pairs, {"key": key, "parts": parts})
        faults.reach("pairs.save", tmp)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "key.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def write(folder: Path, pairs: PairSet, key_info: Mapping[str, Any] | None = None) -> None:
    """The files of a pair set folder (not atomic: ``save`` renames the folder into place)."""
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / "train.jsonl", pairs.train)
    _write(folder / "eval.jsonl", pairs.eval)
    (folder / "stats.json").write_text(json.dumps(pairs.stats, indent=1, ensure_ascii=False), encoding="utf-8")
    if key_info is not None:  # last: a folder with key.json is complete
        (folder / "key.json").write_text(json.dumps(key_info, indent=1, ensure_ascii=False, default=str),
                                         encoding="utf-8")


def _write(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
