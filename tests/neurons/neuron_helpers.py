"""Helpers of the neuron tests: tiny random decoders of three families, a tokenizer that needs no download, a
synthetic reference folder, the shared data folder (tests that need it skip when it is absent).

A plain module rather than a conftest.py: tests/conftest.py is imported by name ("from conftest import ...") by the
other test files, and a second conftest.py here would shadow it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[2]
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
}
VOCAB = 100
LANGS = ("en", "zh", "sw")  # the probe languages of the counting tests: any three codes of langneurons.languages


def shared_data() -> Path:
    """The read-only shared data folder: $LANGNEURONS_SHARED_DATA, else <repo>/../shared/data."""
    env = os.environ.get("LANGNEURONS_SHARED_DATA")
    return Path(env) if env else REPO / ".." / "shared" / "data"


def reference_dir() -> Path:
    path = shared_data() / "reference-mistral-mgsm"
    if not path.is_dir():
        pytest.skip(f"reference data not found at {path} (set LANGNEURONS_SHARED_DATA)")
    return path


def tiny_model(family: str = "llama", layers: int = 3, seed: int = 0, **overrides) -> torch.nn.Module:
    """A random decoder: hidden 32, intermediate 64, vocab 100, fp32, eval mode."""
    config_cls, model_cls = FAMILIES[family]
    config = config_cls(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=128,
        **overrides,
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    # Random init leaves gate_proj outputs tiny; scale them so activations are far from 0 and signs meaningful.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("gate_proj.weight"):
                param.mul_(5.0)
    return model


def random_batches(
    langs: int,
    *,
    n_batches: int = 3,
    batch: int = 4,
    seq: int = 12,
    padding_side: str = "right",
    seed: int = 0,
) -> list[dict[str, torch.Tensor]]:
    """Batches with rows of random length (padding present), random prompt/response split, mixed languages."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(1, VOCAB, (batch, seq), generator=gen)
        attention = torch.zeros(batch, seq, dtype=torch.long)
        counted = torch.zeros(batch, seq, dtype=torch.bool)
        for r in range(batch):
            length = int(torch.randint(3, seq + 1, (1,), generator=gen))
            prompt = int(torch.randint(1, length, (1,), generator=gen))
            span = range(seq - length, seq) if padding_side == "left" else range(0, length)
            for j, pos in enumerate(span):
                attention[r, pos] = 1
                counted[r, pos] = j >= prompt
            # Padding carries a real-looking id: it must not count because of the mask, not because of its id.
            ids[r, attention[r] == 0] = 0
        counted[:, :] &= attention.bool()
        lang_ids = torch.randint(0, langs, (batch,), generator=gen)
        out.append({"input_ids": ids, "attention_mask": attention, "count_mask": counted, "lang_ids": lang_ids})
    return out


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with a BOS post-processor and NO pad token (tests the eos fallback)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = "the a cat dog sat on mat answer is one two three four five six seven eight nine ten".split()
    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2}
    for w in words:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="[UNK]")


def write_reference_folder(folder, langs, layers=2, units=8, prefix=True, tag="Tiny-abc", seed=0):
    """A reference activation folder with random counts; returns {lang: (expected counts, expected tokens)}."""
    gen = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for lang in langs:
        full = torch.randint(0, 500, (layers, units), generator=gen)
        n_full = 1000
        torch.save({"total_tokens": n_full, "over_zero": full}, folder / f"activation.{lang}.{tag}.pt")
        if prefix:
            pre = torch.randint(0, 300, (layers, units), generator=gen)
            torch.save({"total_tokens": 400, "over_zero": pre}, folder / f"prefix.activation.{lang}.{tag}.pt")
            expected[lang] = ((full - pre).clamp(min=0), n_full - 400)
        else:
            expected[lang] = (full, n_full)
    return expected
