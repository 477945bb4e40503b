"""The saved W&B views of a study (analyze.py workspace, analyze.py wandb-report), offline: built from a real run's
offline W&B history, written as JSON, read back with the library's own loaders, and every panel key checked against
what the run logged (read back with wandb leet inspect). No W&B server here: saving is checked against a server that
never answers and against a stand-in for the server's GraphQL answers."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from langneurons import tracking
from langneurons.analysis import wandb_io, wandb_views
from langneurons.analysis.cli import main
from langneurons.experiment import RunResult

from conftest import ROOT, inspect_records, offline_runs, run_train

CONF = ROOT / "conf" / "analyze"
# The default run, shortened (conf/debug/smoke.yaml: 4 steps, neuron checkpoints at 0, 2 and 4), its loss logged
# every second step (the default, 10, logs none in 4 steps), short answers.
SHORT = ["debug=smoke", "trainer.logging_steps=2", "eval.max_new_tokens=8"]
RENAMED = "neurons/specific_count/{lang}"  # what a rename on the logging side only logs instead of neurons/specific/
VIEW = "langneurons: neuron dynamics"  # the view's name (conf/analyze/workspace.yaml)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("default-run")
    out = run_train(f"hydra.run.dir={run_dir}", *SHORT)
    assert out.returncode == 0, out.stderr[-3000:]
    (folder,) = offline_runs(run_dir / "wandb")
    return run_dir, inspect_records(folder)


@pytest.fixture(scope="module")
def renamed_run(tmp_path_factory):
    """A run whose logger writes one key under another name (tracking.Keys.specific patched at logging time only,
    in the training process): the view, built with the real table, no longer matches it."""
    run_dir = tmp_path_factory.mktemp("renamed-run")
    launcher = ("import runpy, sys; from langneurons import tracking; "
                f"tracking.Keys.specific = tracking.Key({RENAMED!r}); "
                "sys.argv = ['train.py', *sys.argv[1:]]; runpy.run_path('train.py', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", launcher, f"hydra.run.dir={run_dir}", *SHORT, "probe_langs=[en,sw]"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (folder,) = offline_runs(run_dir / "wandb")
    return run_dir, inspect_records(folder)


def analyze(capsys, *args):
    code = main(list(args), conf_dir=CONF)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else out), err


def logged_config(records) -> dict:
    """The run's config as W&B holds it (the run record and its updates), values unwrapped."""
    config = {}
    for r in records:
        if r.get("type") == "run":
            config.update(r["run"]["config"]["update"])
        elif r.get("type") == "config":
            config.update(r["config"]["update"])
    return wandb_io._unwrap_config(config)


def test_the_workspace_view_charts_every_key_the_default_run_logged_and_no_other(default_run, tmp_path, capsys):
    run_dir, records = default_run
    code, result, err = analyze(capsys, "workspace", "entity=me", "project=langneurons", f"runs=[{run_dir}]",
                                "group=tiny-mapo", f"out={tmp_path}")
    assert code == 0, err
    # offline: not saved, said in one line; the command's own check found nothing the run did not log
    assert result["saved"] is False and "url" not in result
    assert [n for n in result["notes"] if "did not log" in n] == [], result["notes"]
    assert err.count("note: W&B is offline here") == 1
    view = wandb_views.load_view(result["json"])  # the JSON, read back by the library's own loader
    logged = wandb_io.history_keys(records)  # what the run logged, as wandb leet inspect reads it back
    panels = wandb_views.panel_keys(view)
    assert wandb_views.check_keys(panels, logged) == []  # every panel has its data ...
    assert wandb_views.uncharted(panels, logged) == []  # ... and every key of a charted family has its panel
    # every language the run evaluated and probed has its section: accuracy beside its specific / related counts
    config = logged_config(records)
    langs = config["run"]["eval_langs"]
    assert langs == ["en", "zh", "ru", "de", "fr", "es", "ja", "sw", "th", "bn"]
    sections = {s.name: set() for s in view.sections}
    for p in panels:
        sections[p.where.split(" / ")[0]].add(p.key)
    for lang in langs:
        (name,) = [n for n in sections if n.startswith(f"{lang} (")]
        assert {f"eval/acc/{lang}", f"neurons/specific/{lang}", f"neurons/related/{lang}"} <= sections[name]
    assert "sw (Swahili), aligned" in sections
    # every type the run logged a total of has its chart, and so has every N of shared_by/<N>
    totals = sections["Neuron totals and neurons shared by N languages"]
    assert {k for k in logged if k.startswith("neurons/total/")} == {k for k in totals if "/total/" in k}
    assert {k for k in logged if k.startswith("neurons/shared_by/")} <= totals
    assert {"train/loss", "train/rewards/margins"} <= sections["Training"]
    # the runset: the group, grouped by group then aligned language, the run coloured by its language
    (run_id,) = [r["run"]["run_id"] for r in records if r.get("type") == "run"]
    assert view.runset_settings.filters == "Metric(\"Group\") == 'tiny-mapo'"
    assert [m.name for m in view.runset_settings.groupby] == ["Group", "lang"]
    assert view.runset_settings.run_settings[run_id].color == wandb_views.LANG_COLORS["sw"]
    assert view.settings.x_axis == "train/global_step"


