"""analyze.py on a run takes the run's own identification settings (neurons.* of its config) unless told otherwise,
says in one line where a given setting differs from the run's, and tells its phases on stderr while stdout keeps
the one JSON line. On a hand-made run: statistics of a 4 x 256 model (the tiny preset's shape) and a run config."""

import io
import json
import re
import shutil
import sys

import pytest
import torch
import yaml

from langneurons.analysis import progress
from langneurons.analysis.cli import compose, main, parse
from langneurons.analysis.sources import IdentifySettings, load_run, load_runs, setting_label, unique_labels
from langneurons.neurons import NeuronStats, identify

from conftest import ROOT

CONF = ROOT / "conf" / "analyze"
NEURONS = {"enabled": True, "probe": "responses", "method": "ternary", "top_rate": 0.05, "lam": "auto", "bar": 0.95,
           "lam_lo": 0.0, "lam_hi": 0.2, "general_min_langs": None}
CONFIG = {"model": {"preset": "tiny"}, "alignment": {"method": "mapo"}, "lang": "sw", "data": {"source": "synthetic"},
          "seed": 0, "neurons": NEURONS}
LABEL = "tiny mapo sw synthetic"


def make_stats(seed: int = 0) -> NeuronStats:
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 1000, (4, 256, 3), generator=g, dtype=torch.int64)
    return NeuronStats(counts, torch.full((3,), 1000, dtype=torch.int64), ("en", "zh", "sw"))


def make_run(folder, config=CONFIG, record="hydra", steps=(0, 8), saved=False):
    """A run dir with neurons/step-<N>/ statistics (and, with ``saved``, the identification the run made) and its
    config as .hydra/config.yaml or as run.json."""
    for step in steps:
        stats = make_stats(step)
        stats.save(folder / "neurons" / f"step-{step}")
        if saved:
            identify(stats, top_rate=config["neurons"]["top_rate"]).save(folder / "neurons" / f"step-{step}")
    if record == "hydra":
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    else:
        (folder / "run.json").write_text(json.dumps({"config": config, "overrides": [], "wandb_id": None}))
    return folder


def settings(*overrides: str) -> IdentifySettings:
    """The settings analyze.py composes from these command-line overrides."""
    return parse("stages", compose(CONF, "stages", ["runs=[x]", *overrides])).identify_settings()


def run_cli(capsys, *args):
    code = main(list(args), CONF)
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1  # the one JSON line
    return json.loads(lines[0]), err


@pytest.mark.parametrize("record", ["hydra", "run.json"])
def test_a_runs_checkpoints_are_identified_with_the_runs_own_settings(tmp_path, capsys, record):
    run_dir = make_run(tmp_path / "run", record=record)
    stats = make_stats(0)
    theirs = identify(stats, top_rate=0.05)
    assert theirs.summary()["selected"] == 51 and identify(stats).summary()["selected"] == 10  # 0.05 vs 0.01
    for source in (run_dir, run_dir / "neurons", run_dir / "neurons" / "step-0", f"{run_dir}@0"):
        run = load_run(source, settings(), reidentify=True)
        ident = run.checkpoint(0).ident
        assert ident.top_rate == 0.05 and torch.equal(ident.selected, theirs.selected), source
        assert run.label == LABEL and run.notes == []
    assert capsys.readouterr().err == ""  # nothing differs: nothing said
    # a setting given explicitly wins, and a difference from the run's is one line
    run = load_run(run_dir, settings("top_rate=0.01", "bar=0.95"), reidentify=True)
    assert run.checkpoint(0).ident.top_rate == 0.01 and run.checkpoint(0).ident.summary()["selected"] == 10
    err = capsys.readouterr().err
    assert err == f"note: {LABEL}: top_rate=0.01 differs from the run's neurons.top_rate 0.05\n"


