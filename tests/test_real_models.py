"""Real pretrained models through every real-model code path, offline: Gemma 3 270M (a multilingual base model,
GeGLU MLP, 262k vocabulary) and SmolLM2-135M-Instruct (Llama architecture, SiLU MLP, a chat template), loaded from
their offline copies on the package registry (slow; skipped with the install command when a copy is missing)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from langneurons.data import load_problems
from langneurons.evaluation import AnswerStops, generate
from langneurons.experiment import load_model
from langneurons.neurons import collect_stats, deactivate, make_batches, perplexity
from langneurons.neurons.hooks import ActFnHooks, find_act_fns
from langneurons.offline import OfflineCopy
from langneurons.prompts import prompt_format

from conftest import ROOT, composed, inspect_summary, offline_runs, problem_settings, run_train

pytestmark = pytest.mark.slow

# What each model is: decoder layers x MLP units, its activation module, and whether its tokenizer adds BOS itself.
MODELS = {
    "gemma3_270m": {"layers": 18, "units": 2048, "act": "GELUTanh", "format": "fewshot", "adds_bos": True},
    "smollm2_135m": {"layers": 30, "units": 1536, "act": "SiLUActivation", "format": "chat", "adds_bos": False},
}
LANGS = ["en", "sw", "zh"]


def require_copy(preset: str) -> dict:
    cfg = composed(f"model={preset}")
    copy = OfflineCopy.from_settings(cfg["model"]["offline"])
    if not copy.is_installed():
        pytest.skip(f"the offline copy of {preset} is not installed: {copy.install}")
    return cfg


@pytest.fixture(scope="module", params=list(MODELS))
def real(request):
    preset = request.param
    cfg = require_copy(preset)
    loaded = load_model(cfg["model"], seed=0)
    fmt = prompt_format(cfg["model"]["prompt_template"], loaded.tokenizer)
    problems = load_problems(problem_settings(n=4, offset=100000, seed=0), LANGS, fmt)
    return preset, cfg, loaded, fmt, problems


def test_the_offline_copy_loads_as_the_architecture_it_is(real):
    preset, cfg, loaded, fmt, _ = real
    expected = MODELS[preset]
    act_fns = find_act_fns(loaded.model)
    assert len(act_fns) == expected["layers"] and type(act_fns[0]).__name__ == expected["act"]
    assert loaded.model.config.intermediate_size == expected["units"]
    assert loaded.model_id.startswith(cfg["model"]["name_or_path"] + "@gguf-")
    assert loaded.tokenizer.pad_token_id is not None
    assert fmt.name == expected["format"]


def test_prompts_are_the_models_own_format_with_one_bos(real):
    preset, _, loaded, fmt, problems = real
    tok = loaded.tokenizer
    prompt = problems["sw"][0]["prompt"]
    if fmt.chat:
        assert "<|im_start|>user" in prompt and prompt.endswith("<|im_start|>assistant\n")
    else:
        assert prompt.endswith("\nAnswer:") and prompt.count("Jibu ni") == 3
    ids = tok(prompt)["input_ids"]
    if MODELS[preset]["adds_bos"]:  # Gemma: the tokenizer adds <bos>, once
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    else:  # SmolLM2's "BOS" is <|im_start|>, which opens every chat turn: the template writes it, nothing adds it
        assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id


def test_greedy_answers_end_at_the_formats_stops_and_generation_stops_early(real):
    _, _, loaded, fmt, problems = real
    model, tok = loaded.model, loaded.tokenizer
    stops = AnswerStops(model, tok, fmt.stop)
    prompts = [p for lang in LANGS for p in problems[lang]["prompt"]]
    max_new = 96
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, max_new_tokens=max_new, pad_token_id=tok.pad_token_id,
                             **stops.generate_kwargs())
    new = out[:, enc["input_ids"].shape[1]:]
    # some rows ended before max_new_tokens (stop string or end-of-turn token): generate stopped them, so their
    # wasted tokens were never generated
    ended = [i for i, row in enumerate(new.tolist()) if len([t for t in row if t != tok.pad_token_id]) < max_new]
    assert ended, "no answer ended before max_new_tokens"
    answers = generate(model, tok, prompts, max_new_tokens=max_new, batch_size=8, stops=stops)
    for answer in answers:
        assert not any(stop in answer for stop in fmt.stop)
    if not fmt.chat:  # the base model's answers are one worked line in the asked language
        assert all("\n" not in a for a in answers)


def test_counting_and_deactivation_on_the_real_mlp(real):
    preset, _, loaded, fmt, problems = real
    model, tok = loaded.model, loaded.tokenizer
    examples = [(row["prompt"], fmt.sep + row["response"], lang) for lang in LANGS for row in problems[lang]]
    batches = make_batches(tok, examples, LANGS, batch_size=4)
    head_calls = []
    handle = model.get_output_embeddings().register_forward_hook(lambda *args: head_calls.append(1))
    stats = collect_stats(model, batches, LANGS, progress=False)
    handle.remove()
    assert head_calls == []  # counting never computes the 262k-token LM head
    expected = MODELS[preset]
    assert tuple(stats.counts.shape) == (expected["layers"], expected["units"], len(LANGS))
    response_tokens = [len(tok(fmt.sep + row["response"], add_special_tokens=False)["input_ids"])
                       for lang in LANGS for row in problems[lang]]
    assert int(stats.tokens.sum()) == sum(response_tokens)  # response tokens only: no prompt, BOS or padding
    assert 0 < float(stats.probs().mean()) < 1

    units = {0: list(range(16)), expected["layers"] - 1: list(range(16))}
    seen = {}

    def record(layer, output):
        seen[layer] = output[..., :16].abs().max().item()

    base = perplexity(model, batches, LANGS)
    # the LM head only at the scored positions gives the figure of the head everywhere
    assert perplexity(model, batches, LANGS, only_scored=False) == pytest.approx(base, rel=1e-5)
    with deactivate(model, units), ActFnHooks(model, record, layers=list(units)):
        zeroed = perplexity(model, batches, LANGS)
    assert seen == {layer: 0.0 for layer in units}  # zeroed after act_fn, before the product with up_proj
    assert set(base) == set(LANGS) and all(torch.isfinite(torch.tensor(v)) for v in zeroed.values())
    assert zeroed != base


@pytest.mark.parametrize("method", ["dpo", "sft", "mapo", "mapo-correctness", "qalign"])
@pytest.mark.parametrize("preset", list(MODELS))
def test_every_alignment_method_trains_a_lora_adapter_on_the_architectures_modules(tmp_path, preset, method):
    require_copy(preset)
    # the gold answer joins the samples: two questions with two samples each may hold no correct answer to pair
    sampling = ["alignment.k=2", "alignment.max_new_tokens=24", "alignment.cache_dir=null",
                "alignment.include_gold=true"]
    extra = {"mapo": ["alignment=mapo", "scorer=numbers", *sampling],
             "mapo-correctness": ["alignment=mapo", "scorer=correctness", *sampling]}.get(
        method, [f"alignment={method}"])
    out = run_train(f"hydra.run.dir={tmp_path}", f"model={preset}", *extra, "lang=sw", "logger=none", "neurons=off",
                    "trainer.max_steps=1", "trainer.per_device_train_batch_size=1", "trainer.save_steps=0",
                    "alignment.questions.n=2", "data.n=2", timeout=900, threads=2)
    assert out.returncode == 0, out.stderr[-3000:]
    adapter = tmp_path / "adapter"
    targets = set(json.loads((adapter / "adapter_config.json").read_text())["target_modules"])
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    trained = {name.split(".lora_B")[0].rsplit(".", 1)[-1] for name, w in weights.items()
               if ".lora_B" in name and bool(w.abs().sum() > 0)}
    # every targeted projection of this architecture got an adapter, and training moved it off its zero init
    adapted = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in weights}
    assert adapted == targets and trained == targets


@pytest.mark.parametrize("preset", list(MODELS))
def test_the_issues_acceptance_command_records_neuron_checkpoints_for_all_ten_languages(tmp_path, preset):
    """python train.py model=<preset> lang=sw trainer.max_steps=2 data.n=4, with its W&B run read back offline."""
    require_copy(preset)
    out = run_train(f"hydra.run.dir={tmp_path}", f"model={preset}", "lang=sw", "trainer.max_steps=2", "data.n=4",
                    timeout=1800, threads=2)  # tests run one at a time: the run has both cores
    assert out.returncode == 0, out.stderr[-3000:]
    steps = sorted(p.name for p in (tmp_path / "neurons").iterdir() if (p / "checkpoint.json").is_file())
    assert steps == ["step-0", "step-2"]
    summary = inspect_summary(offline_runs(tmp_path / "wandb")[0])
    assert summary["state"] == "finished"
    metrics = summary["summary"]
    langs = ["en", "zh", "ru", "de", "fr", "es", "ja", "sw", "th", "bn"]
    for lang in langs:
        assert f"eval/acc/{lang}" in metrics and f"neurons/specific/{lang}" in metrics
        assert f"neurons/related/{lang}" in metrics
    assert metrics["train/global_step"] == 2
    record = json.loads(Path(tmp_path / "neurons" / "step-2" / "checkpoint.json").read_text())
    assert set(record["accuracy"]) == {*langs, "avg"}


def analyze(*args: str) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "analyze.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=1800, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("preset", list(MODELS))
def test_probe_measures_the_real_model_on_mgsm_and_stages_and_deactivate_read_it(tmp_path, preset, shared_data):
    """python analyze.py probe model=<preset> data=mgsm data.path=... out=<dir>, a handful of problems, then the
    folder read back as a run."""
    require_copy(preset)
    out = tmp_path / "probe"
    probed = analyze("probe", f"model={preset}", "data=mgsm", f"data.path={shared_data / 'mgsm'}", "data.n=3",
                     f"probe_langs=[{','.join(LANGS)}]", f"out={out}")
    assert set(probed["accuracy"]) == {*LANGS, "avg"} and probed["step"] == 0
    assert all(probed["probe_tokens"][lang] > 0 for lang in LANGS)  # the answers were counted
    assert set(probed["phases"]) >= {"load", "answer", "count", "identify", "save"}
    record = json.loads((out / "neurons" / "step-0" / "checkpoint.json").read_text())
    assert len(record["samples"]) == 3 * len(LANGS) and record["identification"]["layers"] == MODELS[preset]["layers"]
    stages = analyze("stages", f"runs=[{out}]", f"out={tmp_path / 'stages'}")
    assert list(stages["stages"]) == [f"{preset} base"]
    (table,) = (tmp_path / "stages" / "tables").glob("layers_*.csv")
    layers = list(csv.DictReader(table.open()))
    assert {int(r["layer"]) for r in layers} == set(range(MODELS[preset]["layers"]))
    deact = analyze("deactivate", f"source={out}", "n=2", "modes=[specific+related,all]", "langs=[sw]",
                    f"out={tmp_path / 'deact'}")
    assert set(deact["baseline"]) == set(LANGS) and all(v > 1 for v in deact["baseline"].values())
    assert (tmp_path / "deact" / "tables" / "deactivation.csv").is_file()
