"""A neuron checkpoint: what one measurement holds, and its one on-disk format.

A run's checkpoints live under ``<run dir>/neurons/``, one folder per step::

    neurons/step-<N>/
        stats.json + stats.safetensors                    activation counts per language (NeuronStats)
        identification.json + identification.safetensors  the neuron types (Identification; absent when skipped)
        checkpoint.json                                   the record: accuracy, answer-language shares, neuron counts
                                                          per language and type, transitions, overlaps, samples,
                                                          timings, notes

A folder is written as ``step-<N>.tmp`` and renamed into place once complete, so a ``step-<N>`` folder is always
whole: a kill or a full disk mid-write leaves the earlier checkpoints as they were. A resumed run moves checkpoints
past its last trainer checkpoint aside (``step-<N>.superseded-<time>``); readers skip both kinds of leftovers.

Everything that reads or writes this layout goes through this module: the callback (writing, a resumed run's
history), the end-of-run summary, the analysis (``analysis/sources.py``), the W&B tracker (artifact aliases
``step-<N>``) and W&B downloads (``analysis/wandb_io.py``).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .. import faults
from ..errors import DataError, full_disk_is_one_line
from ..neurons import Identification, NeuronStats, layer_distribution
from ..neurons.dynamics import lang_type_counts

RECORD = "checkpoint.json"
_STEP = re.compile(r"^step-(\d+)$")


@dataclass
class NeuronCheckpoint:
    """Everything measured at one step."""

    step: int
    stats: NeuronStats
    ident: Identification | None
    accuracy: dict[str, float]
    answer_lang: dict[str, float]  # share of answers written in the asked language (empty: not checked)
    samples: list[dict[str, Any]]
    since_previous: dict[str, torch.Tensor] | None = None
    since_start: dict[str, torch.Tensor] | None = None
    overlap_start: dict[str, float] | None = None
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds: answer, count, identify, save
    path: Path | None = None
    notes: list[str] = field(default_factory=list)

    def lang_type_counts(self) -> dict[str, dict[str, int]]:
        """Neurons of each type per language (specific / related owned by it; general is shared by all)."""
        if self.ident is None:
            return {}
        return lang_type_counts(self.ident)

    def record(self) -> dict[str, Any]:
        """The JSON digest saved as ``checkpoint.json`` (before its timings: see :func:`write`)."""
        record: dict[str, Any] = {"step": self.step, "accuracy": self.accuracy, "answer_lang": self.answer_lang,
                                  "seconds": self.seconds, "phases": self.phases,
                                  "notes": self.notes, "samples": self.samples}
        if self.ident is not None:
            record["identification"] = self.ident.summary()
            record["lang_type_counts"] = self.lang_type_counts()
            record["layer_distribution"] = layer_distribution(self.ident).to_dict()
            if self.overlap_start is not None:
                record["overlap_with_start"] = self.overlap_start
            for name, mats in (("since_previous", self.since_previous), ("since_start", self.since_start)):
                if mats is not None:
                    record[f"transitions_{name}"] = {lang: m.tolist() for lang, m in mats.items()}
        return record


# ---- the layout --------------------------------------------------------------------------------------------------
def step_name(step: int) -> str:
    """The folder name of step ``step``'s checkpoint (and its W&B artifact alias): ``step-<N>``."""
    return f"step-{int(step)}"


def step_of(name: str) -> int | None:
    """The step a ``step-<N>`` folder name (or artifact alias) names; None for any other name (``step-4.tmp``,
    ``step-4.superseded-...``)."""
    match = _STEP.match(name)
    return int(match[1]) if match else None


def step_path(neurons_dir: str | Path, step: int) -> Path:
    return Path(neurons_dir) / step_name(step)


def is_checkpoint(folder: str | Path) -> bool:
    """Whether ``folder`` is a complete neuron checkpoint: a ``step-<N>`` folder with its record or its statistics
    (a folder laid out by hand, or by an older version, may hold statistics alone)."""
    folder = Path(folder)
    return (step_of(folder.name) is not None and folder.is_dir()
            and ((folder / RECORD).is_file() or NeuronStats.is_saved(folder)))


def step_folders(neurons_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint in ``neurons_dir`` (a run's ``neurons/``), sorted by step."""
    neurons_dir = Path(neurons_dir)
    if not neurons_dir.is_dir():
        return []
    return sorted((step_of(path.name), path) for path in neurons_dir.iterdir() if is_checkpoint(path))


def saved_steps(neurons_dir: str | Path) -> list[int]:
    """The steps of the complete checkpoints in ``neurons_dir``, sorted."""
    return [step for step, _ in step_folders(neurons_dir)]


def read_record(folder: str | Path) -> dict[str, Any]:
    """A checkpoint folder's ``checkpoint.json`` ({} when it has none); a damaged one is a one-line error."""
    path = Path(folder) / RECORD
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        why = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
        raise DataError(f"{str(path)!r} is not valid JSON ({why}): the checkpoint is damaged; take it again or "
                        "remove that step folder") from None
    if not isinstance(record, dict):
        raise DataError(f"{str(path)!r} holds a JSON {type(record).__name__}, not an object: the checkpoint is "
                        "damaged; take it again or remove that step folder")
    return record


def load_identification(neurons_dir: str | Path, step: int) -> Identification | None:
    """The saved identification of step ``step`` (None when that checkpoint skipped identification)."""
    folder = step_path(neurons_dir, step)
    return Identification.load(folder) if Identification.is_saved(folder) else None


def supersede(neurons_dir: str | Path, step: int) -> None:
    """Move step ``step``'s checkpoint aside (``step-<N>.superseded-<time>``): a resumed run takes it again."""
    folder = step_path(neurons_dir, step)
    folder.rename(folder.with_name(f"{folder.name}.superseded-{int(time.time())}"))


# ---- writing -----------------------------------------------------------------------------------------------------
def write(ckpt: NeuronCheckpoint, neurons_dir: str | Path,
          timings: Callable[[], dict[str, Any]] | None = None) -> Path:
    """Save ``ckpt`` as ``<neurons_dir>/step-<N>``: written into ``step-<N>.tmp``, then renamed into place, so a crash
    never leaves a partial folder. ``timings()`` gives the record's ``seconds`` and ``phases`` once everything else is
    written (so that they include the writing). A full disk is a one-line error; earlier checkpoints stay as they
    were."""
    neurons_dir = Path(neurons_dir)
    final = step_path(neurons_dir, ckpt.step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a write that a kill cut short
    try:
        with full_disk_is_one_line("the neuron checkpoint", final, run_dir=neurons_dir.parent):
            tmp.mkdir(parents=True)
            ckpt.stats.save(tmp)
            if ckpt.ident is not None:
                ckpt.ident.save(tmp)
            record = ckpt.record()
            if timings is not None:
                record.update(timings())
            faults.reach("checkpoint.write", tmp)
            (tmp / RECORD).write_text(json.dumps(record, indent=1, ensure_ascii=False))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
