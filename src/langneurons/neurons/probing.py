"""What a probe forward needs from any wrapped causal LM: the inner model and its decoder stack, its device, the
forward arguments that make probing cheap, the inputs and count masks of a batch, and eval mode."""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from .. import languages
from ..distributed import world_size
from ..errors import DataError

COUNT_MODES = ("response", "all")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The innermost model under DDP/FSDP/DeepSpeed (``.module``) and PEFT (``get_base_model()``) wrappers."""
    for _ in range(8):
        inner = getattr(model, "module", None)
        if isinstance(inner, nn.Module):
            model = inner
        elif callable(getattr(model, "get_base_model", None)):
            model = model.get_base_model()
        else:
            break
    return model


def decoder_stack(model: nn.Module) -> nn.Module:
    """The module a counting forward calls: the decoder stack inside any PEFT / Hugging Face wrapper, without the LM
    head (a Gemma 3 head over 262k tokens costs more than its 18 layers), or ``model`` itself where the decoder must
    not be called alone: under torch.distributed (FSDP and ZeRO-3 gather parameters in the wrapper's forward) or when
    the model exposes no decoder (``get_decoder``). LoRA layers live inside the decoder, so adapters stay active."""
    if world_size() > 1:
        return model
    inner = unwrap_model(model)
    get_decoder = getattr(inner, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    return decoder if isinstance(decoder, nn.Module) and decoder is not inner else model


def model_id(model: nn.Module) -> str | None:
    config = getattr(unwrap_model(model), "config", None)
    return getattr(config, "_name_or_path", None) or getattr(config, "model_type", None)


def model_device(model: nn.Module) -> torch.device:
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def forward_kwargs(model: nn.Module, *, logits: bool) -> dict[str, Any]:
    """Extra keyword arguments the innermost model's forward accepts that make probe forwards cheaper.

    No KV cache; with ``logits=False`` only the last position's logits (the LM head over the vocabulary is a large
    share of a small model's forward and counting needs none of it).
    """
    params = inspect.signature(unwrap_model(model).forward).parameters
    extra: dict[str, Any] = {}
    if "use_cache" in params:
        extra["use_cache"] = False
    if not logits and accepts_logits_to_keep(model):
        extra["logits_to_keep"] = 1
    return extra


def accepts_logits_to_keep(model: nn.Module) -> bool:
    """Whether the innermost model's forward computes logits only at chosen positions (``logits_to_keep``)."""
    return "logits_to_keep" in inspect.signature(unwrap_model(model).forward).parameters


def accepts_position_ids(model: nn.Module) -> bool:
    return "position_ids" in inspect.signature(unwrap_model(model).forward).parameters


def model_inputs(
    batch: Mapping[str, torch.Tensor], device: torch.device, position_ids: bool
) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask (and position_ids) on ``device``.

    position_ids count only real tokens, so a left-padded row gets the positions it would have unpadded (as in
    generation); without them Hugging Face models number padded positions too.
    """
    input_ids = batch["input_ids"].to(device, non_blocking=True)
    attention_mask = batch["attention_mask"].to(device, non_blocking=True)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if position_ids:
        inputs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return inputs


def count_mask(batch: Mapping[str, torch.Tensor], count: str, device: torch.device) -> torch.Tensor:
    """Bool [B, T] mask of the tokens to count: response tokens (``count_mask``) or every non-pad token."""
    if count not in COUNT_MODES:
        raise DataError(f"unknown count mode {count!r}: choose one of {', '.join(COUNT_MODES)}")
    attention = batch["attention_mask"].to(device, non_blocking=True).bool()
    if count == "all":
        return attention
    if "count_mask" not in batch:
        raise DataError("batch has no count_mask: build probe batches with a response mask, or count='all'")
    # Padding never counts, whatever the mask says.
    return batch["count_mask"].to(device, non_blocking=True).bool() & attention


def lang_onehot(batch: Mapping[str, torch.Tensor], num_langs: int, device: torch.device) -> torch.Tensor:
    """Bool [B, K] one-hot of each row's language; ids are checked on the host when they live there."""
    if "lang_ids" not in batch:
        raise DataError("batch has no lang_ids: every probe row needs the index of its language")
    lang_ids = torch.as_tensor(batch["lang_ids"])
    if lang_ids.dim() != 1 or lang_ids.shape[0] != batch["input_ids"].shape[0]:
        raise DataError(f"lang_ids must be [batch] = [{batch['input_ids'].shape[0]}], got {tuple(lang_ids.shape)}")
    on_host = lang_ids.device.type == "cpu" and lang_ids.numel() > 0
    if on_host and not 0 <= int(lang_ids.min()) <= int(lang_ids.max()) < num_langs:
        raise DataError(f"lang_ids {lang_ids.tolist()} out of range for {num_langs} languages")
    lang_ids = lang_ids.to(device, non_blocking=True)
    # Comparison instead of F.one_hot: one_hot validates its input on the device, a host sync per batch.
    return lang_ids[:, None] == torch.arange(num_langs, device=device)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no autograd inside; every submodule's previous train/eval flag restored on exit."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for module, training in modes:
            module.training = training


def check_langs(langs: Sequence[str]) -> tuple[str, ...]:
    """``langs`` as a tuple of distinct known codes (their order is the order of the K axis)."""
    langs = tuple(langs)
    if not langs or len(set(langs)) != len(langs):
        raise DataError(f"langs must be a non-empty list of distinct language codes, got {list(langs)}")
    for code in langs:
        languages.get(code)
    return langs
