"""(f) Deactivation heatmaps (paper Fig. 2 / 10): zero language A's neurons, measure every language B.

For each mode (``specific``: A's specific neurons; ``specific+related``: the ones A owns; ``all``: those plus the
general set) and each language A, the units are zeroed after act_fn (``neurons.deactivate``) and the perplexity of
the gold responses of every language B is measured (``neurons.perplexity``; optionally greedy accuracy too). The
model of a run's checkpoint is its base model plus the adapter saved at that step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import DataError, HarnessError
from ..modeling import LoadedModel, load_pretrained
from ..offline import OfflineCopy
from ..neurons import Identification, deactivate, make_batches, perplexity
from ..prompts import prompt_format
from .progress import Bar
from ..checkpoints.record import saved_steps
from .sources import Run
from .table import Table

MODES: dict[str, tuple[str, ...]] = {
    "specific": ("specific",),
    "specific+related": ("specific", "related"),
    "all": ("specific", "related", "general"),
}


@dataclass
class DeactivationResult:
    """``ppl[mode][a][b]``: perplexity on language b with language a's neurons of ``mode`` zeroed; ``baseline[b]``:
    with nothing zeroed. ``accuracy`` / ``baseline_accuracy`` likewise when measured. ``zeroed[mode][a]``: units."""

    langs: tuple[str, ...]  # languages measured (b)
    deactivated: tuple[str, ...]  # languages whose neurons are zeroed (a)
    modes: tuple[str, ...]
    baseline: dict[str, float]
    ppl: dict[str, dict[str, dict[str, float]]]
    zeroed: dict[str, dict[str, int]]
    baseline_accuracy: dict[str, float] | None = None
    accuracy: dict[str, dict[str, dict[str, float]]] | None = None
    notes: list[str] = field(default_factory=list)

    def ratio(self, mode: str) -> list[list[float]]:
        """[a][b] perplexity relative to the baseline (1.0 = unchanged)."""
        return [[self.ppl[mode][a][b] / self.baseline[b] for b in self.langs] for a in self.deactivated]

    def accuracy_change(self, mode: str) -> list[list[float]] | None:
        if self.accuracy is None or self.baseline_accuracy is None:
            return None
        return [[self.accuracy[mode][a][b] - self.baseline_accuracy[b] for b in self.langs] for a in self.deactivated]

    def table(self, name: str = "deactivation", title: str = "Deactivation") -> Table:
        rows = []
        for mode in self.modes:
            for a in self.deactivated:
                for b in self.langs:
                    row = [mode, a, b, self.zeroed[mode][a], self.ppl[mode][a][b], self.baseline[b],
                           self.ppl[mode][a][b] / self.baseline[b]]
                    if self.accuracy is not None:
                        row += [self.accuracy[mode][a][b], self.baseline_accuracy[b]]
                    rows.append(row)
        columns = ["mode", "deactivated", "lang", "units zeroed", "perplexity", "baseline perplexity", "ratio"]
        if self.accuracy is not None:
            columns += ["accuracy", "baseline accuracy"]
        return Table(name, title, columns, rows, note="ratio = perplexity / baseline perplexity of the measured "
                     "language (1 = unchanged)")

    def to_dict(self) -> dict[str, Any]:
        out = {"langs": list(self.langs), "deactivated": list(self.deactivated), "modes": list(self.modes),
               "baseline": self.baseline, "ppl": self.ppl, "zeroed": self.zeroed}
        if self.accuracy is not None:
            out.update(baseline_accuracy=self.baseline_accuracy, accuracy=self.accuracy)
        return out


def check_modes(modes: Sequence[str]) -> tuple[str, ...]:
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise HarnessError(f"unknown deactivation mode(s) {unknown}: choose from {', '.join(MODES)}")
    return tuple(modes)


def deactivation_effects(model: Any, tokenizer: Any, ident: Identification, problems: Mapping[str, Any], *,
                         modes: Sequence[str] = tuple(MODES), deactivated: Sequence[str] | None = None,
                         accuracy: bool = False, batch_size: int = 8, max_length: int | None = 512,
                         max_new_tokens: int = 64, progress: bool = False,
                         template: Any = "mathoctopus") -> DeactivationResult:
    """Perplexity (and optionally accuracy) of every language of ``problems`` with each language's neurons zeroed.

    ``problems[lang]``: rows with ``prompt``, ``response`` (the gold response) and ``answer`` (as
    ``data.load_problems`` gives them); ``ident``: the identification of this model's checkpoint; ``template``: the
    prompt format of the problems (where answers end, what separates a prompt from its response).
    """
    fmt = prompt_format(template, tokenizer)
    modes = check_modes(modes)
    langs = tuple(lang for lang in ident.langs if lang in problems)
    missing = [lang for lang in ident.langs if lang not in problems]
    if not langs:
        raise DataError(f"no problems for any language of the identification ({', '.join(ident.langs)})")
    deactivated = tuple(deactivated or ident.langs)
    examples = [(p, fmt.sep + r, lang)
                for lang in langs for p, r in zip(problems[lang]["prompt"], problems[lang]["response"])]
    batches = make_batches(tokenizer, examples, langs, count="response", batch_size=batch_size, max_length=max_length)
    # one bar over the passes: the intact model, then every (mode, language) with that language's neurons zeroed
    # (a tqdm bar when stderr is a terminal, else a line now and then: analysis.progress.Bar)
    bar = Bar(1 + len(modes) * len(deactivated), "deactivation", "pass", enabled=progress)
    bar.set_postfix_str("intact model")
    baseline = perplexity(model, batches, langs)
    result = DeactivationResult(langs, deactivated, modes, baseline, {}, {})
    if missing:
        result.notes.append(f"no problems for {', '.join(missing)}: not measured")
    if accuracy:
        result.baseline_accuracy = _accuracy(model, tokenizer, problems, langs, batch_size, max_new_tokens, fmt.stop)
        result.accuracy = {}
    bar.update()
    for mode in modes:
        result.ppl[mode], result.zeroed[mode] = {}, {}
        if accuracy:
            result.accuracy[mode] = {}
        for a in deactivated:
            bar.set_postfix_str(f"{mode} of {a} off")
            units = ident.units(a, types=MODES[mode])
            result.zeroed[mode][a] = sum(int(u.numel()) for u in units)
            with deactivate(model, units):
                result.ppl[mode][a] = perplexity(model, batches, langs)
                if accuracy:
                    result.accuracy[mode][a] = _accuracy(model, tokenizer, problems, langs, batch_size,
                                                         max_new_tokens, fmt.stop)
            bar.update()
    bar.close()
    return result


def _accuracy(model, tokenizer, problems, langs, batch_size, max_new_tokens, stops) -> dict[str, float]:
    from ..evaluation import AnswerStops, generate
    from ..metrics import load_math_accuracy

    metric = load_math_accuracy()
    out = {}
    end = AnswerStops(model, tokenizer, stops)
    for lang in langs:
        answers = generate(model, tokenizer, list(problems[lang]["prompt"]), max_new_tokens=max_new_tokens,
                           batch_size=batch_size, stops=end)
        out[lang] = float(metric.compute(predictions=answers, references=list(problems[lang]["answer"]))["accuracy"])
    return out


# ---- the model of a run's checkpoint ---------------------------------------------------------------------------------
def adapter_for(run: Run, step: int) -> Path | None:
    """The adapter folder that holds the model of ``run`` at ``step``; None for step 0 (LoRA starts as the identity,
    so the base model is the model at step 0) and for a probe of a bare model."""
    if run.kind == "probe":  # analyze.py probe: the model it measured, whatever the step
        return run.path / "adapter" if (run.path / "adapter" / "adapter_config.json").is_file() else None
    if step == 0:
        return None
    if run.path is None:
        raise HarnessError("the run has no local files: pass adapter=<folder> (or adapter=none for the base model)")
    saved = run.path / "checkpoints" / f"checkpoint-{step}"
    if (saved / "adapter_config.json").is_file():
        return saved
    final = run.path / "adapter"
    steps = saved_steps(run.path / "neurons")
    if (final / "adapter_config.json").is_file() and steps and step == steps[-1]:
        return final
    kept = sorted(int(p.name.split("-")[1]) for p in (run.path / "checkpoints").glob("checkpoint-*")
                  if p.name.split("-")[1].isdigit())
    have = ["0 (base model)", *map(str, kept)]
    if final.is_dir() and steps and steps[-1] not in kept:
        have.append(f"{steps[-1]} (final adapter)")
    raise HarnessError(f"no adapter saved for step {step} (steps with a model: {', '.join(have)}); pick one of them "
                       "with step=..., or pass adapter=<folder>")


def load_checkpoint_model(run: Run, step: int, *, model: str | None = None, adapter: str | None = None,
                          dtype: str | None = None) -> LoadedModel:
    """The model of ``run`` at ``step``: its base model (``model`` overrides: a folder or hub id) plus the adapter of
    that step (``adapter`` overrides: a folder, or ``none``)."""
    model_cfg = run.config.get("model") or {}
    path = None if adapter == "none" else (Path(adapter) if adapter else adapter_for(run, step))
    if path is not None and not (path / "adapter_config.json").is_file():
        raise HarnessError(f"adapter {str(path)!r} holds no adapter_config.json: give a folder saved by the run")
    if model:
        base = load_pretrained(str(model), dtype=dtype or "auto")
    elif model_cfg.get("name_or_path"):
        base = load_pretrained(str(model_cfg["name_or_path"]), dtype=dtype or model_cfg.get("dtype", "auto"),
                               revision=model_cfg.get("revision"),
                               trust_remote_code=bool(model_cfg.get("trust_remote_code", False)),
                               offline=OfflineCopy.from_settings(model_cfg.get("offline")))
    elif run.path is not None and (run.path / "base_model" / "config.json").is_file():
        base = load_pretrained(str(run.path / "base_model"), dtype=dtype or "fp32")
    else:
        raise HarnessError("no model to load (no base_model/ folder and no model.name_or_path in the run's config): "
                           "pass model=<folder or hub id>")
    if path is not None:
        from peft import PeftModel

        base.model = PeftModel.from_pretrained(base.model, str(path))
    import torch

    if torch.cuda.is_available():
        base.model.to("cuda")
    base.model.eval()
    return base


def load_probe_problems(run: Run, langs: Sequence[str], data: Mapping[str, Any] | None, n: int | None,
                        template: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Problems (prompt, gold response, answer) for ``langs``: the run's evaluation data unless ``data`` names
    another set (``source``: synthetic | mgsm | msvamp, ``path``), cut to ``n`` per language, in the run's prompt
    format unless ``template`` names another (``tokenizer``: the model's, for the chat format)."""
    from ..data import load_problems

    spec = dict(run.config.get("data") or {})  # the run's own (complete) data block
    if data and data.get("source"):  # deactivation.data: source, path, seed, offset; n is the deactivation's
        spec = {**{k: data.get(k) for k in ("source", "path", "seed", "offset")}, "n": n}
    if not spec:
        raise HarnessError(f"{run.label} has no run config to take its problems from: pass data.source=<synthetic|"
                           "mgsm|msvamp> (and data.path=...)")
    if n is not None:
        spec["n"] = int(n)
    template = template or run_prompt_template(run)
    return load_problems(spec, list(langs), prompt_format(template, tokenizer))


def run_prompt_template(run: Run) -> str:
    """The prompt format a run's model was prompted in (``model.prompt_template`` of its config)."""
    return (run.config.get("model") or {}).get("prompt_template", "mathoctopus")
