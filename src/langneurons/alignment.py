"""Alignment fine-tuning with TRL + PEFT: the training set of each method and the trainer that runs it.

Methods: ``dpo`` (preference pairs: a user's file or correctness pairs), ``sft`` (gold answers or a user's file),
``mapo`` (DPO on MAPO pairs built from the policy's own samples, see ``data/mapo.py``) and ``qalign`` (SFT on
question translation, see ``data/qalign.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import TrainingArguments

from .console import TrainingProgress
from .data import correctness_pairs, load_jsonl, load_problems, sft_examples
from . import files
from .data import mapo, pairstore
from .data.qalign import question_translation, translation_langs
from .errors import HarnessError
from .prompts import PromptFormat, prompt_format
from .scoring import build_scorer, scorer_identity
from .settings import MapoSettings, TrainerSettings, alignment_settings, scorer_settings

TRAINERS = {"dpo": "dpo", "mapo": "dpo", "sft": "sft", "qalign": "sft"}  # the TRL trainer each method runs

log = logging.getLogger(__name__)


@dataclass
class TrainingSet:
    """What a method trains on; ``eval`` (held-out pairs) and ``stats`` (pair statistics) for MAPO only."""

    train: Dataset
    eval: Dataset | None = None
    stats: dict[str, Any] | None = None


def training_set(alignment: Any, langs: Sequence[str], template: "str | PromptFormat", seed: int, *,
                 policy: Any = None, scorer: Any = None, out_dir: Path | None = None,
                 policy_from_config: bool = False) -> TrainingSet:
    """The examples the chosen method trains on, for the aligned languages ``langs``.

    dpo: prompt/chosen/rejected (a user's JSONL, or correctness pairs built from ``alignment.questions``);
    sft: prompt/completion (a user's JSONL, or the gold responses to ``alignment.questions``);
    mapo: prompt/chosen/rejected sampled from ``policy`` (a ``LoadedModel``) and ranked by the ``scorer`` config;
    qalign: prompt/completion, the question in each language -> the parallel English question.
    ``out_dir``: where MAPO writes a copy of the pairs it trains on; ``policy_from_config``: the policy is the
    harness's own tiny model, random or pretrained by the harness (``alignment.include_gold=auto`` then adds the gold
    answers: in a rare language it samples too few correct answers to pair).
    ``alignment`` and ``scorer``: their settings (:mod:`settings`), or complete mappings of them.
    """
    alignment = alignment_settings(alignment)
    method = alignment.method
    template = prompt_format(template)
    if method == "mapo":
        return mapo_training_set(alignment, langs, template, seed, policy=policy, scorer=scorer, out_dir=out_dir,
                                 policy_from_config=policy_from_config)
    if method == "qalign":
        translated = translation_langs(langs)
        problems = load_problems(alignment.questions, ["en", *translated], template)
        return TrainingSet(question_translation(problems, template, seed))
    given = user_training_set(alignment)
    if given is not None:
        return given
    problems = load_problems(alignment.questions, langs, template)
    sep = template.sep
    return TrainingSet(correctness_pairs(problems, seed, sep) if method == "dpo" else sft_examples(problems, seed, sep))


def user_training_set(alignment: Any) -> TrainingSet | None:
    """The user's own training file (``alignment.pairs`` for dpo, ``alignment.examples`` for sft), or None when the
    method builds its set. Needs no model: a run reads it before the model loads, so a bad row fails at once."""
    alignment = alignment_settings(alignment)
    if alignment.method == "dpo" and alignment.pairs:
        return TrainingSet(load_jsonl(alignment.pairs, ("prompt", "chosen", "rejected")))
    if alignment.method == "sft" and alignment.examples:
        return TrainingSet(load_jsonl(alignment.examples, ("prompt", "completion")))
    return None


# ---- MAPO ---------------------------------------------------------------------------------------------------------
def mapo_training_set(alignment: Any, langs: Sequence[str], template: "str | PromptFormat", seed: int, *,
                      policy: Any, scorer: Any, out_dir: Path | None = None,
                      policy_from_config: bool = False) -> TrainingSet:
    """MAPO pairs for ``langs`` (English is the reference, not aligned): read from the pair cache when the same
    inputs built them before, else sampled, scored, paired and stored. Raises a one-line error when no pair
    could be built. The cache key and the sampler read the same :class:`settings.SamplingSettings`."""
    if policy is None:
        raise HarnessError("alignment=mapo samples answers from the model being aligned: pass the loaded policy")
    alignment = alignment_settings(alignment)
    if not isinstance(alignment, MapoSettings):
        raise HarnessError(f"alignment.method={alignment.method}: MAPO pairs need alignment=mapo")
    if scorer is None:
        raise HarnessError("alignment=mapo needs a scorer: add scorer=<numbers|correctness|nllb|tiny>")
    scorer = scorer_settings(scorer)
    template = prompt_format(template)
    sampling = alignment.sampling
    if sampling.sampler == "vllm":
        mapo.require_vllm()
    aligned = translation_langs(langs, "mapo")
    if len(aligned) < len(langs):
        log.info("MAPO aligns non-English languages to English: en is the reference, not a training language")
    include_gold = policy_from_config if alignment.include_gold == "auto" else alignment.include_gold
    if scorer.kind == "translation" and not scorer.name_or_path:
        log.warning("MAPO: the scorer is a tiny translation model with random weights; its rewards rank the "
                    "answers at random. Offline use scorer=numbers (or correctness); for real runs scorer=nllb.")
    parts = {
        "format": mapo.FORMAT, "policy": {"id": policy.model_id,
                                          "weights": pairstore.model_fingerprint(policy.model, policy.tokenizer)},
        "questions": alignment.questions.dump(), "langs": aligned, "template": template.identity(), "seed": seed,
        "question_files": files.folder_state(alignment.questions.path),
        "sampling": sampling.dump(),
        "include_gold": include_gold, "eval_fraction": alignment.eval_fraction,
        "scorer": scorer_identity(scorer),
    }
    key = files.digest(parts)
    cache_dir = alignment.cache_dir
    pairs = pairstore.load(cache_dir, key) if cache_dir else None
    hit = pairs is not None
    where = pairstore.folder_for(cache_dir, key) if cache_dir else None
    if hit:
        log.info("MAPO: reusing cached preference pairs from %s", where)
    else:
        pairs = _build_mapo_pairs(alignment, aligned, template, seed, policy, scorer, include_gold)
        if cache_dir:
            try:
                where = pairstore.save(cache_dir, key, parts, pairs)
            except OSError as e:  # the pairs are built: train on them, just do not keep them
                where = None
                log.warning("MAPO: could not cache the pairs in %s (%s); set alignment.cache_dir to a writable "
                            "folder", cache_dir, e)
        log.info("MAPO: built %d train / %d eval preference pairs%s", len(pairs.train), len(pairs.eval),
                 f", cached in {where}" if where else ", not cached")
    stats = {**pairs.stats, "cache": {"hit": hit, "path": str(where) if where else None, "key": key}}
    if out_dir is not None:
        pairstore.write(Path(out_dir), pairs)
    if not pairs.train:
        raise HarnessError(mapo.empty_reason(pairs.stats))
    stats["reward_diff"] = [p["chosen_reward"] - p["rejected_reward"] for p in pairs.train]
    return TrainingSet(train=Dataset.from_list(pairs.train).shuffle(seed=seed),
                       eval=Dataset.from_list(pairs.eval) if pairs.eval else None, stats=stats)


def _policy_device(model: torch.nn.Module) -> None:
    """Sampling on a CPU is hopeless for real models: move the policy to this process's GPU first (the trainer
    would put it there anyway)."""
    if torch.cuda.is_available() and next(model.parameters()).device.type == "cpu":
        model.to(torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))))


def _build_mapo_pairs(alignment: MapoSettings, aligned: Sequence[str], template: PromptFormat, seed: int,
                      policy: Any, scorer_cfg: Any, include_gold: bool) -> mapo.PairSet:
    problems = load_problems(alignment.questions, ["en", *aligned], template)
    scorer = build_scorer(scorer_cfg)  # before sampling: a scorer that cannot load fails in seconds, not hours
    sampling = alignment.sampling
    settings = dict(temperature=sampling.temperature, top_p=sampling.top_p, max_new_tokens=sampling.max_new_tokens,
                    seed=seed, stops=template.stop)
    with tempfile.TemporaryDirectory(prefix="mapo-policy-") as tmp:
        if sampling.sampler == "vllm":
            path = getattr(policy.model, "name_or_path", "")
            if not path:  # a model built in memory: vLLM loads from disk
                policy.model.save_pretrained(tmp)
                policy.tokenizer.save_pretrained(tmp)
                path = tmp
            sampler = mapo.VLLMSampler(path, **settings, gpu_memory_utilization=alignment.vllm_gpu_memory)
        else:
            _policy_device(policy.model)
            sampler = mapo.HFSampler(policy.model, policy.tokenizer, batch_size=sampling.batch_size, **settings)
        pairs = mapo.build_pairs(problems, sampler, scorer, k=sampling.k, include_gold=include_gold,
                                 eval_fraction=alignment.eval_fraction, seed=seed, sep=template.sep)
    del scorer, sampler
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the translation model (and vLLM) are done: their memory goes to training
    return pairs


# ---- trainers -----------------------------------------------------------------------------------------------------
def lora_config(lora: Any) -> LoraConfig:
    """PEFT's LoRA config from ``trainer.lora`` (:class:`settings.LoraSettings`)."""
    return LoraConfig(r=lora.r, lora_alpha=int(lora.alpha), lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), task_type="CAUSAL_LM")


