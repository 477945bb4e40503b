"""Deactivation zeroes units after act_fn (same as removing their down_proj columns); perplexity per language."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from neuron_helpers import LANGS, random_batches, tiny_model
from langneurons.errors import HarnessError
from langneurons.neurons import collect_stats, deactivate, find_act_fns, perplexity, union_units



def logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_a_zeroed_unit_contributes_nothing():
    model = tiny_model("llama")
    batch = random_batches(len(LANGS), n_batches=1)[0]
    down = model.model.layers[1].mlp.down_proj.weight
    with deactivate(model, {1: [5]}):
        before = logits(model, batch)
        with torch.no_grad():
            down[:, 5] += torch.randn_like(down[:, 5])  # unit 5's way out of the MLP
        after = logits(model, batch)
    assert torch.equal(before, after)
    # Without deactivation the same edit does change the output: the unit was live.
    changed = logits(model, batch)
    with torch.no_grad():
        down[:, 5] += 1.0
    assert not torch.allclose(changed, logits(model, batch))


def test_deactivation_equals_removing_down_proj_columns():
    model = tiny_model("qwen2")
    batch = random_batches(len(LANGS), n_batches=1, seed=3)[0]
    units = [torch.tensor([0, 7, 9]), torch.tensor([], dtype=torch.long), torch.tensor([63, 1])]
    edited = copy.deepcopy(model)
    with torch.no_grad():
        for layer, idx in enumerate(units):
            edited.model.layers[layer].mlp.down_proj.weight[:, idx] = 0
    with deactivate(model, units):
        hooked = logits(model, batch)
    assert torch.allclose(hooked, logits(edited, batch), atol=1e-6)
    assert not torch.allclose(hooked, logits(model, batch), atol=1e-4)  # and it did something


def test_counting_under_deactivation_sees_silent_units():
    model = tiny_model("llama")
    batches = random_batches(len(LANGS), seed=2)
    plain = collect_stats(model, batches, LANGS, progress=False)
    with deactivate(model, {0: [3, 4]}):
        zeroed = collect_stats(model, batches, LANGS, progress=False)
    assert plain.counts[0, 3:5].sum() > 0 and zeroed.counts[0, 3:5].sum() == 0
    assert torch.equal(zeroed.counts[0, :3], plain.counts[0, :3])  # earlier units of layer 0 are untouched


def test_hooks_removed_on_exit_and_on_error():
    model = tiny_model("llama")
    act_fns = find_act_fns(model)
    with pytest.raises(RuntimeError, match="boom"):
        with deactivate(model, {2: [1]}):
            assert act_fns[2]._forward_hooks
            raise RuntimeError("boom")
    assert not any(m._forward_hooks for m in act_fns) and not model._forward_hooks
    with deactivate(model, union_units([[1], [], []], [[2], [3], []])):
        pass
    assert not any(m._forward_hooks for m in act_fns)


def test_bad_units_are_refused():
    model = tiny_model("llama")
    batch = random_batches(len(LANGS), n_batches=1)[0]
    with pytest.raises(HarnessError, match="3 layers"):
        with deactivate(model, [[1], [2]]):
            pass
    with pytest.raises(HarnessError, match="layer 5 does not exist"):
        with deactivate(model, {5: [1]}):
            pass
    with pytest.raises(HarnessError, match="unit 64 of layer 0"):
        with deactivate(model, {0: [64]}):
            logits(model, batch)


def test_union_units():
    merged = union_units([[3, 1], []], [[1, 2], [5]])
    assert [t.tolist() for t in merged] == [[1, 2, 3], [5]]


def test_perplexity_matches_the_models_own_loss():
    model = tiny_model("mistral")
    # One language per batch, right padding: the model's loss over response labels is that language's mean NLL.
    batches = []
    for k, seed in enumerate((1, 2, 3)):
        batch = random_batches(len(LANGS), n_batches=1, seed=seed)[0]
        batch["lang_ids"] = torch.full_like(batch["lang_ids"], k)
        batches.append(batch)
    ppl = perplexity(model, batches, LANGS)
    for k, batch in enumerate(batches):
        labels = batch["input_ids"].masked_fill(~(batch["count_mask"] & batch["attention_mask"].bool()), -100)
        with torch.no_grad():
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
        assert ppl[LANGS[k]] == pytest.approx(math.exp(loss.item()), rel=1e-5)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_perplexity_computes_logits_only_where_a_token_is_scored_and_gets_the_same_figure(padding_side):
    model = tiny_model("llama")
    batches = random_batches(len(LANGS), seed=5, padding_side=padding_side)
    # one batch scores nothing: it must count nothing and not fail
    empty = {**batches[0], "count_mask": torch.zeros_like(batches[0]["count_mask"])}
    rows: list[int] = []
    handle = model.lm_head.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[1]))
    try:
        full = perplexity(model, batches, LANGS, only_scored=False)
        assert rows == [b["input_ids"].shape[1] for b in batches]
        rows.clear()
        cheap = perplexity(model, [*batches, empty], LANGS)
    finally:
        handle.remove()
    scored = [int(b["count_mask"][:, 1:].any(0).sum()) for b in batches]
    assert rows == [*scored, 1] and sum(scored) < sum(b["input_ids"].shape[1] for b in batches)
    assert cheap.keys() == full.keys() and len(full) >= 2
    assert cheap == pytest.approx(full, rel=1e-6)


def test_perplexity_changes_when_every_unit_is_off():
    model = tiny_model("llama")
    batches = random_batches(len(LANGS), seed=4)
    base = perplexity(model, batches, LANGS)
    with deactivate(model, [torch.arange(64)] * 3):
        off = perplexity(model, batches, LANGS)
    assert base.keys() == off.keys() and len(base) >= 2
    assert all(off[lang] != base[lang] for lang in base)