def test_sources_without_a_run_config_keep_the_analyze_defaults(tmp_path):
    run_dir = make_run(tmp_path / "run")
    bare = tmp_path / "stats"
    shutil.copytree(run_dir / "neurons" / "step-0", bare)
    assert load_run(bare, settings()).checkpoint().ident.top_rate == 0.01
    lone = tmp_path / "lone" / "neurons" / "step-0"  # a checkpoint folder of no run config
    shutil.copytree(run_dir / "neurons" / "step-0", lone)
    assert load_run(lone, settings()).checkpoint().ident.top_rate == 0.01
    # settings made in code count as given where they differ from the defaults
    assert load_run(run_dir, IdentifySettings(bar=0.9), reidentify=True).checkpoint(0).ident.top_rate == 0.05
    assert load_run(run_dir, IdentifySettings(top_rate=0.02), reidentify=True).checkpoint(0).ident.top_rate == 0.02
    # a run's settings fill only what was not given, each from neurons.<key>
    mine, notes = settings("lam=0.1").for_run({"neurons": {**NEURONS, "bar": 0.9, "general_min_langs": 2}})
    assert (mine.top_rate, mine.bar, mine.general_min_langs, mine.lam) == (0.05, 0.9, 2, 0.1)
    assert notes == ["lam=0.1 differs from the run's neurons.lam auto"]


def test_identify_on_a_runs_checkpoint_selects_what_the_run_selected(tmp_path, capsys):
    run_dir = make_run(tmp_path / "run")
    expected = identify(make_stats(8), top_rate=0.05).summary()
    for source in (run_dir / "neurons" / "step-8", run_dir):  # a run dir: its last checkpoint
        result, err = run_cli(capsys, "identify", f"source={source}", "lam=auto")
        assert result["top_rate"] == 0.05 and result["selected"] == expected["selected"] == 51
        assert result["totals"] == expected["totals"] and "note" not in err and "notes" not in result
    result, err = run_cli(capsys, "identify", f"source={run_dir}/neurons/step-8", "top_rate=0.01")
    assert result["top_rate"] == 0.01 and result["selected"] == 10
    assert result["notes"] == ["top_rate=0.01 differs from the run's neurons.top_rate 0.05"]
    assert [line for line in err.splitlines() if line.startswith("note:")] == [
        f"note: {LABEL}: top_rate=0.01 differs from the run's neurons.top_rate 0.05"]
    result, _ = run_cli(capsys, "identify", f"source={run_dir}@0")
    assert result["checkpoint"] == str(run_dir / "neurons" / "step-0")


def test_reidentify_in_every_subcommand_uses_the_runs_settings(tmp_path, capsys):
    run_dir = make_run(tmp_path / "run")
    expected = {str(step): identify(make_stats(step), top_rate=0.05).totals for step in (0, 8)}
    result, _ = run_cli(capsys, "counts", f"runs=[{run_dir}]", "reidentify=true")
    assert result["counts"][LABEL] == expected
    result, _ = run_cli(capsys, "stages", f"runs=[{run_dir}]", "reidentify=true", "step=0")
    assert result["stages"][LABEL]["step"] == 0
    result, _ = run_cli(capsys, "report", f"runs=[{run_dir}]", "reidentify=true", f"out={tmp_path / 'report'}")
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["counts"][LABEL] == expected
    # a setting given that differs from the run's is said in the report's notes too
    result, err = run_cli(capsys, "counts", f"runs=[{run_dir}]", "reidentify=true", "top_rate=0.01")
    assert result["counts"][LABEL]["0"] == identify(make_stats(0), top_rate=0.01).totals
    assert f"note: {LABEL}: top_rate=0.01 differs from the run's neurons.top_rate 0.05" in err.splitlines()
    assert f"{LABEL}: top_rate=0.01 differs from the run's neurons.top_rate 0.05" in result["notes"]


def test_a_given_setting_the_saved_identifications_do_not_use_is_said(tmp_path, capsys):
    run_dir = make_run(tmp_path / "run", saved=True)
    result, err = run_cli(capsys, "counts", f"runs=[{run_dir}]", "top_rate=0.01")
    assert result["counts"][LABEL]["0"] == identify(make_stats(0), top_rate=0.05).totals  # the saved one
    (line,) = [line for line in err.splitlines() if line.startswith("note:")]
    assert line == (f"note: {LABEL}: top_rate=0.01 not used: the checkpoints keep the identification they saved "
                    "(reidentify=true identifies them again)")


