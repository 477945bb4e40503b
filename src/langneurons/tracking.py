"""W&B: one run per job, online when the user is logged in and offline otherwise, never a prompt.

The run lives in the job's output folder; the composed config goes to ``wandb.config`` as a plain dict; every
metric is charted against ``train/global_step`` (the trainer's step). Keys are defined here, once (:class:`Keys`):
the loggers below build every key they log from it, and the saved W&B views (``analyze.py workspace``,
``analyze.py wandb-report``: ``analysis/wandb_views.py``) build every key they chart from it.
"""

from __future__ import annotations

import json
import netrc
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import urlparse

from .distributed import is_rank_zero
from .errors import HarnessError
from .settings import WANDB_MODES, logger_settings

MODES = WANDB_MODES

# What a logged value is, as ``wandb leet inspect`` reads it back: a number, or a media value's ``_type``.
NUMBER, TABLE, IMAGE, HISTOGRAM = "number", "table-file", "image-file", "histogram"


@dataclass(frozen=True)
class Key:
    """One family of W&B keys: a template such as ``eval/acc/{lang}`` and the kind of value logged under it."""

    template: str
    kind: str = NUMBER

    def __call__(self, **fields: Any) -> str:
        return self.template.format(**fields)

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        """Matches the keys of this family (each field one path segment)."""
        parts = re.split(r"\{(\w+)\}", self.template)
        return re.compile("^" + "".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+?)"
                                        for i, part in enumerate(parts)) + "$")

    def matches(self, key: str) -> bool:
        return self.pattern.match(key) is not None


class Keys:
    """Every W&B key of a run, one builder each (``Keys.accuracy(lang="sw")`` -> ``eval/acc/sw``). The loggers of
    this module log these and no others; the views chart these and no others, so a key renamed here is renamed on
    both sides, and a key logged under another name is a panel without data, which
    ``analysis.wandb_views.check_keys`` finds (tests/test_wandb_views.py)."""

    step = Key("train/global_step")  # the x axis of every chart
    # neuron checkpoints (CheckpointLogger, neuron_metrics); accuracy also has lang="avg"
    accuracy = Key("eval/acc/{lang}")
    answer_lang = Key("eval/answer_lang/{lang}")
    samples = Key("eval/samples", TABLE)
    specific = Key("neurons/specific/{lang}")  # the neurons of each type a language owns
    related = Key("neurons/related/{lang}")
    general = Key("neurons/general")
    unassigned = Key("neurons/unassigned")
    total = Key("neurons/total/{kind}")  # kind: the identification's types (specific related general unassigned)
    shared_by = Key("neurons/shared_by/{n}")  # n = 0 .. the number of probed languages
    selected = Key("neurons/selected")
    tau = Key("neurons/tau")
    lam = Key("neurons/lam")
    # type changes (src, dst: transition_pairs()) since the previous checkpoint and since step 0, in all and per
    # language
    transition = Key("neurons/transition/{src}_to_{dst}")
    transition_of = Key("neurons/transition/{lang}/{src}_to_{dst}")
    transition_since_start = Key("neurons/transition_since_start/{src}_to_{dst}")
    transition_since_start_of = Key("neurons/transition_since_start/{lang}/{src}_to_{dst}")
    overlap_with_start = Key("neurons/overlap_with_start/{lang}")
    checkpoint_seconds = Key("neurons/checkpoint_seconds")
    phase_seconds = Key("neurons/phase_seconds/{phase}")
    layers = Key("neurons/layers", TABLE)  # the per-layer table of a checkpoint ...
    layers_image = Key("neurons/layers_image", IMAGE)  # ... and its figure
    # MAPO's pair set (pair_metrics, log_pair_stats), at step 0
    pairs = Key("pairs/{split}/{lang}")
    pairs_total = Key("pairs/{split}/total")
    questions_with_pairs = Key("pairs/questions_with_pairs/{lang}")
    correct_fraction = Key("pairs/correct_fraction/{lang}")
    reward_diff = Key("pairs/reward_diff/{stat}")  # mean median min max
    reward_diff_histogram = Key("pairs/reward_diff/histogram", HISTOGRAM)
    pairs_cache_hit = Key("pairs/cache_hit")
    # The Trainer's own log (TRL's names under train/, every trainer.logging_steps), not logged by this module:
    # named here for the views that chart it. DPO-family methods (mapo, dpo) also log reward statistics.
    loss = Key("train/loss")
    reward_margins = Key("train/rewards/margins")
    # analysis results logged by analyze.py (wandb=new|resume, wandb-report): tables and figures by name; a figure
    # named like a table (overlap_steps, spontaneous) under its own key, which would otherwise hold the table
    analysis = Key("analysis/{name}")
    analysis_figure = Key("analysis/{name}/figure", IMAGE)


