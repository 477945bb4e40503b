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
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import languages
from ..checkpoints.record import is_checkpoint, read_record, step_folders, step_of
from ..errors import DataError, HarnessError
from ..neurons import Identification, NeuronStats, load_stats
from ..neurons.dynamics import lang_type_counts
from ..neurons.identify import METHODS, UnknownMethodError
from ..neurons.reference import is_reference_folder
from ..resume import RECORD as RUN_RECORD
from ..settings import IdentificationSettings, identify_with
from . import wandb_io

PROBE_RECORD = "probe.json"  # written by analyze.py probe (analysis/probe.py)
_AT_STEP = re.compile(r"^(?P<source>.+)@(?P<step>\d+|first|last)$")


# The identification settings: analyze's keys (conf/analyze/_sources.yaml), named as a run's ``neurons.*`` keys.
IDENTIFY_KEYS = IdentificationSettings.IDENTIFY_KEYS
_NUMBERS = {"top_rate": float, "bar": float, "filter_rate": float, "general_bar": float, "general_min_langs": int,
            "lam_lo": float, "lam_hi": float, "lam_eps": float}


def _setting(name: str, value: Any, where: str = "") -> Any:
    """``value`` of setting ``name`` in its type; a bad one is a one-line error (``where``: whose value it is)."""
    if name == "method":
        if str(value) not in METHODS:
            raise UnknownMethodError(f"{where}unknown identification method {value!r}: choose one of "
                                     f"{', '.join(METHODS)}")
        return str(value)
    if name == "lam":
        if isinstance(value, str) and value == "auto":
            return value
        try:
            return float(value)
        except (TypeError, ValueError):
            raise HarnessError(f"{where}lam must be a number or auto, got {value!r}") from None
    if value is None:
        return None
    kind = _NUMBERS[name]
    try:
        if kind is int and float(value) != int(float(value)):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise HarnessError(f"{where}{name} must be a{'n integer' if kind is int else ' number'}, got {value!r}") \
            from None


@dataclass(frozen=True)
class IdentifySettings:
    """How to identify neurons in statistics that come without an identification (e.g. the reference's), or in
    every checkpoint with ``reidentify``.

    On a source with a run config (a run, a probe folder, a checkpoint of a run), the settings not in ``given`` take
    the run's own ``neurons.*`` values (:meth:`for_run`): ``identify source=<run>/neurons/step-500`` selects what the
    run selected. ``given`` holds the settings the user set explicitly; None counts those that differ from the
    defaults (settings made in code)."""

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
    given: frozenset[str] | None = field(default=None, compare=False)

    @property
    def explicit(self) -> frozenset[str]:
        """The settings given explicitly (see ``given``)."""
        if self.given is not None:
            return self.given
        return frozenset(name for name in IDENTIFY_KEYS if getattr(self, name) != getattr(IdentifySettings, name))

    def for_run(self, config: Mapping[str, Any] | None) -> tuple["IdentifySettings", list[str]]:
        """These settings on a source whose run config is ``config``: every setting that was not given takes the
        run's ``neurons.<setting>`` (where its config has one); a given one that differs from the run's is kept and
        named in the returned notes, one line each."""
        neurons = (config or {}).get("neurons") or {}
        if not isinstance(neurons, Mapping):
            return self, []
        changes: dict[str, Any] = {}
        notes = []
        for name in IDENTIFY_KEYS:
            if name not in neurons:
                continue
            theirs = _setting(name, neurons[name], "the run's neurons.")
            mine = getattr(self, name)
            if name not in self.explicit:
                changes[name] = theirs
            elif mine != theirs:
                notes.append(f"{name}={_show(mine)} differs from the run's neurons.{name} {_show(theirs)}")
        # the result's own settings were given (here or by the run): nothing left to take from another run
        return replace(self, **changes, given=frozenset(IDENTIFY_KEYS)), notes

    def identify(self, stats: NeuronStats) -> Identification:
        return identify_with(self, stats)


def _show(value: Any) -> str:
    return "null" if value is None else str(value)


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
    notes: list[str] = field(default_factory=list)  # about the run as a whole (e.g. settings that differ from its own)

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
def has_config(run_dir: Path) -> bool:
    """Does ``run_dir`` hold a run config (``.hydra/config.yaml``, or the ``run.json`` a run writes when it starts)?"""
    return (run_dir / ".hydra" / "config.yaml").is_file() or (run_dir / RUN_RECORD).is_file()


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's composed Hydra config, resolved, as a plain dict: ``.hydra/config.yaml``, else the config saved in
    ``run.json`` ({} when the run has neither)."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        record = run_dir / RUN_RECORD
        if not record.is_file():
            return {}
        try:
            config = json.loads(record.read_text(encoding="utf-8")).get("config")
        except (json.JSONDecodeError, AttributeError) as exc:
            raise DataError(f"{str(record)!r} cannot be read ({exc}); fix or remove it") from None
        return dict(config) if isinstance(config, Mapping) else {}
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as exc:  # a hand-edited config; the neurons are still readable
        raise DataError(f"{str(path)!r} cannot be read ({type(exc).__name__}: {exc}); fix or remove it") from None


def split_step(spec: str) -> tuple[str, str | None]:
    """``outputs/a@8`` -> (``outputs/a``, ``8``); no suffix -> (spec, None)."""
    match = _AT_STEP.match(spec)
    return (match["source"], match["step"]) if match else (spec, None)


def _default_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "langneurons" / "wandb"


def load_run(spec: str | os.PathLike, settings: IdentifySettings | None = None, *, label: str | None = None,
             reidentify: bool = False, cache: str | os.PathLike | None = None, announce: bool = True) -> Run:
    """Load one source (see the module docstring) as a :class:`Run`.

    ``settings`` identify the statistics that come without an identification (every checkpoint with
    ``reidentify``); on a source with a run config, the settings not given explicitly are the run's own
    (:meth:`IdentifySettings.for_run`). A given setting that differs from the run's, or that no checkpoint uses
    (they keep their saved identifications), is a note in ``run.notes``, said on stderr (``announce``)."""
    settings = settings or IdentifySettings()
    spec = str(spec)
    source, at = split_step(spec)
    make = lambda step, path, record=None: Checkpoint(step, path, record, settings=settings,  # noqa: E731
                                                      reidentify=reidentify)
    if wandb_io.is_wandb_source(source):
        config, found, ref = wandb_io.fetch(source, Path(cache) if cache else _default_cache())
        run = Run(label or "", spec, "wandb", [make(s, p, read_record(p)) for s, p in found], None, config, ref)
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
                      [make(s, p, read_record(p)) for s, p in step_folders(path / "neurons")],
                      path, config, None if probed else wandb_io.local_ref(path, config))
        elif path.parent.name == "neurons" and is_checkpoint(path):
            run_dir = path.parent.parent
            config = read_config(run_dir)
            run = Run(label or "", spec, "checkpoint", [make(step_of(path.name), path, read_record(path))], run_dir,
                      config, wandb_io.local_ref(run_dir, config))
        elif NeuronStats.is_saved(path) or is_reference_folder(path):
            record = read_record(path)
            step = record.get("step")
            loaded = None
            if step is None and NeuronStats.is_saved(path):
                loaded = NeuronStats.load(path)  # kept: the checkpoint would read the same tensors again
                step = loaded.metadata.get("step")
            kind = "stats" if NeuronStats.is_saved(path) else "reference"
            ckpt = Checkpoint(int(step or 0), path, record, settings=settings, reidentify=reidentify, stats=loaded)
            run = Run(label or "", spec, kind, [ckpt], path)
        elif (path / ".hydra").is_dir() or (path / RUN_RECORD).is_file():
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
    _settle_settings(run, settings, reidentify)
    if announce:
        announce_notes(run)
    return run


def _settle_settings(run: Run, settings: IdentifySettings, reidentify: bool) -> None:
    """Give the run's checkpoints the run's own settings where the user gave none; note what differs or is unused."""
    mine, differences = settings.for_run(run.config) if run.config else (settings, [])
    for ckpt in run.checkpoints:
        ckpt.settings = mine
    used = reidentify or any(c.path is None or not Identification.is_saved(c.path) for c in run.checkpoints)
    if used:
        run.notes += differences
    elif settings.explicit:
        given = ", ".join(f"{name}={_show(getattr(settings, name))}" for name in IDENTIFY_KEYS
                          if name in settings.explicit)
        run.notes.append(f"{given} not used: the checkpoints keep the identification they saved (reidentify=true "
                         "identifies them again)")


