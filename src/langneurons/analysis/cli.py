"""``analyze.py <subcommand> [key=value ...]``: compose conf/analyze/<subcommand>.yaml with the overrides, run it.

Each subcommand is a function ``run(settings) -> dict`` in its own module; it gets its config as the settings object
of :mod:`analysis.settings` (every value checked before the subcommand runs); its result is printed as one line of
JSON. User errors (unknown subcommand or key, bad value, missing path...) print one line to stderr and exit 2.
"""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import HarnessError


@dataclass(frozen=True)
class Subcommand:
    target: str  # "module:function", imported only when the subcommand runs (keeps --help fast)
    help: str
    # also takes the training config's groups and keys (model=, data=, neurons.*, ...): its own keys are those of
    # conf/analyze/<name>.yaml, every other override composes conf/config.yaml as train.py does
    training_config: bool = False

    def load(self) -> Callable[[Any], dict[str, Any]]:
        module, func = self.target.split(":")
        return getattr(importlib.import_module(module), func)


SUBCOMMANDS: dict[str, Subcommand] = {
    "probe": Subcommand(
        "langneurons.analysis.probe:run",
        "measure a model (base, or with a run's adapter) as a neuron checkpoint does; writes a folder the others read",
        training_config=True,
    ),
    "identify": Subcommand(
        "langneurons.analysis.identify:run",
        "identify language-specific / related / general neurons in activation statistics (ours or the reference's)",
    ),
    "report": Subcommand(
        "langneurons.analysis.commands:report",
        "every analysis of one or more runs: PNG figures, CSV tables and one self-contained report.html",
    ),
    "counts": Subcommand(
        "langneurons.analysis.commands:counts",
        "neuron counts per type over steps, per language and in total, runs overlaid, accuracy beside them",
    ),
    "stages": Subcommand(
        "langneurons.analysis.commands:stages",
        "per-layer distribution of specific / related / general neurons and the four stages located in it",
    ),
    "compare": Subcommand(
        "langneurons.analysis.commands:compare",
        "before -> after: change per layer and stage by type, neurons shared by N languages, overlap",
    ),
    "overlap": Subcommand(
        "langneurons.analysis.commands:overlap",
        "overlap of each language's neuron set across checkpoints, runs and probe sets",
    ),
    "spontaneous": Subcommand(
        "langneurons.analysis.commands:spontaneous",
        "trained vs untrained languages: change of specific / related neurons and of accuracy",
    ),
    "deactivate": Subcommand(
        "langneurons.analysis.commands:deactivate",
        "zero each language's neurons and measure perplexity (and accuracy) on every language: heatmaps",
    ),
    "workspace": Subcommand(
        "langneurons.analysis.commands:workspace",
        "save a W&B workspace view of a project laid out for this study (offline: out= writes its JSON)",
    ),
    "wandb-report": Subcommand(
        "langneurons.analysis.commands:wandb_report",
        "publish the report's content as a W&B report, to share as a link (offline: out= writes its JSON)",
    ),
}


def config_stem(name: str) -> str:
    """The file of subcommand ``name`` under conf/analyze: ``wandb-report`` -> ``wandb_report``."""
    return name.replace("-", "_")


def parse(name: str, cfg: dict[str, Any]) -> Any:
    """The settings of subcommand ``name`` from its composed config (:func:`compose`)."""
    from .settings import SETTINGS

    return SETTINGS[name].from_config(cfg)


def usage(prog: str = "analyze.py") -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = [f"usage: python {prog} <subcommand> [key=value ...]", "", "subcommands:"]
    lines += [f"  {name:<{width}}  {sub.help}" for name, sub in SUBCOMMANDS.items()]
    lines += ["", f"python {prog} <subcommand> --help shows its keys and defaults."]
    return "\n".join(lines)


