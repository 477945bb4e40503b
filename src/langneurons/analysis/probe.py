"""``analyze.py probe``: measure a model directly, as a run's neuron checkpoint measures it, without training.

The paper analyses base and aligned models as they are. ``python analyze.py probe model=gemma3_270m data=mgsm
data.path=../shared/data/mgsm out=probes/gemma-base`` composes the *training* config (the same groups and keys as
``train.py``: ``model=``, ``data=``, ``probe_langs=``, ``neurons.*``, ``eval.*``), loads the model (plus
``adapter=``: an adapter folder, or a run dir whose final adapter is taken), and takes one neuron checkpoint with
the code a run uses (:class:`~langneurons.checkpoints.measure.NeuronCheckpointer`): greedy answers and accuracy per language,
activation statistics on the probe set (``neurons.probe``: the answers, the gold responses or the plain questions),
the identification. It writes a run-shaped folder::

    <out>/neurons/step-<N>/   the checkpoint (statistics, identification, checkpoint.json)
    <out>/.hydra/config.yaml  the composed config (what the analysis reads: model, data, prompt format)
    <out>/probe.json          what was probed: model id, adapter, overrides, seconds per phase
    <out>/adapter/            a copy of the adapter (so ``deactivate`` loads the same model)
    <out>/base_model/         the built-in tiny model's weights (a real model is named by its config)

so that ``stages``, ``deactivate``, ``overlap``, ``report`` and ``compare`` take it as they take a run. The folder
is assembled beside ``out`` and renamed into place when complete: a failed probe leaves nothing at ``out``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import HarnessError
from ..files import tmp_sibling
from .sources import PROBE_RECORD as RECORD
from ..checkpoints.record import saved_steps
from .sources import read_config
from .settings import ProbeSettings
from ..settings import RunSettings


@dataclass(frozen=True)
class AdapterSource:
    """The adapter a probe measures: its folder, the run it came from (if any) and that run's step."""

    path: Path
    run_dir: Path | None = None
    step: int | None = None

    @property
    def run_config(self) -> dict[str, Any]:
        return read_config(self.run_dir) if self.run_dir is not None else {}


def find_adapter(spec: str | None) -> AdapterSource | None:
    """``adapter=``: an adapter folder (``adapter_config.json``; ``<run>/checkpoints/checkpoint-<N>`` gives step N),
    or a run dir (its final ``adapter/``, at its last neuron checkpoint's step); ``none``/null: the bare model."""
    if spec in (None, "", "none"):
        return None
    path = Path(str(spec)).expanduser()
    if (path / "adapter" / "adapter_config.json").is_file():  # a run dir
        steps = saved_steps(path / "neurons")
        return AdapterSource(path / "adapter", path, steps[-1] if steps else None)
    if not (path / "adapter_config.json").is_file():
        if not path.exists():
            raise HarnessError(f"adapter={spec}: no such folder; give an adapter folder (adapter_config.json) or a "
                               "run dir (outputs/<date>/<time>)")
        raise HarnessError(f"adapter={spec} holds no adapter_config.json (and no adapter/ of a run): give a folder "
                           "saved by a run, e.g. <run>/adapter or <run>/checkpoints/checkpoint-<N>")
    step = None
    if path.name.startswith("checkpoint-") and path.name[11:].isdigit():
        step = int(path.name[11:])
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    else:
        run_dir = path.parent if path.name == "adapter" else None
        if run_dir is not None:
            steps = saved_steps(run_dir / "neurons")
            step = steps[-1] if steps else None
    if run_dir is not None and not (run_dir / ".hydra" / "config.yaml").is_file():
        run_dir = None
    return AdapterSource(path, run_dir, step)


