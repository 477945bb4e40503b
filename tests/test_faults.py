"""No data lost when a run is killed at any point, or finds its disk full.

The runs are ``python train.py`` processes that ``LANGNEURONS_FAULT`` (``src/langneurons/faults.py``) kills with
SIGKILL at a named point: no ``finally`` runs, as in a power cut or an out-of-memory kill. After each kill the
caches hold nothing or complete entries, and a rerun (a cache point) or ``resume=<run dir>`` (a run point) ends
where an uninterrupted run ends: every neuron checkpoint loadable, no step repeated or missing, the same history.
"""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from langneurons import faults
from langneurons.checkpoints.record import NeuronCheckpoint, saved_steps, step_folders, write
from langneurons.errors import HarnessError, disk_full
from langneurons.neurons import Identification, NeuronStats

from conftest import inspect_summary, offline_runs, run_train

# debug=smoke (4 steps, trainer checkpoints at 2 and 4, neuron checkpoints at 0, 2 and 4), logged every step,
# short answers, no figures or W&B artifacts.
SHORT = ["debug=smoke", "trainer.logging_steps=1", "eval.max_new_tokens=8", "neurons.image=false",
         "neurons.artifact=false"]
# The cache tests build a base of their own in every cache: 20 steps, a second.
CACHE_RUN = [*SHORT, "model.pretrain.steps=20", "model.pretrain.batch_size=4"]
# The run tests share one base (built once, ~8 s) that answers something, so that every checkpoint identifies neurons.
RUN = [*SHORT, "model.pretrain.steps=300", "model.pretrain.batch_size=16"]
KILLED = -signal.SIGKILL
# What a checkpoint.json records that a resumed run must reproduce (its seconds and phases are timings).
MEASURED = ("accuracy", "answer_lang", "lang_type_counts", "identification", "layer_distribution", "overlap_with_start",
            "transitions_since_previous", "transitions_since_start", "samples", "notes")


# ---- the fault points themselves ---------------------------------------------------------------------------------
@pytest.fixture
def fault(monkeypatch):
    """Set LANGNEURONS_FAULT for this test's process (None: unset it)."""
    def set_fault(spec):
        if spec is None:
            monkeypatch.delenv(faults.ENV, raising=False)
        else:
            monkeypatch.setenv(faults.ENV, spec)
        faults.reset()

    yield set_fault
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.reset()


def test_without_the_variable_every_point_passes(fault):
    fault(None)
    for _ in range(3):
        for point in faults.POINTS:
            faults.reach(point)


def test_the_nth_time_a_point_is_reached_it_fails_and_only_then(fault, tmp_path):
    fault("checkpoint.write#2=enospc, adapter.save=enospc")
    faults.reach("checkpoint.write", tmp_path)
    faults.reach("train.step")
    with pytest.raises(OSError) as caught:
        faults.reach("checkpoint.write", tmp_path)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path)
    faults.reach("checkpoint.write", tmp_path)  # the third time passes
    with pytest.raises(OSError, match="No space left on device"):
        faults.reach("adapter.save")


@pytest.mark.parametrize("spec", ["train.stepp=kill", "train.step=boom", "train.step#0=kill", "train.step#=kill",
                                  "train.step"])
def test_a_wrong_fault_spec_says_the_syntax(fault, spec):
    fault(spec)
    with pytest.raises(ValueError, match=r"<point>\[#<n>\]=<action>.*train\.step.*kill, enospc"):
        faults.reach("train.step")


def test_kill_ends_the_process_at_once():
    code = "from langneurons import faults; faults.reach('train.step'); print('first'); faults.reach('train.step'); " \
           "print('second')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, faults.ENV: "train.step#2=kill"})
    assert out.returncode == KILLED and out.stdout.split() == ["first"]


def test_a_full_disk_is_one_line_that_says_what_to_do(tmp_path):
    for code in (errno.ENOSPC, errno.EDQUOT):
        error = disk_full(OSError(code, os.strerror(code)), "the adapter", tmp_path / "adapter", run_dir=tmp_path)
        assert isinstance(error, HarnessError) and "\n" not in str(error)
        assert all(p in str(error) for p in ("disk", os.strerror(code), f"the adapter {tmp_path / 'adapter'}",
                                             "Free space", f"python train.py resume={tmp_path}", "hydra.run.dir="))
    # torch's and safetensors' writers keep only the OS's message
    assert disk_full(RuntimeError("write failed: No space left on device (os error 28)"), "x", tmp_path) is not None
    assert disk_full(OSError(errno.EACCES, os.strerror(errno.EACCES)), "x", tmp_path) is None
    assert disk_full(ValueError("bad"), "x", tmp_path) is None


