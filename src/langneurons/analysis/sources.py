"""What analysis reads: runs and their neuron checkpoints, from any of the places they can live.

A *source* is one of

- a run dir made by ``train.py`` (``neurons/step-<N>/`` checkpoints, ``.hydra/config.yaml``, ``wandb/``), or its
  ``neurons/`` folder; a folder made by ``analyze.py probe`` has the same shape (and a ``probe.json``);
- one neuron checkpoint ``<run>/neurons/step-<N>`` (its run's config is read when it is there);
- a statistics folder in our format (``stats.json`` + ``stats.safetensors``, with or without a saved
  identification) or the reference's (``activation.<lang>.<model>.pt``): identified with the given settings;
- a W&B run ``wandb:<entity>/<project>/<run id>`` (or its URL) or artifact
  ``wandb:<entity>/<project>/neurons-<id>:step-<N>`` (online only; downloaded to a cache).

Each becomes a :class:`Run` holding :class:`Checkpoint` s by step. ``<source>@<step>`` (``@first``, ``@last``, a
number) keeps one checkpoint.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import languages, tracking
from ..errors import DataError, HarnessError
from ..neurons import GeneralRule, Identification, NeuronStats, identify, load_stats
from ..neurons.dynamics import lang_type_counts
from ..neurons.reference import is_reference_folder
from . import wandb_io

PROBE_RECORD = "probe.json"  # written by analyze.py probe (analysis/probe.py)
_STEP_DIR = re.compile(r"^step-(\d+)$")
_AT_STEP = re.compile(r"^(?P<source>.+)@(?P<step>\d+|first|last)$")


@dataclass(frozen=True)
class IdentifySettings:
    """How to identify neurons in statistics that come without an identification (e.g. the reference's)."""

    method: str = "ternary"
    top_rate: float = 0.01
    lam: float | str = "auto"
    bar: float = 0.95
    filter_rate: float = 0.95
    general_bar: float | None = None
    general_min_langs: int | None = None
    lam_lo: float = 0.0
    lam_hi: float = 0.2
    lam_eps: float = 1e-3

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any]) -> "IdentifySettings":
        """From a subcommand config (the keys of conf/analyze/_sources.yaml); bad values are one-line errors."""
        values: dict[str, Any] = {}
        for name, kind in (("top_rate", float), ("bar", float), ("filter_rate", float), ("general_bar", float),
                           ("general_min_langs", int), ("lam_lo", float), ("lam_hi", float), ("lam_eps", float)):
            value = cfg.get(name, getattr(cls, name))
            try:
                values[name] = None if value is None else kind(value)
            except (TypeError, ValueError):
                raise HarnessError(f"{name} must be a number, got {value!r}") from None
        lam = cfg.get("lam", "auto")
        if lam != "auto":
            try:
                lam = float(lam)
            except (TypeError, ValueError):
                raise HarnessError(f"lam must be a number or auto, got {lam!r}") from None
        return cls(method=str(cfg.get("method", "ternary")), lam=lam, **values)

    def identify(self, stats: NeuronStats) -> Identification:
        return identify(stats, self.method, top_rate=self.top_rate, lam=self.lam, bar=self.bar,
                        filter_rate=self.filter_rate,
                        general=GeneralRule(bar=self.general_bar, min_langs=self.general_min_langs),
                        lam_range=(self.lam_lo, self.lam_hi), lam_eps=self.lam_eps)


class Checkpoint:
    """One neuron checkpoint: step, accuracy, statistics and identification (both loaded when first needed).

    The identification is the saved one when there is one (the one the run logged); otherwise, or with
    ``reidentify``, it is computed from the statistics with ``settings``.
    """

    def __init__(self, step: int, path: Path | None = None, record: dict[str, Any] | None = None, *,
                 settings: IdentifySettings | None = None, reidentify: bool = False,
                 ident: Identification | None = None, stats: NeuronStats | None = None):
        self.step = int(step)
        self.path = Path(path) if path is not None else None
        self.record = dict(record or {})
        self.settings = settings or IdentifySettings()
        self.reidentify = reidentify
        self._ident = ident
        self._stats = stats
        self._no_ident = False  # known to have no identification (its note is already in self.notes)
        self.notes: list[str] = list(self.record.get("notes") or [])

    def __repr__(self) -> str:
        return f"Checkpoint(step={self.step}, path={str(self.path)!r})"

    @property
    def accuracy(self) -> dict[str, float]:
        """Accuracy per evaluated language (and ``avg``) at this step; empty when not measured."""
        return {k: float(v) for k, v in (self.record.get("accuracy") or {}).items()}

    @property
    def stats(self) -> NeuronStats:
        if self._stats is None:
            if self.path is None:
                raise DataError(f"checkpoint at step {self.step} has no statistics")
            self._stats = load_stats(self.path)
        return self._stats

    @property
    def ident(self) -> Identification | None:
        """The identification, or None when there is none (a language had no probe tokens)."""
        if self._ident is None and not self._no_ident:
            if not self.reidentify and self.path is not None and Identification.is_saved(self.path):
                self._ident = Identification.load(self.path)
            else:
                stats = self.stats
                empty = [lang for lang, n in zip(stats.langs, stats.tokens.tolist()) if n <= 0]
                if empty:
                    self.notes.append(f"step {self.step}: no probe tokens for {', '.join(empty)}: no identification")
                    self._no_ident = True
                    return None
                self._ident = self.settings.identify(stats)
        return self._ident

    @cached_property
    def lang_type_counts(self) -> dict[str, dict[str, int]]:
        """Per language, the neurons of each type it has (specific / related it owns; general: the general set)."""
        ident = self.ident
        return {} if ident is None else lang_type_counts(ident)