def _load(train: "RunSettings", adapter: AdapterSource | None):
    """The model to measure: the config's model (the adapter's run's own base when it kept one: the tiny model),
    with the adapter on top; in eval mode, on the GPU when there is one."""
    import torch

    from ..experiment import load_model
    from ..modeling import load_pretrained

    base_dir = adapter.run_dir / "base_model" if adapter is not None and adapter.run_dir is not None else None
    if base_dir is not None and (base_dir / "config.json").is_file():
        loaded = load_pretrained(str(base_dir), dtype=train.model.dtype)
    else:
        loaded = load_model(train.model, train.seed)
    base = loaded.model
    if adapter is not None:
        from peft import PeftModel

        try:
            loaded.model = PeftModel.from_pretrained(loaded.model, str(adapter.path))
        except (RuntimeError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HarnessError(f"adapter={adapter.path} does not fit model {loaded.model_id} ({first[:160]}): give "
                               "the model it was trained on, e.g. model=<the run's preset>") from None
    if torch.cuda.is_available():
        loaded.model.to("cuda")
    loaded.model.eval()
    return loaded, base


def run(cfg: ProbeSettings) -> dict[str, Any]:
    """Probe the model ``cfg.config`` (the training settings) describes; write the folder ``cfg.out``."""
    from ..checkpoints.measure import NeuronCheckpointer
    from ..experiment import evaluation_problems, in_model_format, set_threads

    started = time.perf_counter()
    train = cfg.config
    set_threads(train.threads)
    out = Path(cfg.out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HarnessError(f"out={out} already exists and is not empty: give a new folder (a probe never "
                           "overwrites one)")
    adapter = find_adapter(cfg.adapter)
    step = cfg.step if cfg.step is not None else (adapter.step or 0) if adapter is not None else 0
    trained_on = (adapter.run_config.get("model") or {}).get("preset") if adapter is not None else None
    if trained_on and trained_on != train.model.preset:
        raise HarnessError(f"adapter={adapter.path} was trained on model={trained_on}, not model="
                           f"{train.model.preset}: pass model={trained_on}")
    if adapter is not None and step == 0:
        raise HarnessError(f"adapter={adapter.path}: its training step is unknown; give it with step=<N> (step 0 "
                           "is the base model)")
    probe_langs, eval_langs = train.probe_langs, train.eval_langs
    problems = evaluation_problems(train)  # before the model loads: bad input fails at once
    timings: dict[str, float] = {}
    mark = time.perf_counter()
    loaded, base = _load(train, adapter)
    timings["load"] = time.perf_counter() - mark
    template, problems = in_model_format(problems, train.model.prompt_template, loaded.tokenizer)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(out)
    try:
        checkpointer = NeuronCheckpointer(
            tokenizer=loaded.tokenizer, problems=problems, probe_langs=probe_langs, eval_langs=eval_langs,
            neurons=train.neurons, eval_cfg=train.eval, out_dir=tmp / "neurons", model_id=loaded.model_id,
            template=template)
        ckpt = checkpointer.take(loaded.model, step)
        timings.update(ckpt.phases)
        mark = time.perf_counter()
        if train.model.built:  # the built-in tiny model: keep the weights measured
            base.save_pretrained(tmp / "base_model")
            loaded.tokenizer.save_pretrained(tmp / "base_model")
        if adapter is not None:
            shutil.copytree(adapter.path, tmp / "adapter")
        written = _config(cfg.raw_config, adapter)
        from omegaconf import OmegaConf

        (tmp / ".hydra").mkdir()
        OmegaConf.save(OmegaConf.create(written), tmp / ".hydra" / "config.yaml")
        timings["write"] = time.perf_counter() - mark
        record = {"kind": "probe", "model_id": loaded.model_id, "step": step, "label": _label(cfg, adapter, step),
                  "adapter": str(adapter.path) if adapter is not None else None,
                  "adapter_run": str(adapter.run_dir) if adapter is not None and adapter.run_dir else None,
                  "overrides": list(cfg.overrides), "seconds": time.perf_counter() - started,
                  "phases": timings}
        (tmp / RECORD).write_text(json.dumps(record, indent=1, ensure_ascii=False))
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ident = ckpt.ident
    result: dict[str, Any] = {"out": str(out), "model_id": loaded.model_id, "step": step,
                              "adapter": record["adapter"], "accuracy": ckpt.accuracy,
                              "probe": train.neurons.probe,
                              "probe_tokens": dict(zip(ckpt.stats.langs, ckpt.stats.tokens.tolist())),
                              "seconds": round(time.perf_counter() - started, 1),
                              "phases": {k: round(v, 1) for k, v in timings.items()}, "notes": ckpt.notes}
    if ident is not None:
        summary = ident.summary()
        result.update(lam=summary["lam"], tau=summary["tau"], totals=summary["totals"],
                      lang_type_counts=ckpt.lang_type_counts())
    result["next"] = [f"python analyze.py stages runs=[{out}] out={out}/stages",
                      f"python analyze.py deactivate source={out} out={out}/deactivation",
                      f"python analyze.py report runs=[{out}] out={out}/report"]
    return result


def _label(cfg: ProbeSettings, adapter: AdapterSource | None, step: int) -> str:
    if cfg.label:
        return cfg.label
    preset = cfg.config.model.preset
    if adapter is None:
        return f"{preset} base"
    where = adapter.run_dir.name if adapter.run_dir is not None else adapter.path.name
    return f"{preset} + {where}@{step}"


def _config(train: Mapping[str, Any], adapter: AdapterSource | None) -> dict[str, Any]:
    """The config the folder records: the composed one, aligned on the adapter's run's languages (none for a bare
    model, so that no language is taken for a trained one)."""
    written = dict(train)
    run_lang = adapter.run_config.get("lang") if adapter is not None else None
    written["lang"] = run_lang
    return written

