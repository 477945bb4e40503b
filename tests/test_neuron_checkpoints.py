"""Neuron checkpoints during training: what a run records, read back from disk and from the offline W&B run."""

import json

import pytest
import torch

from langneurons.languages import PAPER_LANGS
from langneurons.neurons import Identification, NeuronStats
from langneurons.neurons.dynamics import LANG_TYPES, lang_types, overlap, transitions

from conftest import inspect_records, offline_runs, run_train


def ident(owners: list[list[int]], selected: list[int], general: list[int], langs=("a", "b", "c")) -> Identification:
    """A hand-made identification over 2 layers x 4 units."""
    return Identification(
        langs=tuple(langs), method="ternary", num_layers=2, num_units=4, top_rate=0.5, lam=0.1, bar=0.9, tau=0.5,
        selected=torch.tensor(selected, dtype=torch.int64), owners=torch.tensor(owners, dtype=torch.bool),
        general=torch.tensor(general, dtype=torch.int64), shared_by_all=torch.zeros(len(langs) + 1, dtype=torch.int64))


def test_types_per_language_transitions_and_overlap_match_sets_built_by_hand():
    # neuron 0: a only (specific for a); neuron 1: a+b (related for a, b); neuron 5: general
    before = ident([[1, 0, 0], [1, 1, 0]], [0, 1], [5])
    # after: neuron 0 becomes a+c (related), neuron 1 drops out, neuron 2 becomes b-specific, 5 stays general
    after = ident([[1, 0, 1], [0, 1, 0]], [0, 2], [5])
    t = lang_types(before)
    s, r, g, n = (LANG_TYPES.index(x) for x in LANG_TYPES)
    assert t[0].tolist() == [s, r, n, n, n, g, n, n]
    assert t[1].tolist() == [n, r, n, n, n, g, n, n]
    moves = transitions(before, after)
    assert moves["a"][s, r] == 1 and moves["a"][r, n] == 1 and moves["a"][g, g] == 1 and moves["a"][n, n] == 5
    assert moves["b"][r, n] == 1 and moves["b"][n, s] == 1
    assert moves["c"][n, r] == 1
    assert all(int(m.sum()) == 8 for m in moves.values())
    ov = overlap(before, after)
    assert ov["a"] == pytest.approx(1 / 2)  # {0,1} vs {0}
    assert ov["b"] == 0.0  # {1} vs {2}
    assert ov["c"] == 0.0  # {} vs {0}
    assert overlap(before, before) == {"a": 1.0, "b": 1.0, "c": 1.0}


