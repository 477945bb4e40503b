"""W&B sweeps: every sweep config validates and drives train.py through Hydra overrides; the offline agent runs a
sweep without a W&B server (proposals from the open-source engine, metrics read back from the offline runs)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from conftest import ROOT, inspect_records, inspect_summary, offline_runs
from langneurons.errors import HarnessError, error_line
from langneurons.sweep import SweepState, build_command, load_sweep

SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))
# What a test adds to every run: the tiny model, a short run, three languages probed.
SHORT = ["model=tiny", "trainer.max_steps=2", "trainer.logging_steps=1", "trainer.save_steps=0",
         "alignment.questions.n=16", "data.n=4", "probe_langs=[sw,zh,de]", "neurons.every_n_steps=2",
         "eval.max_new_tokens=8"]


def agent(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``python -m langneurons.sweep <args>``, as a user runs it from the project root."""
    # One thread per run: on a small shared machine torch's default thread pool makes a tiny run several times slower.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "langneurons.sweep", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=1200)


def proposals(config: dict, n: int) -> list[dict]:
    """Up to ``n`` runs the engine proposes (the whole grid for a small grid), as if each had finished."""
    state = SweepState(folder=Path("unused"), name=config["name"], config=config, overrides=[])
    out = []
    for i in range(n):
        params = state.propose()
        if params is None:
            break
        out.append(params)
        state.runs.append({"id": f"r{i}", "params": params, "state": "finished", "summary": {}})
    return out


def test_there_are_the_three_sweeps():
    assert {p.stem for p in SWEEP_FILES} == {"languages", "alignment_bayes", "identification"}


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_every_sweep_validates_and_each_proposed_run_composes_with_hydra(path):
    config = load_sweep(path)  # the engine's schema
    assert config["program"] == "train.py" and (ROOT / config["program"]).is_file()
    assert "${args_no_hyphens}" in config["command"]
    runs = proposals(config, 20 if config["method"] == "grid" else 4)
    assert runs
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for params in runs:
            command = build_command(config, params)
            overrides = command[command.index("train.py") + 1:]
            cfg = compose("config", overrides=overrides)
            for name, param in params.items():  # every parameter lands on its config key, lists as lists
                node = cfg
                for part in name.split("."):
                    node = node[part]
                value = list(node) if hasattr(node, "__len__") and not isinstance(node, str) else node
                assert value == param["value"], (name, value, param["value"])


def test_the_language_grid_has_single_and_multi_language_settings():
    config = load_sweep(ROOT / "sweeps" / "languages.yaml")
    langs = [p["lang"]["value"] for p in proposals(config, 100)]
    assert len(langs) == len(config["parameters"]["lang"]["values"])  # the grid ends
    assert {"zh", "sw", "bn"} <= {x for x in langs if isinstance(x, str)}
    assert ["zh", "de"] in langs


def test_the_agent_passes_the_arguments_wandbs_agent_passes():
    config = {"program": "train.py", "command": ["${env}", "${interpreter}", "${program}", "model=tiny",
                                                 "${args_no_hyphens}"]}
    params = {"lang": {"value": ["zh", "de"]}, "trainer.learning_rate": {"value": 1e-06},
              "trainer.lora.r": {"value": 16}}
    assert build_command(config, params, ["hydra.run.dir=/x"]) == [
        "/usr/bin/env", sys.executable, "train.py", "model=tiny", "lang=['zh', 'de']",
        "trainer.learning_rate=1e-06", "trainer.lora.r=16", "hydra.run.dir=/x"]
    override_hydra = dict(config, command=["${program}", "${args_override_hydra}"])
    assert build_command(override_hydra, {"seed": {"value": 3}}) == ["train.py", "++seed=3"]
    with pytest.raises(HarnessError, match=r"macro \$\{args_dict\} is not supported"):
        build_command(dict(config, command=["${args_dict}"]), params)


def test_a_bad_sweep_config_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: sideways\nparameters: {lang: {values: [sw]}}\n")
    out = agent(str(bad), "--dir", str(tmp_path / "s"))
    assert out.returncode == 2 and out.stderr.startswith("error: sweep config") and "sideways" in out.stderr
    assert "Traceback" not in out.stderr


