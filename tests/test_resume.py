"""A run that crashes mid-way is resumed in place: same folder, same W&B run, no neuron checkpoint repeated or lost."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from langneurons.checkpoints.callback import NeuronCheckpointCallback
from langneurons.errors import HarnessError
from langneurons.experiment import run_experiment
from langneurons.neurons import NeuronStats

from conftest import ROOT, inspect_records, inspect_summary, offline_runs, run_train

# debug=smoke (4 steps, trainer checkpoints at 2 and 4, neuron checkpoints at 0, 2 and 4), logged every step,
# short answers, no figures or W&B artifacts.
SHORT = ["debug=smoke", "trainer.logging_steps=1", "eval.max_new_tokens=8", "neurons.image=false",
         "neurons.artifact=false"]


def config(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="config", overrides=list(overrides)), resolve=True)


def neuron_steps(run_dir) -> list[int]:
    return sorted(int(p.name[5:]) for p in (run_dir / "neurons").glob("step-*") if p.name[5:].isdigit())


def checkpoint_steps_in_wandb(run) -> list[int]:
    history = [r["history"]["item"] for r in inspect_records(run) if r.get("type") == "history"]
    return [h["train/global_step"] for h in history if "neurons/total/specific" in h]


def crash_at(step: int, monkeypatch) -> None:
    """Make the training loop die at the end of ``step``, after that step's neuron checkpoint."""
    original = NeuronCheckpointCallback.on_step_end

    def on_step_end(self, args, state, control, **kwargs):
        original(self, args, state, control, **kwargs)
        if state.global_step == step:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(NeuronCheckpointCallback, "on_step_end", on_step_end)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    run_experiment(config(*SHORT), run_dir, overrides=SHORT)
    return run_dir


def test_a_crashed_run_resumes_in_place_with_the_same_history_as_an_uninterrupted_one(tmp_path, monkeypatch,
                                                                                         uninterrupted):
    crash_at(3, monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_experiment(config(*SHORT), tmp_path, overrides=SHORT)
    assert neuron_steps(tmp_path) == [0, 2]
    assert (tmp_path / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    first = offline_runs(tmp_path / "wandb")
    assert len(first) == 1 and inspect_summary(first[0])["exit_code"] == 1

    monkeypatch.undo()
    resumed = run_experiment(config(*SHORT, f"resume={tmp_path}"), tmp_path, overrides=[*SHORT, f"resume={tmp_path}"])
    assert resumed.metrics["train_loss"] > 0
    assert neuron_steps(tmp_path) == [0, 2, 4]
    # the resumed run continued the neuron history: step 4's transitions are measured against step 2
    record = json.loads((tmp_path / "neurons" / "step-4" / "checkpoint.json").read_text())
    assert "transitions_since_previous" in record and "transitions_since_start" in record
    # ... and trained the same model as a run that never stopped (CPU training is deterministic)
    for step in (2, 4):
        a, b = NeuronStats.load(tmp_path / "neurons" / f"step-{step}"), NeuronStats.load(
            uninterrupted / "neurons" / f"step-{step}")
        assert torch.equal(a.counts, b.counts) and torch.equal(a.tokens, b.tokens)
    # the same W&B run id, two offline files (wandb sync uploads both into that run); every checkpoint step once
    runs = offline_runs(tmp_path / "wandb")
    assert len(runs) == 2
    ids = {inspect_summary(r)["run_id"] for r in runs}
    assert len(ids) == 1
    assert sorted(checkpoint_steps_in_wandb(runs[0]) + checkpoint_steps_in_wandb(runs[1])) == [0, 2, 4]
    assert inspect_summary(runs[1])["exit_code"] == 0


def test_a_resumed_run_keeps_its_config_and_refuses_a_different_one(uninterrupted):
    with pytest.raises(HarnessError, match=r"lang: 'sw' in the run, 'zh' now.*python train.py .*resume="):
        run_experiment(config(*SHORT, "lang=zh", f"resume={uninterrupted}"), uninterrupted,
                       overrides=[*SHORT, "lang=zh", f"resume={uninterrupted}"])
    # training further is allowed: from the last trainer checkpoint (step 4) to step 6
    more = [*SHORT, "trainer.max_steps=6", f"resume={uninterrupted}"]
    run_experiment(config(*more), uninterrupted, overrides=more)
    assert neuron_steps(uninterrupted) == [0, 2, 4, 6]


def test_resume_names_what_is_wrong_before_making_any_folder(tmp_path):
    missing = tmp_path / "no-such-run"
    out = run_train(f"resume={missing}")
    assert out.returncode == 2 and not missing.exists()
    assert out.stderr.strip() == (f"error: resume={missing} is not a run folder of this harness (no run.json in it): "
                                  "give resume=outputs/<date>/<time>")
    (tmp_path / "run.json").write_text(json.dumps({"config": config(*SHORT), "overrides": [], "wandb_id": None}))
    with pytest.raises(HarnessError, match="no complete trainer checkpoint"):
        run_experiment(config(*SHORT, f"resume={tmp_path}"), tmp_path, overrides=[f"resume={tmp_path}"])
