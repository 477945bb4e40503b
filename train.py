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
    """Before Hydra starts a run: a mistyped key, an unknown group option or an ambiguous value is one line that
    names it and says what to write instead (Hydra's own message spans several lines and suggests ``+key=``, which
    would add a key the harness never reads). Flags (``--cfg``, ``-m``, ``--help``) are left to Hydra."""
    if any(arg.startswith("-") for arg in argv):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    conf = Path(__file__).resolve().parent / "conf"
    try:
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            compose(config_name="config", overrides=argv)
    except HydraException as e:
        print(f"error: {_override_error(e, argv, conf)}", file=sys.stderr)
        sys.exit(2)


def _override_error(e: Exception, argv: list[str], conf: Path) -> str:
    import difflib
    import re

    key = getattr(e.__cause__, "full_key", None)
    if key:  # a key the config does not have
        from hydra import compose, initialize_config_dir
        from omegaconf import OmegaConf

        others = [a for a in argv if not a.lstrip("+~").startswith(f"{key}=")]
        parent, _, leaf = key.rpartition(".")
        try:
            with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
                cfg = compose(config_name="config", overrides=others)
            node = OmegaConf.select(cfg, parent) if parent else cfg
            known = [str(k) for k in node.keys()] if OmegaConf.is_dict(node) else []
        except Exception:  # noqa: BLE001 - another override is wrong too: no suggestion then
            known = []
        hint = difflib.get_close_matches(leaf, known, n=3, cutoff=0.6)
        where = [f"{parent}={p.stem}" for p in sorted((conf / parent).glob("*.yaml"))
                 if parent and re.search(rf"^{re.escape(leaf)}:", p.read_text(), re.M)]
        text = f"unknown config key {key!r}"
        if hint:
            text += " (did you mean " + " or ".join(f"{parent + '.' if parent else ''}{h}" for h in hint) + "?)"
        if where:
            text += f"; {' and '.join(where)} {'has' if len(where) == 1 else 'have'} it"
        return text + ": python train.py --cfg job [group=option ...] prints every key"
    message = str(e)
    missing = re.search(r"Could not find '([^']+)/([^']+)'", message)
    if missing:
        group, option = missing.groups()
        options = [p.stem for p in sorted((conf / group).glob("*.yaml"))]
        return f"unknown option {group}={option}: choose one of {', '.join(options)}"
    lines = [line.strip() for line in message.split("Config search path")[0].splitlines() if line.strip()]
    return "; ".join(lines)


if __name__ == "__main__":
    _check_resume(sys.argv[1:])
    _check_overrides(sys.argv[1:])
    main()