def analysis_figure_key(name: str, tables: Sequence[str]) -> str:
    """The key of analysis figure ``name`` logged beside tables named ``tables``."""
    return (Keys.analysis_figure if name in tables else Keys.analysis)(name=name)


def transition_pairs() -> Iterator[tuple[str, str]]:
    """(src, dst) of every type change a checkpoint logs: the per-language types of ``neurons.dynamics.LANG_TYPES``
    (specific, related, general, none), src != dst."""
    from .neurons.dynamics import LANG_TYPES

    return ((src, dst) for src in LANG_TYPES for dst in LANG_TYPES if src != dst)


def shared_by_counts(num_langs: int) -> range:
    """The N of ``neurons/shared_by/<N>`` a checkpoint of ``num_langs`` probed languages logs: 0 (selected, owned by
    none) to all of them (the identification's histogram)."""
    return range(num_langs + 1)


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


def start_run(logger: Any, config: dict[str, Any], run_dir: Path, identity: Mapping[str, Any],
              run_id: str | None = None):
    """Start the job's W&B run in ``run_dir`` (or return None when logging is off); with ``run_id``, continue that
    run (a resumed job: online it appends to the same run, offline it writes a second file with the same id, which
    ``wandb sync`` uploads into that run). ``logger``: the ``logger`` settings (or their mapping)."""
    logger = logger_settings(logger)
    if logger.backend == "none":
        return None
    import wandb

    mode = resolve_mode(logger.mode)
    if not is_rank_zero():  # one run per job: under accelerate launch only rank 0 talks to W&B
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    # W&B's console lines (artifact uploads, "URL not available in offline run" when TRL writes its model card)
    # follow the process-wide settings, not the run's: the run's own printout says where the run is.
    wandb.setup(settings=wandb.Settings(silent=True))
    run = wandb.init(
        project=logger.project,
        entity=logger.entity,
        name=logger.name or identity["name"],
        group=logger.group or identity["group"],
        tags=[*identity["tags"], *logger.tags],
        config=config,
        dir=str(run_dir),
        mode=mode,
        job_type="align",
        id=run_id,
        resume="allow" if run_id else None,
        reinit="finish_previous",
        settings=wandb.Settings(silent=True),
    )
    run.define_metric(Keys.step())
    run.define_metric("*", step_metric=Keys.step(), step_sync=True)
    return run


def run_files_dir(run) -> Path | None:
    """The folder that holds the run's ``.wandb`` log (what ``wandb leet`` and ``wandb sync`` take)."""
    if run is None or run.settings.mode == "disabled":
        return None
    return Path(run.settings.sync_dir)


def finish(run, exit_code: int = 0) -> None:
    if run is not None:
        run.finish(exit_code=exit_code)


# ---- saved views ----------------------------------------------------------------------------------------------------
# `analyze.py workspace` records the view it saved for a project here, so that the end of an online run of that
# project can say where to compare it with the others (a local file: the end of a run asks no server).
def views_file() -> Path:
    """``wandb-views.json`` in the harness's cache (``$LANGNEURONS_CACHE``, else ``~/.cache/langneurons``)."""
    root = os.environ.get("LANGNEURONS_CACHE") or "~/.cache/langneurons"
    return Path(os.path.expandvars(root)).expanduser() / "wandb-views.json"


