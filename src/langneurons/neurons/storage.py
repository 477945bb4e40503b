"""Crash-safe storage of tensors + JSON metadata: ``<dir>/<stem>.safetensors`` beside ``<dir>/<stem>.json``.

Each file is written under a temporary name and moved into place with ``os.replace`` (atomic on POSIX), so a crash
never leaves a truncated file. The two files share a random ``write_id``; a crash between the two renames leaves
a pair whose ids differ, which :func:`read_pair` reports instead of returning tensors and metadata that do not
belong together.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from ..errors import DataError
from ..files import atomic_write, fsync_dir


def write_pair(
    directory: str | os.PathLike, stem: str, kind: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> Path:
    """Write ``tensors`` and JSON-able ``meta`` as one checkpoint of type ``kind`` into ``directory`` (created)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_id = uuid.uuid4().hex
    header = {"format": f"langneurons.{kind}", "version": 1, "write_id": write_id}
    cpu_tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    blob = st_save(cpu_tensors, metadata={k: str(v) for k, v in header.items()})
    text = json.dumps({**header, **meta}, indent=1, sort_keys=False) + "\n"
    # Tensors first, JSON last: the JSON names what a complete checkpoint is, so it is the commit point.
    atomic_write(directory / f"{stem}.safetensors", blob)
    atomic_write(directory / f"{stem}.json", text.encode())
    fsync_dir(directory)
    return directory


def has_pair(directory: str | os.PathLike, stem: str) -> bool:
    directory = Path(directory)
    return (directory / f"{stem}.json").is_file() and (directory / f"{stem}.safetensors").is_file()


def read_pair(directory: str | os.PathLike, stem: str, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`write_pair`; raise :class:`DataError` when it is missing or inconsistent."""
    directory = Path(directory)
    json_path, st_path = directory / f"{stem}.json", directory / f"{stem}.safetensors"
    if not directory.is_dir():
        raise DataError(f"no such directory {str(directory)!r}: give a directory written by {kind} save()")
    if not json_path.is_file() or not st_path.is_file():
        raise DataError(f"{str(directory)!r} holds no {stem}.json + {stem}.safetensors: not a saved {kind} directory")
    what = {"stats": "statistics", "identification": "identification"}.get(kind, kind)
    fix = "re-run the checkpoint (or analysis) that wrote it, or point at another folder"

    def damaged(why: str) -> DataError:
        return DataError(f"{directory}: the {what} folder is damaged ({why}): {fix}")

    try:
        meta = json.loads(json_path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise DataError(f"{directory}: {stem}.json cannot be read ({exc.strerror or type(exc).__name__}): make it "
                        "readable or point at another folder") from None
    except UnicodeDecodeError:
        raise damaged(f"{stem}.json is not text") from None
    except json.JSONDecodeError as exc:
        raise damaged(f"{stem}.json is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(meta, dict):
        raise damaged(f"{stem}.json holds a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != f"langneurons.{kind}":
        raise DataError(f"{directory}: {stem}.json has format {meta.get('format')!r}, expected 'langneurons.{kind}': "
                        f"not a {what} folder of this harness; point at another folder")
    try:
        with safe_open(str(st_path), framework="pt") as fh:
            st_meta = fh.metadata() or {}
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise damaged(f"{stem}.safetensors is not a readable safetensors file: {reason}") from None
    if st_meta.get("write_id") != meta.get("write_id"):
        raise damaged(f"{stem}.json and {stem}.safetensors come from different saves: half-written")
    return tensors, meta