def test_a_run_records_neurons_and_accuracy_for_every_probe_language_at_every_checkpoint(tmp_path):
    out = run_train(f"hydra.run.dir={tmp_path}", "trainer.max_steps=4", "neurons.every_n_steps=2", "data.n=4",
                    "alignment.questions.n=16", "trainer.save_steps=0", "eval.max_new_tokens=8")
    assert out.returncode == 0, out.stderr[-3000:]
    # on disk: step-0, step-2, step-4, each loadable by the neuron-science code
    steps = sorted(int(p.name[5:]) for p in (tmp_path / "neurons").glob("step-*"))
    assert steps == [0, 2, 4]
    for step in steps:
        folder = tmp_path / "neurons" / f"step-{step}"
        stats = NeuronStats.load(folder)
        assert stats.langs == PAPER_LANGS and stats.counts.shape == (4, 256, 10) and bool((stats.tokens > 0).all())
        ident_ = Identification.load(folder)
        record = json.loads((folder / "checkpoint.json").read_text())
        assert record["step"] == step and set(record["accuracy"]) == {*PAPER_LANGS, "avg"}
        assert record["identification"]["totals"] == ident_.summary()["totals"]
    # in W&B: every probe language has neuron counts and accuracy at every checkpoint step
    history = [r["history"]["item"] for r in inspect_records(offline_runs(tmp_path)[0]) if r.get("type") == "history"]
    checkpoints = {h["train/global_step"]: h for h in history if "neurons/total/specific" in h}
    assert sorted(checkpoints) == [0, 2, 4]
    for step, h in checkpoints.items():
        for lang in PAPER_LANGS:
            assert f"neurons/specific/{lang}" in h and f"neurons/related/{lang}" in h
            assert f"eval/acc/{lang}" in h
        assert "eval/acc/avg" in h and "neurons/general" in h and "neurons/unassigned" in h
    assert "neurons/transition/specific_to_none" in checkpoints[4]
    assert "neurons/overlap_with_start/sw" in checkpoints[2]
    # logged counts are the saved identification's counts
    saved = json.loads((tmp_path / "neurons" / "step-4" / "checkpoint.json").read_text())
    for lang in PAPER_LANGS:
        assert checkpoints[4][f"neurons/specific/{lang}"] == saved["lang_type_counts"][lang]["specific"]
    artifacts = [r for r in inspect_records(offline_runs(tmp_path)[0]) if r.get("type") == "artifact"]
    assert artifacts
    # the end of the run shows the first and last checkpoints side by side, as the saved digests have them
    first = json.loads((tmp_path / "neurons" / "step-0" / "checkpoint.json").read_text())
    assert "Neuron checkpoints at steps 0, 2, 4: step 0 -> 4 (* the aligned languages)" in out.stdout
    lines = out.stdout.splitlines()
    table = {line.split()[0]: line.split()[1:] for line in lines if line.startswith(("  accuracy", "  specific"))}
    header = lines[lines.index(next(line for line in lines if line.startswith("Neuron checkpoints"))) + 1].split()
    assert header == [f"{lang}*" if lang == "sw" else lang for lang in PAPER_LANGS]
    sw = PAPER_LANGS.index("sw")
    assert table["accuracy"][sw] == f"{first['accuracy']['sw']:.2f}->{saved['accuracy']['sw']:.2f}"
    assert table["specific"][sw] == (f"{first['lang_type_counts']['sw']['specific']}->"
                                     f"{saved['lang_type_counts']['sw']['specific']}")
    assert f"python analyze.py report runs=[{tmp_path}]" in out.stdout


def test_step_zero_statistics_can_come_from_an_existing_folder(tmp_path):
    # statistics "measured earlier" on the base: languages stored in another order than the probe languages
    langs = tuple(reversed(PAPER_LANGS))
    counts = torch.randint(0, 50, (4, 256, len(langs)), generator=torch.Generator().manual_seed(0))
    given = NeuronStats(counts=counts, tokens=torch.full((len(langs),), 60), langs=langs)
    given.save(tmp_path / "base-stats")
    run_dir = tmp_path / "run"
    out = run_train(f"hydra.run.dir={run_dir}", "trainer.max_steps=2", "neurons.every_n_steps=2", "data.n=4",
                    "alignment.questions.n=16", "trainer.save_steps=0", "eval.max_new_tokens=8", "logger=none",
                    f"neurons.start_stats={tmp_path / 'base-stats'}")
    assert out.returncode == 0, out.stderr[-3000:]
    step0 = NeuronStats.load(run_dir / "neurons" / "step-0")
    assert step0.langs == PAPER_LANGS and torch.equal(step0.counts, given.select(PAPER_LANGS).counts)
    assert step0.metadata["probe"] == {"kind": "start_stats", "source": str(tmp_path / "base-stats")}
    # later checkpoints are measured on the model as usual
    assert not torch.equal(NeuronStats.load(run_dir / "neurons" / "step-2").counts, step0.counts)


def test_start_statistics_of_another_model_are_refused_with_the_shapes(shared_data, tmp_path):
    out = run_train(f"hydra.run.dir={tmp_path}", "trainer.max_steps=2", "data.n=4", "alignment.questions.n=16",
                    "trainer.save_steps=0", "eval.max_new_tokens=4", "logger=none",
                    f"neurons.start_stats={shared_data / 'reference-mistral-mgsm'}")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        f"error: neurons.start_stats={shared_data / 'reference-mistral-mgsm'} has 32 layers x 14336 units, the model "
        "4 x 256: give statistics of this model's base")