@dataclass
class Run:
    """A run (or a single statistics folder) and its neuron checkpoints, sorted by step."""

    label: str
    source: str
    kind: str  # run | probe | checkpoint | stats | reference | wandb
    checkpoints: list[Checkpoint]
    path: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    wandb: wandb_io.WandbRef | None = None
    trained: tuple[str, ...] | None = None  # override of the aligned languages

    @property
    def steps(self) -> list[int]:
        return [c.step for c in self.checkpoints]

    def checkpoint(self, which: int | str = "last") -> Checkpoint:
        """``first``, ``last`` or a step number."""
        if not self.checkpoints:
            raise DataError(f"{self.label}: no neuron checkpoints")
        if which in ("first", "last"):
            return self.checkpoints[0 if which == "first" else -1]
        try:
            step = int(which)
        except (TypeError, ValueError):
            raise HarnessError(f"step={which!r}: use first, last or a step number") from None
        for ckpt in self.checkpoints:
            if ckpt.step == step:
                return ckpt
        raise HarnessError(f"{self.label} has no neuron checkpoint at step {step}: it has steps "
                           f"{', '.join(map(str, self.steps))}")

    @property
    def aligned_langs(self) -> tuple[str, ...] | None:
        """The languages the run was aligned on (config ``lang``), None when unknown."""
        if self.trained is not None:
            return self.trained
        spec = self.config.get("lang")
        if spec is None:
            spec = (self.config.get("run") or {}).get("aligned_langs")
        return None if spec is None else languages.resolve(spec)

    @property
    def probe(self) -> str:
        """What the neurons were probed on, e.g. ``mgsm responses`` (empty when unknown)."""
        data, neurons = self.config.get("data") or {}, self.config.get("neurons") or {}
        parts = [str(data.get("source", "")), str(neurons.get("probe", ""))]
        return " ".join(p for p in parts if p)

    @property
    def model(self) -> str:
        model = self.config.get("model") or {}
        if model:
            return str(model.get("name_or_path") or model.get("preset") or "")
        ckpt = self.checkpoints[0] if self.checkpoints else None
        if ckpt is not None and ckpt.path is not None and NeuronStats.is_saved(ckpt.path):
            return str(ckpt.stats.metadata.get("model_id", ""))
        return ""

    def describe(self) -> dict[str, Any]:
        return {"run": self.label, "source": self.source, "kind": self.kind, "model": self.model,
                "aligned": "+".join(self.aligned_langs or ()), "probe": self.probe,
                "steps": " ".join(map(str, self.steps)), "wandb run": self.wandb.run_id if self.wandb else ""}


# ---- loading -------------------------------------------------------------------------------------------------------
def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's composed Hydra config, resolved, as a plain dict ({} when the run has none)."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as exc:  # a hand-edited config; the neurons are still readable
        raise DataError(f"{str(path)!r} cannot be read ({type(exc).__name__}: {exc}); fix or remove it") from None


def _read_record(folder: Path) -> dict[str, Any]:
    path = folder / "checkpoint.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{str(path)!r} is not valid JSON ({exc.msg}): the checkpoint is damaged") from None


