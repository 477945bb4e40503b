"""Switch neurons off and measure what that does: zero chosen units after act_fn, per-language perplexity."""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterable, Iterator, Mapping, Sequence, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from ..distributed import all_reduce_sum, is_rank_zero, world_size
from ..errors import DataError, HarnessError
from .probing import (
    accepts_logits_to_keep,
    accepts_position_ids,
    check_langs,
    count_mask,
    evaluating,
    forward_kwargs,
    lang_onehot,
    model_device,
    model_inputs,
)
from .hooks import ActFnHooks, find_act_fns

UnitList = Union[torch.Tensor, Sequence[int]]
# Units per layer: a list over all L layers (empty entries allowed), or {layer: units} for some layers.
Units = Union[Sequence[UnitList], Mapping[int, UnitList]]


def _as_index(units: UnitList) -> torch.Tensor:
    return torch.as_tensor(units, dtype=torch.long).reshape(-1)


def normalize_units(units: Units, num_layers: int) -> dict[int, torch.Tensor]:
    """{layer: sorted unique int64 units} for the layers with at least one unit; validates layers and signs."""
    if isinstance(units, Mapping):
        items = [(int(layer), _as_index(u)) for layer, u in units.items()]
    else:
        if len(units) != num_layers:
            raise HarnessError(
                f"units list has {len(units)} entries but the model has {num_layers} layers: give one per layer"
            )
        items = [(layer, _as_index(u)) for layer, u in enumerate(units)]
    out: dict[int, torch.Tensor] = {}
    for layer, idx in items:
        if not 0 <= layer < num_layers:
            raise HarnessError(f"layer {layer} does not exist: the model has {num_layers} layers")
        if idx.numel() == 0:
            continue
        if int(idx.min()) < 0:
            raise HarnessError(f"negative unit index in layer {layer}")
        out[layer] = torch.unique(torch.cat([out[layer], idx]) if layer in out else idx)
    return out


def union_units(*unit_lists: Sequence[UnitList]) -> list[torch.Tensor]:
    """Per-layer union of several per-layer unit lists of the same length (e.g. several languages' neurons)."""
    if not unit_lists:
        return []
    num_layers = len(unit_lists[0])
    if any(len(u) != num_layers for u in unit_lists):
        raise HarnessError("cannot unite unit lists with different numbers of layers")
    return [torch.unique(torch.cat([_as_index(u[layer]) for u in unit_lists])) for layer in range(num_layers)]


@contextmanager
def deactivate(model: nn.Module, units: Units) -> Iterator[ActFnHooks]:
    """Inside the block, the given units output 0 after act_fn (before the product with up_proj) in every forward.

    ``units``: a list over layers of unit indices (e.g. ``Identification.units("sw")``), or ``{layer: units}``. The
    hooks are removed on exit, also on error. Other hooks registered later (e.g. counting) see the zeroed output.
    """
    per_layer = normalize_units(units, len(find_act_fns(model)))
    limits = {layer: int(idx.max()) for layer, idx in per_layer.items()}
    on_device: dict[tuple[int, torch.device], torch.Tensor] = {}

    def zero(layer: int, output: torch.Tensor) -> torch.Tensor:
        if limits[layer] >= output.shape[-1]:
            raise HarnessError(
                f"unit {limits[layer]} of layer {layer} does not exist: the layer has {output.shape[-1]} units"
            )
        key = (layer, output.device)
        if key not in on_device:
            on_device[key] = per_layer[layer].to(output.device)
        return output.index_fill(-1, on_device[key], 0)

    with ActFnHooks(model, zero, layers=per_layer) as hooks:
        yield hooks


def perplexity(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    langs: Sequence[str],
    *,
    count: str = "response",
    device: torch.device | str | None = None,
    progress: bool = False,
    reduce: bool | None = None,
    only_scored: bool = True,
) -> dict[str, float]:
    """Perplexity per language: exp(mean next-token NLL over the counted tokens of that language's rows).

    Batches as for :func:`collect_stats`; a counted token at position t is scored by the logits at t - 1 (the first
    token of a row has no prediction). Languages without a scored token are left out of the result. Under
    torch.distributed the sums are reduced across ranks (one collective) unless ``reduce=False``.

    With ``only_scored`` (and a model whose forward takes ``logits_to_keep``) the LM head runs only at the positions
    that predict a counted token in some row of the batch: the same figure, without most of the head's cost (on
    Gemma 3 the 640 x 262k head costs more than the 18 layers, and a prompt is most of a row).
    """
    langs = check_langs(langs)
    device = torch.device(device) if device is not None else model_device(model)
    nll = torch.zeros(len(langs), dtype=torch.float64, device=device)
    tokens = torch.zeros(len(langs), dtype=torch.int64, device=device)
    position_ids = accepts_position_ids(model)
    kwargs = forward_kwargs(model, logits=True)
    keep_some = only_scored and accepts_logits_to_keep(model)
    seen = 0
    with evaluating(model):
        for batch in tqdm(batches, desc="perplexity", disable=not progress or not is_rank_zero(), leave=False):
            inputs = model_inputs(batch, device, position_ids)
            scored = count_mask(batch, count, device)[:, 1:]  # [B, T-1]: token t+1 is scored by the logits at t
            targets = inputs["input_ids"][:, 1:]
            onehot = lang_onehot(batch, len(langs), device).to(torch.float64)
            if keep_some:
                positions = torch.nonzero(scored.any(0)).flatten()  # sorted; all < T - 1
                if positions.numel() == 0:
                    positions = positions.new_zeros(1)  # nothing scored in the batch: one position, masked out
                logits = model(**inputs, **kwargs, logits_to_keep=positions).logits.float()
                scored, targets = scored[:, positions], targets[:, positions]
            else:
                logits = model(**inputs, **kwargs).logits[:, :-1].float()
            token_nll = nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            row_nll = (token_nll.double() * scored).sum(1)
            nll += row_nll @ onehot
            tokens += (scored.sum(1)[:, None] * onehot.long()).sum(0)
            seen += 1
    if not seen:
        raise DataError("empty probe set: perplexity needs at least one batch")
    if world_size() > 1 and reduce is not False:
        nll, tokens = all_reduce_sum([nll, tokens.double()])
    return {lang: math.exp(n / t) for lang, n, t in zip(langs, nll.tolist(), tokens.tolist()) if t > 0}