def test_the_wandb_report_charts_what_the_run_logged_and_tables_of_the_html_report(default_run, tmp_path, capsys):
    run_dir, records = default_run
    code, result, err = analyze(capsys, "wandb-report", "entity=me", "project=langneurons", f"runs=[{run_dir}]",
                                f"out={tmp_path}")
    assert code == 0, err
    assert result["saved"] is False and (tmp_path / "report.html").is_file()
    assert any("was logged offline" in n and "wandb sync" in n for n in result["notes"])
    report = wandb_views.load_report(result["json"])
    panels = wandb_views.panel_keys(report)
    # the runs' panels chart what the run logged; the analysis panels, the tables and figures the report wrote
    assert wandb_views.check_keys(panels, wandb_io.history_keys(records)) == []
    tables = [p.stem for p in (tmp_path / "tables").glob("*.csv")]
    written = {tracking.Keys.analysis(name=name): tracking.TABLE for name in tables}
    figures = [p.stem for p in (tmp_path / "figures").glob("*.png")]
    written |= {tracking.analysis_figure_key(name, tables): tracking.IMAGE for name in figures}
    assert "analysis/spontaneous" in written and "analysis/spontaneous/figure" in written  # a table, a figure
    assert wandb_views.check_keys(panels, written, runset=wandb_views.ANALYSIS) == []
    assert {p.key for p in panels if p.runset == wandb_views.ANALYSIS} == set(written)  # every table and figure
    # the figures' metrics: per language, and the totals
    charted = {p.key for p in panels if p.runset == wandb_views.RUNS}
    assert {"neurons/specific/sw", "neurons/related/bn", "eval/acc/th", "neurons/total/general"} <= charted
    (run_id,) = [r["run"]["run_id"] for r in records if r.get("type") == "run"]
    runsets = [g.runsets[0] for g in report.blocks if type(g).__name__ == "PanelGrid"]
    assert {rs.name for rs in runsets} == {"runs", "analysis"}
    assert all(rs.filters == f"Metric(\"ID\") in ['{run_id}']" for rs in runsets if rs.name == "runs")
    assert all((rs.entity, rs.project) == ("me", "langneurons") for rs in runsets)


def test_a_key_renamed_on_the_logging_side_only_fails_the_check_naming_it(renamed_run, tmp_path, capsys):
    run_dir, records = renamed_run
    logged = wandb_io.history_keys(records)
    assert "neurons/specific_count/sw" in logged and "neurons/specific/sw" not in logged
    code, result, err = analyze(capsys, "workspace", "entity=me", "project=langneurons", f"runs=[{run_dir}]",
                                f"out={tmp_path}")
    assert code == 0, err
    view = wandb_views.load_view(result["json"])
    problems = wandb_views.check_keys(wandb_views.panel_keys(view), logged)
    # exactly the renamed keys, each named: nothing else drifted
    assert [p.split(" ")[0] for p in problems] == ["neurons/specific/en", "neurons/specific/sw"], problems
    assert all("not logged" in p for p in problems)
    assert "did not log 2 keys the view charts: neurons/specific/en" in err  # the command says so too


