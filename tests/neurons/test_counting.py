"""Counting: hooked counts equal a direct computation, on every supported wrapping; the model is left as found."""

from __future__ import annotations

import peft
import pytest
import torch
from torch import nn

from neuron_helpers import LANGS, random_batches, tiny_model, tiny_tokenizer
from langneurons.errors import DataError, HarnessError, UnknownLanguageError
from langneurons.neurons import (
    HookError,
    collect_stats,
    collect_stats_two_pass,
    find_act_fns,
    make_batches,
    make_two_pass_batches,
)



def mlps(model: nn.Module) -> list[nn.Module]:
    return [m for name, m in model.named_modules() if name.endswith("mlp") and hasattr(m, "gate_proj")]


def direct_counts(model: nn.Module, batches, num_langs: int, count: str = "response"):
    """Slow, obvious counts: capture each MLP's input, apply gate_proj and act_fn by hand, loop over tokens."""
    layers = mlps(model)
    captured: dict[int, torch.Tensor] = {}
    handles = [
        mlp.register_forward_pre_hook(lambda mod, args, i=i: captured.__setitem__(i, args[0].detach()))
        for i, mlp in enumerate(layers)
    ]
    units = layers[0].gate_proj.out_features
    device = next(model.parameters()).device
    counts = torch.zeros(len(layers), units, num_langs, dtype=torch.int64)
    tokens = torch.zeros(num_langs, dtype=torch.int64)
    try:
        with torch.no_grad():
            for batch in batches:
                attention = batch["attention_mask"]
                position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
                model(input_ids=batch["input_ids"].to(device), attention_mask=attention.to(device),
                      position_ids=position_ids.to(device))
                counted = attention.bool() if count == "all" else batch["count_mask"] & attention.bool()
                for i, mlp in enumerate(layers):
                    active = (mlp.act_fn(mlp.gate_proj(captured[i])) > 0).cpu()  # [B, T, H]
                    for b in range(active.shape[0]):
                        k = int(batch["lang_ids"][b])
                        for t in range(active.shape[1]):
                            if counted[b, t]:
                                counts[i, :, k] += active[b, t].long()
                for b in range(attention.shape[0]):
                    tokens[int(batch["lang_ids"][b])] += int(counted[b].sum())
    finally:
        for h in handles:
            h.remove()
    return counts, tokens


def to_left_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same rows, right-padded -> left-padded."""
    out = {k: v.clone() for k, v in batch.items()}
    for r in range(batch["input_ids"].shape[0]):
        shift = int((batch["attention_mask"][r] == 0).sum())
        for key in ("input_ids", "attention_mask", "count_mask"):
            out[key][r] = torch.roll(batch[key][r], shift)
    return out


def no_hooks_left(model: nn.Module) -> bool:
    modules = [model, *find_act_fns(model)]
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in modules)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_counts_equal_direct_computation(family, padding_side):
    model = tiny_model(family)
    batches = random_batches(len(LANGS), padding_side=padding_side, seed=1)
    stats = collect_stats(model, batches, LANGS, progress=False)
    counts, tokens = direct_counts(model, batches, len(LANGS))
    assert stats.counts.dtype == torch.int64 and stats.counts.shape == (3, 64, 3)
    assert torch.equal(stats.tokens, tokens)
    assert torch.equal(stats.counts, counts)
    # The test is not vacuous: units fire on some tokens and not on others, in every language.
    assert 0 < int(stats.counts.sum()) < int(tokens.sum()) * 3 * 64
    assert (stats.tokens > 0).all()


def test_count_all_counts_every_non_pad_token():
    model = tiny_model("llama")
    batches = random_batches(len(LANGS), seed=2)
    stats = collect_stats(model, batches, LANGS, count="all", progress=False)
    counts, tokens = direct_counts(model, batches, len(LANGS), count="all")
    assert torch.equal(stats.counts, counts) and torch.equal(stats.tokens, tokens)
    response = collect_stats(model, batches, LANGS, progress=False)
    assert (response.tokens < stats.tokens).all() and (response.counts <= stats.counts).all()


def test_padding_side_does_not_change_counts():
    model = tiny_model("mistral")
    right = random_batches(len(LANGS), seed=3)
    left = [to_left_padding(b) for b in right]
    a = collect_stats(model, right, LANGS, progress=False)
    b = collect_stats(model, left, LANGS, progress=False)
    assert torch.equal(a.tokens, b.tokens)
    # Same tokens at the same (unpadded) positions: only float noise at exactly 0 could differ.
    assert (a.counts - b.counts).abs().sum() <= 2


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_peft_lora_model_counts_with_adapters():
    base = tiny_model("llama")
    batches = random_batches(len(LANGS), seed=4)
    before = collect_stats(base, batches, LANGS, progress=False)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["gate_proj", "up_proj", "down_proj"],
                             init_lora_weights=False, task_type="CAUSAL_LM")
    model = peft.get_peft_model(base, config)
    with torch.no_grad():  # make the adapters matter
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 2.0)
    stats = collect_stats(model, batches, LANGS, progress=False)
    counts, tokens = direct_counts(model, batches, len(LANGS))
    assert torch.equal(stats.counts, counts) and torch.equal(stats.tokens, tokens)
    assert not torch.equal(stats.counts, before.counts)  # the LoRA on gate_proj was part of the forward
    assert no_hooks_left(model)


class Wrapper(nn.Module):
    """Stands for DDP/DeepSpeed: the model lives under ``.module`` and forward passes through."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def test_wrapped_model_counts_like_the_bare_one():
    model = tiny_model("qwen2")
    batches = random_batches(len(LANGS), seed=5)
    bare = collect_stats(model, batches, LANGS, progress=False)
    wrapped = collect_stats(Wrapper(model), batches, LANGS, progress=False)
    assert torch.equal(bare.counts, wrapped.counts) and torch.equal(bare.tokens, wrapped.tokens)


