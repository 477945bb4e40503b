"""W&B sweeps: every sweep config validates and drives train.py through Hydra overrides; the offline agent runs a
sweep without a W&B server (proposals from the open-source engine, metrics read back from the offline runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from conftest import ROOT, inspect_records, inspect_summary, offline_runs
from langneurons.errors import HarnessError
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


# A stand-in for train.py: reads key=value overrides, logs a known function of x to an offline W&B run.
FAKE_PROGRAM = """
import sys, wandb
args = dict(a.split("=", 1) for a in sys.argv[1:])
if args.get("fail") == "yes":
    sys.exit(3)
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


def test_a_failed_run_is_recorded_and_the_agent_says_so(tmp_path):
    sweep = fake_sweep(tmp_path, method="grid", parameters={"x": {"value": 0.5}, "fail": {"value": "yes"}})
    out = agent(str(sweep), "--dir", "s", cwd=tmp_path)
    assert out.returncode == 1 and "failed" in out.stdout
    state = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert [(r["state"], r["exit_code"], r["summary"]) for r in state["runs"]] == [("failed", 3, {})]


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
