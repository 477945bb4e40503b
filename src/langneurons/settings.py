"""Typed, frozen settings: the composed config turned, once, into objects that hold only valid values.

``RunSettings.from_config(cfg)`` reads a composed training config (``conf/config.yaml`` with its groups, as a plain
dict) and checks every value before anything runs: types, ranges, choices, languages, paths that must exist and
combinations that cannot work. A bad value is a :class:`HarnessError` of one line that names the key, its value,
what is wrong and what to write instead::

    neurons.top_rate=0: must be greater than 0; the share of all layers x units selected, in (0, 1], e.g. 0.01

The defaults live in the YAML files only: no field here has a default that stands for a setting, so a config that
lacks a key is an error, not a silent fallback. (A ``None`` default marks a key that applies to some options of a
group only, e.g. ``model.arch`` for the built-in tiny model.) Every module takes the settings object of its concern
(:class:`ModelSettings`, :class:`ProblemSettings`, :class:`TrainerSettings`, :class:`AlignmentSettings` and its
methods, :class:`ScorerSettings`, :class:`NeuronSettings`, :class:`EvalSettings`, :class:`LoggerSettings`), never the
raw dict. ``Settings.of(value)`` accepts an object of the class or a complete mapping (validated the same way).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Mapping, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import languages
from .answer_language import MODES as ANSWER_LANG_MODES
from .errors import HarnessError
from .neurons.identify import METHODS as IDENTIFY_METHODS

# The choices of the config this module is the home of (modules that act on them import them from here).
PROBES = ("responses", "gold", "text")
WANDB_MODES = ("auto", "online", "offline", "disabled")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PROBLEM_SOURCES = ("synthetic", "mgsm", "msvamp")
SAMPLERS = ("hf", "vllm")
DTYPES = ("auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16")  # model.dtype, scorer.dtype

# Types of the fields. Sequences come from YAML and the command line as lists: they are read into tuples.
Count = Annotated[int, Field(ge=1)]
NonNegative = Annotated[int, Field(ge=0)]
Langs = Annotated[tuple[str, ...], Field(strict=False)]
Strings = Annotated[tuple[str, ...], Field(strict=False)]


class Settings(BaseModel):
    """A block of settings: frozen, no unknown keys, no type coercion beyond int -> float."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    # where the block sits in the composed config ("neurons."): the prefix of the keys its errors name
    PREFIX: ClassVar[str] = ""
    # per field: what it takes, said after an error ("the share of all layers x units selected, ...")
    HINTS: ClassVar[dict[str, str]] = {}

    @classmethod
    def of(cls, value: "Settings | Mapping[str, Any]", prefix: str | None = None):
        """``value`` as this class: itself, or a complete mapping validated (errors name ``prefix`` + key)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, BaseModel):
            value = value.model_dump()
        return cls.from_config(value, cls.PREFIX if prefix is None else prefix)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, prefix: str | None = None):
        prefix = cls.PREFIX if prefix is None else prefix
        if not isinstance(cfg, Mapping):
            raise HarnessError(f"{prefix.rstrip('.') or 'the config'}={cfg!r}: expected a block of keys; "
                               "python train.py --cfg job prints the composed config")
        try:
            return cls.model_validate(dict(cfg))
        except ValidationError as e:
            raise HarnessError(describe(e, cls, prefix)) from None

    def dump(self) -> dict[str, Any]:
        """The settings as plain JSON values, tuples as lists (as the composed config had them)."""
        return self.model_dump(mode="json")


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_show(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{...}"
    return str(value)


_MESSAGES = {
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "string_type": "must be a text",
    "tuple_type": "must be a list, e.g. [a,b]",
    "list_type": "must be a list, e.g. [a,b]",
    "dict_type": "must be a block of keys",
    "model_type": "must be a block of keys",
}


def describe(error: ValidationError, owner: Any, prefix: str) -> str:
    """The one line for the first problem pydantic found: ``<key>=<value>: <what is wrong>; <what it takes>``.
    ``owner``: the settings class validated (or the members of a tagged union)."""
    first = error.errors(include_url=False)[0]
    loc, field, block = _walk(owner, first["loc"])
    if first["type"] in ("union_tag_invalid", "union_tag_not_found"):  # a group's choice key (scorer.kind, ...)
        tag = str(first["ctx"].get("discriminator", "")).strip("'")
        loc = [*loc, tag]
        if first["type"] == "union_tag_invalid":
            expected = str(first["ctx"].get("expected_tags", "")).replace("'", "")
            return f"{prefix}{'.'.join(loc)}={_show(first['ctx'].get('tag'))}: unknown choice; use one of {expected}"
    key = prefix + ".".join(loc)
    if first["type"] in ("missing", "union_tag_not_found"):
        return (f"{key} is missing from the config: add it (its group's YAML under conf/ defines it); "
                "python train.py --cfg job prints the composed config")
    if first["type"] == "extra_forbidden":
        return (f"unknown config key {key!r}: remove it (python train.py --cfg job [group=option ...] prints every "
                "key)")
    if first["type"] == "value_error":  # a validator's own message, already phrased for the user
        message = str(first["ctx"]["error"]) if "ctx" in first else first["msg"]
        if not loc or block:
            return message  # a check of a whole block names its keys itself (a dict-valued key does not)
        return f"{key}={_show(first['input'])}: {message}"
    if first["type"] == "literal_error":
        choices = first["ctx"]["expected"].replace("'", "").replace(" or ", ", ")
        return f"{key}={_show(first['input'])}: unknown choice; use one of {choices}"
    what = _MESSAGES.get(first["type"])
    if what is None:
        what = first["msg"][0].lower() + first["msg"][1:]
        what = what.replace("input should be", "must be")
    hint = field[0].HINTS.get(field[1], "") if field else ""
    return f"{key}={_show(first['input'])}: {what}" + (f"; {hint}" if hint else "")


def _walk(owner: Any, loc: tuple) -> tuple[list[str], tuple[type, str] | None, bool]:
    """An error's location as config keys: (the keys, (the class, field) of the last key that is a field, whether
    the error is about a whole block of settings). pydantic puts the branch a union took into the location (the
    method ``mapo``, ``constrained-int``, ``literal['auto']``): those parts are not keys and are left out."""
    owners = list(owner) if isinstance(owner, (tuple, list)) else [owner]
    tag_next = len(owners) > 1  # a union of settings: its branch's tag comes next
    keys: list[str] = []
    field = None
    block = True
    for part in loc:
        hit = next((o for o in owners if part in o.model_fields), None)
        if hit is not None:
            keys.append(str(part))
            field = (hit, str(part))
            owners = _settings_types(hit.model_fields[part].annotation)
            tag_next, block = len(owners) > 1, bool(owners)
        elif tag_next or (not owners and _branch_name(part)):
            tag_next = False  # the branch a union took: its tag (mapo), or a plain type's (constrained-int)
        else:
            keys.append(str(part))  # a key the block does not have, or inside a plain value (a dict's key)
            owners, block = [], False
    return keys, field, block


def _branch_name(part: Any) -> bool:
    return isinstance(part, str) and ("[" in part or part.startswith(("constrained-", "function-"))
                                      or part in ("int", "float", "str", "bool", "none"))


def _settings_types(annotation: Any) -> list[type]:
    """The settings classes a field holds: its own, or the members of a union of them."""
    return [c for c in (annotation, *getattr(annotation, "__args__", ()))
            if isinstance(c, type) and issubclass(c, Settings)]


def _existing_path(value: str | None, key: str, what: str) -> str | None:
    if value is not None and not Path(value).expanduser().exists():
        raise ValueError(f"no such {what}; give an existing one ({key}=<path>) or {key}=null")
    return value


# ---- data ---------------------------------------------------------------------------------------------------------
class ProblemSettings(Settings):
    """A problem set (``data`` for evaluation and probes, ``alignment.questions`` for training)."""

    PREFIX: ClassVar[str] = "data."
    HINTS: ClassVar[dict[str, str]] = {
        "n": "problems per language, >= 1, or null for all of the set",
        "offset": "the first problem's index, >= 0",
        "seed": "the generated set's seed, >= 0",
    }
    source: Literal[PROBLEM_SOURCES]
    path: str | None
    n: Count | None
    offset: NonNegative
    seed: NonNegative

    @field_validator("n")
    @classmethod
    def _size(cls, n: int | None, info: Any) -> int | None:
        if n is None and info.data.get("source") == "synthetic":
            raise ValueError("the generated problem set needs a size: give a number of problems per language "
                             "(e.g. 128)")
        return n


# ---- model --------------------------------------------------------------------------------------------------------
class HoldoutSettings(Settings):
    offset: NonNegative
    n: NonNegative


class CorpusSettings(Settings):
    PREFIX: ClassVar[str] = "model.pretrain.corpus."
    seed: NonNegative
    offset: NonNegative
    holdout: HoldoutSettings
    equations: Annotated[float, Field(ge=0, le=1)]
    mix: dict[str, Annotated[Union[int, float], Field(ge=0)]]

    @field_validator("mix")
    @classmethod
    def _mix(cls, mix: dict[str, float]) -> dict[str, float]:
        from .data.synthetic import SYNTHETIC_LANGS

        unknown = [code for code in mix if code not in SYNTHETIC_LANGS]
        if unknown:
            languages.get(unknown[0])  # a code no language has: the language table's message
            raise ValueError(f"the generated problems have no {unknown[0]!r} texts; use codes among "
                             f"{', '.join(SYNTHETIC_LANGS)}")
        if not any(w > 0 for w in mix.values()):
            raise ValueError("every weight is 0: give at least one language a weight > 0")
        return mix


class PretrainSettings(Settings):
    """How the built-in tiny base is pretrained (``model.pretrain``); every key but ``enabled``, ``cache_dir`` is
    part of the base's cache key."""

    PREFIX: ClassVar[str] = "model.pretrain."
    HINTS: ClassVar[dict[str, str]] = {"threads": "torch threads while pretraining, >= 1, or null (the run's)"}
    enabled: bool
    cache_dir: str | None
    seed: NonNegative
    steps: Count
    batch_size: Count
    lr: Annotated[float, Field(gt=0)]
    warmup_steps: NonNegative
    weight_decay: Annotated[float, Field(ge=0)]
    threads: Count | None
    max_length: Count
    tokenizer_alpha: Annotated[float, Field(gt=0, le=1)]
    corpus: CorpusSettings