def test_the_offline_agent_runs_a_two_run_grid_of_train_py_and_stops(tmp_path):
    # The language sweep as it ships, narrowed to two settings: a single language and a list.
    config = yaml.safe_load((ROOT / "sweeps" / "languages.yaml").read_text())
    config["name"] = "two-langs"
    config["parameters"]["lang"]["values"] = ["sw", ["zh", "de"]]
    sweep_file = tmp_path / "two.yaml"
    sweep_file.write_text(yaml.safe_dump(config))
    folder = tmp_path / "sweep"

    out = agent(str(sweep_file), "--dir", str(folder), *SHORT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "the grid is exhausted (2 runs)" in out.stdout
    state = json.loads((folder / "sweep.json").read_text())
    assert [r["state"] for r in state["runs"]] == ["finished", "finished"]
    runs = offline_runs(folder)
    assert len(runs) == 2
    by_id = {r["id"]: r for r in state["runs"]}
    langs = []
    for run in runs:
        summary = inspect_summary(run)
        record = by_id[summary["run_id"]]  # the id the agent gave the run
        assert Path(record["dir"]) in run.parents  # the run lives in its folder inside the sweep's
        config_lang = summary["config"]["lang"]
        config_lang = config_lang.get("value", config_lang) if isinstance(config_lang, dict) else config_lang
        assert config_lang == record["params"]["lang"]["value"]
        langs.append(config_lang)
        # the tiny default, shortened by the agent's overrides, after the sweep's own fixed model=mistral_...
        model = summary["config"]["model"]
        assert (model.get("value", model))["preset"] == "tiny"
        assert summary["summary"]["train/global_step"] == 2
        # the metric fed back to the engine is the run's W&B summary
        assert record["summary"] == {"eval/acc/avg": summary["summary"]["eval/acc/avg"]}
        group = next(r["run"]["run_group"] for r in inspect_records(run) if r.get("type") == "run")
        assert group == "two-langs"
    assert sorted(langs, key=str) == sorted(["sw", ["zh", "de"]], key=str)

    # the same command again continues the sweep: nothing is left, so nothing runs
    again = agent(str(sweep_file), "--dir", str(folder), *SHORT)
    assert again.returncode == 0 and "continuing" in again.stdout and "exhausted (2 runs)" in again.stdout
    assert len(offline_runs(folder)) == 2
    # and other overrides would mix two experiments in one sweep
    other = agent(str(sweep_file), "--dir", str(folder), *SHORT[:-1])
    assert other.returncode == 2 and "started with another overrides" in other.stderr


# A stand-in for train.py: reads key=value overrides, logs a known function of x to an offline W&B run; fail=yes
# fails as train.py does on a HarnessError (one error line on stderr, exit 2), fail=crash with a traceback followed
# by other output (as W&B's exit hooks print after one).
FAKE_PROGRAM = """
import atexit, sys, wandb
args = dict(a.split("=", 1) for a in sys.argv[1:])
print("starting the run")
if args.get("fail") == "yes":
    print("error: fail=yes makes this run fail", file=sys.stderr)
    sys.exit(2)
if args.get("fail") == "crash":
    atexit.register(lambda: print("wandb: closing words", file=sys.stderr))
    raise ValueError("x=" + args["x"] + " crashed")
x = float(args["x"])
run = wandb.init(project="fake", dir=args["hydra.run.dir"], group=args["logger.group"], mode="offline",
                 config={"x": x})
run.log({"score": -(x - 0.3) ** 2})
run.finish()
"""


def fake_sweep(tmp_path: Path, **config) -> Path:
    (tmp_path / "fake_train.py").write_text(FAKE_PROGRAM)
    path = tmp_path / "fake.yaml"
    path.write_text(yaml.safe_dump({"name": "fake", "program": "fake_train.py",
                                    "command": ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"],
                                    **config}))
    return path


def test_bayes_gets_every_finished_runs_metric_from_its_wandb_run(tmp_path):
    sweep = fake_sweep(tmp_path, method="bayes", metric={"name": "score", "goal": "maximize"},
                       parameters={"x": {"min": 0.0, "max": 1.0}})
    out = agent(str(sweep), "--dir", "s", "--count", "3", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    state = SweepState.open(tmp_path / "s", load_sweep(sweep), [])
    assert len(state.runs) == 3
    for record, engine_run in zip(state.runs, state.engine_runs()):
        x = record["params"]["x"]["value"]
        assert record["summary"]["score"] == pytest.approx(-(x - 0.3) ** 2)
        assert engine_run.state == "finished" and engine_run.summary_metric("score") == record["summary"]["score"]
    assert len({r["params"]["x"]["value"] for r in state.runs}) == 3


def test_the_agent_prints_a_line_per_run_start_and_end_and_a_failed_runs_error_line(tmp_path):
    sweep = fake_sweep(tmp_path, method="grid", metric={"name": "score", "goal": "maximize"},
                       parameters={"x": {"value": 0.5}, "fail": {"values": ["no", "yes", "crash"]}})
    out = agent(str(sweep), "--dir", "s", cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    state = json.loads((tmp_path / "s" / "sweep.json").read_text())
    runs = {r["params"]["fail"]["value"]: r for r in state["runs"]}
    assert [(r["state"], r["exit_code"]) for r in state["runs"]] == [("finished", 0), ("failed", 2), ("failed", 1)]
    # the error line of each failed run is kept with it: train.py's one-line error, or the exception of a crash
    assert runs["yes"]["error"] == "error: fail=yes makes this run fail"
    assert runs["crash"]["error"] == "ValueError: x=0.5 crashed"
    assert "error" not in runs["no"] and runs["no"]["summary"]["score"] == pytest.approx(-0.04)
    lines = out.stdout.splitlines()
    assert lines[0] == "sweep fake: new sweep in s (a run's output: <its folder>/agent.log)"
    for i, (fail, record) in enumerate(runs.items()):  # one line as a run starts, one as it ends, in order
        name = f"{i:03d}-{record['id']}"
        assert Path(record["dir"]).name == name
        what = f"sweep fake: run {name} fail={fail} x=0.5: "
        assert lines[1 + 2 * i] == what + "started"
        assert lines[2 + 2 * i].startswith(what)
    assert re.fullmatch(r"sweep fake: run 000-\w{8} fail=no x=0\.5: finished in \d+ s, score=-0\.04", lines[2])
    assert re.fullmatch(r"sweep fake: run 001-\w{8} fail=yes x=0\.5: failed \(exit 2\) after \d+ s: "
                        r"error: fail=yes makes this run fail   full output: s/001-\w{8}/agent\.log", lines[4])
    assert re.fullmatch(r"sweep fake: run 002-\w{8} fail=crash x=0\.5: failed \(exit 1\) after \d+ s: "
                        r"ValueError: x=0\.5 crashed   full output: s/002-\w{8}/agent\.log", lines[6])
    assert lines[7:] == ["sweep fake: the grid is exhausted (3 runs)",
                         "sweep fake: 3 runs started now (2 failed), 3 in all; state in s/sweep.json"]


def test_a_run_of_train_py_that_fails_shows_its_error_line(tmp_path):
    config = yaml.safe_load((ROOT / "sweeps" / "languages.yaml").read_text())
    config["parameters"]["lang"]["values"] = ["xx"]  # train.py refuses it before it loads anything
    sweep_file = tmp_path / "bad-lang.yaml"
    sweep_file.write_text(yaml.safe_dump(config))
    out = agent(str(sweep_file), "--dir", str(tmp_path / "s"), *SHORT)
    assert out.returncode == 1, out.stdout + out.stderr
    record = json.loads((tmp_path / "s" / "sweep.json").read_text())["runs"][0]
    assert record["state"] == "failed" and record["exit_code"] == 2
    assert record["error"].startswith("error: lang=xx: unknown language code 'xx'")
    log = Path(record["dir"]) / "agent.log"
    assert "failed (exit 2) after" in out.stdout
    assert f": {record['error']}   full output: {log}\n" in out.stdout


def test_the_error_line_is_the_last_error_or_the_exception_that_ended_the_output():
    assert error_line("step 1\nerror: unknown language code 'xx': use ...\nwandb: bye\n") == \
        "error: unknown language code 'xx': use ..."
    crash = ("error: an earlier line\nTraceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
             "    f()\nKeyError: 'lang'\n\nSet the environment variable HYDRA_FULL_ERROR=1 for a complete stack "
             "trace.\nwandb: Find logs at: x\n")
    assert error_line(crash) == "KeyError: 'lang'"
    assert error_line("loading\nKilled\nwandb: Find logs at: x\n") == "Killed"
    assert error_line("") is None and error_line("\n  \n") is None
    assert len(error_line("error: " + "x" * 2000)) == 500


def test_an_interrupted_run_runs_again_when_the_sweep_continues(tmp_path):
    config = {"name": "g", "method": "grid", "parameters": {"x": {"values": [1, 2]}}}
    state = SweepState(folder=tmp_path, name="g", config=config, overrides=[])
    state.runs = [{"id": "a", "params": {"x": {"value": 1}}, "state": "finished", "summary": {}},
                  {"id": "b", "params": {"x": {"value": 2}}, "state": "running", "summary": {}}]
    state.save()
    resumed = SweepState.open(tmp_path, config, [])
    assert [r["id"] for r in resumed.runs] == ["a"]
    assert resumed.propose() == {"x": {"value": 2}}


def test_an_override_of_a_swept_parameter_is_refused(tmp_path):
    out = agent(str(ROOT / "sweeps" / "languages.yaml"), "--dir", str(tmp_path / "s"), "lang=sw")
    assert out.returncode == 2 and "sweep parameter lang" in out.stderr
    assert not (tmp_path / "s").exists()
