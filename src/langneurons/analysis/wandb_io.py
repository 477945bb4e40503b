"""W&B for analysis: read back a run's offline W&B log, fetch runs and artifacts when online, log analysis results,
save views and reports (``analysis/wandb_views.py`` builds them).

Offline runs cannot be read by ``wandb.Api`` (docs/pitfalls.md, W&B); they are read with ``wandb leet inspect --json``.
Anything that needs the W&B servers fails with one line that says to pass a local run dir instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .. import tracking
from ..checkpoints.record import step_of, step_path
from ..errors import HarnessError

_RUN_FOLDER = re.compile(r"^(?:offline-)?run-\d{8}_\d{6}-(?P<id>[a-z0-9]+)(?:-\d+)?$")
WANDB_PREFIX = "wandb:"
WANDB_URL = re.compile(r"^https?://[^/]*wandb[^/]*/(?P<entity>[^/]+)/(?P<project>[^/]+)/runs/(?P<id>[^/?#]+)")


@dataclass(frozen=True)
class WandbRef:
    """The W&B run behind a local run dir (or fetched from the server)."""

    run_id: str
    project: str | None = None
    entity: str | None = None
    folders: tuple[Path, ...] = ()  # local run folders (offline-run-* / run-*), oldest first


# ---- local runs --------------------------------------------------------------------------------------------------
def run_folders(run_dir: Path) -> list[Path]:
    """The W&B run folders under ``<run_dir>/wandb`` (offline and online), oldest first."""
    base = Path(run_dir) / "wandb"
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and _RUN_FOLDER.match(p.name))


def local_ref(run_dir: Path, config: dict[str, Any]) -> WandbRef | None:
    """The W&B run of a local run dir, or None when it logged none (logger=none)."""
    folders = run_folders(run_dir)
    if not folders:
        return None
    logger = config.get("logger") or {}
    return WandbRef(run_id=_RUN_FOLDER.match(folders[0].name)["id"], project=logger.get("project"),
                    entity=logger.get("entity"), folders=tuple(folders))


def _wandb_cli() -> str:
    beside = Path(sys.executable).with_name("wandb")
    found = str(beside) if beside.is_file() else shutil.which("wandb")
    if not found:
        raise HarnessError("the wandb command is not installed: pip install wandb")
    return found


def read_records(folder: Path) -> list[dict[str, Any]]:
    """Every record of one W&B run folder (``wandb leet inspect --json``), one dict per record."""
    try:
        out = subprocess.run([_wandb_cli(), "leet", "inspect", "--json", str(folder)], capture_output=True, text=True,
                             timeout=300, check=True)
    except subprocess.CalledProcessError as exc:
        reason = (exc.stderr or exc.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise HarnessError(f"cannot read the W&B run {str(folder)!r} ({reason[0]}): is it a W&B run folder?") from None
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def last_history_step(folders: Iterable[Path]) -> int | None:
    """The largest ``_step`` the given run folders logged (``wandb leet inspect --summary``), None when none."""
    steps = []
    for folder in folders:
        try:
            out = subprocess.run([_wandb_cli(), "leet", "inspect", "--summary", "--json", str(folder)],
                                 capture_output=True, text=True, timeout=300, check=True)
            step = json.loads(out.stdout).get("summary", {}).get("_step")
        except (subprocess.CalledProcessError, json.JSONDecodeError):
            continue
        if step is not None:
            steps.append(int(step))
    return max(steps) if steps else None


def logged_history(run_dir: Path) -> list[dict[str, Any]]:
    """Every history row a local run logged to W&B (all of its run folders, oldest first), as flat dicts."""
    rows = []
    for folder in run_folders(run_dir):
        rows += [r["history"]["item"] for r in read_records(folder) if r.get("type") == "history"]
    return rows


def history_keys(records: Iterable[dict[str, Any]]) -> dict[str, str]:
    """{key: kind} of every value the history records of a W&B run hold (``wandb leet inspect --json``, one dict
    per record): ``number``, or a media value's ``_type`` (``table-file``, ``image-file``, ``histogram``), which
    the reader flattens into ``<key>._type``."""
    out: dict[str, str] = {}
    for record in records:
        if record.get("type") != "history":
            continue
        item = record["history"]["item"]
        media = {k[: -len("._type")]: v for k, v in item.items() if k.endswith("._type")}
        out.update(media)
        for key, value in item.items():
            if key.startswith("_") or any(key.startswith(m + ".") for m in media):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out.setdefault(key, tracking.NUMBER)
    return out


def logged_keys(run_dir: Path) -> dict[str, str]:
    """{key: kind} of everything a local run logged to W&B (all of its run folders), read back with
    ``wandb leet inspect --json``."""
    out: dict[str, str] = {}
    for folder in run_folders(run_dir):
        out.update(history_keys(read_records(folder)))
    return out


def is_offline_only(ref: WandbRef | None) -> bool:
    """Whether a local run was only logged offline (every folder ``offline-run-*``): the server has it once
    ``wandb sync`` uploads it."""
    return ref is not None and bool(ref.folders) and all(f.name.startswith("offline-") for f in ref.folders)


# ---- the server ----------------------------------------------------------------------------------------------------
def is_wandb_source(spec: str) -> bool:
    return spec.startswith(WANDB_PREFIX) or bool(WANDB_URL.match(spec))


def _require_online(spec: str) -> None:
    mode = tracking.resolve_mode(None)
    if mode != "online":
        why = (f"WANDB_MODE={os.environ['WANDB_MODE']}" if os.environ.get("WANDB_MODE")
               else "no W&B login on this machine")
        raise HarnessError(f"{spec}: W&B is offline here ({why}); pass a local run dir instead "
                           "(e.g. runs=[outputs/<date>/<time>]), or `wandb login` and try again")


def _api(spec: str):
    import wandb

    _require_online(spec)
    try:
        return wandb.Api(timeout=30)
    except Exception as exc:  # wandb raises several error types for auth / network problems
        raise HarnessError(f"{spec}: cannot reach W&B ({_reason(exc)}); pass a local run dir instead") from None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def _unwrap_config(config: dict[str, Any]) -> dict[str, Any]:
    """W&B stores config entries as {"value": ..., "desc": ...} in some views; return plain values."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and set(value) <= {"value", "desc"} and "value" in value:
            value = value["value"]
        if not key.startswith("_"):
            out[key] = value
    return out


