"""Count, per layer, MLP unit and language, the probe tokens on which ``act_fn(gate_proj(x)) > 0``.

One forward hook per layer's ``act_fn`` turns its output into a 0/1 matrix [B*T, H] and multiplies it by a
[K, B*T] weight matrix (one-hot language of the row x count mask of the token): that gives the per-language counts
[K, H] in one matmul, accumulated (``addmm_``) into float32 counters on the model's device. float32 holds integers
exactly up to 2^24, so before the rows fed in since the last flush could pass that, the float counters are moved into
int64 ones; the row tally is a Python int, so nothing in the loop reads a value back from the device. Under
torch.distributed the counters are summed across ranks once, at the end. (benchmarks/bench_neurons.py compares this
formulation with the alternatives.)
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..distributed import all_reduce_sum, is_rank_zero, world_size
from ..errors import DataError
from .probing import (
    COUNT_MODES,
    accepts_position_ids,
    check_langs,
    count_mask,
    decoder_stack,
    evaluating,
    forward_kwargs,
    lang_onehot,
    model_device,
    model_id,
    model_inputs,
)
from .hooks import ActFnHooks, HookError
from .stats import NeuronStats, now_iso

Batch = Mapping[str, torch.Tensor]

# float32 represents every integer up to 2^24 exactly: the most rows the float counters may take between flushes.
EXACT_FLOAT32_ROWS = 2**24


class ActivationCounter:
    """Context manager that hooks ``model`` and accumulates activation counts over the batches given to :meth:`update`.

    While open, the model is in eval mode (restored on exit) and its act_fn modules are hooked (hooks removed on exit,
    also on error). ``count``: "response" counts the tokens of each batch's ``count_mask``, "all" every non-pad token.
    """

    def __init__(self, model: nn.Module, langs: Sequence[str], *, count: str = "response",
                 device: torch.device | str | None = None):
        if count not in COUNT_MODES:
            raise DataError(f"unknown count mode {count!r}: choose one of {', '.join(COUNT_MODES)}")
        self.model = model
        self.langs = check_langs(langs)
        self.count = count
        self.device = torch.device(device) if device is not None else model_device(model)
        self.batches = 0
        # Counters in [L, K, H], the matmul's natural (and fastest) layout; allocated when the units are known.
        self._counts: torch.Tensor | None = None  # int64, flushed totals
        self._partial: torch.Tensor | None = None  # float32, counts since the last flush
        self._partial_rows = 0  # rows (tokens, counted or not) fed into _partial since the last flush
        self._tokens = torch.zeros(len(self.langs), dtype=torch.int64, device=self.device)
        self._weights: torch.Tensor | None = None  # [K, B*T] float32 of the batch being forwarded
        self._active: torch.Tensor | None = None  # [B*T, H] float32 scratch, reused by every layer of a batch
        self._shape: tuple[int, int] = (0, 0)
        # The forward runs the decoder stack alone where it can: counting needs no logits (decoder_stack).
        self._forward = decoder_stack(model)
        self._hooks = ActFnHooks(model, self._on_activation, checked=self._forward)
        self._position_ids = accepts_position_ids(self._forward)
        self._kwargs = forward_kwargs(self._forward, logits=False)

    def __enter__(self) -> "ActivationCounter":
        self._eval = evaluating(self.model)  # a fresh one each time: the counter may be opened again to add batches
        self._eval.__enter__()
        try:
            self._hooks.__enter__()
        except BaseException as exc:
            self._eval.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._hooks.remove()
        finally:
            self._eval.__exit__(*exc)

    def _on_activation(self, layer: int, output: torch.Tensor) -> None:
        if self._weights is None:
            return  # a forward that is not ours (the counter only counts what update() runs)
        if tuple(output.shape[:-1]) != self._shape:
            raise HookError(
                f"layer {layer} act_fn output has shape {tuple(output.shape)}, expected {self._shape} + [units]: "
                "the model reshapes tokens inside its MLP (unpadding?), which neuron counting does not support"
            )
        units = output.shape[-1]
        if self._partial is None:
            shape = (self._hooks.num_layers, len(self.langs), units)
            self._counts = torch.zeros(shape, dtype=torch.int64, device=output.device)
            self._partial = torch.zeros(shape, dtype=torch.float32, device=output.device)
        rows = self._weights.shape[1]
        if self._active is None or self._active.shape != (rows, units):
            self._active = torch.empty(rows, units, dtype=torch.float32, device=output.device)
        # 0/1 written straight into float32 (also for bf16/fp16 models: the sums must stay exact integers).
        torch.gt(output.reshape(rows, units), 0, out=self._active)
        self._partial[layer].addmm_(self._weights, self._active)

    def update(self, batch: Batch) -> None:
        """Run one forward on ``batch`` (input_ids, attention_mask, lang_ids, count_mask) and add its counts."""
        input_ids = batch["input_ids"]
        if input_ids.dim() != 2:
            raise DataError(f"input_ids must be [batch, seq], got {tuple(input_ids.shape)}")
        mask = count_mask(batch, self.count, self.device)
        onehot = lang_onehot(batch, len(self.langs), self.device)
        weights = onehot.T[:, :, None] & mask[None]  # [K, B, T]
        self._tokens += weights.sum((1, 2))
        self._weights = weights.reshape(len(self.langs), -1).to(torch.float32)
        self._shape = tuple(input_ids.shape)
        if input_ids.numel() > EXACT_FLOAT32_ROWS:
            raise DataError(f"a batch of {input_ids.numel()} tokens cannot be counted exactly in float32: split it")
        if self._partial_rows + input_ids.numel() > EXACT_FLOAT32_ROWS:
            self._flush()
        self._partial_rows += input_ids.numel()
        try:
            self._forward(**model_inputs(batch, self.device, self._position_ids), **self._kwargs)
        finally:
            self._weights = None
        self.batches += 1

    def _flush(self) -> None:
        """Move the float32 partial counts into the int64 totals (on the device, no host sync)."""
        if self._partial is not None and self._partial_rows:
            self._counts += self._partial.to(torch.int64)
            self._partial.zero_()
        self._partial_rows = 0

    def stats(self, *, reduce: bool | None = None, metadata: Mapping[str, Any] | None = None) -> NeuronStats:
        """The counts so far as :class:`NeuronStats` (on the CPU).

        ``reduce`` (default: whenever torch.distributed runs with several ranks) sums counts and tokens over all ranks
        in one collective; every rank must call it. Raises :class:`DataError` for an empty probe set.
        """
        if self._counts is None:
            raise DataError("empty probe set: no batch was counted; give at least one probe batch")
        self._flush()
        counts, tokens = self._counts, self._tokens
        world = world_size()
        if reduce is None:
            reduce = world > 1
        if reduce and world > 1:
            counts, tokens = all_reduce_sum([counts, tokens])
        meta = {
            "model": model_id(self.model),
            "layers": counts.shape[0],
            "units": counts.shape[2],
            "count": self.count,
            "batches": self.batches,
            "world_size": world if reduce else 1,
            "created": now_iso(),
            **dict(metadata or {}),
        }
        return NeuronStats(counts.permute(0, 2, 1).contiguous().cpu(), tokens.cpu(), self.langs, meta)


def collect_stats(
    model: nn.Module,
    batches: Iterable[Batch],
    langs: Sequence[str],
    *,
    count: str = "response",
    device: torch.device | str | None = None,
    progress: bool = True,
    reduce: bool | None = None,
    metadata: Mapping[str, Any] | None = None,
    desc: str = "counting neurons",
) -> NeuronStats:
    """Count neuron activations of ``model`` over ``batches``; return per-language :class:`NeuronStats`.

    A batch is a dict of input_ids [B, T], attention_mask [B, T], lang_ids [B] (indices into ``langs``) and, for
    ``count="response"``, count_mask [B, T] (the tokens to count; padding never counts). ``count="all"`` counts every
    non-pad token (LAPE on plain text). ``model`` may be a Hugging Face causal LM, PEFT-wrapped, or wrapped for
    distributed training; under torch.distributed each rank passes its share of the probe set and all ranks get the
    summed statistics (see :meth:`ActivationCounter.stats`); under FSDP / ZeRO-3 every forward is a collective, so
    every rank must pass the same number of batches. ``metadata`` (step, probe description...) is stored with the
    statistics.
    """
    total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    with ActivationCounter(model, langs, count=count, device=device) as counter:
        quiet = not progress or not is_rank_zero()
        for batch in tqdm(batches, total=total, desc=desc, disable=quiet, leave=False, unit="batch"):
            counter.update(batch)
    return counter.stats(reduce=reduce, metadata=metadata)


def collect_stats_two_pass(
    model: nn.Module,
    full_batches: Iterable[Batch],
    prompt_batches: Iterable[Batch],
    langs: Sequence[str],
    **kwargs: Any,
) -> NeuronStats:
    """The reference's compatibility mode: count every token of prompt+response, then of the prompt alone, subtract.

    p = clamp(full - prompt, min=0) / (tokens_full - tokens_prompt). Each pass is summed across ranks before the
    subtraction, as the reference subtracts totals. Keyword arguments go to :func:`collect_stats`.
    """
    kwargs.pop("count", None)
    full = collect_stats(model, full_batches, langs, count="all", **kwargs)
    prompt = collect_stats(model, prompt_batches, langs, count="all", **kwargs)
    return full.subtract_prefix(prompt)