def test_runs_are_labelled_by_their_setting_and_kept_apart_by_what_differs(tmp_path):
    assert setting_label(CONFIG) == LABEL
    assert setting_label({**CONFIG, "lang": ["zh", "de"], "data": {"source": "mgsm"}}) == "tiny mapo zh+de mgsm"
    assert setting_label({**CONFIG, "lang": "all"}) == "tiny mapo all synthetic"
    assert setting_label({"model": {"preset": None, "name_or_path": "/models/gemma-3-270m"}}) == "gemma-3-270m"
    a = make_run(tmp_path / "10-00-00", config=CONFIG)
    b = make_run(tmp_path / "11-00-00", config={**CONFIG, "seed": 1})
    c = make_run(tmp_path / "12-00-00", config={**CONFIG, "seed": 1})
    runs = load_runs([a, b])
    assert [r.label for r in runs] == [f"{LABEL} seed=0", f"{LABEL} seed=1"]
    runs = load_runs([b, c])  # the same setting twice: the folders tell them apart
    assert [r.label for r in runs] == [f"{LABEL} (11-00-00)", f"{LABEL} (12-00-00)"]
    runs = load_runs([b, b])
    assert len({r.label for r in runs}) == 2
    unique_labels(runs)
    assert len({r.label for r in runs}) == 2


# ---- progress on stderr ----------------------------------------------------------------------------------------------
class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_phase_is_one_line_and_a_failed_quick_one_adds_nothing_to_its_error(capsys):
    with progress.phase("report: counts"):
        pass
    assert re.fullmatch(r"report: counts \.\.\. \d+\.\d s\n", capsys.readouterr().err)
    with pytest.raises(ValueError):
        with progress.phase("report: stages"):
            raise ValueError("bad")
    assert capsys.readouterr().err == ""
    # a long phase says its name when it gets long, its seconds when it ends; a line in between keeps the order
    with progress.phase("report: change"):
        progress.note("something")
    assert re.fullmatch(r"report: change \.\.\.\nnote: something\nreport: change: done in \d+\.\d s\n",
                        capsys.readouterr().err)


def test_bars_only_on_a_terminal_and_plain_lines_in_a_log(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    bar = progress.Bar(3, "deactivation", "pass", every=0.0)
    for what in ("intact model", "specific of en off", "specific of sw off"):
        bar.set_postfix_str(what)
        bar.update()
    bar.close()
    assert "\r" not in log.getvalue()
    assert log.getvalue().splitlines() == ["deactivation: 1/3 passes, 0 s (last: intact model)",
                                           "deactivation: 2/3 passes, 0 s (last: specific of en off)"]
    tty = Terminal()
    monkeypatch.setattr(sys, "stderr", tty)
    bar = progress.Bar(3, "deactivation", "pass")
    bar.update(3)
    bar.close()
    assert "\r" in tty.getvalue() and "deactivation" in tty.getvalue()
    quiet = io.StringIO()
    monkeypatch.setattr(sys, "stderr", quiet)
    bar = progress.Bar(3, "deactivation", "pass", enabled=False, every=0.0)
    bar.update()
    bar.close()
    assert quiet.getvalue() == ""


def test_report_tells_its_phases_on_stderr_and_keeps_stdout_one_json_line(tmp_path, capsys):
    run_dir = make_run(tmp_path / "run")
    result, err = run_cli(capsys, "report", f"runs=[{run_dir}]", "reidentify=true", f"out={tmp_path / 'out'}")
    assert result["out"] == str(tmp_path / "out")
    lines = err.splitlines()
    phases = [re.fullmatch(r"report: (.+?) \.\.\. (\d+\.\d) s", line) for line in lines]
    assert all(phases), lines
    names = [m[1] for m in phases]
    assert names[:6] == ["identification of 2 checkpoints", "counts", "stages", "change", "overlap", "spontaneous"]
    assert names[6].startswith("writing ") and len(names) == 7