def parse_wandb_spec(spec: str) -> tuple[str, str | None]:
    """(``entity/project/run_id`` or ``entity/project/artifact``, alias or None) from ``wandb:...`` or a run URL."""
    match = WANDB_URL.match(spec)
    if match:
        return f"{match['entity']}/{match['project']}/{match['id']}", None
    path = spec[len(WANDB_PREFIX):].strip("/")
    name, _, alias = path.rpartition(":") if ":" in path.rsplit("/", 1)[-1] else (path, "", "")
    if name.count("/") != 2:
        raise HarnessError(f"{spec}: give wandb:<entity>/<project>/<run id> or "
                           "wandb:<entity>/<project>/<artifact name>:<alias> (e.g. neurons-abc123:step-40)")
    return name, alias or None


def _step_of(artifact) -> int | None:
    step = (artifact.metadata or {}).get("step")
    if step is not None:
        return int(step)
    steps = [step_of(alias) for alias in artifact.aliases if step_of(alias) is not None]
    return steps[0] if steps else None


def fetch(spec: str, cache: Path) -> tuple[dict[str, Any], list[tuple[int, Path]], WandbRef]:
    """Download the neuron checkpoints of a W&B run (every ``neuron-checkpoint`` artifact it logged) or of one
    artifact into ``cache``; return (the run's config, [(step, folder)], its reference)."""
    path, alias = parse_wandb_spec(spec)
    api = _api(spec)
    entity, project, name = path.split("/")
    try:
        if alias is None:
            run = api.run(path)
            artifacts = [a for a in run.logged_artifacts() if a.type == "neuron-checkpoint"]
            if not artifacts:
                raise HarnessError(f"{spec}: the run logged no neuron-checkpoint artifacts (it ran with neurons=off "
                                   "or neurons.artifact=false): pass its local run dir instead")
        else:
            artifact = api.artifact(f"{path}:{alias}")
            artifacts, run = [artifact], artifact.logged_by()
        config = _unwrap_config(dict(run.config)) if run is not None else {}
        found = []
        for artifact in artifacts:
            step = _step_of(artifact)
            if step is None:
                continue
            folder = step_path(Path(cache) / (run.id if run is not None else name), step)
            artifact.download(root=str(folder))
            found.append((step, folder))
    except HarnessError:
        raise
    except Exception as exc:
        raise HarnessError(f"{spec}: cannot read it from W&B ({_reason(exc)}); check the path, or pass a local "
                           "run dir instead") from None
    ref = WandbRef(run_id=run.id if run is not None else name, project=project, entity=entity)
    return config, sorted(found), ref


