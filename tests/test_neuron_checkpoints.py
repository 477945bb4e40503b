"""Neuron checkpoints during training: what a run records, read back from disk and from the offline W&B run."""

import json

import pytest
import torch

from langneurons.languages import PAPER_LANGS
from langneurons.neurons import Identification, NeuronStats
from langneurons.neurons.dynamics import LANG_TYPES, lang_types, overlap, transitions

from conftest import inspect_records, offline_runs, problem_settings, run_train, settings


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


def test_the_layer_figure_shows_each_languages_specific_and_related_neurons_per_layer():
    import matplotlib.pyplot as plt

    from langneurons.neurons import layer_distribution
    from langneurons.plots import layer_distribution_figure

    # neuron 0 (layer 0): a-specific; neuron 5 (layer 1): a+b related; neuron 6 (layer 1): c-specific; 3: general
    dist = layer_distribution(ident([[1, 0, 0], [1, 1, 0], [0, 0, 1]], [0, 5, 6], [3]))
    fig = layer_distribution_figure(dist, title="step 7")
    try:
        lines, specific, related = fig.axes[:3]
        assert fig.get_suptitle() == "step 7"
        drawn = {line.get_label(): list(line.get_ydata()) for line in lines.get_lines()}
        assert drawn == {"specific": [1, 1], "related": [0, 1], "general": [1, 0]}  # no unassigned line: none
        assert specific.images[0].get_array().tolist() == [[1, 0], [0, 0], [0, 1]]  # languages x layers
        assert related.images[0].get_array().tolist() == [[0, 1], [0, 1], [0, 0]]
        assert [t.get_text() for t in specific.get_yticklabels()] == ["a", "b", "c"]
    finally:
        plt.close(fig)


def test_a_checkpoint_on_a_merged_copy_measures_the_adapted_model_and_leaves_it_untouched(tmp_path):
    from peft import LoraConfig, get_peft_model
    from trl.trainer.utils import add_fused_lm_head

    from langneurons.checkpoints.measure import NeuronCheckpointer, merged_copy
    from langneurons.data import load_problems
    from langneurons.experiment import tiny_tokenizer_corpus
    from langneurons.modeling import build_tiny_model, build_tokenizer

    langs = ["sw", "zh", "de"]
    tokenizer = build_tokenizer(tiny_tokenizer_corpus("mathoctopus", n=30), 300)
    base = build_tiny_model({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                             "num_attention_heads": 2, "num_key_value_heads": 1}, tokenizer, seed=0)
    assert merged_copy(base) is None  # nothing to merge
    add_fused_lm_head(base)  # as TRL's trainers do: a forward patched onto the instance must not leak into the copy
    torch.manual_seed(1)  # random A and B: the adapters change the model's function, as after training
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["gate_proj", "up_proj", "down_proj"],
                                            init_lora_weights=False))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    problems = load_problems(problem_settings(n=6, offset=100000, seed=0), langs, "mathoctopus")
    run = settings()  # complete neuron and eval settings from the YAML, the ones this test sets replaced

    def take(merge: bool):
        neurons = {**run.neurons.dump(), "probe": "responses", "n": None, "batch_size": 4, "max_length": 512,
                   "top_rate": 0.05, "bar": 0.95, "merge_adapters": merge}
        eval_cfg = {**run.eval.dump(), "max_new_tokens": 6, "batch_size": 3, "samples": 6, "answer_lang": "off"}
        return NeuronCheckpointer(tokenizer=tokenizer, problems=problems, probe_langs=langs, eval_langs=langs,
                                  neurons=neurons, eval_cfg=eval_cfg, out_dir=tmp_path / str(merge),
                                  model_id="tiny").take(model, 3)

    adapters, merged = take(False), take(True)
    assert [s["answer"] for s in merged.samples] == [s["answer"] for s in adapters.samples]
    assert merged.accuracy == adapters.accuracy
    assert torch.equal(merged.stats.tokens, adapters.stats.tokens)
    # the same function up to float rounding: at most a unit sitting at exactly zero may count differently
    assert (merged.stats.counts - adapters.stats.counts).abs().max() <= 1
    with torch.no_grad():
        unadapted = merged_copy(model)
        model.disable_adapter_layers()
        ids = tokenizer("3 + 4 =", return_tensors="pt")["input_ids"]
        assert not torch.allclose(unadapted(ids).logits, model(ids).logits)  # the adapters were in the copy
        model.enable_adapter_layers()
    # the trained model keeps its adapters and every weight bit for bit
    assert {name: p for name, p in model.named_parameters()}.keys() == before.keys()
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


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