class OfflineSettings(Settings):
    """Where a real model's offline copy comes from when the hub cannot serve it (``model.offline``)."""

    requirement: str
    files: Strings
    sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]
    install: str
    cache_dir: str


class ModelSettings(Settings):
    PREFIX: ClassVar[str] = "model."
    HINTS: ClassVar[dict[str, str]] = {
        "prompt_template": "a prompt format: plain, mathoctopus, fewshot or chat",
        "vocab_size": "the built tokenizer's vocabulary, >= 300",
    }
    preset: str
    name_or_path: str | None
    revision: str | None
    dtype: Literal[DTYPES]
    trust_remote_code: bool
    prompt_template: str
    # the built-in tiny model only (name_or_path null)
    vocab_size: Annotated[int, Field(ge=300)] | None = None
    split_digits: bool | None = None
    arch: dict[str, Any] | None = None
    pretrain: PretrainSettings | None = None
    # real models with a copy on the package registry only
    offline: OfflineSettings | None = None

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, name: str) -> str:
        from .prompts import FORMATS

        if name not in FORMATS:
            raise ValueError(f"unknown prompt template; use one of {', '.join(FORMATS)}")
        return name

    @model_validator(mode="after")
    def _check(self) -> "ModelSettings":
        if self.name_or_path is None:
            missing = [k for k in ("vocab_size", "arch") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"model.name_or_path=null builds the tiny model from model.{missing[0]}, which is "
                                 "missing: give model.name_or_path=<hub id or folder>, or use model=tiny")
        return self

    @property
    def built(self) -> bool:
        """The harness's own tiny model (built from ``arch``), not loaded weights."""
        return self.name_or_path is None