def checkpoint(step: int) -> NeuronCheckpoint:
    langs = ("en", "sw")
    counts = torch.arange(2 * 8 * 2, dtype=torch.int64).reshape(2, 8, 2) + step
    ident = Identification(langs=langs, method="ternary", num_layers=2, num_units=8, top_rate=0.5, lam=0.1, bar=0.9,
                           tau=0.5, selected=torch.tensor([0, 9]), owners=torch.tensor([[True, False], [True, True]]),
                           general=torch.tensor([], dtype=torch.int64), shared_by_all=torch.zeros(3, dtype=torch.int64))
    return NeuronCheckpoint(step=step, stats=NeuronStats(counts, torch.tensor([100, 100]), langs), ident=ident,
                            accuracy={"en": 0.5, "sw": 0.25, "avg": 0.375}, answer_lang={}, samples=[])


def test_a_full_disk_while_a_checkpoint_is_written_removes_it_and_keeps_the_earlier_ones(fault, tmp_path):
    neurons = tmp_path / "neurons"
    fault("checkpoint.write#2=enospc")
    write(checkpoint(0), neurons)
    with pytest.raises(HarnessError, match="the disk is full") as caught:
        write(checkpoint(2), neurons)
    assert f"the neuron checkpoint {tmp_path / 'neurons' / 'step-2'}" in str(caught.value)
    assert sorted(p.name for p in (tmp_path / "neurons").iterdir()) == ["step-0"]
    assert saved_steps(tmp_path / "neurons") == [0]
    assert torch.equal(NeuronStats.load(tmp_path / "neurons" / "step-0").counts, checkpoint(0).stats.counts)


def test_a_leftover_tmp_folder_is_never_read_as_a_checkpoint(tmp_path):
    neurons = tmp_path / "neurons"
    write(checkpoint(0), neurons)
    # killed between writing step 2's last file and its rename: a tmp folder with everything in it
    shutil.copytree(tmp_path / "neurons" / "step-0", tmp_path / "neurons" / "step-2.tmp")
    assert saved_steps(tmp_path / "neurons") == [0]
    assert [step for step, _ in step_folders(tmp_path / "neurons")] == [0]
    write(checkpoint(2), neurons)  # the resumed run takes step 2 again: over the leftover
    assert saved_steps(tmp_path / "neurons") == [0, 2]
    assert not (tmp_path / "neurons" / "step-2.tmp").exists()
    assert torch.equal(NeuronStats.load(tmp_path / "neurons" / "step-2").counts, checkpoint(2).stats.counts)


def test_the_next_build_removes_what_a_killed_build_of_its_entry_left(tmp_path):
    from langneurons import files

    killed, other = tmp_path / ".tmp-abc-123-deadbe", tmp_path / ".tmp-abd-456-cafe00"
    for folder in (killed, other):
        folder.mkdir()
    files.remove_stale_tmp(tmp_path, "abc")  # holding abc's lock: no live process builds abc
    assert not killed.exists() and other.exists()  # another entry's build may be running


# ---- killed runs, read back ---------------------------------------------------------------------------------------
def neuron_steps(run_dir) -> list[int]:
    """The steps of the run's complete neuron checkpoints, after checking that each of them loads."""
    folder = run_dir / "neurons"
    steps = saved_steps(folder)
    assert [step for step, _ in step_folders(folder)] == steps
    for step in steps:
        path = folder / f"step-{step}"
        record = json.loads((path / "checkpoint.json").read_text())
        NeuronStats.load(path)
        if "identification" in record:  # none where the model's answers were empty
            Identification.load(path)
    return steps


