"""The settings of every ``analyze.py`` subcommand: its composed config (conf/analyze/<name>.yaml) turned, once, into
a typed, frozen object before the subcommand runs (see :mod:`langneurons.settings`); a bad value is one line.

Sources are not opened here (a missing run folder is said when the sources load, before any analysis runs); what
can be checked without them is: types, ranges, choices, steps, languages, the training config of ``probe``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Mapping, Union

from pydantic import BeforeValidator, Field, field_validator

from ..settings import (
    PROBLEM_SOURCES,
    Count,
    IdentificationSettings,
    RunSettings,
    Settings,
    Strings,
    parse_languages,
)
from .deactivation import MODES
from .wandb_io import LOG_MODES

STEP_HINT = "first, last or a step number"
DEACTIVATION_MODES = tuple(MODES)  # what deactivate zeroes: specific, specific+related, all


def _step(value: Any) -> Any:
    """A step from the command line: ``first``, ``last``, a number (Hydra may give ``500`` as a text)."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if value in ("first", "last") or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise ValueError(f"not a checkpoint; use {STEP_HINT}")


def _langs(value: Any) -> Any:
    return None if value is None else parse_languages(value, "langs")


# a checkpoint of a source: its first, its last, or the one of a step
Step = Annotated[Union[Literal["first", "last"], Annotated[int, Field(ge=0)]], BeforeValidator(_step)]
# languages, or null (all of the source's)
Languages = Annotated[Union[Annotated[tuple[str, ...], Field(strict=False)], None], BeforeValidator(_langs)]