# ---- training -----------------------------------------------------------------------------------------------------
class LoraSettings(Settings):
    PREFIX: ClassVar[str] = "trainer.lora."
    HINTS: ClassVar[dict[str, str]] = {"r": "the adapter's rank, >= 1 (e.g. 8)",
                                       "dropout": "a probability in [0, 1)",
                                       "target_modules": "module names, e.g. [q_proj,v_proj]"}
    r: Count
    alpha: Annotated[float, Field(gt=0)]
    dropout: Annotated[float, Field(ge=0, lt=1)]
    target_modules: Annotated[tuple[str, ...], Field(strict=False, min_length=1)]


class TrainerSettings(Settings):
    PREFIX: ClassVar[str] = "trainer."
    HINTS: ClassVar[dict[str, str]] = {
        "max_steps": "the optimizer steps of the run, >= 1",
        "learning_rate": "a rate > 0, e.g. 1e-4",
        "save_steps": "steps between trainer checkpoints, >= 0 (0: none)",
        "save_total_limit": "trainer checkpoints kept, >= 1, or null for all",
        "lr_scheduler_type": "a transformers scheduler name, e.g. linear, cosine, constant",
    }
    max_steps: Count
    per_device_train_batch_size: Count
    gradient_accumulation_steps: Count
    learning_rate: Annotated[float, Field(gt=0)]
    lr_scheduler_type: str
    warmup_steps: NonNegative
    weight_decay: Annotated[float, Field(ge=0)]
    max_length: Count
    precision: Literal[PRECISIONS]
    gradient_checkpointing: bool
    logging_steps: Count
    save_steps: NonNegative
    save_total_limit: Count | None
    num_workers: NonNegative
    lora: LoraSettings

    @field_validator("lr_scheduler_type")
    @classmethod
    def _scheduler(cls, name: str) -> str:
        from transformers import SchedulerType

        names = [s.value for s in SchedulerType]
        if name not in names:
            raise ValueError(f"unknown learning-rate schedule; use one of {', '.join(names)}")
        return name


