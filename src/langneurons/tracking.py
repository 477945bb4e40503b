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

from .distributed import is_rank_zero
from .errors import HarnessError
from .settings import WANDB_MODES, logger_settings

STEP_KEY = "train/global_step"
MODES = WANDB_MODES


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
        for kind in ("specific", "related"):
            out[f"neurons/{kind}/{lang}"] = counts[kind]
    totals = summary["totals"]
    out["neurons/general"] = totals["general"]
    out["neurons/unassigned"] = totals["unassigned"]
    for kind, value in totals.items():
        out[f"neurons/total/{kind}"] = value
    for n, value in enumerate(summary["histogram"]):
        out[f"neurons/shared_by/{n}"] = value
    out["neurons/selected"] = summary["selected"]
    out["neurons/tau"] = summary["tau"]
    if summary.get("lam") is not None:
        out["neurons/lam"] = summary["lam"]
    for prefix, matrices in (("neurons/transition", since_previous), ("neurons/transition_since_start", since_start)):
        if not matrices:
            continue
        total = sum(m for m in matrices.values())
        for i, src in enumerate(LANG_TYPES):
            for j, dst in enumerate(LANG_TYPES):
                if i != j:
                    out[f"{prefix}/{src}_to_{dst}"] = int(total[i, j])
                    for lang, m in matrices.items():
                        out[f"{prefix}/{lang}/{src}_to_{dst}"] = int(m[i, j])
    for lang, value in (overlap_start or {}).items():
        out[f"neurons/overlap_with_start/{lang}"] = value
    if seconds is not None:
        out["neurons/checkpoint_seconds"] = seconds
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

        data: dict[str, Any] = {STEP_KEY: ckpt.step}
        data.update({f"eval/acc/{lang}": value for lang, value in ckpt.accuracy.items()})
        data.update({f"eval/answer_lang/{lang}": value for lang, value in ckpt.answer_lang.items()})
        data["eval/samples"] = wandb.Table(columns=["step", "lang", "id", "question", "answer", "gold"], data=[
            [ckpt.step, s["lang"], s["id"], s["question"], s["answer"], s["gold"]] for s in ckpt.samples])
        data.update({f"neurons/phase_seconds/{phase}": value for phase, value in ckpt.phases.items()})
        if ckpt.ident is not None:
            data.update(neuron_metrics(ckpt.ident.summary(), ckpt.since_previous, ckpt.since_start,
                                       ckpt.overlap_start, ckpt.lang_type_counts(), ckpt.seconds))
            dist = layer_distribution(ckpt.ident)
            data["neurons/layers"] = wandb.Table(columns=["step", "layer", "type", "lang", "count"], data=[
                [ckpt.step, r["layer"], r["type"], r["lang"], r["count"]] for r in dist.rows()])
            if self.image:
                import matplotlib.pyplot as plt

                fig = layer_distribution_figure(dist, title=f"step {ckpt.step}")
                data["neurons/layers_image"] = wandb.Image(fig)
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
            out[f"pairs/{split}/{lang}"] = n
        out[f"pairs/{split}/total"] = sum(counts.values())
    for lang, n in stats.get("questions_with_pairs", {}).items():
        out[f"pairs/questions_with_pairs/{lang}"] = n
    for lang, value in stats.get("correct_fraction", {}).items():
        out[f"pairs/correct_fraction/{lang}"] = value
    diffs = stats.get("reward_diff") or []
    if diffs:
        ordered = sorted(diffs)
        out["pairs/reward_diff/mean"] = sum(diffs) / len(diffs)
        out["pairs/reward_diff/median"] = ordered[len(ordered) // 2]
        out["pairs/reward_diff/min"], out["pairs/reward_diff/max"] = ordered[0], ordered[-1]
    out["pairs/cache_hit"] = int(bool(stats.get("cache", {}).get("hit")))
    return out


def log_pair_stats(run, stats: Mapping[str, Any] | None) -> None:
    """Log a MAPO pair set's statistics once, at step 0, with the reward differences as a histogram."""
    if run is None or not stats:
        return
    import wandb

    data: dict[str, Any] = {STEP_KEY: 0, **pair_metrics(stats)}
    if stats.get("reward_diff"):
        data["pairs/reward_diff/histogram"] = wandb.Histogram(stats["reward_diff"])
    run.log(data)