def test_without_a_login_both_commands_say_so_in_one_line_and_exit_2(default_run, capsys):
    run_dir, _ = default_run
    for args in (["workspace", "entity=me", "project=langneurons"],
                 ["wandb-report", "entity=me", "project=langneurons", f"runs=[{run_dir}]"]):
        code, out, err = analyze(capsys, *args)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        assert "wandb login" in err and "out=<folder>" in err
    for args, phrase in ((["workspace", "project=langneurons"], "entity required"),
                         (["workspace", "entity=me"], "project required"),
                         (["workspace", "entity=me", "project=p", "langs=[xx]", "out=/tmp"], "unknown language"),
                         (["workspace", "entity=me", "project=p", "timeout=0", "out=/tmp"], "timeout")):
        code, out, err = analyze(capsys, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and phrase in err, err


@pytest.mark.parametrize("command", ["workspace", "wandb-report"])
def test_a_server_that_never_answers_is_one_line_and_exit_2_within_the_timeout(default_run, tmp_path, command):
    """W&B's client retries an unanswering server for minutes (and its exit hooks wait for it); the command gives
    up after timeout= seconds and ends at once."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []

    def hold() -> None:  # accept every connection and never answer; ends when the test closes the socket
        try:
            while len(held) < 16:
                held.append(server.accept())
        except OSError:
            pass

    threading.Thread(target=hold, daemon=True).start()
    env = {**os.environ, "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": f"http://127.0.0.1:{server.getsockname()[1]}",
           "LANGNEURONS_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    args = {"workspace": [], "wandb-report": [f"runs=[{default_run[0]}]"]}[command]
    started = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, str(ROOT / "analyze.py"), command, "entity=me", "project=p",
                              "timeout=2", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    finally:
        server.close()
    assert out.returncode == 2 and out.stdout == "", out.stderr
    lines = out.stderr.strip().splitlines()
    assert "did not answer within 2 s" in lines[-1] and not any(line.startswith("wandb:") for line in lines), lines
    assert not (tmp_path / "wandb-views.json").exists()  # nothing recorded
    # imports, the analyses, the 2 s: about 15 s; W&B's exit hooks alone would wait 90 s more for the given-up call
    assert time.perf_counter() - started < 60


class StandInServer:
    """What the W&B server answers the GraphQL calls of a view save (the shapes wandb_workspaces reads), and what
    it was asked: a stand-in for the server behind ``wandb.Api``, nothing of the library replaced."""

    app_url = "https://wandb.example"

    def __init__(self, views=()):
        self.views = list(views)
        self.asked = []

    def execute_graphql(self, query, variables=None):
        self.asked.append((query, dict(variables or {})))
        if "ProjectViews" in query:
            return {"project": {"allViews": {"edges": [{"node": v} for v in self.views]}}}
        if "upsertView" in query:
            return {"upsertView": {"view": {"id": variables.get("id") or "new-id", "name": variables["name"]},
                                   "inserted": not variables.get("id")}}
        raise AssertionError(f"unexpected call: {query[:80]}")


def test_a_saved_view_updates_the_view_of_its_name_and_the_end_of_an_online_run_prints_it(monkeypatch, tmp_path,
                                                                                          capsys):
    import wandb

    server = StandInServer(views=[{"id": "view-7", "name": "nw-abc123-v", "displayName": VIEW}])
    listed = []

    class Api:  # wandb.Api, talking to the stand-in
        def __init__(self, *args, **kwargs):
            self._service_api = server

        def runs(self, path=None, filters=None, order="+created_at", per_page=50, include_sweeps=False, lazy=True):
            listed.append((path, filters))
            return []  # the project has no runs yet: langs= gives the sections

    monkeypatch.setattr(wandb, "Api", Api)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("LANGNEURONS_CACHE", str(tmp_path))
    result = RunResult(run_dir=tmp_path, adapter_dir=tmp_path / "adapter", wandb_dir=tmp_path / "wandb",
                       wandb_mode="online", wandb_project=("me", "p", "tiny-mapo"))
    # before a view is saved, an online run says how to save one ...
    assert "python analyze.py workspace entity=me project=p group=tiny-mapo" in result.report()
    code, saved, err = analyze(capsys, "workspace", "entity=me", "project=p", "langs=[sw,en]")
    assert code == 0, err
    assert saved["saved"] is True and saved["url"] == "https://wandb.example/me/p?nw=abc123"
    assert listed == [("me/p", None)]  # no runs= and no group=: every run of the project
    (upsert,) = [v for q, v in server.asked if "upsertView" in q]
    assert upsert["id"] == "view-7" and upsert["displayName"] == VIEW  # updated, not a new one
    assert '"eval/acc/sw"' in upsert["spec"] and '"neurons/related/en"' in upsert["spec"]
    # ... and once saved, the end of an online run of that project gives its URL; an offline run prints nothing new
    assert f"compare runs: {saved['url']}" in result.report()
    offline = RunResult(run_dir=tmp_path, adapter_dir=tmp_path / "adapter", wandb_dir=tmp_path / "wandb",
                        wandb_mode="offline", wandb_project=("me", "p", "tiny-mapo"))
    assert "compare runs" not in offline.report()
    # a project without a view of that name gets a new one
    server.views, server.asked = [], []
    code, saved, err = analyze(capsys, "workspace", "entity=me", "project=p", "langs=[sw]", "name=mine")
    assert code == 0, err
    (upsert,) = [v for q, v in server.asked if "upsertView" in q]
    assert "id" not in upsert and upsert["displayName"] == "mine"
    assert tracking.recorded_view("me", "p")["name"] == "mine"


# ---- the keys other readers name by hand ----------------------------------------------------------------------------
# The views build their keys from tracking.Keys and so move with a rename there; the README's table of neuron
# checkpoint keys, the sweeps' metrics and views users saved in the W&B app do not. These checks make a key renamed
# in tracking.py fail until they follow.
def documented_keys() -> list[str]:
    """The keys of the README's table of neuron checkpoint keys (section "Neuron checkpoints")."""
    import re

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("| key | what |", 1)[1].split("\n\n", 1)[0]
    keys = []
    for row in table.splitlines()[2:]:
        keys += [k for k in re.findall(r"`([^`]+)`", row.split("|")[1]) if not k.startswith("/")]
    return keys


def sweep_metrics() -> list[str]:
    import yaml

    return [yaml.safe_load(p.read_text())["metric"]["name"] for p in sorted((ROOT / "sweeps").glob("*.yaml"))
            if "metric" in yaml.safe_load(p.read_text())]


def key_families(keys=None) -> dict[str, tracking.Key]:
    keys = keys or tracking.Keys
    return {name: getattr(keys, name) for name in dir(keys) if isinstance(getattr(keys, name), tracking.Key)}


def stale_names(names, families) -> list[str]:
    """The hand-written key names (README placeholders <x> and ... allowed) that no key family of ``families``
    produces."""
    import re

    stale = []
    for name in names:
        shape = re.sub(r"<\w+>", "X", name)
        prefix = name.removesuffix("...")  # neurons/transition_since_start/... names a family by its prefix
        if not any(f.matches(shape) or (name.endswith("...") and f.template.startswith(prefix))
                   for f in families.values()):
            stale.append(name)
    return stale


def undocumented(families) -> list[str]:
    """The neuron checkpoint key families (eval/, neurons/) the README's table does not name."""
    import re

    documented = []
    for name in documented_keys():
        body = re.escape(name.removesuffix("...")).replace(r"\<", "<").replace(r"\>", ">")
        documented.append(re.compile("^" + re.sub(r"<\w+>", "[^/]+", body) + (".*" if name.endswith("...") else "")
                                     + "$"))
    out = []
    for name, family in families.items():
        if not family.template.startswith(("eval/", "neurons/")):
            continue
        sample = family.template.format_map({f: "X" for f in re.findall(r"\{(\w+)\}", family.template)})
        if not any(d.match(sample) for d in documented):
            out.append(f"{name}: {family.template}")
    return out


def test_the_readme_and_the_sweeps_name_the_keys_tracking_logs():
    names = documented_keys()
    assert {"eval/acc/<lang>", "neurons/specific/<lang>", "neurons/shared_by/<N>"} <= set(names), names
    assert stale_names(names, key_families()) == []
    assert undocumented(key_families()) == []
    assert sweep_metrics() and stale_names(sweep_metrics(), key_families()) == []


def test_a_key_renamed_in_tracking_fails_the_readme_and_sweep_check():
    """The check above can fail: tracking.Keys with accuracy renamed leaves the README and the sweeps behind."""

    class Renamed(tracking.Keys):
        accuracy = tracking.Key("eval/accuracy/{lang}")

    families = key_families(Renamed)
    assert stale_names(documented_keys(), families) == ["eval/acc/<lang>", "eval/acc/avg"]
    assert stale_names(sweep_metrics(), families) == ["eval/acc/avg", "eval/acc/avg"]
    assert undocumented(families) == ["accuracy: eval/accuracy/{lang}"]
