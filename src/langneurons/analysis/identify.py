"""``analyze.py identify``: identification on saved statistics or a reference folder; writes the mask."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from ..errors import HarnessError
from ..neurons import Identification, NeuronStats, load_stats
from ..neurons.reference import is_reference_folder
from ..files import atomic_write
from .progress import note, phase
from .settings import IdentifyCommandSettings
from ..checkpoints.record import step_folders, step_of
from .sources import has_config, read_config, setting_label, split_step


def output_paths(out: str) -> tuple[Path, Path]:
    """(reference mask file, our identification directory) for ``out``: a directory (existing, or written with a
    trailing slash) gets ``mask.pt`` and our files inside; anything else is the mask file, ours beside it."""
    path = Path(out)
    if out.endswith(("/", "\\")) or path.is_dir():
        return path / "mask.pt", path
    return path, path.with_name(path.name + ".identification")


def save_outputs(ident: Identification, out: str) -> dict[str, str]:
    mask_path, ours = output_paths(out)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(ident.to_reference_mask(), buffer)
    atomic_write(mask_path, buffer.getvalue())
    ident.save(ours)
    return {"mask": str(mask_path), "identification": str(ours)}


def checkpoint_folder(source: str) -> tuple[Path, Path | None]:
    """(statistics folder, its run dir or None) for ``source``: a statistics folder; one ``<run>/neurons/step-<N>``
    of a run (or a probe folder); or a run dir / probe folder itself, its last checkpoint (``<run>@<step>``: that
    one). The run dir is given when it holds a run config."""
    path, at = split_step(source)
    path = Path(path).expanduser()
    if path.name == "neurons" and step_folders(path):
        path = path.parent
    folders = step_folders(path / "neurons") if path.is_dir() else []
    if folders and not NeuronStats.is_saved(path) and not is_reference_folder(path):
        if at is None or at == "last":
            path = folders[-1][1]
        elif at == "first":
            path = folders[0][1]
        else:
            found = [p for step, p in folders if step == int(at)]
            if not found:
                raise HarnessError(f"{source!r} has no neuron checkpoint at step {at}: it has steps "
                                   f"{', '.join(str(step) for step, _ in folders)}")
            path = found[0]
    elif at is not None:
        raise HarnessError(f"{source!r}: @<step> picks a checkpoint of a run dir; give the statistics folder alone")
    run_dir = path.parent.parent
    if step_of(path.name) is not None and path.parent.name == "neurons" and has_config(run_dir):
        return path, run_dir
    return path, None


def run(cfg: IdentifyCommandSettings) -> dict[str, Any]:
    """Identify neurons as the settings say (see conf/analyze/identify.yaml); return the summary, plus output paths.

    On a checkpoint of a run (or a run dir: its last checkpoint), the settings not given are the run's own
    ``neurons.*``; a given one that differs from the run's is said on stderr and under ``notes``."""
    settings = cfg.identify_settings()
    langs = cfg.langs
    folder, run_dir = checkpoint_folder(cfg.source)
    notes = []
    if run_dir is not None:
        config = read_config(run_dir)
        settings, notes = settings.for_run(config)
        for text in notes:
            note(f"{setting_label(config) or run_dir.name}: {text}")
    stats = load_stats(folder, langs=langs)
    with phase(f"identify: {settings.method} on {stats.num_layers} x {stats.num_units} units, "
               f"{len(stats.langs)} languages"):
        ident = settings.identify(stats)
    result = {"source": cfg.source, **ident.summary()}
    if folder != Path(cfg.source):
        result["checkpoint"] = str(folder)
    if notes:
        result["notes"] = notes
    if cfg.out:
        result.update(save_outputs(ident, cfg.out))
    return result
