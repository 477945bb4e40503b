"""The user's story: run train.py, then look at what came out (adapter, W&B run read back offline)."""

import json
from pathlib import Path

import pytest

from conftest import ROOT, inspect_records, inspect_summary, offline_runs, run_train

README = ROOT / "README.md"

# A shortened run (conf/debug/smoke.yaml) logged every second step; neuron checkpoints have their own tests
# (test_neuron_checkpoints.py).
SHORT = ["debug=smoke", "trainer.logging_steps=2", "neurons=off"]


def test_short_default_run_trains_and_leaves_a_readable_offline_wandb_run(tmp_path):
    out = run_train(f"hydra.run.dir={tmp_path}", *SHORT)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = offline_runs(tmp_path / "wandb")
    assert len(runs) == 1
    # the end of the run says where it went and how to look at it
    assert f"wandb leet {runs[0]}" in out.stdout and f"wandb sync {runs[0]}" in out.stdout
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "base_model" / "config.json").is_file()
    # a readable console: no Trainer log dicts, bars or warnings of the project's making (not a terminal here);
    # the full record is in train.log
    console = out.stdout + out.stderr
    assert "{'loss'" not in console and "it/s]" not in console and "Warning" not in console, console[-3000:]
    assert "wandb:" not in console, console[-3000:]
    assert "training: 4 steps in" in out.stdout
    log = (tmp_path / "train.log").read_text()
    assert '"loss"' in log and "training: 4 steps in" in log
    summary = inspect_summary(runs[0])
    assert summary["state"] == "finished" and summary["exit_code"] == 0
    metrics = summary["summary"]
    assert "train/loss" in metrics and metrics["train/global_step"] == 4
    assert summary["name"] == "tiny-mapo-sw"
    assert {"model:tiny", "method:mapo", "lang:sw"} <= set(summary["tags"])
    config = summary["config"]
    # the composed Hydra config, as a plain dict
    model = config["model"]["value"] if "value" in config["model"] else config["model"]
    assert model["preset"] == "tiny"


def test_multirun_makes_one_wandb_run_per_job_in_one_group(tmp_path):
    out = run_train("-m", f"hydra.sweep.dir={tmp_path}", "lang=sw,zh", *SHORT, "trainer.save_steps=0")
    assert out.returncode == 0, out.stderr[-3000:]
    runs = offline_runs(tmp_path)
    assert len(runs) == 2
    summaries = [inspect_summary(r) for r in runs]
    assert sorted(s["name"] for s in summaries) == ["tiny-mapo-sw", "tiny-mapo-zh"]
    assert len({s["run_id"] for s in summaries}) == 2
    assert all(s["state"] == "finished" and "train/loss" in s["summary"] for s in summaries)
    # ... all in one group (the run record carries it; the summary does not)
    groups = [next(r["run"]["run_group"] for r in inspect_records(run) if r.get("type") == "run") for run in runs]
    assert groups == ["tiny-mapo", "tiny-mapo"]


def test_sft_on_several_languages_trains(tmp_path):
    out = run_train(f"hydra.run.dir={tmp_path}", "alignment=sft", "lang=[zh,de]", *SHORT)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = inspect_summary(offline_runs(tmp_path)[0])
    assert summary["name"] == "tiny-sft-zh+de" and "train/loss" in summary["summary"]


