"""One alignment experiment, top to bottom: config -> model + tokenizer -> data -> trainer -> tracker.

Takes the composed config as a plain dict (``train.py`` gets it from Hydra), so it runs without Hydra too, and turns
it into :class:`settings.RunSettings` first: every value a user can get wrong (types, ranges, choices, languages,
paths, combinations) is checked before anything runs, and the data files are read before the model loads and the
W&B run starts, so a bad input leaves no half-made run behind.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from . import console, distributed, faults, tracking
from .alignment import build_trainer, training_set, user_training_set
from .checkpoints.callback import NeuronCheckpointCallback
from .checkpoints.measure import NeuronCheckpointer
from .checkpoints.summary import checkpoint_summary
from .data import load_problems
from .data.problems import with_prompts
from .data.synthetic import SYNTHETIC_LANGS
from .errors import HarnessError, full_disk_is_one_line
from .modeling import LoadedModel, build_tiny_model, build_tokenizer, load_pretrained
from .offline import OfflineCopy
from .prompts import needs_tokenizer, prompt_format
from .resume import last_trainer_checkpoint, resumed_config, write_record
from .settings import ModelSettings, ProblemSettings, RunSettings


@dataclass
class RunResult:
    run_dir: Path
    adapter_dir: Path
    wandb_dir: Path | None
    wandb_mode: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    aligned: tuple[str, ...] = ()
    wandb_project: tuple[str | None, str | None, str | None] = (None, None, None)  # entity, project, group

    def report(self) -> str:
        """What a user reads at the end of a run: where it went, how to look at it (online: the project's saved
        view, ``analyze.py workspace``), and its first and last neuron checkpoints side by side."""
        lines = [f"Run finished: {self.run_dir}", f"  adapter:   {self.adapter_dir}"]
        if self.wandb_dir is not None:
            lines += [f"  W&B run ({self.wandb_mode}): {self.wandb_dir}",
                      f"  look at it:  wandb leet {self.wandb_dir}"]
            if self.wandb_mode == "offline":
                lines.append(f"  upload it:   wandb sync {self.wandb_dir}")
            if self.wandb_mode == "online":
                lines += tracking.view_lines(*self.wandb_project)
        return "\n".join(lines + checkpoint_summary(self.run_dir, self.aligned))


def tiny_tokenizer_corpus(template: str, n: int = 400, seed: int = 1234) -> Iterator[str]:
    """Texts the tiny model's tokenizer learns its merges from: generated prompts and answers in every language."""
    spec = ProblemSettings(source="synthetic", path=None, n=n, offset=0, seed=seed)
    for ds in load_problems(spec, SYNTHETIC_LANGS, template).values():
        for row in ds:
            yield f"{row['prompt']} {row['response']}"


def set_threads(threads: int | str) -> int:
    """Set torch's intra-op CPU threads for this process from the settings' ``threads``: a count, or ``auto`` (torch's
    own choice: ``OMP_NUM_THREADS`` when set, else one per core). Returns the count in force."""
    import torch

    if threads == "auto":
        return torch.get_num_threads()
    torch.set_num_threads(int(threads))
    return int(threads)


def load_model(model: ModelSettings | Mapping[str, Any], seed: int) -> LoadedModel:
    """The model the settings name: a real one when ``name_or_path`` is set, else the built-in tiny model: the base
    the harness pretrains on its generated problems (built once per config, then loaded from the cache; the same
    for every run ``seed``), or random weights seeded by ``seed`` when ``model.pretrain.enabled`` is false."""
    model_cfg = ModelSettings.of(model)
    if model_cfg.name_or_path:
        return load_pretrained(model_cfg.name_or_path, dtype=model_cfg.dtype, revision=model_cfg.revision,
                               trust_remote_code=model_cfg.trust_remote_code,
                               offline=OfflineCopy.from_settings(model_cfg.offline))
    if model_cfg.pretrain is not None:
        from .base import base_tokenizer, tiny_base

        if model_cfg.pretrain.enabled:
            return tiny_base(model_cfg)
        tokenizer = base_tokenizer(model_cfg)  # the pretrained base's tokenizer: random and pretrained compare
    else:
        tokenizer = build_tokenizer(tiny_tokenizer_corpus(model_cfg.prompt_template), model_cfg.vocab_size,
                                    split_digits=bool(model_cfg.split_digits))
    model = build_tiny_model(model_cfg.arch, tokenizer, seed=seed)
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=f"tiny-llama-{model.num_parameters()}")


def evaluation_problems(settings: RunSettings) -> dict[str, Any]:
    """The problems (``data``) of the probed and the evaluated languages. Read before the model loads, so that a bad
    data file fails at once; a format that needs the model's tokenizer (chat) gets its prompts from
    :func:`in_model_format` once the model is loaded."""
    name = settings.model.prompt_template
    return load_problems(settings.data, list(dict.fromkeys([*settings.eval_langs, *settings.probe_langs])),
                         name if not needs_tokenizer(name) else "plain")



def in_model_format(problems: Mapping[str, Any], name: str, tokenizer: Any) -> tuple[Any, dict[str, Any]]:
    """The prompt format ``name`` bound to the model's tokenizer, and ``problems`` with their prompts in it."""
    template = prompt_format(name, tokenizer)
    return template, (with_prompts(problems, template) if needs_tokenizer(name) else dict(problems))


def run_experiment(cfg: Mapping[str, Any], run_dir: Path, overrides: Sequence[str] = ()) -> RunResult:
    """Run the alignment ``cfg`` describes, writing everything under ``run_dir``.

    ``overrides`` are the command-line overrides that made ``cfg`` (kept in ``run.json`` for ``resume``). With
    ``cfg["resume"]`` set to ``run_dir`` it continues that run in place: its saved config, its latest trainer
    checkpoint, its W&B run and its neuron history.
    """
    import datasets
    from tqdm.contrib.logging import logging_redirect_tqdm

    datasets.disable_progress_bars()
    # Under accelerate launch every process runs Hydra itself: all of them must write into rank 0's folder.
    run_dir = distributed.shared_run_dir(Path(run_dir))
    progress = _Progress()
    before = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
    with console.run_console(run_dir), logging_redirect_tqdm():
        try:
            return _run(cfg, run_dir, overrides, progress)
        except BaseException as exc:
            if not (isinstance(cfg, Mapping) and cfg.get("resume")) and not progress.training \
                    and distributed.is_rank_zero():
                _discard_failed_start(run_dir, before)
            elif isinstance(exc, HarnessError):
                console.record_error(f"error: {exc}")
            else:
                console.full_log.exception("the run failed")
            raise


def _discard_failed_start(run_dir: Path, before: set[str]) -> None:
    """A run that failed before training measured nothing: remove what it and Hydra wrote (``.hydra/``, the log),
    and the folder when nothing else is in it. What was there before (a sweep agent's ``agent.log``) stays."""
    hydra_own = {*distributed.HYDRA_FILES, console.TRAIN_LOG}
    if not run_dir.is_dir():
        return
    for entry in run_dir.iterdir():
        if entry.name in before and entry.name not in hydra_own:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    if not any(run_dir.iterdir()):
        run_dir.rmdir()


def run_training(trainer: Any, resume_from: Path | None) -> Any:
    """``trainer.train()``, from the trainer checkpoint ``resume_from`` when given. A checkpoint already at
    ``trainer.max_steps`` (a run killed after training: while saving its adapter or taking its last neuron checkpoint)
    is loaded, and the callbacks see the training begin and end there, so the last neuron checkpoint is taken if it is
    missing: the Trainer itself would train one step more than ``max_steps`` from such a checkpoint."""
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_utils import TrainOutput

    if resume_from is None:
        return trainer.train()
    state = TrainerState.load_from_json(str(Path(resume_from) / "trainer_state.json"))
    if not 0 < trainer.args.max_steps <= state.global_step:
        return trainer.train(resume_from_checkpoint=str(resume_from))
    trainer._load_from_checkpoint(str(resume_from))
    trainer.state = state
    trainer.control = trainer.callback_handler.on_train_begin(trainer.args, state, trainer.control)
    trainer.control = trainer.callback_handler.on_train_end(trainer.args, state, trainer.control)
    return TrainOutput(state.global_step, 0.0, {})


def save_adapter(trainer: Any, run_dir: Path) -> Path:
    """Save the trained adapter as ``run_dir/adapter``: written into ``adapter.tmp``, then renamed into place, so a
    crash or a full disk while saving leaves the previous adapter (a resumed run's) intact; a full disk is a one-line
    error."""
    adapter_dir, tmp = run_dir / "adapter", run_dir / "adapter.tmp"
    if distributed.is_rank_zero():
        shutil.rmtree(tmp, ignore_errors=True)  # a save that a kill cut short
    try:
        with full_disk_is_one_line("the adapter", adapter_dir, run_dir=run_dir):
            trainer.save_model(str(tmp))  # every rank: under FSDP / ZeRO-3 saving gathers the weights; rank 0 writes
            faults.reach("adapter.save", tmp)
    except BaseException:
        if distributed.is_rank_zero():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if distributed.is_rank_zero():
        if adapter_dir.exists():
            shutil.rmtree(adapter_dir)
        tmp.rename(adapter_dir)
    return adapter_dir


@dataclass
class _Progress:
    training: bool = False  # the Trainer has started: the run folder holds measurements from here on


def _run(cfg: Mapping[str, Any], run_dir: Path, overrides: Sequence[str], progress: _Progress) -> RunResult:
    from transformers import set_seed

    record: dict[str, Any] = {}
    resume_from = None
    if cfg.get("resume"):
        if Path(cfg["resume"]).resolve() != run_dir.resolve():
            raise HarnessError(f"resume={cfg['resume']} must be the run's own folder (got {run_dir}): resume single "
                               "runs, not multiruns")
        cfg, record = resumed_config(cfg, run_dir, overrides)
        resume_from = last_trainer_checkpoint(run_dir)
    settings = RunSettings.from_config(cfg)  # every value checked, before anything runs
    if settings.logger.backend == "wandb":
        tracking.resolve_mode(settings.logger.mode)  # WANDB_MODE in the environment too
    set_threads(settings.threads)
    seed = settings.seed
    set_seed(seed)
    aligned, probe, evaluated = settings.lang, settings.probe_langs, settings.eval_langs
    eval_problems = evaluation_problems(settings)
    given = user_training_set(settings.alignment)  # a user's file: read before the model loads
    base_dir = run_dir / "base_model"
    if resume_from is not None and base_dir.is_dir():  # the very base the run started from
        loaded = load_pretrained(str(base_dir), dtype=settings.model.dtype)
        loaded.model_id = record.get("model_id") or loaded.model_id
    else:
        loaded = load_model(settings.model, seed)
    # Training pairs, evaluation questions and probes are all written in the model's format (chat: its template).
    template, eval_problems = in_model_format(eval_problems, settings.model.prompt_template, loaded.tokenizer)
    if settings.model.built and resume_from is None and distributed.is_rank_zero():
        # The tiny model's random base is part of the result: keep it so the adapter can be reloaded later.
        loaded.model.save_pretrained(run_dir / "base_model")
        loaded.tokenizer.save_pretrained(run_dir / "base_model")
    # MAPO samples answers from the policy, so the training set is built once the model is loaded.
    data = given if given is not None else training_set(
        settings.alignment, aligned, template, seed, policy=loaded, scorer=settings.scorer,
        out_dir=run_dir / "alignment", policy_from_config=settings.model.built)
    train_set = data.train

    method = settings.alignment.method
    identity = tracking.run_identity(settings.model.preset, method, aligned)
    run = tracking.start_run(settings.logger, dict(cfg), run_dir, identity, run_id=record.get("wandb_id"))
    if distributed.is_rank_zero():  # shared files are written by rank 0 only (W&B: see tracking.start_run)
        write_record(run_dir, cfg, record.get("overrides", overrides), run.id if run is not None else None,
                     model_id=loaded.model_id)
    exit_code = 1
    try:
        if run is not None:
            run.config.update({"run": {"aligned_langs": list(aligned), "probe_langs": list(probe),
                                       "eval_langs": list(evaluated), "model_id": loaded.model_id,
                                       "train_examples": len(train_set),
                                       "eval_problems": {k: len(v) for k, v in eval_problems.items()}}})
        if resume_from is None:
            tracking.log_pair_stats(run, data.stats)
        callbacks = []
        neurons = settings.neurons
        if neurons.enabled:
            checkpointer = NeuronCheckpointer(
                tokenizer=loaded.tokenizer, problems=eval_problems, probe_langs=probe, eval_langs=evaluated,
                neurons=neurons, eval_cfg=settings.eval, out_dir=run_dir / "neurons", model_id=loaded.model_id,
                template=template)
            logger = (tracking.CheckpointLogger(run, image=neurons.image, artifact=neurons.artifact)
                      if run is not None else None)
            callbacks.append(NeuronCheckpointCallback(checkpointer, neurons.every_n_steps, logger))
        trainer = build_trainer(settings.alignment, settings.trainer, loaded.model, loaded.tokenizer, train_set,
                                run_dir / "checkpoints", seed, report_to=["wandb"] if run is not None else [],
                                callbacks=callbacks, eval_dataset=data.eval)
        progress.training = True
        # the Trainer's own checkpoints (adapter, optimizer) on a full disk
        with full_disk_is_one_line("a trainer checkpoint under", run_dir / "checkpoints", run_dir=run_dir):
            output = run_training(trainer, resume_from)
        adapter_dir = save_adapter(trainer, run_dir)
        exit_code = 0
    finally:
        wandb_dir = tracking.run_files_dir(run)
        mode = run.settings.mode if run is not None else None
        where = (run.entity, run.project, run.group) if run is not None else (None, None, None)
        tracking.finish(run, exit_code)
    return RunResult(run_dir=run_dir, adapter_dir=adapter_dir, wandb_dir=wandb_dir, wandb_mode=mode,
                     metrics=dict(output.metrics), aligned=tuple(aligned), wandb_project=where)