def compose(conf_dir: Path, name: str, overrides: Sequence[str]) -> dict[str, Any]:
    """The subcommand's config with ``overrides`` applied, as a plain dict, plus ``given``: the (dotted) keys the
    overrides set. Unknown keys and bad syntax are :class:`HarnessError`. No Hydra run directory is created
    (compose API, no job)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    path = conf_dir / f"{config_stem(name)}.yaml"
    if not path.is_file():
        raise HarnessError(f"no config {str(path)!r} for subcommand {name!r}: the conf/analyze folder is incomplete")
    known = list(dict.fromkeys(key for f in config_files(conf_dir, name) for key in OmegaConf.load(f).keys()
                               if key != "defaults"))
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise HarnessError(f"{str(exc).splitlines()[0]}: arguments are key=value, e.g. source=<dir>") from None
    for override in parsed:
        key = override.key_or_group.split(".")[0]
        if key not in known:
            raise HarnessError(f"unknown key {key!r} for {name}: known keys are {', '.join(map(str, known))}")
    try:
        with initialize_config_dir(config_dir=str(conf_dir.resolve()), version_base="1.3"):
            cfg = hydra_compose(config_name=config_stem(name), overrides=list(overrides))
    except HydraException as exc:
        raise HarnessError(str(exc).splitlines()[0]) from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise HarnessError(f"{', '.join(missing)} required: python analyze.py {name} {missing[0]}=...")
    composed = OmegaConf.to_container(cfg, resolve=True)
    # the keys the command line set, so that a subcommand tells them from defaults (a run's own identification
    # settings fill the ones not given: analysis.settings)
    composed["given"] = [str(override.key_or_group) for override in parsed]
    return composed


def compose_with_training(conf_dir: Path, name: str, overrides: Sequence[str]) -> dict[str, Any]:
    """The subcommand's own keys (conf/analyze/<name>.yaml) from the overrides that name them, and under ``config``
    the training config (conf/config.yaml, beside conf/analyze) composed with all the others, as ``train.py`` would
    compose them; ``overrides`` keeps those."""
    from omegaconf import OmegaConf

    from ..overrides import compose_training

    own_keys = {str(key) for f in config_files(conf_dir, name) for key in OmegaConf.load(f).keys() if key != "defaults"}
    own = [o for o in overrides if o.split("=", 1)[0].lstrip("+~").split(".")[0] in own_keys]
    rest = [o for o in overrides if o not in own]
    cfg = compose(conf_dir, name, own)
    cfg["config"] = OmegaConf.to_container(compose_training(conf_dir.parent, rest), resolve=True)
    cfg["overrides"] = rest
    return cfg


def config_files(conf_dir: Path, name: str) -> list[Path]:
    """The subcommand's YAML file and the shared files its defaults list includes (in that order)."""
    from omegaconf import OmegaConf

    path = conf_dir / f"{config_stem(name)}.yaml"
    included = OmegaConf.load(path).get("defaults") or []
    return [path, *(conf_dir / f"{entry}.yaml" for entry in included if isinstance(entry, str) and entry != "_self_")]


def main(argv: Sequence[str], conf_dir: Path, prog: str = "analyze.py") -> int:
    """Run ``argv`` (subcommand and overrides); return the process exit code."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(prog))
        return 0 if argv else 2
    name, overrides = argv[0], argv[1:]
    sub = SUBCOMMANDS.get(name)
    if sub is None:
        print(f"{prog}: error: unknown subcommand {name!r}: choose one of {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    if any(arg in ("-h", "--help") for arg in overrides):
        print(f"{sub.help}\n\n" + "\n".join(f.read_text() for f in config_files(conf_dir, name)))
        if sub.training_config:
            print("Every other key=value or group=option is train.py's: python train.py --cfg job [group=option ...] "
                  "prints them")
        return 0
    try:
        cfg = (compose_with_training(conf_dir, name, overrides) if sub.training_config
               else compose(conf_dir, name, overrides))
        settings = parse(name, cfg)  # every value checked before the subcommand runs
        result = sub.load()(settings)
    except HarnessError as exc:
        print(f"{prog} {name}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, ensure_ascii=False))
    return 0