def announce_notes(run: Run) -> None:
    """The run's notes on stderr, one line each."""
    from .progress import note

    for text in run.notes:
        note(f"{run.label}: {text}")


def setting_label(config: Mapping[str, Any]) -> str:
    """What a run is, from its config: model, alignment method, aligned languages and data, e.g.
    ``tiny mapo sw synthetic`` (``all``: the paper's ten languages); empty when the config says none of them."""
    def part(group: str, key: str) -> str:
        node = config.get(group)
        return str(node.get(key) or "") if isinstance(node, Mapping) else ""

    name = part("model", "preset") or Path(part("model", "name_or_path")).name
    method = part("alignment", "method")
    langs = ""
    if config.get("lang") is not None:
        try:
            codes = languages.resolve(config["lang"])
            langs = "all" if set(codes) == set(languages.PAPER_LANGS) else "+".join(codes)
        except HarnessError:
            langs = str(config["lang"])
    return " ".join(p for p in (name, method, langs, part("data", "source")) if p)


def default_label(run: Run) -> str:
    """The run's setting from its config (:func:`setting_label`: ``tiny mapo sw synthetic``), a probe's own label
    (``<model> base``), else the folder name."""
    if run.kind == "probe" and run.path is not None:
        try:
            return str(json.loads((run.path / PROBE_RECORD).read_text())["label"])
        except (OSError, json.JSONDecodeError, KeyError):
            return run.path.name
    label = setting_label(run.config) if run.config else ""
    if label:
        return label
    if run.path is not None:
        return run.path.name
    return run.wandb.run_id if run.wandb else run.source


# config keys that say where a run lived or logged, not what it did: never what tells two runs apart
_WHERE = ("hydra", "logger", "resume", "cache_dir", "path", "dir", "output_dir", "start_stats")


def _leaves(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_leaves(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def distinguishing(configs: Sequence[Mapping[str, Any]], limit: int = 2) -> list[str]:
    """Up to ``limit`` config keys (dotted) whose values differ between ``configs``, in config order, leaving out the
    keys that say where a run lived (folders, caches, the logger)."""
    flat = [_leaves(c) for c in configs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    differ = [k for k in keys if not any(part in _WHERE for part in k.split("."))
              and len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1]
    return differ[:limit]


def unique_labels(runs: Sequence[Run]) -> None:
    """Make the runs' labels unique: runs that share a label get the config values that tell them apart
    (``tiny mapo sw synthetic seed=1``), else their folder names, else ``#<n>``."""
    for label in {r.label for r in runs}:
        same = [r for r in runs if r.label == label]
        if len(same) < 2:
            continue
        keys = distinguishing([r.config for r in same]) if all(r.config for r in same) else []
        if keys:
            for run in same:
                leaves = _leaves(run.config)
                run.label = label + " " + " ".join(f"{k}={_show(leaves.get(k))}" for k in keys)
        elif all(r.path is not None for r in same) and len({r.path.name for r in same}) == len(same):
            for run in same:
                run.label = f"{label} ({run.path.name})"
    if len({r.label for r in runs}) != len(runs):
        for i, run in enumerate(runs):
            run.label = f"{run.label} #{i + 1}"


def load_runs(specs: Sequence[str] | str, settings: IdentifySettings | None = None, *,
              labels: Sequence[str] | None = None, reidentify: bool = False,
              cache: str | os.PathLike | None = None, trained: Sequence[str] | None = None) -> list[Run]:
    """Load several sources; labels are made unique (:func:`unique_labels`)."""
    if isinstance(specs, str):
        specs = [specs]
    specs = list(specs or [])
    if not specs:
        raise HarnessError("no runs given: runs=[outputs/<date>/<time>,...]")
    if labels is not None and len(labels) != len(specs):
        raise HarnessError(f"labels has {len(labels)} names for {len(specs)} runs: give one per run")
    runs = [load_run(spec, settings, label=None if labels is None else str(labels[i]), reidentify=reidentify,
                     cache=cache, announce=False) for i, spec in enumerate(specs)]
    if trained is not None:
        for run in runs:
            run.trained = languages.resolve(trained)
    unique_labels(runs)
    for run in runs:
        announce_notes(run)
    return runs
