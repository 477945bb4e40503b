"""Run a W&B sweep config without a W&B server: ``python -m langneurons.sweep sweeps/<x>.yaml --count N``.

W&B's servers are not always reachable (air-gapped clusters, CI). The open-source engine behind W&B sweeps
(``sweeps``) proposes every run here instead (grid, random, bayes; bayes from the metric of the runs so far, read
back from their W&B runs with ``wandb leet inspect --summary --json``). Each run is the sweep's ``command:`` with the
macros expanded as W&B's agent expands them (``${args_no_hyphens}`` gives ``key=value`` Hydra overrides), followed by
a run folder inside the sweep's folder and the sweep's name as W&B group, then the overrides given here. A state
file in the sweep folder records every run, so the same command continues an interrupted sweep; a grid stops when
every point has run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import string
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from .errors import HarnessError, error_line, shown_path, tail
from .files import atomic_write

STATE_FILE = "sweep.json"
DEFAULT_ROOT = Path("multirun") / "sweeps"
# Macros W&B's agent fills from a run's parameters (wandb.sdk.launch.sweeps.utils.create_sweep_command_args) ...
ARG_MACROS = ("args", "args_no_equals", "args_no_hyphens", "args_no_boolean_flags", "args_json", "args_append_hydra",
              "args_override_hydra")
# ... and from the machine and the sweep config.
OTHER_MACROS = ("env", "interpreter", "program", "args_json_file")
MACRO = re.compile(r"^\$\{(\w+)\}$")
# Run states the engine treats as over (their config is taken); a run still "running" in the state file was
# interrupted with the agent and runs again.
OVER = ("finished", "failed", "crashed", "killed")


def _engine():
    with warnings.catch_warnings():  # sweeps 0.2 declares pydantic-v1 config keys; pydantic 2 warns on import
        warnings.simplefilter("ignore")
        import sweeps
    return sweeps


def _plain(value: Any) -> Any:
    """numpy scalars the engine proposes as plain Python values (what W&B's server would send as JSON)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value


def load_sweep(path: Path) -> dict[str, Any]:
    """The sweep config in ``path``, checked with the engine's schema."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"sweep config {path} does not exist: give a file such as sweeps/languages.yaml")
    try:
        config = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except OSError as e:
        raise HarnessError(f"sweep config {path} cannot be read ({e.strerror or type(e).__name__}): make it readable") \
            from None
    except UnicodeDecodeError:
        raise HarnessError(f"sweep config {path} is not UTF-8 text: save it as UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise HarnessError(f"sweep config {path}{where}: not valid YAML ({problem}): see sweeps/*.yaml for the "
                           "format") from None
    if not isinstance(config, dict):
        raise HarnessError(f"sweep config {path} is not a YAML mapping: see sweeps/*.yaml for the format")
    try:
        _engine().SweepConfig(config)
    except Exception as e:  # jsonschema's ValidationError names the offending part on its first line
        raise HarnessError(f"sweep config {path} is not valid: {str(e).splitlines()[0]}") from None
    config.setdefault("name", path.stem)
    return config


def sweep_args(params: Mapping[str, Any]) -> dict[str, list[str]]:
    """The argument lists of W&B's agent for a run's parameters ``{name: {"value": v}}`` (``args_no_hyphens``:
    ``["lang=['zh', 'de']", "trainer.learning_rate=1e-06"]``); W&B's own function, so the format is the same."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    return create_sweep_command_args({"args": dict(params)})


def build_command(config: Mapping[str, Any], params: Mapping[str, Any], extra: Sequence[str] = (),
                  json_file: Path | None = None) -> list[str]:
    """The argument list W&B's agent starts for one run, followed by ``extra``.

    ``${env}`` is /usr/bin/env (none on Windows), ``${program}`` the sweep's ``program``; ``${interpreter}`` is the
    interpreter running this agent (W&B's agent runs whatever ``python`` is on PATH: the same one, when the
    environment is activated), so the run uses this environment even when it is not.
    """
    from wandb.sdk.launch.sweeps.utils import create_sweep_command

    args = sweep_args(params)
    command = create_sweep_command(list(config.get("command") or ["${env}", "${interpreter}", "${program}", "${args}"]))
    macros: dict[str, list[str]] = {name: list(args[name]) for name in ARG_MACROS}
    macros["env"] = ["/usr/bin/env"] if platform.system() != "Windows" else []
    macros["interpreter"] = [sys.executable]
    if config.get("program"):
        macros["program"] = [str(config["program"])]
    if json_file is not None:
        macros["args_json_file"] = [str(json_file)]
    out: list[str] = []
    for chunk in command:
        chunk = str(chunk)
        match = MACRO.match(chunk)
        if match is None:
            out.append(chunk)
        elif match.group(1) in macros:
            out += macros[match.group(1)]
        else:
            known = ", ".join("${" + m + "}" for m in (*OTHER_MACROS, *ARG_MACROS))
            raise HarnessError(f"sweep command macro {chunk} is not supported here (or the sweep has no program): "
                               f"use {known}")
    return out + list(extra)


def _quote(value: str) -> str:
    # A Hydra override value with characters outside its plain-string grammar (a space in a path) needs quotes.
    return value if re.fullmatch(r"[\w/.\-+:@]+", value) else "'" + value.replace("'", "\\'") + "'"


def read_run(run_dir: Path, run_id: str) -> dict[str, Any] | None:
    """A run's W&B record read back the way the README says (``wandb leet inspect --summary --json``): state,
    exit code, summary, config. None when the run left no W&B run (it failed before starting one)."""
    folders = [p for p in sorted(Path(run_dir).rglob(f"*run-*-{run_id}")) if p.is_dir() and any(p.glob("*.wandb"))]
    if not folders:
        return None
    wandb_cli = Path(sys.executable).with_name("wandb")
    cli = str(wandb_cli) if wandb_cli.exists() else "wandb"
    out = subprocess.run([cli, "leet", "inspect", "--summary", "--json", str(folders[-1])], capture_output=True,
                         text=True, timeout=300)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout)


