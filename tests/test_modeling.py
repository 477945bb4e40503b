import time

import pytest
import torch

from langneurons.errors import ModelLoadError
from langneurons.experiment import load_model, tiny_tokenizer_corpus
from langneurons.modeling import build_tokenizer, load_pretrained

from conftest import run_train, settings

SAMPLES = {
    "en": "The answer is 42.", "zh": "答案是42。", "ru": "Ответ: 42.", "ja": "答えは42です。", "th": "คำตอบคือ 42",
    "bn": "উত্তর হল 42।", "te": "సమాధానం 42.", "ar": "الجواب هو 42", "emoji": "🙂 ok",
}


@pytest.fixture(scope="module")
def tiny():
    return load_model(settings().model, seed=0)


def test_tokenizer_round_trips_every_script_without_unknown_tokens(tiny):
    tok = tiny.tokenizer
    for text in SAMPLES.values():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    assert tok.pad_token_id is not None and tok.eos_token_id is not None


def test_tokenizer_is_deterministic_and_compresses_its_corpus():
    a = build_tokenizer(tiny_tokenizer_corpus("mathoctopus", n=50), 512)
    b = build_tokenizer(tiny_tokenizer_corpus("mathoctopus", n=50), 512)
    assert a.get_vocab() == b.get_vocab()
    text = next(iter(tiny_tokenizer_corpus("mathoctopus", n=1)))
    assert len(a(text)["input_ids"]) < len(text.encode()) / 2


def test_tiny_model_is_llama_with_a_swiglu_mlp(tiny):
    model = tiny.model
    assert model.config.model_type == "llama"
    mlp = model.model.layers[0].mlp
    assert {"gate_proj", "up_proj", "down_proj", "act_fn"} <= {n for n, _ in mlp.named_children()}
    out = model(torch.tensor([[1, 2, 3]]))
    assert out.logits.shape == (1, 3, len(tiny.tokenizer))


def test_a_model_saved_with_save_pretrained_loads_from_its_folder(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = load_pretrained(str(tmp_path))
    assert loaded.model_id == str(tmp_path)
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(loaded.model(ids).logits, tiny.model(ids).logits)


@pytest.mark.parametrize("name, phrase", [
    ("meta-llama/Llama-3.1-8B-Instruct", "HF_HUB_OFFLINE is set"),
    ("/no/such/folder", "no such local folder"),
])
def test_unreachable_model_is_a_one_line_error_that_says_how_to_fix_it(name, phrase):
    with pytest.raises(ModelLoadError) as err:
        load_pretrained(name)
    message = str(err.value)
    assert "\n" not in message and phrase in message and "model.name_or_path=" in message


def test_unreachable_preset_stops_the_cli_quickly_without_a_traceback(tmp_path):
    start = time.monotonic()
    out = run_train(f"hydra.run.dir={tmp_path}", "model=llama", "logger=none")
    elapsed = time.monotonic() - start
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "meta-llama/Llama-3.1-8B-Instruct" in errors[0]
    assert "model.name_or_path=/local/dir" in errors[0] and "HF_HOME" in errors[0]
    assert elapsed < 30
