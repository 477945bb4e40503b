"""Analyse neuron checkpoints of finished (or running) runs: ``python analyze.py <subcommand> [key=value ...]``.

    python analyze.py --help                                   # lists the subcommands
    python analyze.py probe model=gemma3_270m data=mgsm data.path=../shared/data/mgsm out=probes/gemma-base
    python analyze.py report runs=[outputs/a,outputs/b] out=report/
    python analyze.py stages runs=[<stats dir or reference folder>] top_rate=0.01 lam=0.109375 bar=0.95
    python analyze.py identify source=<stats dir or reference folder> lam=auto out=masks/
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from langneurons import cpu_numerics

cpu_numerics.pin()  # before torch: the probes of `analyze.py probe` compute what train.py's checkpoints do
from langneurons.analysis.cli import main  # noqa: E402

# TRL / PEFT still call a transformers API deprecated in 5.x when an adapter loads; theirs to fix, nothing for users.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

if __name__ == "__main__":
    code = main(sys.argv[1:], conf_dir=Path(__file__).resolve().parent / "conf" / "analyze")
    wandb_io = sys.modules.get("langneurons.analysis.wandb_io")  # loaded by the subcommands (not for --help)
    if wandb_io is not None and wandb_io.abandoned():
        # a W&B call given up on (timeout=) still waits for the server, and so would wandb's exit hooks: everything
        # is written and said, so the process ends without them
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
