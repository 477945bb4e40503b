"""Every alignment option, as a user runs it: python train.py alignment=<option>, two steps, offline."""

from __future__ import annotations

import json

import pytest

from conftest import inspect_records, inspect_summary, offline_runs, run_train

SHORT = ["trainer.max_steps=2", "trainer.logging_steps=1", "trainer.save_steps=0", "alignment.questions.n=8",
         "data.n=2", "neurons=off"]
MAPO = ["alignment=mapo", "alignment.k=2", "alignment.max_new_tokens=16"]


def _finished(run_dir):
    runs = offline_runs(run_dir / "wandb")
    assert len(runs) == 1
    summary = inspect_summary(runs[0])
    assert summary["state"] == "finished" and summary["summary"]["train/global_step"] == 2
    assert "train/loss" in summary["summary"]
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    return runs[0], summary


@pytest.mark.parametrize("overrides, name", [
    (["alignment=dpo"], "tiny-dpo-sw"),
    (["alignment=sft", "lang=[zh,de]"], "tiny-sft-zh+de"),
])
def test_answer_alignments_train_two_steps(tmp_path, overrides, name):
    out = run_train(f"hydra.run.dir={tmp_path}", *overrides, *SHORT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _finished(tmp_path)[1]["name"] == name


def test_question_alignment_trains_on_question_translation_with_lora_on_q_and_v(tmp_path):
    out = run_train(f"hydra.run.dir={tmp_path}", "alignment=qalign", "lang=[zh,de]", *SHORT)
    assert out.returncode == 0, out.stderr[-3000:]
    _, summary = _finished(tmp_path)
    assert summary["name"] == "tiny-qalign-zh+de"
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]
    config = summary["config"]["run"]
    config = config.get("value", config)
    assert config["train_examples"] == 16  # 8 questions x (zh, de); English is the target, not a source


def test_mapo_with_the_correctness_scorer_logs_its_pairs_and_a_rerun_reuses_them(tmp_path):
    cache = tmp_path / "cache"
    args = [*MAPO, "scorer=correctness", f"alignment.cache_dir={cache}", *SHORT]
    out = run_train(f"hydra.run.dir={tmp_path / 'first'}", *args, "alignment.eval_steps=1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "MAPO: built" in out.stdout and f"cached in {cache}" in out.stdout
    run, summary = _finished(tmp_path / "first")
    assert summary["name"] == "tiny-mapo-sw"
    metrics = summary["summary"]
    pairs = [json.loads(line) for line in (tmp_path / "first" / "alignment" / "train.jsonl").read_text().splitlines()]
    assert metrics["pairs/train/sw"] == metrics["pairs/train/total"] == len(pairs) > 0
    assert 0 <= metrics["pairs/correct_fraction/sw"] <= 1 and metrics["pairs/cache_hit"] == 0
    assert metrics["pairs/reward_diff/histogram"]["_type"] == "histogram"
    assert "eval/loss" in metrics  # DPO evaluated on the held-out pairs (alignment.eval_steps=1)
    assert all(p["chosen_reward"] == 1.0 and p["rejected_reward"] == 0.0 for p in pairs)  # correct over wrong
    history = [r["history"]["item"] for r in inspect_records(run) if r.get("type") == "history"]
    assert any(h.get("train/global_step") == 0 and "pairs/train/total" in h for h in history)

    again = run_train(f"hydra.run.dir={tmp_path / 'second'}", *args, "logger=none")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"MAPO: reusing cached preference pairs from {cache}" in again.stdout
    assert (tmp_path / "second" / "alignment" / "train.jsonl").read_text() == \
        (tmp_path / "first" / "alignment" / "train.jsonl").read_text()


def test_mapo_with_the_tiny_translation_scorer_trains_offline(tmp_path):
    # the default k and answer length: a random scorer needs a few candidates to rank a gold answer above one
    out = run_train(f"hydra.run.dir={tmp_path}", "alignment=mapo", "scorer=tiny", "alignment.cache_dir=null", *SHORT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "not cached" in out.stdout
    metrics = _finished(tmp_path)[1]["summary"]
    assert metrics["pairs/train/total"] > 0 and metrics["pairs/reward_diff/min"] > 0


@pytest.mark.parametrize("override, phrase", [
    ("scorer=nllb", "scorer model 'facebook/nllb-200-distilled-600M' could not be loaded"),
    ("scorer.kind=bleu", "scorer.kind=bleu: unknown choice; use one of translation, numbers, correctness"),
])
def test_bad_mapo_input_is_one_line_and_leaves_no_wandb_run(tmp_path, override, phrase):
    out = run_train(f"hydra.run.dir={tmp_path}", "alignment=mapo", override, "alignment.cache_dir=null")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and phrase in errors[0], out.stderr
    assert not offline_runs(tmp_path)


def test_alignment_and_scorer_configs_compose_as_documented():
    from hydra import compose, initialize_config_dir

    from conftest import ROOT

    def composed(*overrides):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    assert composed().scorer.kind == "numbers" and composed().alignment.method == "mapo"  # offline MAPO
    assert composed("scorer=tiny").scorer.kind == "translation" and composed("scorer=tiny").scorer.name_or_path is None
    assert composed("scorer=nllb").scorer.name_or_path == "facebook/nllb-200-distilled-600M"
    assert composed("scorer=correctness").scorer.kind == "correctness"
    assert composed("alignment=mapo").alignment.cache_dir.endswith("/pairs")  # under $LANGNEURONS_CACHE or ~/.cache
    paper = composed("alignment=mapo_paper").alignment
    assert (paper.method, paper.k, paper.max_new_tokens, paper.temperature) == ("mapo", 20, 512, 0.8)
    assert (paper.beta, paper.loss_type, paper.loss_weights) == (0.1, "sigmoid", None)  # plain DPO, as MAPO
    # a real model's preset picks MAPO at the paper's settings with NLLB; a method given on the command line wins
    real = composed("model=llama")
    assert (real.alignment.k, real.alignment.beta) == (20, 0.1)
    assert real.scorer.name_or_path == "facebook/nllb-200-distilled-600M"
    assert composed("model=llama", "alignment=sft").alignment.method == "sft"
    # question alignment puts LoRA on q/v for any trainer, and an explicit trainer override still wins
    for extra in ([], ["trainer=paper"], ["model=llama"]):
        assert list(composed("alignment=qalign", *extra).trainer.lora.target_modules) == ["q_proj", "v_proj"]
    assert list(composed("alignment=qalign", "trainer.lora.target_modules=[o_proj]").trainer.lora.target_modules) \
        == ["o_proj"]
    assert len(composed("alignment=dpo").trainer.lora.target_modules) == 7  # other methods keep the trainer's