def _sources(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


class _Identification(IdentificationSettings):
    """The identification keys (conf/analyze/_sources.yaml, identify.yaml) and which of them the command line gave."""

    PREFIX: ClassVar[str] = ""
    given: Strings  # the dotted keys the command line set (analyze.py fills it)

    def identify_settings(self) -> Any:
        """The settings for :func:`sources.load_runs`: the ones not given take a run's own ``neurons.*``."""
        from .sources import IdentifySettings

        given = {key.split(".")[0] for key in self.given} & set(self.IDENTIFY_KEYS)
        return IdentifySettings(**{k: getattr(self, k) for k in self.IDENTIFY_KEYS}, given=frozenset(given))


class _Analysis(_Identification):
    """What every subcommand that reads sources takes (_sources.yaml, _output.yaml)."""

    reidentify: bool
    cache: str | None
    out: str | None
    title: str | None
    wandb: Literal[LOG_MODES]


class _Runs(_Analysis):
    runs: Annotated[tuple[str, ...], Field(strict=False, min_length=1)]
    labels: Annotated[tuple[str, ...], Field(strict=False)] | None

    @field_validator("runs", "labels", mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        return _sources(value)


class DeactivationData(Settings):
    source: Literal[PROBLEM_SOURCES] | None
    path: str | None
    seed: Annotated[int, Field(ge=0)]
    offset: Annotated[int, Field(ge=0)]


class _Deactivation(Settings):
    HINTS: ClassVar[dict[str, str]] = {"n": "problems per language, >= 1"}
    model: str | None
    adapter: str | None
    data: DeactivationData
    n: Count
    modes: Annotated[tuple[Literal[DEACTIVATION_MODES], ...], Field(strict=False, min_length=1)]
    langs: Languages
    accuracy: bool
    batch_size: Count
    max_new_tokens: Count


    def options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`sections.deactivation_section`."""
        data = self.data.dump()
        return {"model": self.model, "adapter": self.adapter, "data": data, "n": self.n, "modes": tuple(self.modes),
                "deactivated": self.langs, "accuracy": self.accuracy, "batch_size": self.batch_size,
                "max_new_tokens": self.max_new_tokens}


class ReportDeactivation(_Deactivation):
    PREFIX: ClassVar[str] = "deactivation."
    enabled: bool
    step: Step | None  # null: the report's step



class ReportSettings(_Runs):
    step: Step
    before: Step
    after: Step
    trained: Languages
    deactivation: ReportDeactivation



    @field_validator("deactivation", mode="before")
    @classmethod
    def _deactivation(cls, value: Any) -> Any:
        return ReportDeactivation.of(value) if isinstance(value, Mapping) else value


class CountsSettings(_Runs):
    pass


class OverlapSettings(_Runs):
    pass


class StagesSettings(_Runs):
    step: Step
    per_language: bool



class SpontaneousSettings(_Runs):
    before: Step
    after: Step
    trained: Languages




class CompareSettings(_Analysis):
    before: str
    after: str

    @field_validator("before", "after", mode="before")
    @classmethod
    def _source(cls, value: Any) -> Any:
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


class DeactivateSettings(_Analysis, _Deactivation):
    HINTS: ClassVar[dict[str, str]] = {**_Analysis.HINTS, **_Deactivation.HINTS}
    source: str
    step: Step



class IdentifyCommandSettings(_Identification):
    source: str
    langs: Languages
    out: str | None



class ProbeSettings(Settings):
    """``probe``: its own keys, and the training config it measures with (``config``: the run's settings)."""

    HINTS: ClassVar[dict[str, str]] = {"step": "the checkpoint's step, >= 0, or null"}
    out: str
    adapter: str | None
    step: Annotated[int, Field(ge=0)] | None
    label: str | None
    given: Strings
    config: RunSettings
    raw_config: dict[str, Any]  # the composed training config as it was (the folder records it)
    overrides: Strings

    @field_validator("config", mode="before")
    @classmethod
    def _config(cls, value: Any) -> Any:
        return RunSettings.from_config(value) if isinstance(value, Mapping) else value

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, prefix: str | None = None) -> "ProbeSettings":
        cfg = dict(cfg or {})
        cfg.setdefault("raw_config", dict(cfg.get("config") or {}))
        return super().from_config(cfg, prefix)


def _text(value: Any) -> Any:
    """A name from the command line: Hydra gives ``entity=123`` as a number."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


# a W&B entity, project or group name (Hydra may give a number)
Name = Annotated[str, Field(min_length=1), BeforeValidator(_text)]
Seconds = Annotated[float, Field(gt=0)]


class WorkspaceSettings(Settings):
    """``workspace``: the saved workspace view of a W&B project (conf/analyze/workspace.yaml)."""

    HINTS: ClassVar[dict[str, str]] = {"timeout": "seconds, > 0", "runs": "a list of run dirs, e.g. [outputs/a]"}
    entity: Name
    project: Name
    group: Name | None
    langs: Languages
    runs: Annotated[tuple[str, ...], Field(strict=False, min_length=1)] | None
    name: Name
    out: str | None
    timeout: Seconds
    given: Strings

    @field_validator("runs", mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        return _sources(value)


class WandbReportSettings(_Identification):
    """``wandb-report``: the HTML report's content as a W&B report (conf/analyze/wandb_report.yaml)."""

    HINTS: ClassVar[dict[str, str]] = {"timeout": "seconds, > 0"}
    runs: Annotated[tuple[str, ...], Field(strict=False, min_length=1)]
    labels: Annotated[tuple[str, ...], Field(strict=False)] | None
    reidentify: bool
    cache: str | None
    entity: Name
    project: Name
    title: str | None
    out: str | None
    step: Step
    before: Step
    after: Step
    trained: Languages
    timeout: Seconds

    @field_validator("runs", "labels", mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        return _sources(value)


SETTINGS: dict[str, type[Settings]] = {
    "probe": ProbeSettings,
    "identify": IdentifyCommandSettings,
    "report": ReportSettings,
    "counts": CountsSettings,
    "stages": StagesSettings,
    "compare": CompareSettings,
    "overlap": OverlapSettings,
    "spontaneous": SpontaneousSettings,
    "deactivate": DeactivateSettings,
    "workspace": WorkspaceSettings,
    "wandb-report": WandbReportSettings,
}