# ---- saved views and reports ---------------------------------------------------------------------------------------
def can_save(what: str, out: Any) -> bool:
    """Whether ``what`` (a view, a report) is saved to the server now: W&B online (a login, and ``WANDB_MODE`` not
    offline). Offline, ``out`` (a folder for its JSON) is what the command makes; without it, a one-line error
    that says how to log in."""
    if tracking.resolve_mode(None) == "online":
        return True
    if out:
        return False
    why = (f"WANDB_MODE={os.environ['WANDB_MODE']}" if os.environ.get("WANDB_MODE")
           else "no W&B login on this machine")
    raise HarnessError(f"saving {what} needs the W&B server ({why}): `wandb login` (or set WANDB_API_KEY) and run "
                       "this again, or give out=<folder> to write its JSON offline")


_ABANDONED: list[str] = []  # the W&B calls this process gave up on (their threads still wait for the server)


def abandoned() -> bool:
    """Whether this process gave up on a W&B call (:func:`bounded`): wandb's exit hooks would wait for it too, so
    ``analyze.py`` then ends without them."""
    return bool(_ABANDONED)


def bounded(what: str, call, seconds: float):
    """``call()``, waited for at most ``seconds``: the W&B client retries a server that does not answer for many
    minutes, and a command must not hang on it. The call runs in a daemon thread, left waiting when it takes
    longer (:func:`abandoned`). Errors are one line."""
    import threading

    done: dict[str, Any] = {}

    def target() -> None:
        try:
            done["value"] = call()
        except BaseException as exc:  # re-raised below as one line
            done["error"] = exc

    thread = threading.Thread(target=target, name=f"W&B: {what}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        _ABANDONED.append(what)
        raise HarnessError(f"{what}: the W&B server did not answer within {seconds:g} s (timeout=); check the "
                           "network and `wandb login`, or give out=<folder> to write the JSON offline")
    error = done.get("error")
    if isinstance(error, HarnessError):
        raise error
    if error is not None:
        raise HarnessError(f"{what}: {_reason(error)}; check the entity and project, and `wandb login`") from None
    return done.get("value")


_PROJECT_VIEWS = """
query ProjectViews($entityName: String, $name: String, $viewType: String) {
  project(name: $name, entityName: $entityName) {
    allViews(viewType: $viewType) { edges { node { id name displayName } } }
  }
}
"""


def save_view(workspace, timeout: float) -> str:
    """Save a workspace view into its project: over the project's view of the same name when it has one (the
    library's ``save()`` otherwise always makes a new one), else as a new view. Returns the view's URL."""
    import wandb
    from wandb_workspaces._graphql import execute_graphql

    def save() -> str:
        api = wandb.Api(timeout=max(1, int(timeout)))
        found = execute_graphql(api, _PROJECT_VIEWS, {"entityName": workspace.entity, "name": workspace.project,
                                                      "viewType": "project-view"})
        if found.get("project") is None:
            raise HarnessError(f"W&B has no project {workspace.entity}/{workspace.project} (or you cannot see it): "
                               "log or `wandb sync` a run into it first")
        same = [e["node"] for e in found["project"]["allViews"]["edges"]
                if e["node"].get("displayName") == workspace.name]
        if same:
            workspace._internal_name, workspace._internal_id = same[0]["name"], same[0]["id"]
        workspace.save()
        return workspace.url

    return bounded(f"saving the view {workspace.name!r}", save, timeout)


def save_report(report, timeout: float) -> str:
    """Publish a report (a new one on each call). Returns its URL."""

    def save() -> str:
        report.save()
        return report.url

    return bounded(f"saving the report {report.title!r}", save, timeout)


def project_runs(entity: str, project: str, group: str | None, timeout: float,
                 limit: int = 500) -> list[tuple[dict[str, Any], str, str]]:
    """(config, run id, name) of the project's runs (of ``group``, when given), newest first, at most ``limit``."""
    import wandb

    def fetch_runs() -> list[tuple[dict[str, Any], str, str]]:
        api = wandb.Api(timeout=max(1, int(timeout)))
        runs = api.runs(f"{entity}/{project}", filters={"group": group} if group else None, order="-created_at",
                        per_page=100)
        found = []
        for run in runs:
            if len(found) >= limit:
                break
            if getattr(run, "job_type", None) == "analysis":
                continue
            found.append((_unwrap_config(dict(run.config)), run.id, run.name))
        return found

    return bounded(f"listing the runs of {entity}/{project}", fetch_runs, timeout)


# ---- logging analysis results --------------------------------------------------------------------------------------
LOG_MODES = ("off", "new", "resume")


def check_log_mode(mode: Any) -> str:
    mode = "off" if mode in (None, False) else str(mode)
    if mode not in LOG_MODES:
        raise HarnessError(f"wandb={mode!r}: use wandb=off, wandb=new (an analysis run) or wandb=resume (log onto the "
                           "source runs)")
    if mode != "off" and tracking.resolve_mode(None) == "disabled":
        raise HarnessError(f"wandb={mode} but W&B is disabled (WANDB_MODE=disabled): unset it or use wandb=off")
    return mode


def _log(run, figures: Iterable[tuple[str, Path]], tables: Iterable[Any], step: int | None,
         history_step: int | None = None) -> None:
    import wandb

    tables = list(tables)
    names = [t.name for t in tables]
    data: dict[str, Any] = {tracking.analysis_figure_key(name, names): wandb.Image(str(png)) for name, png in figures}
    data.update({tracking.Keys.analysis(name=t.name): t.to_wandb() for t in tables})
    if step is not None:
        data[tracking.Keys.step()] = step
    if history_step is None:
        run.log(data)
    else:
        run.log(data, step=history_step)


def log_new_run(figures: list[tuple[str, Path]], tables: list[Any], out: Path, config: dict[str, Any],
                project: str | None, entity: str | None, name: str | None,
                timeout: float | None = None) -> dict[str, Any]:
    """Log the figures and tables as one new W&B run (job_type ``analysis``) whose files live in ``out``;
    ``timeout``: the seconds its start may wait for the server (W&B's default: 90)."""
    import wandb

    mode = tracking.resolve_mode(None)
    waits = {"init_timeout": float(timeout)} if timeout else {}
    wandb.setup(settings=wandb.Settings(silent=True))  # W&B's own console lines (its login) stay off stderr
    run = wandb.init(project=project or "langneurons", entity=entity, name=name, job_type="analysis",
                     group="analysis", dir=str(out), mode=mode, config=config, reinit="finish_previous",
                     settings=wandb.Settings(silent=True, **waits))
    try:
        _log(run, figures, tables, None)
        folder = tracking.run_files_dir(run)
        result = {"mode": mode, "run_id": run.id, "folder": str(folder) if folder else None}
    finally:
        run.finish()
    return result


def log_onto_run(ref: WandbRef, run_dir: Path | None, figures: list[tuple[str, Path]], tables: list[Any],
                 step: int | None) -> dict[str, Any]:
    """Log onto an existing run by resuming it. Offline, the resumed part is a new folder under the run's ``wandb/``
    with the same run id; ``wandb sync`` uploads it after the original one."""
    import wandb

    mode = tracking.resolve_mode(None)
    if mode == "offline" and run_dir is None:
        raise HarnessError(f"W&B run {ref.run_id} came from the server but W&B is offline now: use wandb=new")
    # Offline, the resumed part cannot ask the server where the run's history ends; logging after the last local
    # _step keeps the history increasing when `wandb sync` appends it (online, the SDK continues by itself).
    history_step = None
    if mode == "offline":
        last = last_history_step(ref.folders)
        history_step = None if last is None else last + 1
    run = wandb.init(id=ref.run_id, project=ref.project or "langneurons", entity=ref.entity,
                     resume="must" if mode == "online" else "allow", dir=str(run_dir) if run_dir else None,
                     mode=mode, reinit="finish_previous", settings=wandb.Settings(silent=True))
    try:
        run.define_metric(tracking.Keys.step())
        run.define_metric(tracking.Keys.analysis(name="*"), step_metric=tracking.Keys.step())
        _log(run, figures, tables, step, history_step)
        folder = tracking.run_files_dir(run)
        result = {"mode": mode, "run_id": run.id, "folder": str(folder) if folder else None}
    finally:
        run.finish()
    return result
