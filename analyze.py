"""Analyse neuron statistics of finished (or running) runs: ``python analyze.py <subcommand> [key=value ...]``.

    python analyze.py --help                                   # lists the subcommands
    python analyze.py identify source=<stats dir or reference folder> lam=auto out=masks/
"""

from __future__ import annotations

import sys
from pathlib import Path

from langneurons.analysis.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], conf_dir=Path(__file__).resolve().parent / "conf" / "analyze"))
