"""Continuing an interrupted run in place: ``python train.py resume=<run dir>``.

A run writes ``run.json`` into its folder when it starts: the resolved config, the command-line overrides and the
W&B run id. Resuming reads it back, so the run continues with *its* config (not whatever ``conf/`` says today),
from its latest trainer checkpoint, into the same W&B run; the neuron-checkpoint callback reloads its history
(see ``NeuronCheckpointer.restore``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import HarnessError
from .files import atomic_write

RECORD = "run.json"
# Keys a resumed run may change: how far it trains and where it logs. Everything else must match the saved run,
# or the neuron history and the W&B run would mix two experiments.
MAY_CHANGE = ("resume", "trainer.max_steps", "logger.mode")
# Config groups merged into the whole config (``# @package _global_``) rather than into a key of their own.
GLOBAL_GROUPS = ("experiment", "debug")


def write_record(run_dir: Path, config: Mapping[str, Any], overrides: Sequence[str], wandb_id: str | None,
                 model_id: str | None = None) -> Path:
    """Save what a resume needs, atomically (a crash never leaves a half-written record)."""
    path = Path(run_dir) / RECORD
    record = {"config": dict(config), "overrides": list(overrides), "wandb_id": wandb_id, "model_id": model_id}
    atomic_write(path, json.dumps(record, indent=1, ensure_ascii=False).encode("utf-8"))
    return path


def read_record(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RECORD
    if not Path(run_dir).is_dir():
        raise HarnessError(f"cannot resume {run_dir}: no such folder (give resume=<the run's output folder>)")
    if not path.is_file():
        raise HarnessError(f"cannot resume {run_dir}: it has no {RECORD}, so it is not a run folder of this harness "
                           "(give resume=<outputs/<date>/<time>>)")
    return json.loads(path.read_text(encoding="utf-8"))


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _select(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _differences(saved: Mapping[str, Any], composed: Mapping[str, Any], prefix: str = ""):
    """(dotted key, saved value, composed value) of every leaf the two configs give differently, leaving out the keys
    that may change and keys the saved run lacks (``BACKFILL`` fills them)."""
    for key, was in saved.items():
        dotted = f"{prefix}{key}"
        if dotted in MAY_CHANGE or key not in composed:
            continue
        now = composed[key]
        if isinstance(was, Mapping) and isinstance(now, Mapping):
            yield from _differences(was, now, dotted + ".")
        elif was != now:
            yield dotted, was, now


def _assign(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = cfg
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


# Blocks whose keys a run saved by an older version may lack: they are taken from today's config (their defaults:
# neurons.lam_eps, filter_rate and general_bar, which the identification used at those values all along).
BACKFILL = ("neurons",)


def resumed_config(composed: Mapping[str, Any], run_dir: Path, overrides: Sequence[str]) -> tuple[dict, dict]:
    """The config a resumed run continues with: the saved one, plus the overrides of ``MAY_CHANGE`` given now.

    Any other override given on the command line must agree with the saved run; otherwise this stops with the
    keys that differ and the command that resumes it. Returns (config, record).
    """
    record = read_record(run_dir)
    saved = json.loads(json.dumps(record["config"]))  # a deep copy
    conflicts = []
    for key in dict.fromkeys(_override_key(o) for o in overrides):
        new = _select(composed, key)
        if key in MAY_CHANGE or any(key.startswith(k + ".") for k in MAY_CHANGE):
            _assign(saved, key, new)
        elif key in GLOBAL_GROUPS:  # no key of its own: what it changes anywhere in the config
            conflicts += [f"{key}= sets {leaf}: {was!r} in the run, {now!r} now"
                          for leaf, was, now in _differences(saved, composed)][:3]
        elif new != _select(saved, key):
            conflicts.append(f"{key}: {_select(saved, key)!r} in the run, {new!r} now")
    for block in BACKFILL:  # keys this version added to a block (a run saved before it lacks them)
        for key, value in (composed.get(block) or {}).items():
            if isinstance(saved.get(block), dict) and key not in saved[block]:
                saved[block][key] = value
    if conflicts:
        original = " ".join(record.get("overrides") or [])
        raise HarnessError(f"cannot resume {run_dir} with a different config ({'; '.join(conflicts)}); only "
                           f"{', '.join(MAY_CHANGE[1:])} may change: python train.py {original} resume={run_dir}"
                           .replace("  ", " "))
    saved["resume"] = str(run_dir)
    return saved, record


def last_trainer_checkpoint(run_dir: Path) -> Path:
    """The newest complete trainer checkpoint of a run (``checkpoints/checkpoint-<step>``).

    The Trainer writes ``trainer_state.json`` last, so a folder without it is a save that a crash cut short."""
    folder = Path(run_dir) / "checkpoints"
    complete = [p for p in folder.glob("checkpoint-*")
                if p.name[11:].isdigit() and (p / "trainer_state.json").is_file()] if folder.is_dir() else []
    if not complete:
        raise HarnessError(f"cannot resume {run_dir}: no complete trainer checkpoint under {folder} (the run stopped "
                           "before its first trainer.save_steps); start it again instead")
    return max(complete, key=lambda p: int(p.name[11:]))