def test_bf16_model_counts_exactly():
    model = tiny_model("llama").to(torch.bfloat16)
    batches = random_batches(len(LANGS), seed=6, batch=8, seq=16)
    stats = collect_stats(model, batches, LANGS, progress=False)
    counts, tokens = direct_counts(model, batches, len(LANGS))
    assert torch.equal(stats.counts, counts) and torch.equal(stats.tokens, tokens)


def test_fused_mlp_that_skips_act_fn_raises_and_unhooks():
    model = tiny_model("llama")
    mlp = model.model.layers[1].mlp
    # A "fused" MLP computes the same function without calling its act_fn module.
    mlp.forward = lambda x: mlp.down_proj(nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
    with pytest.raises(HookError, match=r"layers\.\[1\]\.mlp\.act_fn"):
        collect_stats(model, random_batches(len(LANGS)), LANGS, progress=False)
    assert no_hooks_left(model)


def test_model_without_gated_mlp_raises():
    with pytest.raises(HookError, match="layers.<i>.mlp.act_fn"):
        collect_stats(nn.Sequential(nn.Linear(4, 4)), random_batches(len(LANGS)), LANGS, progress=False)


def test_shared_act_fn_module_is_refused():
    model = tiny_model("llama")
    shared = model.model.layers[0].mlp.act_fn
    for layer in model.model.layers:
        layer.mlp.act_fn = shared
    with pytest.raises(HookError, match="shared"):
        find_act_fns(model)


def test_hooks_removed_and_mode_restored_after_error():
    model = tiny_model("llama").train()
    model.model.layers[0].eval()  # a mixed state must come back as it was
    modes = [m.training for m in model.modules()]
    batches = random_batches(len(LANGS), n_batches=3)
    batches[2]["lang_ids"] = torch.tensor([0, 1, 7, 0])  # out of range: fails on the third batch
    seen_training = []
    decoder = model.get_decoder()  # what counting calls (no LM head)
    decoder.register_forward_pre_hook(lambda mod, args: seen_training.append(mod.training))
    with pytest.raises(DataError, match="out of range"):
        collect_stats(model, batches, LANGS, progress=False)
    assert seen_training == [False, False]  # counted in eval mode
    assert [m.training for m in model.modules()] == modes
    decoder._forward_pre_hooks.clear()
    assert no_hooks_left(model)


def test_hooks_removed_and_mode_restored_after_success():
    model = tiny_model("llama").train()
    collect_stats(model, random_batches(len(LANGS)), LANGS, progress=False)
    assert model.training and all(m.training for m in model.modules())
    assert no_hooks_left(model)


def test_bad_inputs_give_one_line_errors():
    model = tiny_model("llama")
    batches = random_batches(len(LANGS))
    with pytest.raises(DataError, match="empty probe set"):
        collect_stats(model, [], LANGS, progress=False)
    with pytest.raises(DataError, match="count mode"):
        collect_stats(model, batches, LANGS, count="prompt", progress=False)
    with pytest.raises(UnknownLanguageError, match="xx"):
        collect_stats(model, batches, ("en", "xx", "sw"), progress=False)
    no_mask = [{k: v for k, v in b.items() if k != "count_mask"} for b in batches]
    with pytest.raises(DataError, match="count_mask"):
        collect_stats(model, no_mask, LANGS, progress=False)
    for bad_langs, bad_batches in ((LANGS, []), (("en", "xx"), batches)):
        with pytest.raises(HarnessError) as info:
            collect_stats(model, bad_batches, bad_langs, progress=False)
        assert "\n" not in str(info.value)


def test_metadata_records_provenance():
    stats = collect_stats(
        tiny_model("llama"), random_batches(len(LANGS)), LANGS, progress=False, metadata={"step": 7, "probe": "unit"}
    )
    assert stats.metadata["step"] == 7 and stats.metadata["probe"] == "unit"
    assert stats.metadata["layers"] == 3 and stats.metadata["units"] == 64 and stats.metadata["count"] == "response"


EXAMPLES = [
    ("the cat sat", " on the mat", "en"),
    ("a dog", " is one two", "sw"),
    ("the answer is", " four", "zh"),
    ("one two", " five six seven eight", "en"),
    ("nine", " ten", "sw"),
]


def test_make_batches_masks_prompt_and_pads_with_eos():
    tokenizer = tiny_tokenizer()
    assert tokenizer.pad_token_id is None
    batches = make_batches(tokenizer, EXAMPLES, LANGS, batch_size=2, padding_side="left")
    assert [b["input_ids"].shape[0] for b in batches] == [2, 2, 1]
    first = batches[0]
    # Row 0 is the longer: "<s> the cat sat" + "on the mat" = 4 prompt + 3 response tokens.
    assert first["input_ids"][0].tolist() == tokenizer("the cat sat on the mat")["input_ids"]
    assert first["count_mask"][0].tolist() == [False] * 4 + [True] * 3
    # Row 1 (3 + 3 tokens) is left-padded with eos and its padding is neither attended nor counted.
    eos = tokenizer.eos_token_id
    assert first["input_ids"][1].tolist()[:1] == [eos] and first["attention_mask"][1].tolist() == [0] + [1] * 6
    assert first["count_mask"][1].tolist() == [False] * 4 + [True] * 3
    assert first["lang_ids"].tolist() == [0, 2]
    right = make_batches(tokenizer, EXAMPLES, LANGS, batch_size=2, count="all", max_length=5)
    assert right[0]["count_mask"][0].tolist() == [True] * 5 and right[0]["attention_mask"][1].tolist() == [1] * 5
    with pytest.raises(DataError, match="'de'"):
        make_batches(tokenizer, [("a", " b", "de")], LANGS)
    with pytest.raises(DataError, match="empty probe set"):
        make_batches(tokenizer, [], LANGS)


def test_two_pass_compatibility_mode_equals_single_pass():
    tokenizer = tiny_tokenizer()
    # With a tokenizer that splits prompt + response at the same boundary, the reference's subtraction must give
    # exactly the single-pass response counts (causal attention: prompt tokens do not see the response).
    model = tiny_model("llama")
    single = collect_stats(model, make_batches(tokenizer, EXAMPLES, LANGS, batch_size=2), LANGS, progress=False)
    full, prompts = make_two_pass_batches(tokenizer, EXAMPLES, LANGS, batch_size=2)
    two_pass = collect_stats_two_pass(model, full, prompts, LANGS, progress=False)
    assert torch.equal(two_pass.tokens, single.tokens)
    assert torch.equal(two_pass.counts, single.counts)
    assert two_pass.metadata["count"] == "subtract"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_no_host_sync_in_the_counting_loop():
    model = tiny_model("llama").cuda()
    batches = random_batches(len(LANGS), n_batches=4)
    from langneurons.neurons import ActivationCounter

    with ActivationCounter(model, LANGS) as counter:
        counter.update(batches[0])  # the first batch allocates counters
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for batch in batches[1:]:
                counter.update(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    stats = counter.stats()
    counts, tokens = direct_counts(model, batches, len(LANGS))
    assert torch.equal(stats.counts, counts) and torch.equal(stats.tokens, tokens)


def test_float32_counters_are_flushed_before_they_could_lose_exactness(monkeypatch):
    # float32 counts integers exactly only up to 2^24; shrink that limit to see the flushes happen and stay exact.
    from langneurons.neurons import ActivationCounter, counting

    monkeypatch.setattr(counting, "EXACT_FLOAT32_ROWS", 100)
    model = tiny_model("llama")
    batches = random_batches(len(LANGS), n_batches=5, seed=8)  # 4 x 12 = 48 rows each
    flushes = []
    with ActivationCounter(model, LANGS) as counter:
        real_flush = counter._flush
        monkeypatch.setattr(counter, "_flush", lambda: (flushes.append(counter._partial_rows), real_flush())[1])
        for batch in batches:
            counter.update(batch)
            assert counter._partial_rows <= 100
    assert flushes == [96, 96]  # before batches 3 and 5: 96 + 48 rows would pass 100
    stats = counter.stats()
    counts, tokens = direct_counts(model, batches, len(LANGS))
    assert torch.equal(stats.counts, counts) and torch.equal(stats.tokens, tokens)


def test_counting_runs_the_decoder_alone_and_never_the_lm_head():
    """The LM head of a real model is its costliest layer (Gemma 3: 640 x 262k): counting needs none of it. Checked
    on the plain model and on a LoRA-wrapped one (the adapters must stay in the counted forward)."""
    from peft import LoraConfig, get_peft_model

    model = tiny_model("llama")
    wrapped = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["gate_proj"]))
    for m in (model, wrapped):
        calls = []
        head = m.get_output_embeddings()
        handle = head.register_forward_hook(lambda *args: calls.append(1))
        stats = collect_stats(m, random_batches(len(LANGS), n_batches=2), LANGS, progress=False)
        handle.remove()
        assert calls == [] and int(stats.tokens.sum()) > 0