def _views() -> dict[str, Any]:
    try:
        views = json.loads(views_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or damaged: no view to show (the next save writes a new one)
        return {}
    return views if isinstance(views, dict) else {}


def record_view(entity: str, project: str, name: str, url: str) -> Path:
    """Remember the saved view ``name`` at ``url`` as the view of ``entity/project`` (the latest one wins)."""
    from .files import atomic_write

    views = _views()
    views[f"{entity}/{project}"] = {"name": name, "url": url}
    path = views_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(views, indent=1, sort_keys=True) + "\n").encode())
    return path


def recorded_view(entity: str | None, project: str | None) -> dict[str, str] | None:
    """The view recorded for ``entity/project`` ({"name", "url"}), or None."""
    if not entity or not project:
        return None
    view = _views().get(f"{entity}/{project}")
    return view if isinstance(view, dict) and view.get("url") else None


def view_lines(entity: str | None, project: str | None, group: str | None) -> list[str]:
    """What the end of an online run prints about comparing it: the URL of the project's saved view, or the
    command that saves one."""
    view = recorded_view(entity, project)
    if view is not None:
        return [f"  compare runs: {view['url']}  (W&B view {view['name']!r})"]
    if not entity or not project:
        return []
    command = f"python analyze.py workspace entity={entity} project={project}" + (f" group={group}" if group else "")
    return [f"  compare runs in a saved W&B view: {command}"]


# ---- neuron checkpoints -----------------------------------------------------------------------------------------
# The W&B keys of a neuron checkpoint. Panels group by prefix, so "neurons/specific/<lang>" charts per language.
def neuron_metrics(summary: Mapping[str, Any], since_previous: Mapping[str, Any] | None, since_start: Mapping[str, Any] | None,
                   overlap_start: Mapping[str, float] | None, lang_type_counts: Mapping[str, Mapping[str, int]],
                   seconds: float | None = None) -> dict[str, float]:
    """Flat ``{key: value}`` for one checkpoint.

    ``summary``: an identification summary; ``lang_type_counts[lang][type]``: neurons of each type per language;
    ``since_*[lang]``: [4, 4] transition matrices in ``LANG_TYPES`` order; ``overlap_start[lang]``: Jaccard with
    step 0.
    """
    from .neurons.dynamics import LANG_TYPES

    out: dict[str, float] = {}
    for lang, counts in lang_type_counts.items():
        out[Keys.specific(lang=lang)] = counts["specific"]
        out[Keys.related(lang=lang)] = counts["related"]
    totals = summary["totals"]
    out[Keys.general()] = totals["general"]
    out[Keys.unassigned()] = totals["unassigned"]
    for kind, value in totals.items():
        out[Keys.total(kind=kind)] = value
    for n, value in enumerate(summary["histogram"]):
        out[Keys.shared_by(n=n)] = value
    out[Keys.selected()] = summary["selected"]
    out[Keys.tau()] = summary["tau"]
    if summary.get("lam") is not None:
        out[Keys.lam()] = summary["lam"]
    for total_key, lang_key, matrices in ((Keys.transition, Keys.transition_of, since_previous),
                                          (Keys.transition_since_start, Keys.transition_since_start_of, since_start)):
        if not matrices:
            continue
        total = sum(m for m in matrices.values())
        for src, dst in transition_pairs():
            i, j = LANG_TYPES.index(src), LANG_TYPES.index(dst)
            out[total_key(src=src, dst=dst)] = int(total[i, j])
            for lang, m in matrices.items():
                out[lang_key(lang=lang, src=src, dst=dst)] = int(m[i, j])
    for lang, value in (overlap_start or {}).items():
        out[Keys.overlap_with_start(lang=lang)] = value
    if seconds is not None:
        out[Keys.checkpoint_seconds()] = seconds
    return out


