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

# Before any Hugging Face import: no telemetry pings from a training job.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# TRL 1.x still calls a transformers API deprecated in 5.x; the warning is theirs to fix and says nothing to users.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from langneurons.errors import HarnessError
    from langneurons.experiment import run_experiment

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        result = run_experiment(OmegaConf.to_container(cfg, resolve=True), run_dir)
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(result.report())


if __name__ == "__main__":
    main()
