"""Align a causal LM on multilingual data and track it: ``python train.py [group=option ...] [key=value ...]``.

    python train.py                          # the built-in tiny default: offline, CPU, a few minutes
    python train.py model=llama lang=sw      # a real model, aligned on Swahili
    python train.py --cfg job                # print the composed config
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from langneurons import cpu_numerics

# Before torch starts: its CPU kernels and MKL's branch pinned to AVX2, so the same run computes the same numbers on
# every x86 CPU (an exported ATEN_CPU_CAPABILITY / MKL_CBWR wins; docs/pitfalls.md, "CPU").
cpu_numerics.pin()
# Before any Hugging Face import: no telemetry pings from a training job.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# TRL 1.x still calls a transformers API deprecated in 5.x; the warning is theirs to fix and says nothing to users.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

# hydra.run.dir: the resumed run's own folder when `resume=` names one, else a new folder.
OmegaConf.register_new_resolver("run_dir", lambda resume, new: resume or new, replace=True)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from langneurons.distributed import end_process_group, is_rank_zero
    from langneurons.errors import HarnessError
    from langneurons.experiment import run_experiment

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        result = run_experiment(OmegaConf.to_container(cfg, resolve=True), run_dir,
                                overrides=list(HydraConfig.get().overrides.task))
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if is_rank_zero():
        print(result.report())
    end_process_group()


def _check_resume(argv: list[str]) -> None:
    """Before Hydra creates the run folder: a mistyped ``resume=`` path must not leave an empty run behind."""
    for arg in argv:
        if arg.startswith("resume="):
            folder = Path(arg.split("=", 1)[1])
            if arg != "resume=null" and not (folder / "run.json").is_file():
                print(f"error: resume={folder} is not a run folder of this harness (no run.json in it): "
                      "give resume=outputs/<date>/<time>", file=sys.stderr)
                sys.exit(2)


def _check_overrides(argv: list[str]) -> None:
    """Before Hydra starts a run (and creates its folder): a mistyped key, an unknown group option or an ambiguous
    value is one line that names it and says what to write instead (Hydra's own message spans several lines and
    suggests ``+key=``, which would add a key the harness never reads); so is every bad value the settings layer
    finds (types, ranges, choices, languages, paths, combinations). Flags (``--cfg``, ``-m``, ``--help``) are left to
    Hydra; a multirun's jobs check their settings as they start."""
    if any(arg.startswith("-") for arg in argv):
        return
    from omegaconf import OmegaConf

    from langneurons.errors import HarnessError
    from langneurons.overrides import compose_training
    from langneurons.settings import RunSettings

    try:
        cfg = compose_training(Path(__file__).resolve().parent / "conf", argv)
        composed = OmegaConf.to_container(cfg, resolve=True)
        RunSettings.from_config(composed)
        if composed.get("resume"):  # overrides that differ from the run's own stop before Hydra writes into its folder
            from langneurons.resume import resumed_config

            resumed_config(composed, Path(composed["resume"]), argv)
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    _check_resume(sys.argv[1:])
    _check_overrides(sys.argv[1:])
    main()