class _Alignment(Settings):
    PREFIX: ClassVar[str] = "alignment."
    questions: ProblemSettings

    @field_validator("questions", mode="before")
    @classmethod
    def _questions(cls, value: Any) -> Any:
        return ProblemSettings.of(value, "alignment.questions.") if isinstance(value, Mapping) else value


class _Preference(_Alignment):
    HINTS: ClassVar[dict[str, str]] = {
        "beta": "DPO's beta, > 0 (e.g. 0.1)",
        "loss_type": "a TRL DPO loss or a list, e.g. sigmoid or [sigmoid,sft]",
        "loss_weights": "one weight per loss type, or null",
    }
    beta: Annotated[float, Field(gt=0)]
    loss_type: Annotated[tuple[str, ...], Field(strict=False, min_length=1)]
    loss_weights: Annotated[tuple[float, ...], Field(strict=False)] | None

    @field_validator("loss_type", mode="before")
    @classmethod
    def _loss_type(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("loss_type")
    @classmethod
    def _known_losses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        known = _dpo_losses()
        unknown = [v for v in value if known and v not in known]
        if unknown:
            raise ValueError(f"unknown DPO loss {unknown[0]!r}; use one of {', '.join(known)}")
        return value

    @model_validator(mode="after")
    def _weights(self) -> "_Preference":
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(f"alignment.loss_weights has {len(self.loss_weights)} weight"
                             f"{'s' * (len(self.loss_weights) != 1)} for {len(self.loss_type)} loss types "
                             f"[{','.join(self.loss_type)}]: give one weight per loss type, or "
                             "alignment.loss_weights=null")
        return self


def _dpo_losses() -> tuple[str, ...]:
    """The loss types TRL's DPO knows, from its field's help text (empty when it cannot say: the trainer checks)."""
    try:
        import dataclasses

        from trl import DPOConfig

        help_text = next(f.metadata.get("help", "") for f in dataclasses.fields(DPOConfig) if f.name == "loss_type")
        return tuple(re.findall(r"`'([a-z_0-9]+)'`", help_text))
    except Exception:  # noqa: BLE001
        return ()


class SamplingSettings(Settings):
    """How MAPO samples the policy's answers: the sampler and the pair cache key read this one object."""

    sampler: Literal[SAMPLERS]
    k: Count
    temperature: Annotated[float, Field(gt=0)]
    top_p: Annotated[float, Field(gt=0, le=1)]
    max_new_tokens: Count
    batch_size: Count


class MapoSettings(_Preference):
    HINTS: ClassVar[dict[str, str]] = {
        **_Preference.HINTS,
        "k": "answers sampled per question, >= 1",
        "temperature": "a sampling temperature > 0",
        "top_p": "a probability in (0, 1]",
        "include_gold": "true, false or auto",
        "eval_fraction": "the share of questions held out, in [0, 1)",
        "vllm_gpu_memory": "a share of GPU memory in (0, 1]",
    }
    method: Literal["mapo"]
    k: Count
    temperature: Annotated[float, Field(gt=0)]
    top_p: Annotated[float, Field(gt=0, le=1)]
    max_new_tokens: Count
    sampler: Literal[SAMPLERS]
    sample_batch_size: Count
    vllm_gpu_memory: Annotated[float, Field(gt=0, le=1)]
    include_gold: bool | Literal["auto"]
    eval_fraction: Annotated[float, Field(ge=0, lt=1)]
    eval_steps: Count | None
    cache_dir: str | None

    @model_validator(mode="after")
    def _held_out(self) -> "MapoSettings":
        if self.eval_steps is not None and self.eval_fraction == 0:
            raise ValueError(f"alignment.eval_steps={self.eval_steps} evaluates held-out pairs, but "
                             "alignment.eval_fraction=0 holds none out: give eval_fraction > 0 (e.g. 0.1) or "
                             "eval_steps=null")
        if self.sampler == "vllm":
            import importlib.util

            if importlib.util.find_spec("vllm") is None:
                raise ValueError("alignment.sampler=vllm needs vLLM, which is not installed: `pip install vllm` (on "
                                 "a CUDA machine), or use alignment.sampler=hf")
        return self

    @property
    def sampling(self) -> SamplingSettings:
        return SamplingSettings(sampler=self.sampler, k=self.k, temperature=self.temperature, top_p=self.top_p,
                                max_new_tokens=self.max_new_tokens, batch_size=self.sample_batch_size)


class DpoSettings(_Preference):
    method: Literal["dpo"]
    pairs: str | None

    @field_validator("pairs")
    @classmethod
    def _pairs(cls, value: str | None) -> str | None:
        return _existing_path(value, "alignment.pairs", "preference file")


class SftSettings(_Alignment):
    method: Literal["sft"]
    examples: str | None

    @field_validator("examples")
    @classmethod
    def _examples(cls, value: str | None) -> str | None:
        return _existing_path(value, "alignment.examples", "example file")


class QalignSettings(_Alignment):
    method: Literal["qalign"]


AlignmentSettings = Annotated[Union[MapoSettings, DpoSettings, SftSettings, QalignSettings],
                              Field(discriminator="method")]


# ---- MAPO's scorer ------------------------------------------------------------------------------------------------
class TranslationScorerSettings(Settings):
    PREFIX: ClassVar[str] = "scorer."
    kind: Literal["translation"]
    name_or_path: str | None
    revision: str | None
    dtype: Literal[DTYPES]
    batch_size: Count
    max_length: Count
    # the tiny translation model built from the config (name_or_path null) only
    vocab_size: Count | None = None
    corpus_size: Count | None = None
    seed: NonNegative | None = None
    arch: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> "TranslationScorerSettings":
        if self.name_or_path is None and None in (self.vocab_size, self.corpus_size, self.seed, self.arch):
            raise ValueError("scorer.name_or_path=null builds a tiny translation model from scorer.arch, "
                             "vocab_size, corpus_size and seed: give them (scorer=tiny) or scorer.name_or_path")
        return self


class NumbersScorerSettings(Settings):
    PREFIX: ClassVar[str] = "scorer."
    kind: Literal["numbers"]


class CorrectnessScorerSettings(Settings):
    PREFIX: ClassVar[str] = "scorer."
    kind: Literal["correctness"]


ScorerSettings = Annotated[Union[TranslationScorerSettings, NumbersScorerSettings, CorrectnessScorerSettings],
                           Field(discriminator="kind")]


# ---- neuron checkpoints and evaluation ----------------------------------------------------------------------------
class IdentificationSettings(Settings):
    """How neurons are identified (the keys :func:`neurons.identify` takes), in a run or in an analysis."""

    PREFIX: ClassVar[str] = "neurons."
    HINTS: ClassVar[dict[str, str]] = {
        "top_rate": "the share of all layers x units selected, in (0, 1], e.g. 0.01",
        "lam": "a number >= 0 or auto (the search in [lam_lo, lam_hi])",
        "lam_lo": "the lam search's lower end, >= 0",
        "lam_hi": "the lam search's upper end, > lam_lo",
        "lam_eps": "the lam search's precision, > 0",
        "bar": "the quantile of all probabilities above which a language owns a neuron, in (0, 1)",
        "filter_rate": "lape: a quantile in (0, 1)",
        "general_bar": "a quantile in (0, 1), or null (bar)",
        "general_min_langs": "languages a general neuron is active in, >= 1, or null (all)",
    }
    method: Literal[IDENTIFY_METHODS]
    top_rate: Annotated[float, Field(gt=0, le=1)]
    lam: Annotated[float, Field(ge=0)] | Literal["auto"]
    lam_lo: Annotated[float, Field(ge=0)]
    lam_hi: Annotated[float, Field(gt=0)]
    lam_eps: Annotated[float, Field(gt=0)]
    bar: Annotated[float, Field(gt=0, lt=1)]
    filter_rate: Annotated[float, Field(gt=0, lt=1)]
    general_bar: Annotated[float, Field(gt=0, lt=1)] | None
    general_min_langs: Count | None

    @model_validator(mode="after")
    def _range(self) -> "IdentificationSettings":
        if self.lam_lo >= self.lam_hi:
            raise ValueError(f"{self.PREFIX}lam_lo={self.lam_lo} is not below {self.PREFIX}lam_hi={self.lam_hi}: "
                             "the lam search needs lam_lo < lam_hi")
        return self

    IDENTIFY_KEYS: ClassVar[tuple[str, ...]] = ("method", "top_rate", "lam", "lam_lo", "lam_hi", "lam_eps", "bar",
                                                "filter_rate", "general_bar", "general_min_langs")

    def identify(self, stats: Any) -> Any:
        return identify_with(self, stats)


def identify_with(s: Any, stats: Any) -> Any:
    """:func:`neurons.identify` on ``stats`` with the identification keys of ``s`` (these settings, or the analysis'
    :class:`analysis.sources.IdentifySettings`)."""
    from .neurons import GeneralRule, identify

    return identify(stats, s.method, top_rate=s.top_rate, lam=s.lam, bar=s.bar, filter_rate=s.filter_rate,
                    general=GeneralRule(bar=s.general_bar, min_langs=s.general_min_langs),
                    lam_range=(s.lam_lo, s.lam_hi), lam_eps=s.lam_eps)


class NeuronSettings(IdentificationSettings):
    """Neuron checkpoints (``neurons``): when, on what probe, and how neurons are identified."""

    HINTS: ClassVar[dict[str, str]] = {
        **IdentificationSettings.HINTS,
        "every_n_steps": "steps between neuron checkpoints, >= 0 (0: start and end only)",
        "n": "probe problems per language, >= 1, or null for all evaluation problems",
        "batch_size": "probe rows per forward pass, >= 1",
        "max_length": "tokens of prompt + response, >= 1",
    }
    enabled: bool
    every_n_steps: NonNegative
    probe: Literal[PROBES]
    start_stats: str | None
    n: Count | None
    batch_size: Count
    merge_adapters: bool
    max_length: Count
    image: bool
    artifact: bool

    @field_validator("start_stats")
    @classmethod
    def _start_stats(cls, value: str | None) -> str | None:
        return _existing_path(value, "neurons.start_stats", "statistics folder")


class EvalSettings(Settings):
    PREFIX: ClassVar[str] = "eval."
    HINTS: ClassVar[dict[str, str]] = {
        "max_new_tokens": "tokens generated per answer, >= 1",
        "batch_size": "questions per generate call, >= 1",
        "samples": "answers per language shown in the W&B table, >= 0",
    }
    max_new_tokens: Count
    batch_size: Count
    samples: NonNegative
    answer_lang: Literal[ANSWER_LANG_MODES]


# ---- tracking -----------------------------------------------------------------------------------------------------
class WandbSettings(Settings):
    PREFIX: ClassVar[str] = "logger."
    backend: Literal["wandb"]
    project: Annotated[str, Field(min_length=1)]
    entity: str | None
    mode: Literal[WANDB_MODES]
    name: str | None
    group: str | None
    tags: Strings


class NoLoggerSettings(Settings):
    PREFIX: ClassVar[str] = "logger."
    backend: Literal["none"]


LoggerSettings = Annotated[Union[WandbSettings, NoLoggerSettings], Field(discriminator="backend")]


# ---- the run ------------------------------------------------------------------------------------------------------
def parse_languages(value: Any, key: str) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        codes = [str(c).strip() for c in value]
        twice = sorted({c for c in codes if codes.count(c) > 1})
        if twice:
            raise ValueError(f"lists {twice[0]} twice: give each language once")
    elif not isinstance(value, str):
        raise ValueError(f"not a language: give a code ({key}=sw), a list ({key}=[zh,de]) or all")
    try:
        return languages.resolve(value)
    except HarnessError as e:
        raise ValueError(str(e)) from None


def _own_keys(alignment: Any) -> Any:
    """The alignment block without the keys of *other* methods. A model preset sets MAPO's sampling keys
    (``alignment.max_new_tokens``, ``include_gold``), which merge into whatever method the command line picks
    (``model=gemma3_270m alignment=dpo``); a user cannot add such a key without Hydra refusing it (no ``+``), so
    they are a preset's, not a typo."""
    if not isinstance(alignment, Mapping):
        return alignment
    members = {m.model_fields["method"].annotation.__args__[0]: m
               for m in (MapoSettings, DpoSettings, SftSettings, QalignSettings)}
    own = members.get(alignment.get("method"))
    if own is None:
        return alignment
    others = {k for m in members.values() for k in m.model_fields} - set(own.model_fields)
    return {k: v for k, v in alignment.items() if k not in others}


def _in_problem_set(problems: ProblemSettings, langs: tuple[str, ...], key: str, which: str) -> None:
    """Every language of ``langs`` has problems in the set ``problems`` (MGSM and MSVAMP lack some)."""
    if problems.source == "synthetic":
        from .data.synthetic import SYNTHETIC_LANGS

        lacking = [lang for lang in langs if lang not in SYNTHETIC_LANGS]
    else:
        attr = f"{problems.source}_file"
        lacking = [lang for lang in langs if getattr(languages.get(lang), attr) is None]
    if lacking:
        raise ValueError(f"{key}.source={problems.source} has no problems in {lacking[0]}: leave it out of {which}, "
                         f"or use another set ({key}.source=<synthetic|mgsm|msvamp>)")


class RunSettings(Settings):
    """A whole training run: ``python train.py`` turns its composed config into this before anything runs."""

    HINTS: ClassVar[dict[str, str]] = {
        "seed": "a seed >= 0",
        "threads": "a thread count >= 1, or auto",
    }
    lang: Langs
    probe_langs: Langs
    eval_langs: Langs
    seed: NonNegative
    threads: Count | Literal["auto"]
    resume: str | None
    model: ModelSettings
    data: ProblemSettings
    trainer: TrainerSettings
    alignment: AlignmentSettings
    scorer: ScorerSettings
    neurons: NeuronSettings
    eval: EvalSettings
    logger: LoggerSettings

    @field_validator("lang", "probe_langs", "eval_langs", mode="before")
    @classmethod
    def _langs(cls, value: Any, info: Any) -> tuple[str, ...]:
        return parse_languages(value, info.field_name)

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, value: Any) -> Any:
        # OMP_NUM_THREADS comes through ${oc.env:...} as a text
        return int(value) if isinstance(value, str) and value.isdigit() else value

    @model_validator(mode="after")
    def _combinations(self) -> "RunSettings":
        _in_problem_set(self.data, (*self.eval_langs, *self.probe_langs), "data", "probe_langs / eval_langs")
        if self.alignment.method in ("mapo", "qalign"):  # the aligned languages and English, their reference
            _in_problem_set(self.alignment.questions, ("en", *self.lang), "alignment.questions", "lang")
        elif not getattr(self.alignment, "pairs", None) and not getattr(self.alignment, "examples", None):
            _in_problem_set(self.alignment.questions, self.lang, "alignment.questions", "lang")
        n = self.neurons
        if n.enabled and n.general_min_langs is not None and n.general_min_langs > len(self.probe_langs):
            raise ValueError(f"neurons.general_min_langs={n.general_min_langs} is more than the "
                             f"{len(self.probe_langs)} probe languages: give at most {len(self.probe_langs)}, or null")
        return self

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, prefix: str | None = None) -> "RunSettings":
        if isinstance(cfg, Mapping):
            cfg = dict(cfg)
            cfg.pop("hydra", None)
            cfg["alignment"] = _own_keys(cfg.get("alignment"))
        return super().from_config(cfg, "" if prefix is None else prefix)


def _union(kind: Any, value: Any, prefix: str, what: str) -> Any:
    """``value`` as one of the settings of the tagged union ``kind`` (alignment, scorer, logger)."""
    from pydantic import TypeAdapter

    members = kind.__origin__.__args__ if hasattr(kind, "__origin__") else ()
    if isinstance(value, members):
        return value
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if not isinstance(value, Mapping):
        raise HarnessError(f"{prefix.rstrip('.')}={value!r}: expected a block of keys ({what})")
    try:
        return TypeAdapter(kind).validate_python(dict(value))
    except ValidationError as e:
        raise HarnessError(describe(e, members, prefix)) from None


def alignment_settings(value: Any) -> "MapoSettings | DpoSettings | SftSettings | QalignSettings":
    return _union(AlignmentSettings, value, "alignment.", "alignment=<mapo|dpo|sft|qalign>")


def scorer_settings(value: Any) -> "TranslationScorerSettings | NumbersScorerSettings | CorrectnessScorerSettings":
    return _union(ScorerSettings, value, "scorer.", "scorer=<numbers|correctness|nllb|tiny>")


def logger_settings(value: Any) -> "WandbSettings | NoLoggerSettings":
    return _union(LoggerSettings, value, "logger.", "logger=<wandb|none>")
