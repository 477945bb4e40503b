"""Alignment fine-tuning with TRL + PEFT: the training set of each method and the trainer that runs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from datasets import Dataset
from peft import LoraConfig

from .data import correctness_pairs, load_jsonl, load_problems, sft_examples
from .errors import HarnessError

METHODS = ("dpo", "sft")


def _method(alignment: Mapping[str, Any]) -> str:
    method = alignment.get("method")
    if method not in METHODS:
        raise HarnessError(f"unknown alignment method {method!r}: use alignment=<{'|'.join(METHODS)}>")
    return method


def training_set(alignment: Mapping[str, Any], langs: Sequence[str], template: str, seed: int) -> Dataset:
    """The examples the chosen method trains on, for the aligned languages ``langs``.

    dpo: prompt/chosen/rejected (a user's JSONL, or correctness pairs built from ``alignment.questions``);
    sft: prompt/completion (a user's JSONL, or the gold responses to ``alignment.questions``).
    """
    method = _method(alignment)
    if method == "dpo" and alignment.get("pairs"):
        return load_jsonl(alignment["pairs"], ("prompt", "chosen", "rejected"))
    if method == "sft" and alignment.get("examples"):
        return load_jsonl(alignment["examples"], ("prompt", "completion"))
    problems = load_problems(alignment["questions"], langs, template)
    return correctness_pairs(problems, seed) if method == "dpo" else sft_examples(problems, seed)


def lora_config(lora: Mapping[str, Any]) -> LoraConfig:
    return LoraConfig(
        r=int(lora["r"]),
        lora_alpha=int(lora["alpha"]),
        lora_dropout=float(lora["dropout"]),
        target_modules=list(lora["target_modules"]),
        task_type="CAUSAL_LM",
    )


def _precision_flags(precision: str) -> dict[str, bool]:
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if precision not in ("fp32", "bf16", "fp16"):
        raise HarnessError(f"unknown precision {precision!r}: use trainer.precision=<auto|fp32|bf16|fp16>")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def build_trainer(
    alignment: Mapping[str, Any],
    trainer_cfg: Mapping[str, Any],
    model: torch.nn.Module,
    tokenizer: Any,
    train_dataset: Dataset,
    output_dir: Path,
    seed: int,
    report_to: Sequence[str] = (),
    callbacks: Sequence[Any] = (),
):
    """A TRL trainer (DPOTrainer or SFTTrainer) that trains a LoRA adapter on ``model``."""
    method = _method(alignment)
    common: dict[str, Any] = dict(
        output_dir=str(output_dir),
        max_steps=int(trainer_cfg["max_steps"]),
        per_device_train_batch_size=int(trainer_cfg["per_device_train_batch_size"]),
        gradient_accumulation_steps=int(trainer_cfg["gradient_accumulation_steps"]),
        learning_rate=float(trainer_cfg["learning_rate"]),
        lr_scheduler_type=trainer_cfg["lr_scheduler_type"],
        warmup_steps=trainer_cfg["warmup_steps"],
        weight_decay=float(trainer_cfg["weight_decay"]),
        max_length=int(trainer_cfg["max_length"]),
        gradient_checkpointing=bool(trainer_cfg["gradient_checkpointing"]),
        logging_steps=int(trainer_cfg["logging_steps"]),
        save_strategy="steps" if trainer_cfg.get("save_steps") else "no",
        save_steps=int(trainer_cfg.get("save_steps") or 500),
        save_total_limit=trainer_cfg.get("save_total_limit"),
        dataloader_num_workers=int(trainer_cfg.get("num_workers", 0)),
        dataloader_pin_memory=torch.cuda.is_available(),
        seed=seed,
        data_seed=seed,
        report_to=list(report_to),
        disable_tqdm=False,
        **_precision_flags(trainer_cfg["precision"]),
    )
    peft_config = lora_config(trainer_cfg["lora"])
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(beta=float(alignment["beta"]), loss_type=[alignment.get("loss_type", "sigmoid")], **common)
        return DPOTrainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer,
                          peft_config=peft_config, callbacks=list(callbacks))
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(completion_only_loss=True, **common)
    return SFTTrainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer,
                      peft_config=peft_config, callbacks=list(callbacks))