class CheckpointLogger:
    """Puts neuron checkpoints into a W&B run: metrics on the trainer's step, tables, a figure, an artifact."""

    def __init__(self, run, image: bool = True, artifact: bool = True):
        self.run = run
        self.image = image
        self.artifact = artifact

    def __call__(self, ckpt) -> None:
        import wandb

        from .checkpoints.record import step_name
        from .neurons import layer_distribution
        from .plots import layer_distribution_figure

        data: dict[str, Any] = {Keys.step(): ckpt.step}
        data.update({Keys.accuracy(lang=lang): value for lang, value in ckpt.accuracy.items()})
        data.update({Keys.answer_lang(lang=lang): value for lang, value in ckpt.answer_lang.items()})
        data[Keys.samples()] = wandb.Table(columns=["step", "lang", "id", "question", "answer", "gold"], data=[
            [ckpt.step, s["lang"], s["id"], s["question"], s["answer"], s["gold"]] for s in ckpt.samples])
        data.update({Keys.phase_seconds(phase=phase): value for phase, value in ckpt.phases.items()})
        if ckpt.ident is not None:
            data.update(neuron_metrics(ckpt.ident.summary(), ckpt.since_previous, ckpt.since_start,
                                       ckpt.overlap_start, ckpt.lang_type_counts(), ckpt.seconds))
            dist = layer_distribution(ckpt.ident)
            data[Keys.layers()] = wandb.Table(columns=["step", "layer", "type", "lang", "count"], data=[
                [ckpt.step, r["layer"], r["type"], r["lang"], r["count"]] for r in dist.rows()])
            if self.image:
                import matplotlib.pyplot as plt

                fig = layer_distribution_figure(dist, title=f"step {ckpt.step}")
                data[Keys.layers_image()] = wandb.Image(fig)
                plt.close(fig)
        self.run.log(data)
        if self.artifact and ckpt.path is not None:
            art = wandb.Artifact(f"neurons-{self.run.id}", type="neuron-checkpoint",
                                 metadata={"step": ckpt.step, "accuracy": ckpt.accuracy})
            art.add_dir(str(ckpt.path))
            self.run.log_artifact(art, aliases=[step_name(ckpt.step)])


# ---- MAPO pair statistics ---------------------------------------------------------------------------------------
def pair_metrics(stats: Mapping[str, Any]) -> dict[str, float]:
    """Flat ``{key: value}`` of a MAPO pair set's statistics: pairs per split and language, questions that gave
    pairs, the policy's share of correct samples per language, and the reward difference of training pairs."""
    out: dict[str, float] = {}
    for split, counts in stats["pairs"].items():
        for lang, n in counts.items():
            out[Keys.pairs(split=split, lang=lang)] = n
        out[Keys.pairs_total(split=split)] = sum(counts.values())
    for lang, n in stats.get("questions_with_pairs", {}).items():
        out[Keys.questions_with_pairs(lang=lang)] = n
    for lang, value in stats.get("correct_fraction", {}).items():
        out[Keys.correct_fraction(lang=lang)] = value
    diffs = stats.get("reward_diff") or []
    if diffs:
        ordered = sorted(diffs)
        out[Keys.reward_diff(stat="mean")] = sum(diffs) / len(diffs)
        out[Keys.reward_diff(stat="median")] = ordered[len(ordered) // 2]
        out[Keys.reward_diff(stat="min")], out[Keys.reward_diff(stat="max")] = ordered[0], ordered[-1]
    out[Keys.pairs_cache_hit()] = int(bool(stats.get("cache", {}).get("hit")))
    return out


def log_pair_stats(run, stats: Mapping[str, Any] | None) -> None:
    """Log a MAPO pair set's statistics once, at step 0, with the reward differences as a histogram."""
    if run is None or not stats:
        return
    import wandb

    data: dict[str, Any] = {Keys.step(): 0, **pair_metrics(stats)}
    if stats.get("reward_diff"):
        data[Keys.reward_diff_histogram()] = wandb.Histogram(stats["reward_diff"])
    run.log(data)
