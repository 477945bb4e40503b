"""The training config composed from conf/ with command-line overrides, and one-line errors for bad overrides.

Used by ``train.py`` (checked before Hydra creates a run folder) and by ``analyze.py probe`` (which measures a model
as a run's neuron checkpoint would, from the same config groups).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Sequence

from .errors import HarnessError


def compose_training(conf: Path, overrides: Sequence[str]) -> Any:
    """conf/config.yaml with ``overrides`` applied (an OmegaConf DictConfig, hydra node left out); a bad override is
    a :class:`HarnessError` naming it."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(Path(conf).resolve()), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    except HydraException as e:
        raise HarnessError(override_error(e, list(overrides), Path(conf))) from None


def override_error(e: Exception, argv: Sequence[str], conf: Path) -> str:
    """The one line that says what is wrong with ``argv`` (Hydra raised ``e`` composing it) and what to write."""
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
