"""The pretrained tiny base on disk: built once per configuration, then reused.

An entry is ``<cache_dir>/<key>/`` (weights, tokenizer, ``pretrain.json``), where ``key`` hashes everything the
weights depend on: architecture, tokenizer settings, prompt template, the pretrain block (corpus, steps, lr, seed),
a fingerprint of the generated texts, this module's build version, the versions of torch, transformers and
tokenizers, and the CPU kernels the weights are computed with (:mod:`..cpu_numerics`). An entry is built in a
temporary folder beside it and renamed into place, so a crash never leaves a half-written entry; a lock file makes
a second process (another rank, a parallel run) wait for the first build instead of repeating it.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from transformers import PreTrainedTokenizerFast

from .. import cpu_numerics, faults, files
from ..errors import HarnessError
from ..settings import ModelSettings, PretrainSettings
from ..modeling import LoadedModel, build_tiny_model, build_tokenizer
from . import corpus as corpus_mod
from .pretrain import pretrain

log = logging.getLogger(__name__)

# Bump when the build itself changes (loop, corpus, tokenizer recipe): old entries stop matching.
BUILD_VERSION = 2
MANIFEST = "pretrain.json"
# Keys of the pretrain block that say where or whether, not what: they do not change the weights.
_NOT_IN_KEY = ("enabled", "cache_dir", "log_every")
_TOKENIZER_DOCS = 4000


def tokenizer_documents(pre: PretrainSettings, template: str) -> list[corpus_mod.Document]:
    """What the tokenizer learns its merges from: the corpus with each language's weight raised to
    ``tokenizer_alpha`` (< 1 flattens the mix, as multilingual tokenizers upsample rare languages; 1 keeps it)."""
    mix = corpus_mod.check_mix(pre.corpus.mix)
    flat = pre.corpus.model_copy(update={"mix": {lang: w ** pre.tokenizer_alpha for lang, w in mix.items() if w > 0}})
    return corpus_mod.documents(flat, template, _TOKENIZER_DOCS, seed=pre.seed + 1)


def _tiny(model_cfg: "ModelSettings | Mapping[str, Any]") -> ModelSettings:
    model_cfg = ModelSettings.of(model_cfg)
    if model_cfg.pretrain is None:
        raise HarnessError(f"model={model_cfg.preset} has no model.pretrain block: the tiny base is built from it "
                           "(model=tiny)")
    return model_cfg


def base_tokenizer(model_cfg: "ModelSettings | Mapping[str, Any]") -> PreTrainedTokenizerFast:
    """The tiny model's tokenizer (the same for the pretrained and the random base), trained on
    :func:`tokenizer_documents` part by part: no merge may span a prompt and its answer, which TRL tokenizes
    joined while generation and the probes tokenize them apart."""
    model_cfg = _tiny(model_cfg)
    docs = tokenizer_documents(model_cfg.pretrain, model_cfg.prompt_template)
    return build_tokenizer((part for d in docs for part in d.parts), model_cfg.vocab_size,
                           split_digits=bool(model_cfg.split_digits))


def key_material(model_cfg: "ModelSettings | Mapping[str, Any]") -> dict[str, Any]:
    """Everything the pretrained weights depend on, as plain JSON values."""
    model_cfg = _tiny(model_cfg)
    pre = model_cfg.pretrain.dump()
    template = model_cfg.prompt_template
    return {
        "build_version": BUILD_VERSION,
        "arch": dict(model_cfg.arch),
        "vocab_size": model_cfg.vocab_size,
        "split_digits": bool(model_cfg.split_digits),
        "prompt_template": template,
        "pretrain": {k: v for k, v in pre.items() if k not in _NOT_IN_KEY},
        "texts": corpus_mod.fingerprint(model_cfg.pretrain.corpus, template),
        "versions": {lib: version(lib) for lib in ("torch", "transformers", "tokenizers")},
        # the kernels the weights were computed with (cpu_numerics: AVX2 unless the user chose others)
        "cpu": cpu_numerics.describe(),
    }


def cache_key(model_cfg: "ModelSettings | Mapping[str, Any]") -> str:
    """The entry name of the pretrained base ``model_cfg`` describes: a short hash of :func:`key_material`."""
    return files.digest(key_material(model_cfg))[:16]


def cache_root(model_cfg: "ModelSettings | Mapping[str, Any]") -> Path:
    """The folder of the tiny base's cache entries (created)."""
    return files.cache_root(_tiny(model_cfg).pretrain.cache_dir, "the pretrained tiny base",
                                "model.pretrain.cache_dir")


def is_complete(entry: Path) -> bool:
    return (entry / MANIFEST).is_file() and (entry / "config.json").is_file()


def load_entry(entry: Path) -> LoadedModel:
    """The base saved in cache entry ``entry`` (float32, eval mode)."""
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(entry))
    model = LlamaForCausalLM.from_pretrained(str(entry), dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer,
                       model_id=f"tiny-llama-{model.num_parameters()}-base-{entry.name[:8]}")


def tiny_base(model_cfg: "ModelSettings | Mapping[str, Any]", *, progress: bool = True) -> LoadedModel:
    """The pretrained tiny base ``model_cfg`` describes: loaded from the cache, or built (once) and cached."""
    model_cfg = _tiny(model_cfg)
    root = cache_root(model_cfg)
    key = cache_key(model_cfg)
    entry = root / key
    if is_complete(entry):
        log.info("tiny base: reusing the cached pretrained model %s", entry)
        return load_entry(entry)
    with files.exclusive_lock(root / f"{key}.lock", "tiny base"):
        if is_complete(entry):  # another process built it while this one waited
            log.info("tiny base: reusing the pretrained model another process just built, %s", entry)
            return load_entry(entry)
        files.remove_stale_tmp(root, key)  # and what a killed build of this entry left
        log.info("tiny base: pretraining it once for this configuration (a few minutes on a CPU; cached in %s)",
                 entry)
        build(model_cfg, entry, progress=progress)
    return load_entry(entry)


def build(model_cfg: "ModelSettings | Mapping[str, Any]", entry: Path, *, progress: bool = True) -> Path:
    """Pretrain the base ``model_cfg`` describes and save it as cache entry ``entry`` (atomically)."""
    model_cfg = _tiny(model_cfg)
    pre = model_cfg.pretrain
    tmp = files.tmp_sibling(entry)
    try:
        started = time.perf_counter()
        steps, batch_size = pre.steps, pre.batch_size
        docs = corpus_mod.documents(pre.corpus, model_cfg.prompt_template, steps * batch_size, seed=pre.seed)
        tokenizer = base_tokenizer(model_cfg)
        model = build_tiny_model(model_cfg.arch, tokenizer, seed=pre.seed)
        with torch.random.fork_rng(devices=[]), _threads(pre.threads):
            torch.manual_seed(pre.seed)
            report = pretrain(model, tokenizer, docs, pre, progress=progress)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        faults.reach("base.save", tmp)
        manifest = {"key": entry.name, "material": key_material(model_cfg), "report": report.to_dict(),
                    "build_seconds": round(time.perf_counter() - started, 2)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        files.publish(tmp, entry, is_complete)
        log.info("tiny base: pretrained in %.0f s (final loss %.3f), saved to %s", manifest["build_seconds"],
                 report.final_loss, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for the block (None: leave them). Float sums depend on how work is split
    across threads, so a fixed count makes the build repeat bit for bit on any machine of the same CPU kind."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
