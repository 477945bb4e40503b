"""One alignment experiment, top to bottom: config -> model + tokenizer -> data -> trainer -> tracker.

Takes the composed config as a plain dict (``train.py`` gets it from Hydra), so it runs without Hydra too.
Everything a user can get wrong (languages, model, data) is checked before the W&B run starts, so a bad input
leaves no half-made run behind.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from . import languages, tracking
from .alignment import build_trainer, training_set
from .callbacks import NeuronCheckpointCallback, NeuronCheckpointer
from .data import load_problems
from .data.synthetic import SYNTHETIC_LANGS
from .modeling import LoadedModel, build_tiny_model, build_tokenizer, load_pretrained


@dataclass
class RunResult:
    run_dir: Path
    adapter_dir: Path
    wandb_dir: Path | None
    wandb_mode: str | None
    metrics: dict[str, Any] = field(default_factory=dict)

    def report(self) -> str:
        """What a user reads at the end of a run: where it went and how to look at it."""
        lines = [f"Run finished: {self.run_dir}", f"  adapter:   {self.adapter_dir}"]
        if self.wandb_dir is not None:
            lines += [f"  W&B run ({self.wandb_mode}): {self.wandb_dir}",
                      f"  look at it:  wandb leet {self.wandb_dir}"]
            if self.wandb_mode == "offline":
                lines.append(f"  upload it:   wandb sync {self.wandb_dir}")
        return "\n".join(lines)


def tiny_tokenizer_corpus(template: str, n: int = 400, seed: int = 1234) -> Iterator[str]:
    """Texts the tiny model's tokenizer learns its merges from: generated prompts and answers in every language."""
    for ds in load_problems({"source": "synthetic", "n": n, "seed": seed}, SYNTHETIC_LANGS, template).values():
        for row in ds:
            yield f"{row['prompt']} {row['response']}"


def load_model(model_cfg: Mapping[str, Any], seed: int) -> LoadedModel:
    """The model a config names: the built-in tiny model when ``name_or_path`` is null, else a real one."""
    if model_cfg.get("name_or_path"):
        return load_pretrained(str(model_cfg["name_or_path"]), dtype=model_cfg.get("dtype", "auto"),
                               revision=model_cfg.get("revision"),
                               trust_remote_code=bool(model_cfg.get("trust_remote_code", False)))
    tokenizer = build_tokenizer(tiny_tokenizer_corpus(model_cfg["prompt_template"]), model_cfg["vocab_size"])
    model = build_tiny_model(model_cfg["arch"], tokenizer, seed=seed)
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=f"tiny-llama-{model.num_parameters()}")


def run_experiment(cfg: Mapping[str, Any], run_dir: Path) -> RunResult:
    """Run the alignment ``cfg`` describes, writing everything under ``run_dir``."""
    import datasets
    from transformers import set_seed

    datasets.disable_progress_bars()
    seed = int(cfg["seed"])
    set_seed(seed)
    run_dir = Path(run_dir)
    aligned = languages.resolve(cfg["lang"])
    probe = languages.resolve(cfg["probe_langs"])
    evaluated = languages.resolve(cfg["eval_langs"])
    template = cfg["model"]["prompt_template"]
    eval_problems = load_problems(cfg["data"], list(dict.fromkeys([*evaluated, *probe])), template)
    train_set = training_set(cfg["alignment"], aligned, template, seed)
    loaded = load_model(cfg["model"], seed)
    if not cfg["model"].get("name_or_path"):
        # The tiny model's random base is part of the result: keep it so the adapter can be reloaded later.
        loaded.model.save_pretrained(run_dir / "base_model")
        loaded.tokenizer.save_pretrained(run_dir / "base_model")

    method = cfg["alignment"]["method"]
    identity = tracking.run_identity(cfg["model"]["preset"], method, aligned)
    run = tracking.start_run(cfg["logger"], dict(cfg), run_dir, identity)
    exit_code = 1
    try:
        if run is not None:
            run.config.update({"run": {"aligned_langs": list(aligned), "probe_langs": list(probe),
                                       "eval_langs": list(evaluated), "model_id": loaded.model_id,
                                       "train_examples": len(train_set),
                                       "eval_problems": {k: len(v) for k, v in eval_problems.items()}}})
        callbacks = []
        if cfg["neurons"].get("enabled", True):
            checkpointer = NeuronCheckpointer(
                tokenizer=loaded.tokenizer, problems=eval_problems, probe_langs=probe, eval_langs=evaluated,
                neurons=cfg["neurons"], eval_cfg=cfg["eval"], out_dir=run_dir / "neurons", model_id=loaded.model_id)
            logger = (tracking.CheckpointLogger(run, image=cfg["neurons"].get("image", True),
                                                artifact=cfg["neurons"].get("artifact", True))
                      if run is not None else None)
            callbacks.append(NeuronCheckpointCallback(checkpointer, cfg["neurons"]["every_n_steps"], logger))
        trainer = build_trainer(cfg["alignment"], cfg["trainer"], loaded.model, loaded.tokenizer, train_set,
                                run_dir / "checkpoints", seed, report_to=["wandb"] if run is not None else [],
                                callbacks=callbacks)
        output = trainer.train()
        adapter_dir = run_dir / "adapter"
        tmp = run_dir / "adapter.tmp"
        trainer.save_model(str(tmp))
        if adapter_dir.exists():
            shutil.rmtree(adapter_dir)
        tmp.rename(adapter_dir)  # a crash while saving leaves the previous adapter intact
        exit_code = 0
    finally:
        wandb_dir = tracking.run_files_dir(run)
        mode = run.settings.mode if run is not None else None
        tracking.finish(run, exit_code)
    return RunResult(run_dir=run_dir, adapter_dir=adapter_dir, wandb_dir=wandb_dir, wandb_mode=mode,
                     metrics=dict(output.metrics))