def _precision_flags(precision: str) -> dict[str, bool]:
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


# transformers 5 renamed TrainingArguments.gradient_checkpointing (a deprecated alias that warns) to
# activation_checkpointing; older releases know only the first name.
_CHECKPOINTING = ("activation_checkpointing" if "activation_checkpointing" in
                  {f.name for f in dataclasses.fields(TrainingArguments)} else "gradient_checkpointing")


def build_trainer(
    alignment: Any,
    trainer_cfg: "TrainerSettings | Mapping[str, Any]",
    model: torch.nn.Module,
    tokenizer: Any,
    train_dataset: Dataset,
    output_dir: Path,
    seed: int,
    report_to: Sequence[str] = (),
    callbacks: Sequence[Any] = (),
    eval_dataset: Dataset | None = None,
):
    """A TRL trainer (DPOTrainer for dpo/mapo, SFTTrainer for sft/qalign) that trains a LoRA adapter on ``model``.

    ``eval_dataset`` (MAPO's held-out pairs) is evaluated every ``alignment.eval_steps`` steps when that is set.
    ``alignment`` and ``trainer_cfg``: their settings (:mod:`settings`), or complete mappings of them.
    """
    alignment = alignment_settings(alignment)
    trainer_cfg = TrainerSettings.of(trainer_cfg)
    method = TRAINERS[alignment.method]
    common: dict[str, Any] = dict(
        output_dir=str(output_dir),
        max_steps=trainer_cfg.max_steps,
        per_device_train_batch_size=trainer_cfg.per_device_train_batch_size,
        gradient_accumulation_steps=trainer_cfg.gradient_accumulation_steps,
        learning_rate=trainer_cfg.learning_rate,
        lr_scheduler_type=trainer_cfg.lr_scheduler_type,
        warmup_steps=trainer_cfg.warmup_steps,
        weight_decay=trainer_cfg.weight_decay,
        max_length=trainer_cfg.max_length,
        **{_CHECKPOINTING: trainer_cfg.gradient_checkpointing},
        logging_steps=trainer_cfg.logging_steps,
        save_strategy="steps" if trainer_cfg.save_steps else "no",
        save_steps=trainer_cfg.save_steps or 500,
        save_total_limit=trainer_cfg.save_total_limit,
        dataloader_num_workers=trainer_cfg.num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        seed=seed,
        data_seed=seed,
        report_to=list(report_to),
        # the console is console.TrainingProgress's (one bar, or a line per tenth of the steps; the log dicts go to
        # train.log), not transformers' bar with a printed dict every logging_steps
        disable_tqdm=True,
        # LoRA uses every adapter weight in every forward: DDP need not search for unused ones (and warns when told to)
        ddp_find_unused_parameters=False,
        **_precision_flags(trainer_cfg.precision),
    )
    eval_steps = getattr(alignment, "eval_steps", None)  # MAPO's held-out pairs only
    evaluate = eval_dataset is not None and len(eval_dataset) > 0 and eval_steps
    if evaluate:
        common.update(eval_strategy="steps", eval_steps=eval_steps,
                      per_device_eval_batch_size=trainer_cfg.per_device_train_batch_size)
    eval_kwargs = {"eval_dataset": eval_dataset} if evaluate else {}
    peft_config = lora_config(trainer_cfg.lora)
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        weights = alignment.loss_weights
        args = DPOConfig(beta=alignment.beta, loss_type=list(alignment.loss_type),
                         loss_weights=None if weights is None else list(weights), **common)
        return _with_console(DPOTrainer(model=model, args=args, train_dataset=train_dataset,
                                        processing_class=tokenizer, peft_config=peft_config,
                                        callbacks=[TrainingProgress(), *callbacks], **eval_kwargs))
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(completion_only_loss=True, **common)
    return _with_console(SFTTrainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer,
                                    peft_config=peft_config, callbacks=[TrainingProgress(), *callbacks],
                                    **eval_kwargs))


def _with_console(trainer):
    """``trainer`` printing through :class:`console.TrainingProgress` (first among the callbacks, so that its
    clock includes the step-0 neuron checkpoint) instead of its own printer."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer
