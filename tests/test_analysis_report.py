"""The user's story after training: run analyze.py on two short real runs and check what came out against what the
runs logged to W&B (read back with wandb leet inspect) and against sets built by hand from the saved checkpoints."""

import base64
import csv
import functools
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from langneurons.analysis.deactivation import deactivation_effects, load_checkpoint_model, load_probe_problems
from langneurons.analysis.cli import main
from langneurons.analysis.sections import slug
from langneurons.analysis.sources import IdentifySettings, load_run
from langneurons.errors import HarnessError
from langneurons.languages import PAPER_LANGS
from langneurons.neurons import Identification, make_batches, perplexity

from conftest import ROOT, inspect_records, inspect_summary, offline_runs, run_train

SHORT = ["debug=smoke", "eval.max_new_tokens=8"]  # 4 steps, neuron checkpoints at 0, 2 and 4, short answers
LABELS = {"sw": "tiny mapo sw synthetic", "zhde": "tiny mapo zh+de synthetic"}  # model, method, languages, data


# The tiny model runs no faster on two threads, and on cores shared with other jobs two OpenMP threads can be many
# times slower than one: the processes these tests start use one.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def analyze(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "analyze.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **ONE_THREAD})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two short runs of one tiny model (same seed, so the same step 0): aligned on sw, and on zh + de."""
    base = tmp_path_factory.mktemp("runs")
    dirs = {"sw": base / "sw", "zhde": base / "zhde"}
    saved = {k: os.environ.get(k) for k in ONE_THREAD}
    os.environ.update(ONE_THREAD)  # run_train passes the environment on
    try:
        for key, lang in (("sw", "sw"), ("zhde", "[zh,de]")):
            out = run_train(f"hydra.run.dir={dirs[key]}", f"lang={lang}", *SHORT)
            assert out.returncode == 0, out.stderr[-3000:]
    finally:
        for key, value in saved.items():
            if value is None:
                del os.environ[key]
            else:
                os.environ[key] = value
    return dirs


@pytest.fixture(scope="module")
def report_process(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    proc = analyze("report", f"runs=[{runs['sw']},{runs['zhde']}]", f"out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


@pytest.fixture(scope="module")
def report(report_process):
    out, proc = report_process
    assert len(proc.stdout.strip().splitlines()) == 1  # progress goes to stderr: stdout is the one JSON line
    return out, json.loads(proc.stdout)


def read_csv(path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


@functools.lru_cache(maxsize=None)
def logged(run_dir) -> dict[int, dict]:
    """The neuron-checkpoint rows of the run's offline W&B history, by step."""
    history = [r["history"]["item"] for r in inspect_records(offline_runs(run_dir / "wandb")[0])
               if r.get("type") == "history"]
    return {h["train/global_step"]: h for h in history if "neurons/total/specific" in h}


def hand_sets(ident: Identification) -> dict[str, set[tuple[int, int]]]:
    """Each language's neurons by hand: (layer, unit) of every selected neuron it owns, owned by 1..K-1 languages."""
    out = {lang: set() for lang in ident.langs}
    for s, flat in enumerate(ident.selected.tolist()):
        owners = [lang for k, lang in enumerate(ident.langs) if ident.owners[s, k]]
        if 0 < len(owners) < len(ident.langs):
            for lang in owners:
                out[lang].add(divmod(flat, ident.num_units))
    return out


def jaccard(x: set, y: set) -> float:
    return len(x & y) / len(x | y) if x | y else 1.0


def test_report_is_one_self_contained_page_with_every_figure_and_table(report):
    out, result = report
    page = (out / "report.html").read_text()
    pngs = sorted((out / "figures").glob("*.png"))
    assert result["figures"] == len(pngs) >= 10
    for png in pngs:  # every figure, byte for byte, inside the page
        assert base64.b64encode(png.read_bytes()).decode() in page
    for table in (out / "tables").glob("*.csv"):
        assert f'id="table-{table.stem}"' in page
    # nothing outside the page: every src / href is inline data or an anchor, no scripts, no stylesheets
    links = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page)
    assert links and all(link.startswith(("data:", "#")) for link in links)
    assert not re.search(r"https?://", page) and "<script" not in page and "<link" not in page
    for section in ("counts", "stages", "change", "overlap", "spontaneous"):
        assert f'<section id="{section}">' in page
    assert set(result["stages"]) == set(LABELS.values())


def test_report_says_each_phase_in_one_line_on_stderr(report_process):
    """stderr is a pipe here: no bar redraws, one line per phase with its seconds (a log file stays readable)."""
    stderr = report_process[1].stderr
    lines = stderr.splitlines()
    assert "\r" not in stderr
    phases = [re.fullmatch(r"report: (.+?) \.\.\. (\d+\.\d) s", line) for line in lines]
    assert all(phases), lines
    assert [m[1] for m in phases][:5] == ["counts", "stages", "change", "overlap", "spontaneous"]
    assert phases[-1][1].startswith("writing ") and len(phases) == 6


def test_counts_are_the_counts_the_runs_logged(runs, report):
    out, _ = report
    rows = read_csv(out / "tables" / "counts.csv")
    for key, run_dir in runs.items():
        history = logged(run_dir)
        mine = [r for r in rows if r["run"] == LABELS[key]]
        assert sorted({int(r["step"]) for r in mine}) == sorted(history) == [0, 2, 4]
        for r in mine:
            h = history[int(r["step"])]
            if r["lang"] == "all":
                for t in ("specific", "related", "general", "unassigned"):
                    assert int(r[t]) == h[f"neurons/total/{t}"]
                assert float(r["accuracy"]) == pytest.approx(h["eval/acc/avg"])
            else:
                assert int(r["specific"]) == h[f"neurons/specific/{r['lang']}"]
                assert int(r["related"]) == h[f"neurons/related/{r['lang']}"]
                assert int(r["general"]) == h["neurons/general"]
                assert float(r["accuracy"]) == pytest.approx(h[f"eval/acc/{r['lang']}"])


def test_before_after_deltas_are_differences_of_the_logged_counts(runs, report):
    out, _ = report
    per_lang = read_csv(out / "tables" / "spontaneous_per_language.csv")
    summary = read_csv(out / "tables" / "spontaneous.csv")
    layer_rows = read_csv(out / "tables" / "layer_change.csv")
    shared = read_csv(out / "tables" / "shared_by.csv")
    for key, run_dir in runs.items():
        h = logged(run_dir)
        first, last = h[0], h[4]
        label = LABELS[key]
        trained = {"sw"} if key == "sw" else {"zh", "de"}
        mine = {r["lang"]: r for r in per_lang if r["run"] == label}
        assert set(mine) == set(PAPER_LANGS)
        for lang, r in mine.items():
            for t in ("specific", "related"):
                assert int(r[f"{t} change"]) == last[f"neurons/{t}/{lang}"] - first[f"neurons/{t}/{lang}"]
            assert float(r["accuracy change"]) == pytest.approx(last[f"eval/acc/{lang}"] - first[f"eval/acc/{lang}"])
            assert (r["trained"] == "True") == (lang in trained)
        groups = {r["languages"]: r for r in summary if r["run"] == label}
        for group, langs in (("trained", trained), ("untrained", set(PAPER_LANGS) - trained)):
            assert int(groups[group]["n"]) == len(langs)
            for t in ("specific", "related"):
                assert int(groups[group][f"{t} change (sum)"]) == sum(
                    last[f"neurons/{t}/{lang}"] - first[f"neurons/{t}/{lang}"] for lang in langs)
        # per-layer changes add up to the change of the logged totals
        mine_layers = [r for r in layer_rows if r["run"].startswith(label + ",")]
        for t in ("specific", "related", "general", "unassigned"):
            assert sum(int(r["change"]) for r in mine_layers if r["type"] == t) == \
                last[f"neurons/total/{t}"] - first[f"neurons/total/{t}"]
        # shared by N: the logged histogram for N < K, the general set for N = K
        mine_shared = {int(r["N"]): r for r in shared if r["run"].startswith(label + ",")}
        for n in range(1, 10):
            assert int(mine_shared[n]["before"]) == first[f"neurons/shared_by/{n}"]
            assert int(mine_shared[n]["after"]) == last[f"neurons/shared_by/{n}"]
        assert (int(mine_shared[10]["before"]), int(mine_shared[10]["after"])) == (first["neurons/general"],
                                                                                    last["neurons/general"])


def test_overlaps_match_sets_built_by_hand_from_the_saved_checkpoints(runs, report):
    out, _ = report
    steps = read_csv(out / "tables" / "overlap_steps.csv")
    between = read_csv(out / "tables" / "overlap_runs_last.csv")
    finals = {}
    for key, run_dir in runs.items():
        sets = {step: hand_sets(Identification.load(run_dir / "neurons" / f"step-{step}")) for step in (0, 2, 4)}
        finals[key] = sets[4]
        for r in (r for r in steps if r["run"] == LABELS[key]):
            step, lang = int(r["step"]), r["lang"]
            assert float(r["vs first"]) == pytest.approx(jaccard(sets[0][lang], sets[step][lang]))
            previous = {0: 0, 2: 0, 4: 2}[step]
            assert float(r["vs previous"]) == pytest.approx(jaccard(sets[previous][lang], sets[step][lang]))
        # ... and what the run itself logged as overlap with step 0
        h = logged(run_dir)[4]
        for lang in PAPER_LANGS:
            assert h[f"neurons/overlap_with_start/{lang}"] == pytest.approx(jaccard(sets[0][lang], sets[4][lang]))
    values = {r["lang"]: float(r["jaccard"]) for r in between}
    for lang in PAPER_LANGS:
        assert values[lang] == pytest.approx(jaccard(finals["sw"][lang], finals["zhde"][lang]))
    first = read_csv(out / "tables" / "overlap_runs_first.csv")
    assert all(float(r["jaccard"]) == 1.0 for r in first)  # same seed: the same model at step 0


def test_layer_tables_and_stages_agree_with_the_saved_identification(runs, report):
    out, result = report
    stages = read_csv(out / "tables" / "stages.csv")
    for key, run_dir in runs.items():
        record = json.loads((run_dir / "neurons" / "step-4" / "checkpoint.json").read_text())
        layers = [r for r in read_csv(out / "tables" / f"layers_{slug(LABELS[key])}.csv")]
        assert len(layers) == record["identification"]["layers"] == 4
        for t in ("specific", "related", "general", "unassigned"):
            assert sum(int(r[t]) for r in layers) == record["identification"]["totals"][t]
        row = next(r for r in stages if r["run"] == LABELS[key] and r["lang"] == "all")
        assert result["stages"][LABELS[key]] == " / ".join(row[c] for c in list(row)[3:7])
        # four layers, four stages: one layer each
        assert [int(r["stage"]) for r in layers] == [1, 2, 3, 4]


def test_sources_a_checkpoint_folder_a_bare_stats_folder_and_a_step_suffix(runs, tmp_path):
    run_dir = runs["sw"]
    one = load_run(run_dir / "neurons" / "step-2")
    assert one.kind == "checkpoint" and one.steps == [2] and one.label == LABELS["sw"]
    assert load_run(f"{run_dir}@first").steps == [0] and load_run(f"{run_dir}@last").steps == [4]
    # statistics without an identification are identified with the given settings: the run's own settings give back
    # the identification it saved
    bare = tmp_path / "stats"
    bare.mkdir()
    for name in ("stats.json", "stats.safetensors"):
        shutil.copy(run_dir / "neurons" / "step-4" / name, bare / name)
    settings = IdentifySettings(top_rate=0.05, lam="auto", bar=0.95)
    again = load_run(bare, settings).checkpoints[0]
    saved = Identification.load(run_dir / "neurons" / "step-4")
    assert again.step == 4 and again.ident.lam == saved.lam
    assert torch.equal(again.ident.selected, saved.selected) and torch.equal(again.ident.owners, saved.owners)
    assert torch.equal(again.ident.general, saved.general)


def test_identify_and_reidentify_on_a_run_take_the_runs_own_settings(runs, capsys):
    """The tiny preset selects with neurons.top_rate 0.05: identify on one of its checkpoints, and every checkpoint
    identified again, give back what the run saved and logged, not analyze's default 0.01."""
    run_dir = runs["sw"]
    saved = Identification.load(run_dir / "neurons" / "step-4")
    assert main(["identify", f"source={run_dir / 'neurons' / 'step-4'}", "lam=auto"],
                conf_dir=ROOT / "conf" / "analyze") == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["top_rate"] == saved.top_rate == 0.05 and result["selected"] == int(saved.selected.numel()) > 10
    assert result["totals"] == saved.totals and "note" not in err
    assert main(["identify", f"source={run_dir / 'neurons' / 'step-4'}", "top_rate=0.01"],
                conf_dir=ROOT / "conf" / "analyze") == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["selected"] == 10
    assert f"note: {LABELS['sw']}: top_rate=0.01 differs from the run's neurons.top_rate 0.05" in err.splitlines()
    assert main(["counts", f"runs=[{run_dir}]", "reidentify=true"], conf_dir=ROOT / "conf" / "analyze") == 0
    counts = json.loads(capsys.readouterr().out)["counts"][LABELS["sw"]]
    for step, h in logged(run_dir).items():
        assert counts[str(step)] == {t: h[f"neurons/total/{t}"] for t in ("specific", "related", "general",
                                                                         "unassigned")}


def test_deactivating_a_language_equals_zeroing_its_up_proj_rows(runs):
    """At step 0 (the base model) zeroing a unit after act_fn is the same as zeroing its row of up_proj: compare the
    heatmap's numbers with that independent construction."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see ONE_THREAD
    try:
        check_deactivation_against_up_proj(runs)
    finally:
        torch.set_num_threads(threads)


def check_deactivation_against_up_proj(runs):
    run = load_run(runs["sw"])
    ckpt = run.checkpoint(0)
    loaded = load_checkpoint_model(run, 0)
    problems = load_probe_problems(run, ckpt.ident.langs, None, n=2)
    result = deactivation_effects(loaded.model, loaded.tokenizer, ckpt.ident, problems,
                                  modes=["specific+related", "all"], deactivated=["sw"])
    units = ckpt.ident.units("sw", types=("specific", "related"))
    assert result.zeroed["specific+related"]["sw"] == sum(len(u) for u in units) == len(hand_sets(ckpt.ident)["sw"])
    examples = [(p, " " + r, lang) for lang in ckpt.ident.langs
                for p, r in zip(problems[lang]["prompt"], problems[lang]["response"])]
    batches = make_batches(loaded.tokenizer, examples, ckpt.ident.langs, count="response", batch_size=8,
                           max_length=512)
    assert result.baseline == pytest.approx(perplexity(loaded.model, batches, ckpt.ident.langs))
    with torch.no_grad():
        for layer, idx in enumerate(units):
            loaded.model.model.layers[layer].mlp.up_proj.weight[idx] = 0
    by_weights = perplexity(loaded.model, batches, ckpt.ident.langs)
    assert result.ppl["specific+related"]["sw"] == pytest.approx(by_weights, rel=1e-5)
    assert result.ppl["specific+related"]["sw"] != pytest.approx(result.baseline, rel=1e-6)
    # "all" adds the general neurons (a tiny model may have none at step 0)
    flat = {layer * ckpt.ident.num_units + int(i) for layer, idx in enumerate(units) for i in idx}
    assert result.zeroed["all"]["sw"] == len(flat | set(ckpt.ident.general.tolist()))


def test_deactivate_command_on_a_saved_checkpoint(runs, tmp_path):
    proc = analyze("deactivate", f"source={runs['zhde']}", "step=2", "modes=[specific+related]", "langs=[zh,en]",
                   "n=2", f"out={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["step"] == 2 and set(result["baseline"]) == set(PAPER_LANGS)
    assert (tmp_path / "figures" / f"deactivation_{slug(LABELS['zhde'])}.png").is_file()
    # the phase that runs the model says how many passes it makes; the JSON line stays alone on stdout
    assert len(proc.stdout.strip().splitlines()) == 1
    assert re.search(r"^deactivate: deactivation \(3 passes\) \.\.\.", proc.stderr, re.M), proc.stderr
    rows = read_csv(tmp_path / "tables" / "deactivation.csv")
    assert {(r["deactivated"], r["lang"]) for r in rows} == {(a, b) for a in ("zh", "en") for b in PAPER_LANGS}
    for r in rows:
        assert float(r["ratio"]) == pytest.approx(float(r["perplexity"]) / float(r["baseline perplexity"]))
    # a step whose adapter was not kept: one line naming the steps that have one
    proc = analyze("deactivate", f"source={runs['zhde']}", "step=3")
    assert proc.returncode == 2 and "no neuron checkpoint at step 3" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_figures_and_tables_go_to_wandb_as_a_new_run_or_onto_the_source_run_offline(runs, tmp_path):
    source = tmp_path / "run"
    shutil.copytree(runs["sw"], source)
    run_id = inspect_summary(offline_runs(source / "wandb")[0])["run_id"]
    proc = analyze("stages", f"runs=[{source}]", f"out={tmp_path / 'stages'}", "wandb=resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    folders = offline_runs(source / "wandb")
    assert len(folders) == 2 and all(f.name.endswith(run_id) for f in folders)
    history = [r["history"]["item"] for r in inspect_records(folders[1]) if r.get("type") == "history"]
    assert history and history[0]["train/global_step"] == 4
    keys = {key.split(".")[0] for key in history[0]}  # media and tables are logged as nested records
    name = slug(LABELS["sw"])
    assert {f"analysis/stages_{name}", "analysis/stages", f"analysis/layers_{name}"} <= keys
    proc = analyze("counts", f"runs=[{source}]", f"out={tmp_path / 'counts'}", "wandb=new")
    assert proc.returncode == 0, proc.stderr[-3000:]
    new = offline_runs(tmp_path / "counts" / "wandb")
    assert len(new) == 1
    summary = inspect_summary(new[0])
    assert {"analysis/counts_totals", "analysis/counts_languages", "analysis/counts"} <= set(summary["summary"])
    assert summary["run_id"] != run_id


def test_input_problems_are_one_line_errors(runs, tmp_path, capsys):
    cases = [
        (["report", "runs=[wandb:someone/langneurons/abc123]"], "pass a local run dir instead"),
        (["report", f"runs=[{tmp_path / 'nope'}]"], "no such run"),
        (["report", f"runs=[{runs['sw']}]", "wandb=resume", "out=null"], "needs out="),
        (["report", f"runs=[{runs['sw']}]", "step=7"], "no neuron checkpoint at step 7"),
        (["stages", f"runs=[{runs['sw']}]", "step=7"], "no neuron checkpoint at step 7"),
        (["spontaneous", f"runs=[{runs['sw']}]", "after=9"], "no neuron checkpoint at step 9"),
        (["compare", f"before={runs['sw']}", "after=/"], "not a run dir"),
        (["stages", f"runs=[{runs['sw']}]", "lam=much"], "lam=much: must be a number; a number >= 0 or auto"),
    ]
    for args, message in cases:
        assert main(args, conf_dir=ROOT / "conf" / "analyze") == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


class FakeArtifact:
    def __init__(self, step, folder, run):
        self.type, self.aliases, self.metadata = "neuron-checkpoint", [f"step-{step}", "latest"], {"step": step}
        self.folder, self.run = folder, run

    def download(self, root):
        shutil.copytree(self.folder, root, dirs_exist_ok=True)
        return root

    def logged_by(self):
        return self.run


class FakeRun:
    def __init__(self, run_dir):
        self.id = "abc123"
        # the server wraps config entries as {"value": ...}
        config = load_run(run_dir).config
        self.config = {key: {"value": value} for key, value in config.items()}
        self.artifacts = [FakeArtifact(step, run_dir / "neurons" / f"step-{step}", self) for step in (0, 2, 4)]

    def logged_artifacts(self):
        return self.artifacts


def test_wandb_runs_and_artifacts_are_read_through_the_api_when_online(runs, tmp_path, monkeypatch):
    import wandb

    fake = FakeRun(runs["sw"])
    calls = []

    class FakeApi:
        def __init__(self, timeout=None):
            pass

        def run(self, path):
            calls.append(path)
            return fake

        def artifact(self, name):
            calls.append(name)
            return next(a for a in fake.artifacts if name.endswith(f":{a.aliases[0]}"))

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setattr(wandb, "Api", FakeApi)
    run = load_run("wandb:me/langneurons/abc123", cache=tmp_path)
    assert run.kind == "wandb" and run.steps == [0, 2, 4] and run.label == LABELS["sw"]
    assert run.aligned_langs == ("sw",) and run.wandb.run_id == "abc123"
    saved = Identification.load(runs["sw"] / "neurons" / "step-4")
    assert torch.equal(run.checkpoint(4).ident.owners, saved.owners)
    one = load_run("wandb:me/langneurons/neurons-abc123:step-2", cache=tmp_path)
    assert one.steps == [2] and calls == ["me/langneurons/abc123", "me/langneurons/neurons-abc123:step-2"]

    class DownApi(FakeApi):
        def run(self, path):
            raise ConnectionError("connection refused\nmore detail")

    monkeypatch.setattr(wandb, "Api", DownApi)
    with pytest.raises(HarnessError, match="cannot read it from W&B .*pass a local run dir"):
        load_run("wandb:me/langneurons/abc123", cache=tmp_path)