def assert_same_history(run_dir, reference) -> None:
    """Every neuron checkpoint of ``run_dir`` measured what ``reference``'s did at the same step."""
    assert neuron_steps(run_dir) == neuron_steps(reference)
    for step in neuron_steps(reference):
        a, b = (folder / "neurons" / f"step-{step}" for folder in (run_dir, reference))
        record_a, record_b = (json.loads((f / "checkpoint.json").read_text()) for f in (a, b))
        assert {k: record_a.get(k) for k in MEASURED} == {k: record_b.get(k) for k in MEASURED}, step
        stats_a, stats_b = NeuronStats.load(a), NeuronStats.load(b)
        assert torch.equal(stats_a.counts, stats_b.counts) and torch.equal(stats_a.tokens, stats_b.tokens), step
        ident_a, ident_b = Identification.load(a), Identification.load(b)
        assert all(torch.equal(getattr(ident_a, t), getattr(ident_b, t))
                   for t in ("selected", "owners", "general", "shared_by_all")), step


def assert_same_adapter(run_dir, reference) -> None:
    from safetensors.torch import load_file

    a, b = (load_file(folder / "adapter" / "adapter_model.safetensors") for folder in (run_dir, reference))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def cache_entries(folder) -> list:
    """The entries of a cache folder (its hidden names are builds in progress or leftovers, never entries)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_dir()) if folder.is_dir() else []


def base_entries(cache) -> list:
    from langneurons.base.cache import is_complete

    entries = cache_entries(cache / "tiny-base")
    assert all(is_complete(e) for e in entries), entries
    return entries


def pair_entries(cache) -> list:
    from langneurons.data import pairstore

    entries = cache_entries(cache / "pairs")
    for entry in entries:
        key = json.loads((entry / "key.json").read_text())["key"]
        assert pairstore.load(entry.parent, key) is not None
    return entries


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.is_dir() else []


def killed_at(spec: str, *overrides: str, env: dict) -> subprocess.CompletedProcess:
    out = run_train(*overrides, env={**env, faults.ENV: spec})
    assert out.returncode == KILLED, (out.returncode, out.stdout[-2000:], out.stderr[-2000:])
    return out


def error_lines(out: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in out.stdout + out.stderr, out.stderr[-3000:]
    return [line for line in out.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["base.pretrain#3=kill", "base.save=kill"])
def test_a_base_build_killed_leaves_no_entry_and_the_next_run_builds_it(tmp_path, spec):
    cache = tmp_path / "cache"
    env = {"LANGNEURONS_CACHE": str(cache)}
    killed_at(spec, f"hydra.run.dir={tmp_path / 'killed'}", *CACHE_RUN, env=env)
    assert base_entries(cache) == [] and len(leftovers(cache / "tiny-base")) == 1  # the build's tmp folder
    assert pair_entries(cache) == []
    again = run_train(f"hydra.run.dir={tmp_path / 'again'}", *CACHE_RUN, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "tiny base: pretraining it once" in again.stdout
    assert len(base_entries(cache)) == 1 and len(pair_entries(cache)) == 1
    assert leftovers(cache / "tiny-base") == []  # the killed build's folder is gone
    assert neuron_steps(tmp_path / "again") == [0, 2, 4]


@pytest.mark.slow
def test_pairs_killed_while_cached_leave_no_entry_and_the_next_run_builds_them(tmp_path):
    cache = tmp_path / "cache"
    env = {"LANGNEURONS_CACHE": str(cache)}
    killed_at("pairs.save=kill", f"hydra.run.dir={tmp_path / 'killed'}", *CACHE_RUN, env=env)
    assert len(base_entries(cache)) == 1  # built before the pairs: complete
    assert pair_entries(cache) == [] and len(leftovers(cache / "pairs")) == 1
    again = run_train(f"hydra.run.dir={tmp_path / 'again'}", *CACHE_RUN, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "tiny base: reusing the cached pretrained model" in again.stdout
    assert "MAPO: built" in again.stdout and "MAPO: reusing" not in again.stdout
    assert len(base_entries(cache)) == 1 and len(pair_entries(cache)) == 1
    assert neuron_steps(tmp_path / "again") == [0, 2, 4]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> dict:
    """The cache of the run tests: one base and one pair set, built by the uninterrupted run."""
    return {"LANGNEURONS_CACHE": str(tmp_path_factory.mktemp("cache"))}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    out = run_train(f"hydra.run.dir={run_dir}", *RUN, env=cache)
    assert out.returncode == 0, out.stderr[-3000:]
    assert neuron_steps(run_dir) == [0, 2, 4]
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("spec, saved, leftover", [
    ("train.step#3=kill", [0, 2], None),                         # between two checkpoints
    ("checkpoint.write#2=kill", [0], "neurons/step-2.tmp"),      # while step 2's checkpoint is written
    ("checkpoint.write#3=kill", [0, 2], "neurons/step-4.tmp"),   # trained, while the last checkpoint is written
    ("adapter.save=kill", [0, 2, 4], "adapter.tmp"),             # trained, while the adapter is saved
])
def test_a_run_killed_at_any_point_resumes_to_the_history_of_an_uninterrupted_one(tmp_path, cache, uninterrupted,
                                                                                   spec, saved, leftover):
    killed_at(spec, f"hydra.run.dir={tmp_path}", *RUN, env=cache)
    assert neuron_steps(tmp_path) == saved
    assert leftover is None or (tmp_path / leftover).is_dir()
    assert not (tmp_path / "adapter").exists()
    resumed = run_train(f"resume={tmp_path}", env=cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_history(tmp_path, uninterrupted)  # steps 0, 2, 4: none repeated, none missing
    assert sorted(p.name for p in (tmp_path / "neurons").iterdir()) == ["step-0", "step-2", "step-4"]
    assert not (tmp_path / "adapter.tmp").exists()
    assert_same_adapter(tmp_path, uninterrupted)


@pytest.mark.slow
def test_a_full_disk_while_a_checkpoint_is_written_stops_the_run_with_one_line(tmp_path, cache, uninterrupted):
    out = run_train(f"hydra.run.dir={tmp_path}", *RUN, env={**cache, faults.ENV: "checkpoint.write#2=enospc"})
    errors = error_lines(out)
    assert out.returncode == 2 and len(errors) == 1, out.stderr[-3000:]
    assert all(p in errors[0] for p in (f"the neuron checkpoint {tmp_path / 'neurons' / 'step-2'}",
                                        "the disk is full", f"resume={tmp_path}", "hydra.run.dir=")), errors[0]
    assert errors[0] in (tmp_path / "train.log").read_text()
    assert neuron_steps(tmp_path) == [0] and not (tmp_path / "neurons" / "step-2.tmp").exists()
    (run,) = offline_runs(tmp_path / "wandb")
    assert inspect_summary(run)["exit_code"] == 1  # the W&B run is finished as failed, not left running
    # what the line says to do works: the resumed run ends as an uninterrupted one
    resumed = run_train(f"resume={tmp_path}", env=cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_history(tmp_path, uninterrupted)


@pytest.mark.slow
def test_a_full_disk_while_the_adapter_is_saved_keeps_the_previous_one(tmp_path, cache, uninterrupted):
    shutil.copytree(uninterrupted, tmp_path, dirs_exist_ok=True)  # a finished run, trained further below
    before = {p.name: p.read_bytes() for p in (tmp_path / "adapter").iterdir()}
    out = run_train(f"resume={tmp_path}", "trainer.max_steps=6", env={**cache, faults.ENV: "adapter.save=enospc"})
    errors = error_lines(out)
    assert out.returncode == 2 and len(errors) == 1, out.stderr[-3000:]
    assert all(p in errors[0] for p in (f"the adapter {tmp_path / 'adapter'}", "the disk is full")), errors[0]
    assert {p.name: p.read_bytes() for p in (tmp_path / "adapter").iterdir()} == before
    assert not (tmp_path / "adapter.tmp").exists()
    assert neuron_steps(tmp_path) == [0, 2, 4, 6]
    latest = max(offline_runs(tmp_path / "wandb"), key=lambda r: r.name)
    assert inspect_summary(latest)["exit_code"] == 1


def test_a_full_disk_while_the_trainer_saves_its_checkpoint_stops_the_run_with_one_line(tmp_path, monkeypatch):
    """The Trainer's own checkpoint (adapter, optimizer) is written by transformers: a full disk there is the same
    one line, not a traceback."""
    from transformers import Trainer

    from conftest import composed
    from langneurons.experiment import run_experiment

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "checkpoints"))

    monkeypatch.setattr(Trainer, "_save_checkpoint", full)
    overrides = [*SHORT, "neurons=off", "logger=none"]
    with pytest.raises(HarnessError, match=r"^the disk is full \(No space left on device\) while writing a trainer "
                                           r"checkpoint under .*checkpoints: the run stopped there") as err:
        run_experiment(composed(*overrides), tmp_path, overrides=overrides)
    assert "resume=" in str(err.value) and "\n" not in str(err.value)