@dataclass
class SweepState:
    """Everything the agent knows about a sweep, kept in ``<sweep dir>/sweep.json``."""

    folder: Path
    name: str
    config: dict[str, Any]
    overrides: list[str]
    runs: list[dict[str, Any]] = field(default_factory=list)
    launched: list[dict[str, Any]] = field(default_factory=list)  # the runs this agent started (not saved)

    @classmethod
    def open(cls, folder: Path, config: Mapping[str, Any], overrides: Sequence[str]) -> "SweepState":
        """The sweep in ``folder``: a new one, or the one started there before from the same config and overrides
        (runs left "running" by an interrupted agent are forgotten, so they run again)."""
        folder = Path(folder)
        path = folder / STATE_FILE
        config = json.loads(json.dumps(config))
        if not path.is_file():
            return cls(folder=folder, name=str(config["name"]), config=config, overrides=list(overrides))
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved["config"] != config or saved["overrides"] != list(overrides):
            what = "config" if saved["config"] != config else f"overrides ({' '.join(saved['overrides']) or 'none'})"
            raise HarnessError(f"the sweep in {folder} was started with another {what}: continue it with the same "
                               "ones, or give --dir <new folder> for a new sweep")
        runs = [r for r in saved["runs"] if r["state"] in OVER]
        return cls(folder=folder, name=saved["name"], config=config, overrides=list(overrides), runs=runs)

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {"name": self.name, "config": self.config, "overrides": self.overrides, "runs": self.runs}
        # a crash never leaves a half-written state file
        atomic_write(self.folder / STATE_FILE, json.dumps(state, indent=1, ensure_ascii=False).encode("utf-8"))

    def engine_runs(self) -> list:
        """The runs so far as the engine's SweepRun objects (config, state, the metric for bayes)."""
        sweeps = _engine()
        return [sweeps.SweepRun(name=r["id"], state=r["state"], config=r["params"],
                                summaryMetrics=r.get("summary") or {}) for r in self.runs]

    def propose(self) -> dict[str, Any] | None:
        """The next run's parameters ``{name: {"value": v}}``, or None when the grid is exhausted."""
        sweeps = _engine()
        with warnings.catch_warnings():  # the Gaussian process of bayes warns about its own fit: noise to a user
            warnings.simplefilter("ignore")
            proposal = sweeps.next_run(self.config, self.engine_runs(), validate=True)
        return None if proposal is None else _plain(proposal.config)


def _check_overrides(config: Mapping[str, Any], overrides: Sequence[str]) -> None:
    swept = set(config.get("parameters", {}))
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in swept:
            raise HarnessError(f"override {override} would replace the sweep parameter {key}: remove it, or change "
                               "the parameter in the sweep config")


