"""Models and tokenizers: the tiny built-in model, and real ones from a local folder, the HF cache or the hub.

Loading a real model never hangs and never dumps a traceback on the user: when the weights are not reachable it
raises ``ModelLoadError`` with one line that names the model, says what was tried and how to fix it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from .errors import ModelLoadError
from .files import is_path
from .offline import OfflineCopy, converted_folder

log = logging.getLogger(__name__)

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any
    model_id: str  # what the statistics and W&B record as the model's identity


_TORCH_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
                 "fp16": torch.float16, "float16": torch.float16}  # settings.DTYPES, but auto


def resolve_dtype(name: str | None) -> torch.dtype:
    """``auto`` is bf16 on a GPU that supports it, else float32 (CPUs train tiny models in float32)."""
    if name in (None, "auto"):
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    try:
        return _TORCH_DTYPES[name]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {name!r}: use auto, fp32, bf16 or fp16") from None


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 1024,
                    split_digits: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``corpus``: every script is covered (any byte is a token), and the
    texts it was trained on compress well. Deterministic for a given corpus; needs no download.

    ``split_digits``: every digit is its own token (as in Llama and Mistral tokenizers), so a model can learn
    arithmetic digit by digit instead of memorising one token per number."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def build_tiny_model(arch: Mapping[str, Any], tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised Llama-architecture model (SwiGLU MLP) sized by ``arch`` (LlamaConfig fields)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **dict(arch),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def load_pretrained(name_or_path: str, dtype: str | None = "auto", revision: str | None = None,
                    trust_remote_code: bool = False, offline: OfflineCopy | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer from a local folder, the HF cache, the hub, or (when the hub cannot serve
    it) the model's ``offline`` copy from the package registry, converted once and cached; in that order.

    Raises ``ModelLoadError`` (one line: the model, what was tried, how to fix it) when none of them has it.
    """
    torch_dtype = resolve_dtype(dtype)
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    if Path(name_or_path).expanduser().is_dir():
        check_model_folder(Path(name_or_path).expanduser())
    fix = (f"download it where the hub is reachable (`hf download {name_or_path}`) and pass "
           f"model.name_or_path=/local/dir, or set HF_HOME to a cache that holds it")
    fallback = None
    if offline is not None and not offline.is_installed():
        fix = f"install its offline copy ({offline.requirement}): `{offline.install}`; or {fix}"
    elif offline is not None:
        def fallback(problem: str) -> LoadedModel:
            log.info("model %s: %s; loading its offline copy (%s)", name_or_path, problem, offline.requirement)
            folder = converted_folder(offline, name_or_path)
            loaded = _load(str(folder), torch_dtype, {}, source=f"the converted offline copy {folder}")
            loaded.model_id = offline.model_id(name_or_path)
            return loaded

    return load_from_anywhere(
        name_or_path, lambda name, source, extra: _load(name, torch_dtype, {**kwargs, **extra}, source=source),
        what="model", revision=revision, fix=fix, fallback=fallback,
        no_folder="pass model.name_or_path=<folder with config.json and weights> or a hub id such as "
                  "meta-llama/Llama-3.1-8B-Instruct")


def load_from_anywhere(name_or_path: str, load: Callable[[str, str, dict[str, Any]], Any], *, what: str,
                       revision: str | None, no_folder: str, fix: str,
                       fallback: Callable[[str], Any] | None = None) -> Any:
    """The search every model the harness loads goes through (the causal LM, the scorer's translation model): a
    local folder; a path that is no folder is the user's mistake; else the HF cache; the hub, when it is reachable
    and serves the id; else ``fallback(why the hub cannot)`` when given (a model's offline copy). ``load(name,
    source, extra kwargs)`` loads from one place (``local_files_only`` for the cache: an
    ``OSError`` or ``ValueError`` from it means "not there"). None found: a one-line ``ModelLoadError`` naming the
    ``what``, what was tried and how to fix it."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return load(str(path), f"local folder {path}", {})
    if is_path(name_or_path):
        raise ModelLoadError(f"{what} {name_or_path!r}: no such local folder; {no_folder}")
    try:
        return load(name_or_path, "the HF cache", {"local_files_only": True})
    except (OSError, ValueError):
        pass
    tried = f"not a local folder, not in the HF cache (HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')})"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        problem = "HF_HUB_OFFLINE is set"
    else:
        problem = hub_problem(name_or_path, revision)
        if problem is None:
            return load(name_or_path, "the hub", {})
    if fallback is not None:
        return fallback(problem)
    raise ModelLoadError(f"{what} {name_or_path!r} could not be loaded: {tried}, and {problem}; {fix}")


def check_model_folder(folder: str | os.PathLike) -> None:
    """A local model folder's ``config.json`` is there and is a JSON object with a ``model_type``, else a
    :class:`ModelLoadError` naming the folder (cheap: reads no weights, so it can run before anything is loaded)."""
    import json

    folder = Path(folder).expanduser()
    config = folder / "config.json"
    hint = ("the folder must hold a model saved with save_pretrained (config.json, weights, tokenizer files): "
            "save it again, or point model.name_or_path at another folder")
    if not config.is_file():
        raise ModelLoadError(f"model folder {folder} has no config.json: {hint}")
    try:
        data = json.loads(config.read_bytes().decode("utf-8"))
    except OSError as e:
        raise ModelLoadError(f"model folder {folder}: config.json cannot be read ({e.strerror or type(e).__name__}): "
                             "make it readable") from None
    except UnicodeDecodeError:
        raise ModelLoadError(f"model folder {folder}: config.json is not text: {hint}") from None
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"model folder {folder}: config.json is not valid JSON ({e.msg} at line {e.lineno}): "
                             f"{hint}") from None
    if not isinstance(data, dict) or not data.get("model_type"):
        raise ModelLoadError(f"model folder {folder}: config.json names no model_type: {hint}")
    from transformers import CONFIG_MAPPING

    if data["model_type"] not in CONFIG_MAPPING and "auto_map" not in data:  # auto_map: the model's own code
        raise ModelLoadError(f"model folder {folder}: config.json names model_type {data['model_type']!r}, which "
                             f"transformers does not know: check the folder, or install a transformers version "
                             "that has this architecture")


def _load(name: str, dtype: torch.dtype, kwargs: dict[str, Any], source: str) -> LoadedModel:
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **kwargs)
    except (OSError, ValueError) as e:
        if kwargs.get("local_files_only"):
            raise
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"model {name!r} from {source} could not be loaded ({reason}); check that the folder holds a causal LM "
            "saved with save_pretrained (config.json, weights, tokenizer files)"
        ) from None
    if tokenizer.pad_token is None:
        # Many base models ship without a pad token; padding is always masked, so eos is a safe stand-in.
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=name)


def hub_problem(repo_id: str, revision: str | None) -> str | None:
    """Why the hub cannot serve ``repo_id`` right now (a short phrase), or None when it can. Bounded in time."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(repo_id, revision=revision, timeout=10)
    except GatedRepoError:
        return ("the hub says the model is gated: accept its terms on huggingface.co and log in "
                "(`hf auth login` or HF_TOKEN)")
    except RepositoryNotFoundError:
        return "the hub has no such model (check the id; private models need `hf auth login` or HF_TOKEN)"
    except Exception as e:  # network errors come from several libraries; all mean "unreachable"
        return f"the hub is unreachable ({type(e).__name__})"
    return None
