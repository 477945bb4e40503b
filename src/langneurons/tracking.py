"""W&B: one run per job, online when the user is logged in and offline otherwise, never a prompt.

The run lives in the job's output folder; the composed config goes to ``wandb.config`` as a plain dict; every
metric is charted against ``train/global_step`` (the trainer's step). Keys are defined here, once.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlparse

from .errors import HarnessError

STEP_KEY = "train/global_step"
MODES = ("auto", "online", "offline", "disabled")


def logged_in() -> bool:
    """Whether W&B has credentials on this machine (an API key in the environment or in ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str | None) -> str:
    """The W&B mode to run in. WANDB_MODE in the environment wins; ``auto`` means online only when logged in."""
    mode = os.environ.get("WANDB_MODE") or mode or "auto"
    if mode == "dryrun":
        mode = "offline"
    if mode not in MODES:
        raise HarnessError(f"unknown W&B mode {mode!r}: use logger.mode=<{'|'.join(MODES)}>")
    if mode == "auto":
        return "online" if logged_in() else "offline"
    return mode


def run_identity(model: str, method: str, langs: Sequence[str]) -> dict[str, Any]:
    """Name, group and tags that make runs of the same model and method sit side by side in the W&B UI."""
    lang_part = "+".join(langs)
    return {
        "name": f"{model}-{method}-{lang_part}",
        "group": f"{model}-{method}",
        "tags": [f"model:{model}", f"method:{method}", *(f"lang:{code}" for code in langs)],
    }


def start_run(logger: Mapping[str, Any], config: dict[str, Any], run_dir: Path, identity: Mapping[str, Any]):
    """Start the job's W&B run in ``run_dir`` (or return None when logging is off)."""
    if logger.get("backend", "wandb") == "none":
        return None
    if logger.get("backend") != "wandb":
        raise HarnessError(f"unknown logger {logger.get('backend')!r}: use logger=<wandb|none>")
    import wandb

    mode = resolve_mode(logger.get("mode"))
    run_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=logger.get("project") or "langneurons",
        entity=logger.get("entity"),
        name=logger.get("name") or identity["name"],
        group=logger.get("group") or identity["group"],
        tags=[*identity["tags"], *(logger.get("tags") or [])],
        config=config,
        dir=str(run_dir),
        mode=mode,
        job_type="align",
        reinit="finish_previous",
        settings=wandb.Settings(silent=True),
    )
    run.define_metric(STEP_KEY)
    run.define_metric("*", step_metric=STEP_KEY, step_sync=True)
    return run


def run_files_dir(run) -> Path | None:
    """The folder that holds the run's ``.wandb`` log (what ``wandb leet`` and ``wandb sync`` take)."""
    if run is None or run.settings.mode == "disabled":
        return None
    return Path(run.settings.sync_dir)


def finish(run, exit_code: int = 0) -> None:
    if run is not None:
        run.finish(exit_code=exit_code)