def step_folders(neurons_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete neuron checkpoint under ``neurons_dir`` (half-written or superseded folders
    are skipped), sorted by step."""
    out = []
    for path in neurons_dir.iterdir() if neurons_dir.is_dir() else ():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir() and ((path / "checkpoint.json").is_file() or NeuronStats.is_saved(path)):
            out.append((int(match[1]), path))
    return sorted(out)


def split_step(spec: str) -> tuple[str, str | None]:
    """``outputs/a@8`` -> (``outputs/a``, ``8``); no suffix -> (spec, None)."""
    match = _AT_STEP.match(spec)
    return (match["source"], match["step"]) if match else (spec, None)


def _default_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "langneurons" / "wandb"


def load_run(spec: str | os.PathLike, settings: IdentifySettings | None = None, *, label: str | None = None,
             reidentify: bool = False, cache: str | os.PathLike | None = None) -> Run:
    """Load one source (see the module docstring) as a :class:`Run`."""
    settings = settings or IdentifySettings()
    spec = str(spec)
    source, at = split_step(spec)
    make = lambda step, path, record=None: Checkpoint(step, path, record, settings=settings,  # noqa: E731
                                                      reidentify=reidentify)
    if wandb_io.is_wandb_source(source):
        config, found, ref = wandb_io.fetch(source, Path(cache) if cache else _default_cache())
        run = Run(label or "", spec, "wandb", [make(s, p, _read_record(p)) for s, p in found], None, config, ref)
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"no such run or statistics folder {source!r}: give a run dir (outputs/<date>/<time>), "
                            "a neurons/step-<N> folder, a statistics folder or wandb:<entity>/<project>/<run id>")
        if path.name == "neurons" and step_folders(path):
            path = path.parent
        if step_folders(path / "neurons"):
            config = read_config(path)
            probed = (path / PROBE_RECORD).is_file()  # a folder analyze.py probe wrote
            run = Run(label or "", spec, "probe" if probed else "run",
                      [make(s, p, _read_record(p)) for s, p in step_folders(path / "neurons")],
                      path, config, None if probed else wandb_io.local_ref(path, config))
        elif _STEP_DIR.match(path.name) and path.parent.name == "neurons" and (
                (path / "checkpoint.json").is_file() or NeuronStats.is_saved(path)):
            run_dir = path.parent.parent
            config = read_config(run_dir)
            run = Run(label or "", spec, "checkpoint", [make(int(path.name[5:]), path, _read_record(path))], run_dir,
                      config, wandb_io.local_ref(run_dir, config))
        elif NeuronStats.is_saved(path) or is_reference_folder(path):
            record = _read_record(path)
            step = record.get("step")
            loaded = None
            if step is None and NeuronStats.is_saved(path):
                loaded = NeuronStats.load(path)  # kept: the checkpoint would read the same tensors again
                step = loaded.metadata.get("step")
            kind = "stats" if NeuronStats.is_saved(path) else "reference"
            ckpt = Checkpoint(int(step or 0), path, record, settings=settings, reidentify=reidentify, stats=loaded)
            run = Run(label or "", spec, kind, [ckpt], path)
        elif (path / ".hydra").is_dir():
            raise DataError(f"{source!r} is a run without neuron checkpoints (no neurons/step-<N>/): it ran with "
                            "neurons=off or stopped before step 0")
        else:
            raise DataError(f"{source!r} is not a run dir, a neurons/step-<N> folder, a statistics folder "
                            "(stats.json + stats.safetensors) or a reference folder (activation.<lang>.<model>.pt)")
    if not run.checkpoints:
        raise DataError(f"{source!r}: no neuron checkpoints found")
    if at is not None:
        run.checkpoints = [run.checkpoint(at)]
    if not run.label:
        run.label = default_label(run)
    return run


def default_label(run: Run) -> str:
    """``<model>-<method>-<langs>`` from the run's config (as W&B names it), a probe's own label (``<model> base``),
    else the folder name."""
    cfg = run.config
    if run.kind == "probe" and run.path is not None:
        try:
            return str(json.loads((run.path / PROBE_RECORD).read_text())["label"])
        except (OSError, json.JSONDecodeError, KeyError):
            return run.path.name
    try:
        return tracking.run_identity(cfg["model"]["preset"], cfg["alignment"]["method"],
                                     languages.resolve(cfg["lang"]))["name"]
    except (KeyError, TypeError, HarnessError):
        pass
    if run.path is not None:
        return run.path.name
    return run.wandb.run_id if run.wandb else run.source


def load_runs(specs: Sequence[str] | str, settings: IdentifySettings | None = None, *,
              labels: Sequence[str] | None = None, reidentify: bool = False,
              cache: str | os.PathLike | None = None, trained: Sequence[str] | None = None) -> list[Run]:
    """Load several sources; labels are made unique (a repeated label gets its folder name appended)."""
    if isinstance(specs, str):
        specs = [specs]
    specs = list(specs or [])
    if not specs:
        raise HarnessError("no runs given: runs=[outputs/<date>/<time>,...]")
    if labels is not None and len(labels) != len(specs):
        raise HarnessError(f"labels has {len(labels)} names for {len(specs)} runs: give one per run")
    runs = [load_run(spec, settings, label=None if labels is None else str(labels[i]), reidentify=reidentify,
                     cache=cache) for i, spec in enumerate(specs)]
    if trained is not None:
        for run in runs:
            run.trained = languages.resolve(trained)
    names = [r.label for r in runs]
    for run in runs:
        if names.count(run.label) > 1 and run.path is not None:
            run.label = f"{run.label} ({run.path.name})"
    if len({r.label for r in runs}) != len(runs):
        for i, run in enumerate(runs):
            run.label = f"{run.label} #{i + 1}"
    return runs