def test_dpo_on_a_users_preference_file(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"prompt": f"{i} + 1 =", "chosen": f" {i + 1}", "rejected": f" {i + 2}"})
                               for i in range(10)))
    out = run_train(f"hydra.run.dir={tmp_path / 'run'}", "alignment=dpo", f"alignment.pairs={pairs}", "logger=none",
                    *SHORT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    assert not offline_runs(tmp_path / "run")  # logger=none writes no W&B run


def test_a_preset_trains_a_local_model_given_by_name_or_path(tmp_path):
    from langneurons.modeling import build_tiny_model, build_tokenizer
    from langneurons.experiment import tiny_tokenizer_corpus

    tok = build_tokenizer(tiny_tokenizer_corpus("mathoctopus", n=30), 300)
    model = build_tiny_model({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                              "num_attention_heads": 2, "num_key_value_heads": 1}, tok)
    weights = tmp_path / "weights"
    model.save_pretrained(weights)
    tok.save_pretrained(weights)
    out = run_train(f"hydra.run.dir={tmp_path / 'run'}", "model=llama", f"model.name_or_path={weights}",
                    "trainer=tiny", "alignment=dpo", *SHORT)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = inspect_summary(offline_runs(tmp_path / "run")[0])
    assert summary["name"] == "llama-dpo-sw" and "train/loss" in summary["summary"]


@pytest.mark.parametrize("override, phrase", [
    ("lang=xx", "lang=xx: unknown language code 'xx'"),
    ("alignment=dpo alignment.pairs=/no/such/pairs.jsonl", "alignment.pairs=/no/such/pairs.jsonl: no such preference file"),
    ("data=mgsm", "could not load MGSM from 'juletxara/mgsm'"),
    ("logger.mode=sideways", "logger.mode=sideways: unknown choice"),
])
def test_bad_input_is_one_line_and_leaves_no_run_folder(tmp_path, override, phrase):
    out = run_train(f"hydra.run.dir={tmp_path / 'run'}", *override.split())
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and phrase in errors[0], out.stderr
    assert not (tmp_path / "run").exists()  # a run that fails before training leaves no (empty) folder


def test_an_error_during_training_is_kept_in_the_runs_train_log(tmp_path):
    # a full disk while the second neuron checkpoint is written, inside the Trainer (src/langneurons/faults.py)
    out = run_train(f"hydra.run.dir={tmp_path}", *SHORT[:-1], env={"LANGNEURONS_FAULT": "checkpoint.write#2=enospc"})
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    error = next(line for line in out.stderr.splitlines() if line.startswith("error:"))
    assert error in (tmp_path / "train.log").read_text()
    assert (tmp_path / "run.json").is_file()  # the folder of a run that got going stays


@pytest.mark.parametrize("override, phrases", [
    ("trainer.max_stepz=3", ["unknown config key 'trainer.max_stepz'", "did you mean trainer.max_steps"]),
    ("alignment.pairs=x.jsonl", ["unknown config key 'alignment.pairs'", "alignment=dpo has it"]),
    ("model=lama", ["unknown option model=lama", "llama", "tiny"]),
    ("lang=sw,zh", ["Ambiguous value for argument 'lang=sw,zh'", "--multirun"]),
])
def test_a_wrong_key_or_option_is_one_line_before_any_run_folder(tmp_path, override, phrases):
    out = run_train(f"hydra.run.dir={tmp_path / 'run'}", override)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: "), out.stderr
    assert all(p in errors[0] for p in phrases), errors[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_full_default_run_records_start_middle_and_end(tmp_path):
    from langneurons.languages import PAPER_LANGS

    out = run_train(f"hydra.run.dir={tmp_path}", threads=2)  # the default, 2 (tests pin 1)
    assert out.returncode == 0, out.stderr[-3000:]
    run = offline_runs(tmp_path / "wandb")[0]
    summary = inspect_summary(run)
    assert summary["summary"]["train/global_step"] > 10 and "train/loss" in summary["summary"]
    history = [r["history"]["item"] for r in inspect_records(run) if r.get("type") == "history"]
    checkpoints = {h["train/global_step"]: h for h in history if "neurons/total/specific" in h}
    assert len(checkpoints) >= 3 and min(checkpoints) == 0
    assert max(checkpoints) == summary["summary"]["train/global_step"]
    for h in checkpoints.values():
        assert all(f"neurons/specific/{lang}" in h and f"eval/acc/{lang}" in h for lang in PAPER_LANGS)
    # the default shows learning: the pretrained base answers English well and Swahili badly at step 0, and the
    # default alignment of Swahili raises it (measured: +0.42 +- 0.01 over seeds 0-2, benchmarks/alignment_effect.py)
    first, last = checkpoints[0], checkpoints[max(checkpoints)]
    assert first["eval/acc/en"] >= 0.6 and first["eval/acc/sw"] <= first["eval/acc/en"] - 0.3, first
    assert last["eval/acc/sw"] >= first["eval/acc/sw"] + 0.25, (first["eval/acc/sw"], last["eval/acc/sw"])
    # ... and its end-of-run table is the README's, digit for digit, on every x86 CPU (the locked install of
    # constraints.txt; train.py pins torch's and MKL's CPU kernels to AVX2: cpu_numerics)
    from langneurons import cpu_numerics

    tables = end_of_run_tables(README.read_text())
    assert len(tables) == 1, "the README shows one end-of-run table, the default run's"
    assert end_of_run_table(out.stdout) == tables[0], \
        (f"the default run's end-of-run table differs from the README's (computed with {cpu_numerics.describe()}): "
         "re-measure (benchmarks/alignment_effect.py)\n" + "\n".join(end_of_run_table(out.stdout)))


def end_of_run_tables(text: str) -> list[list[str]]:
    """Every end-of-run table in ``text``, in order."""
    lines, tables = text.splitlines(), []
    for i, line in enumerate(lines):
        if line.startswith("Neuron checkpoints at steps"):
            tables.append(end_of_run_table("\n".join(lines[i:])))
    return tables


def end_of_run_table(text: str) -> list[str]:
    """The lines of the end-of-run table (``Neuron checkpoints at steps ...`` up to the ``analyse it`` line, which
    names a folder) in a run's printout or in the README."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Neuron checkpoints at steps"))
    end = next(i for i in range(start, len(lines)) if lines[i].strip().startswith("analyse it:"))
    return [line.rstrip() for line in lines[start:end]]