def _new_id() -> str:
    """A fresh W&B run id (8 lowercase letters and digits, as W&B makes them)."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_one(state: SweepState, params: dict[str, Any], log=print) -> dict[str, Any]:
    """Start one run of the sweep with ``params`` and wait for it; returns its record (also saved in the state).

    Prints one line when the run starts and one when it ends: its name (its folder's), parameters, state, time and
    metric; for a failed run, its error line (:func:`langneurons.errors.error_line`) and where its whole output is.
    """
    run_id = _new_id()
    name = f"{len(state.runs):03d}-{run_id}"
    run_dir = (state.folder / name).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    json_file = run_dir / "sweep-args.json"
    json_file.write_text(sweep_args(params)["args_json"][0], encoding="utf-8")
    extra = [f"hydra.run.dir={_quote(str(run_dir))}", f"logger.group={_quote(state.name)}", *state.overrides]
    command = build_command(state.config, params, extra, json_file=json_file)
    record = {"id": run_id, "dir": str(run_dir), "params": params, "command": command, "state": "running"}
    state.runs.append(record)
    state.launched.append(record)
    state.save()
    what = f"sweep {state.name}: run {name} {' '.join(sweep_args(params)['args_no_hyphens'])}"
    log(f"{what}: started")
    started = time.perf_counter()
    # WANDB_RUN_ID gives the run the id chosen here, as W&B's agent does, so its W&B run can be found afterwards.
    env = {**os.environ, "WANDB_RUN_ID": run_id}
    output = run_dir / "agent.log"
    with open(output, "wb") as out:
        try:
            code = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
        except KeyboardInterrupt:
            state.runs.pop()  # an interrupted run is not a result: it runs again when the sweep continues
            state.launched.pop()
            state.save()
            raise
    record["seconds"] = round(time.perf_counter() - started, 1)
    record["exit_code"] = code
    info = read_run(run_dir, run_id)
    metric = (state.config.get("metric") or {}).get("name")
    summary = (info or {}).get("summary") or {}
    record["summary"] = {metric: summary[metric]} if metric and metric in summary else {}
    record["state"] = "finished" if code == 0 else "failed"
    if code != 0:
        record["error"] = error_line(tail(output))
    state.save()
    took = f"{record['seconds']:.0f} s"
    if code != 0:
        log(f"{what}: failed (exit {code}) after {took}: {record['error'] or 'no output'}   "
            f"full output: {shown_path(output)}")
    elif record["summary"]:
        log(f"{what}: finished in {took}, {metric}={_number(record['summary'][metric])}")
    elif metric:
        log(f"{what}: finished in {took}, no {metric} in its W&B summary   output: {shown_path(output)}")
    else:
        log(f"{what}: finished in {took}")
    return record


def run_sweep(config_file: Path, count: int | None = None, folder: Path | None = None, overrides: Sequence[str] = (),
              log=print) -> SweepState:
    """Run up to ``count`` runs (all that the engine proposes when None) of the sweep in ``config_file``."""
    config = load_sweep(config_file)
    _check_overrides(config, overrides)
    folder = Path(folder) if folder is not None else DEFAULT_ROOT / str(config["name"])
    state = SweepState.open(folder, config, overrides)
    if state.runs:
        log(f"sweep {state.name}: continuing in {shown_path(state.folder)} after {len(state.runs)} runs")
    else:
        log(f"sweep {state.name}: new sweep in {shown_path(state.folder)} (a run's output: <its folder>/agent.log)")
    launched = 0
    while count is None or launched < count:
        params = state.propose()
        if params is None:
            log(f"sweep {state.name}: the grid is exhausted ({len(state.runs)} runs)")
            break
        run_one(state, params, log)
        launched += 1
    state.save()
    return state


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (``error: ...``), as every other error of the agent."""

    def error(self, message: str):  # type: ignore[override]
        print(f"error: {message} ({self.prog} --help shows the usage)", file=sys.stderr)
        sys.exit(2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(
        prog="python -m langneurons.sweep",
        description="Run a W&B sweep config without a W&B server: the open-source sweeps engine proposes each run, "
                    "and train.py runs it with the overrides W&B's agent would pass. Running the same command again "
                    "continues the sweep.")
    parser.add_argument("config", type=Path, help="a sweep config, e.g. sweeps/languages.yaml")
    parser.add_argument("--count", type=int, default=None,
                        help="runs to start now (default: until the grid is exhausted; random and bayes never are)")
    parser.add_argument("--dir", type=Path, default=None,
                        help=f"the sweep's folder (default: {DEFAULT_ROOT}/<sweep name>); holds {STATE_FILE} and a "
                             "folder per run")
    parser.add_argument("overrides", nargs="*",
                        help="Hydra overrides added to every run, after the sweep's (e.g. model=tiny "
                             "trainer.max_steps=8)")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the options
    if args.count is not None and args.count < 1:
        parser.error(f"--count {args.count}: give at least 1 (or leave --count out to run until the grid is "
                     "exhausted)")
    try:
        state = run_sweep(args.config, args.count, args.dir, args.overrides)
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue the sweep", file=sys.stderr)
        return 130
    failed = [r for r in state.launched if r["state"] != "finished"]
    print(f"sweep {state.name}: {len(state.launched)} runs started now ({len(failed)} failed), {len(state.runs)} in "
          f"all; state in {shown_path(state.folder / STATE_FILE)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
