"""``analyze.py probe``: a model measured directly is measured exactly as a run's neuron checkpoint measures it, and the
folder it writes is read by the other subcommands as a run."""

import json
import os
import subprocess
import sys

import pytest
import torch

from langneurons.analysis.probe import find_adapter
from langneurons.analysis.sources import load_run
from langneurons.errors import HarnessError
from langneurons.languages import PAPER_LANGS
from langneurons.neurons import Identification, NeuronStats

from conftest import ROOT, run_train

SHORT = ["data.n=4", "eval.max_new_tokens=8"]
TRAIN = ["debug=smoke", *SHORT, "trainer.max_steps=2", "logger.mode=disabled"]  # 2 steps, neuron checkpoints at 0 and 2


def analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "analyze.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def digest(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A short tiny run, and probes of its base model and of its final adapter, with the run's settings."""
    base = tmp_path_factory.mktemp("probe")
    run_dir = base / "run"
    out = run_train(f"hydra.run.dir={run_dir}", *TRAIN)
    assert out.returncode == 0, out.stderr[-3000:]
    before = digest(analyze("probe", *SHORT, f"out={base / 'before'}"))
    after = digest(analyze("probe", *SHORT, f"adapter={run_dir}", f"out={base / 'after'}"))
    return {"run": run_dir, "before": base / "before", "after": base / "after", "digests": (before, after),
            "base": base}


def test_a_probe_measures_what_the_runs_checkpoint_measured(study):
    """The base model probed = the run's step 0; the run's final adapter probed = its last checkpoint: the same
    answers, hence the same accuracy and the same activation counts, and the same identification."""
    for probe, step in ((study["before"], 0), (study["after"], 2)):
        mine = NeuronStats.load(probe / "neurons" / f"step-{step}")
        theirs = NeuronStats.load(study["run"] / "neurons" / f"step-{step}")
        assert mine.langs == theirs.langs == PAPER_LANGS
        assert torch.equal(mine.tokens, theirs.tokens) and mine.tokens.sum() > 0
        assert torch.allclose(mine.counts, theirs.counts, atol=1e-3)
        a = Identification.load(probe / "neurons" / f"step-{step}")
        b = Identification.load(study["run"] / "neurons" / f"step-{step}")
        assert torch.equal(a.selected, b.selected) and torch.equal(a.owners, b.owners)
        record = json.loads((probe / "neurons" / f"step-{step}" / "checkpoint.json").read_text())
        ran = json.loads((study["run"] / "neurons" / f"step-{step}" / "checkpoint.json").read_text())
        assert record["accuracy"] == ran["accuracy"]
        assert set(record["phases"]) == {"answer", "count", "identify", "save"}
        assert record["seconds"] >= sum(record["phases"].values()) * 0.99
    before, after = study["digests"]
    assert before["step"] == 0 and before["adapter"] is None and after["step"] == 2
    assert set(before["accuracy"]) == {*PAPER_LANGS, "avg"}
    assert before["lang_type_counts"]["sw"] == json.loads(
        (study["run"] / "neurons" / "step-0" / "checkpoint.json").read_text())["lang_type_counts"]["sw"]


def test_the_folder_is_a_run_to_the_analyses(study, tmp_path):
    before, after = load_run(study["before"]), load_run(study["after"])
    assert (before.kind, before.label, before.aligned_langs) == ("probe", "tiny base", None)
    assert after.label == "tiny + run@2" and after.aligned_langs == ("sw",)
    assert (study["before"] / "base_model" / "config.json").is_file()
    assert (study["after"] / "adapter" / "adapter_config.json").is_file()
    stages = digest(analyze("stages", f"runs=[{study['before']},{study['after']}]", f"out={tmp_path / 'stages'}"))
    assert set(stages["stages"]) == {"tiny base", "tiny + run@2"}
    deact = digest(analyze("deactivate", f"source={study['after']}", "modes=[specific+related]", "langs=[sw]", "n=2",
                           f"out={tmp_path / 'deact'}"))
    assert deact["step"] == 2 and set(deact["baseline"]) == set(PAPER_LANGS)
    # the adapter probe's deactivation baseline is the aligned model's perplexity, not the base model's
    base = digest(analyze("deactivate", f"source={study['before']}", "modes=[specific+related]", "langs=[sw]",
                          "n=2", f"out={tmp_path / 'deact0'}"))
    assert base["baseline"] != pytest.approx(deact["baseline"], rel=1e-6)
    # the commands the probe suggests next are valid commands
    from langneurons.analysis.cli import compose

    for line in study["digests"][0]["next"]:
        name, *args = line.split()[2:]
        assert compose(ROOT / "conf" / "analyze", name, args)["out"]
    compare = digest(analyze("compare", f"before={study['before']}", f"after={study['after']}"))
    assert set(compare["overlap"]) == {*PAPER_LANGS, "mean"}


def test_probe_settings_and_bad_input(study, tmp_path):
    # the LAPE protocol: the questions as plain text, every token counted; a second probe never overwrites the first
    text = digest(analyze("probe", *SHORT, "neurons.probe=text", "probe_langs=[en,sw]", "neurons.lam_hi=0.001",
                          f"out={tmp_path / 't'}"))
    assert set(text["probe_tokens"]) == {"en", "sw"} and set(text["accuracy"]) == {"en", "sw", "avg"}
    # a lam search that ends at the top of its range says so
    assert text["lam"] == 0.001 and any("ended at the top of its range" in note for note in text["notes"])
    assert json.loads((tmp_path / "t" / "neurons" / "step-0" / "stats.json").read_text())["metadata"]["count"] == "all"
    for args, expected in (
        ([f"out={tmp_path / 't'}"], "already exists and is not empty"),
        ([f"out={tmp_path / 'x'}", f"adapter={tmp_path / 'nowhere'}"], "no such folder"),
        ([f"out={tmp_path / 'x'}", f"adapter={tmp_path}"], "holds no adapter_config.json"),
        ([f"out={tmp_path / 'x'}", f"adapter={study['run']}", "model=gemma3_270m"], "pass model=tiny"),
        ([f"out={tmp_path / 'x'}", "neurons.top_rat=0.05"], "unknown config key 'neurons.top_rat'"),
        ([f"out={tmp_path / 'x'}", "model=gemma"], "unknown option model=gemma"),
        ([f"out={tmp_path / 'x'}", "probe_langs=[en,xx]"], "xx"),
        ([f"out={tmp_path / 'x'}", "data=mgsm", f"data.path={tmp_path / 'no-mgsm'}"], "no-mgsm"),
        (["data.n=2"], "out required"),
    ):
        proc = analyze("probe", *SHORT, *args)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and expected in lines[0], (args, proc.stderr[-2000:])
        assert not (tmp_path / "x").exists()  # a failed probe leaves no folder behind
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_adapter_folders_and_their_steps(study):
    run = study["run"]
    assert find_adapter(None) is None and find_adapter("none") is None
    whole = find_adapter(str(run))
    assert (whole.path, whole.run_dir, whole.step) == (run / "adapter", run, 2)
    final = find_adapter(str(run / "adapter"))
    assert (final.run_dir, final.step) == (run, 2)
    saved = find_adapter(str(run / "checkpoints" / "checkpoint-2"))
    assert (saved.run_dir, saved.step) == (run, 2)
    with pytest.raises(HarnessError, match="no adapter_config.json"):
        find_adapter(str(run / "neurons"))
