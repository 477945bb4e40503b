"""Bad inputs of the kinds users really make, each run as a user runs it (train.py, analyze.py, the sweep agent, as
subprocesses): every one stops with exit code 2 and one line on stderr that names the offending key, value, file or
line, prints no traceback, and leaves nothing behind (no run folder, no W&B run, no cache entry, no partial file,
a resumed run's folder untouched). Inputs that can be checked up front fail before any model is built or loaded.

Phrases are checked as whole words (``lang`` is not found in ``language``); a line number is checked next to its
file (``mgsm_sw.tsv:17`` or ``mgsm_sw.tsv line 17``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import pytest

from conftest import ROOT, SHARED_DATA

# A run short enough for a fixture (tests/test_train.py's SHORT: debug=smoke's 4 steps, trainer checkpoints at 2 and
# 4, no neuron checkpoints).
SHORT = ["debug=smoke", "trainer.logging_steps=2", "neurons=off"]
# The harness's caches (the tiny base, MAPO pairs, converted models): a failed start adds nothing to them.
CACHE = Path(os.environ.get("LANGNEURONS_CACHE") or "~/.cache/langneurons").expanduser()

Phrase = Union[str, "re.Pattern[str]"]


def at(file: str, line: int) -> "re.Pattern[str]":
    """A file and a line number in it: ``file:17``, ``file line 17``, ``file, line 17``, ``file at line 17``."""
    return re.compile(rf"{re.escape(file)}(?::|,? line |,? at line ){line}(?!\d)")


def names(line: str, phrase: Phrase) -> bool:
    if isinstance(phrase, re.Pattern):
        return phrase.search(line) is not None
    return re.search(rf"(?<![\w.]){re.escape(phrase)}(?!\w)", line) is not None


# ---- inputs the cases make (under <tmp>/in) ------------------------------------------------------------------------

def _replace_line(path: Path, lineno: int, new: bytes) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[lineno - 1] = new
    path.write_bytes(b"\n".join(lines))


def _copy_folder(src: Path, dst: Path) -> Path:
    # read and write, not copy: the shared files are read-only, their copies must not be
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def mgsm_with(lineno: int, new: bytes) -> Callable[[Path], None]:
    def make(inputs: Path) -> None:
        _replace_line(_copy_folder(SHARED_DATA / "mgsm", inputs / "mgsm") / "mgsm_sw.tsv", lineno, new)
    return make


def mgsm_unreadable(inputs: Path) -> None:
    (_copy_folder(SHARED_DATA / "mgsm", inputs / "mgsm") / "mgsm_sw.tsv").chmod(0)


def msvamp_with(lineno: int, new: bytes) -> Callable[[Path], None]:
    def make(inputs: Path) -> None:
        _replace_line(_copy_folder(SHARED_DATA / "msvamp", inputs / "msvamp") / "test_Swahili.json", lineno, new)
    return make


def pairs_with(lineno: int, new: str) -> Callable[[Path], None]:
    def make(inputs: Path) -> None:
        rows = [json.dumps({"prompt": f"{i} + 1 =", "chosen": f" {i + 1}", "rejected": f" {i + 2}"})
                for i in range(10)]
        rows[lineno - 1] = new
        inputs.mkdir(parents=True, exist_ok=True)
        (inputs / "pairs.jsonl").write_text("\n".join(rows) + "\n")
    return make


def stats_folder(inputs: Path) -> Path:
    """A valid statistics folder (stats.json + stats.safetensors) of 2 layers x 8 units, three languages."""
    import torch

    from langneurons.neurons import NeuronStats

    gen = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 50, (2, 8, 3), generator=gen, dtype=torch.int64)
    NeuronStats(counts, torch.tensor([60, 60, 60]), ("en", "zh", "sw"), {"model": "test"}).save(inputs / "stats")
    return inputs / "stats"


def stats_json(text: bytes) -> Callable[[Path], None]:
    def make(inputs: Path) -> None:
        (stats_folder(inputs) / "stats.json").write_bytes(text)
    return make


def stats_truncated(inputs: Path) -> None:
    st = stats_folder(inputs) / "stats.safetensors"
    st.write_bytes(st.read_bytes()[:100])


def model_folder(config: str) -> Callable[[Path], None]:
    def make(inputs: Path) -> None:
        (inputs / "model").mkdir(parents=True)
        (inputs / "model" / "config.json").write_text(config)
    return make


def sweep_file(text: str) -> Callable[[Path], None]:
    def make(inputs: Path) -> None:
        inputs.mkdir(parents=True, exist_ok=True)
        (inputs / "sweep.yaml").write_text(text)
    return make


# ---- the cases -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    id: str
    tool: str                                   # train | analyze | sweep
    args: tuple[str, ...]                       # may name {in} (the inputs made), {out}, {run} (a finished run)
    phrases: tuple[Phrase, ...]                 # what the error line must name
    make: Callable[[Path], None] | None = None  # writes the inputs under {in}
    data: bool = False                          # needs the real data folder
    non_root: bool = False                      # root reads any file: the case means nothing there
    prefix: str | None = None                   # the error line's start (default: the tool's)

    def __repr__(self) -> str:
        return self.id


def train(id_: str, args: str, *phrases: Phrase, **kw) -> Case:
    return Case(id_, "train", tuple(args.split()), phrases, **kw)


def analyze(id_: str, args: str, *phrases: Phrase, **kw) -> Case:
    return Case(id_, "analyze", tuple(args.split()), phrases, **kw)


GOOD_SWEEP = "name: bad\nprogram: train.py\nmethod: grid\nparameters:\n  lang:\n    values: [sw, zh]\n"

CASES = [
    # unknown keys and group options
    train("unknown-key", "trainer.max_stepz=3", "trainer.max_stepz"),
    train("unknown-top-level-key", "seeds=1", "seeds"),
    train("unknown-group-option", "model=lama", "model=lama"),
    train("unknown-group", "optimizer=adam", "optimizer"),
    # wrong types
    train("max-steps-not-a-number", "trainer.max_steps=abc", "trainer.max_steps", "abc"),
    train("top-rate-not-a-number", "neurons.top_rate=high", "neurons.top_rate", "high"),
    train("lang-a-number", "lang=5", "lang", "5"),
    train("threads-zero", "threads=0", "threads", "0"),
    # out of range
    train("top-rate-zero", "neurons.top_rate=0", "neurons.top_rate", "0"),
    train("top-rate-above-one", "neurons.top_rate=1.5", "neurons.top_rate", "1.5"),
    train("bar-above-one", "neurons.bar=1.5", "neurons.bar", "1.5"),
    train("every-n-steps-negative", "neurons.every_n_steps=-1", "neurons.every_n_steps", "-1"),
    train("learning-rate-negative", "trainer.learning_rate=-1", "trainer.learning_rate", "-1"),
    train("k-zero", "alignment.k=0", "alignment.k", "0"),
    train("lora-r-zero", "trainer.lora.r=0", "trainer.lora.r", "0"),
    train("max-new-tokens-zero", "eval.max_new_tokens=0", "eval.max_new_tokens", "0"),
    train("seed-negative", "seed=-1", "seed", "-1"),
    # bad choices
    train("neuron-method-unknown", "neurons.method=foo", "neurons.method", "foo"),
    train("probe-unknown", "neurons.probe=foo", "neurons.probe", "foo"),
    train("answer-lang-unknown", "eval.answer_lang=bogus", "eval.answer_lang", "bogus"),
    train("precision-unknown", "trainer.precision=fp8", "trainer.precision", "fp8"),
    train("sampler-unknown", "alignment.sampler=foo", "alignment.sampler", "foo"),
    train("wandb-mode-unknown", "logger.mode=sideways", "logger.mode", "sideways"),
    # combinations that cannot work
    train("loss-weights-one-for-two-losses", "alignment.loss_weights=[1.0]", "alignment.loss_weights"),
    train("lam-lo-above-lam-hi", "neurons.lam_lo=0.3 neurons.lam_hi=0.2", "neurons.lam_lo", "neurons.lam_hi"),
    train("eval-steps-without-held-out-pairs", "alignment.eval_steps=5 alignment.eval_fraction=0",
          "alignment.eval_steps", "alignment.eval_fraction"),
    train("general-min-langs-above-probe-langs", "probe_langs=[en,sw] neurons.general_min_langs=3",
          "neurons.general_min_langs", "3"),
    train("language-the-data-set-lacks", "data=msvamp probe_langs=[en,te]", "msvamp", "te"),
    # languages
    train("lang-unknown", "lang=xx", "lang", "xx"),
    train("probe-langs-duplicate", "probe_langs=[en,en]", "probe_langs", "en"),
    train("eval-langs-empty", "eval_langs=[]", "eval_langs"),
    # empty probe or evaluation sets
    train("data-n-zero", "data.n=0", "data.n", "0"),
    train("neurons-n-zero", "neurons.n=0", "neurons.n", "0"),
    # data files
    train("mgsm-folder-missing", "data=mgsm data.path=/no/such/dir", "/no/such/dir"),
    train("mgsm-file-unreadable", "data=mgsm data.path={in}/mgsm", "mgsm_sw.tsv", make=mgsm_unreadable, data=True,
          non_root=True),
    train("mgsm-row-without-tab", "data=mgsm data.path={in}/mgsm", at("mgsm_sw.tsv", 17),
          make=mgsm_with(17, b"a question without its answer"), data=True),
    train("mgsm-answer-not-a-number", "data=mgsm data.path={in}/mgsm", at("mgsm_sw.tsv", 5),
          make=mgsm_with(5, b"How many eggs?\tmany"), data=True),
    train("mgsm-row-not-utf8", "data=mgsm data.path={in}/mgsm", at("mgsm_sw.tsv", 3),
          make=mgsm_with(3, "Caf\u00e9 na chai?\t3".encode("latin-1")), data=True),
    train("msvamp-row-not-json", "data=msvamp data.path={in}/msvamp", at("test_Swahili.json", 9),
          make=msvamp_with(9, b'{"m_query": "Julia alicheza", "response": '), data=True),
    train("msvamp-row-without-question", "data=msvamp data.path={in}/msvamp", at("test_Swahili.json", 4),
          make=msvamp_with(4, b'{"query": "no m_query here", "response": "8.0"}'), data=True),
    train("pairs-row-missing-field", "alignment=dpo alignment.pairs={in}/pairs.jsonl", at("pairs.jsonl", 3),
          "rejected", make=pairs_with(3, json.dumps({"prompt": "1 + 1 =", "chosen": " 2"}))),
    train("pairs-row-not-json", "alignment=dpo alignment.pairs={in}/pairs.jsonl", at("pairs.jsonl", 4),
          make=pairs_with(4, '{"prompt": "1 + 1 =", "chosen": " 2", "rejected": " 3"')),
    train("pairs-row-not-an-object", "alignment=dpo alignment.pairs={in}/pairs.jsonl", at("pairs.jsonl", 2),
          make=pairs_with(2, '["1 + 1 =", " 2", " 3"]')),
    train("pairs-file-missing", "alignment=dpo alignment.pairs=/no/such/pairs.jsonl", "/no/such/pairs.jsonl"),
    # models and statistics
    train("model-config-garbage", "model=llama model.name_or_path={in}/model trainer=tiny alignment=dpo",
          "{in}/model", make=model_folder("{ this is not json")),
    train("model-config-not-a-model", "model=llama model.name_or_path={in}/model trainer=tiny alignment=dpo",
          "{in}/model", make=model_folder('{"model_type": "no-such-architecture"}')),
    train("start-stats-missing", "neurons.start_stats=/no/such/folder", "neurons.start_stats", "/no/such/folder"),
    # resume
    train("resume-with-another-learning-rate", "resume={run} trainer.learning_rate=1", "trainer.learning_rate"),
    train("resume-with-another-experiment", "resume={run} experiment=paper",
          "experiment= sets trainer.learning_rate: 0.0002 in the run, 1e-06 now"),
    train("resume-not-a-run-folder", "resume={in}", "{in}", make=lambda inputs: inputs.mkdir()),
    # the sweep agent
    Case("sweep-unknown-method", "sweep", ("{in}/sweep.yaml", "--dir", "{out}"), ("sweep.yaml", "sideways"),
         make=sweep_file(GOOD_SWEEP.replace("grid", "sideways"))),
    Case("sweep-not-yaml", "sweep", ("{in}/sweep.yaml", "--dir", "{out}"), (at("sweep.yaml", 5),),
         make=sweep_file(GOOD_SWEEP.replace("  lang:", "\tlang:"))),  # a tab for indentation
    Case("sweep-missing", "sweep", ("/no/such/sweep.yaml", "--dir", "{out}"), ("/no/such/sweep.yaml",)),
    Case("sweep-count-zero", "sweep", ("{in}/sweep.yaml", "--count", "0", "--dir", "{out}"), ("--count", "0"),
         make=sweep_file(GOOD_SWEEP)),
    # analyze.py
    analyze("analyze-unknown-subcommand", "idnetify source=/x", "idnetify", prefix="analyze.py: error: "),
    analyze("analyze-unknown-key", "identify source={in}/stats top_rat=0.1 out={out}", "top_rat",
            make=stats_folder),
    analyze("analyze-top-rate-above-one", "identify source={in}/stats top_rate=2 out={out}", "top_rate", "2",
            make=stats_folder),
    analyze("analyze-bad-step", "stages runs=[{in}/stats] step=abc out={out}", "step", "abc", make=stats_folder),
    analyze("analyze-missing-run", "report runs=[/no/such/run] out={out}", "/no/such/run"),
    analyze("analyze-stats-json-garbage", "identify source={in}/stats out={out}", "{in}/stats",
            make=stats_json(b'{"format": "langneurons.stats", "langs": [')),
    analyze("analyze-stats-json-binary", "identify source={in}/stats out={out}", "{in}/stats",
            make=stats_json(b"\x00\xff\xfe garbage")),
    analyze("analyze-stats-safetensors-truncated", "identify source={in}/stats out={out}", "{in}/stats",
            make=stats_truncated),
    analyze("analyze-probe-data-folder-missing", "probe out={out} data=mgsm data.path=/no/such/dir",
            "/no/such/dir"),
]


# ---- what is left behind -------------------------------------------------------------------------------------------

def listing(folder: Path, details: bool = False) -> dict[str, tuple]:
    """Every path under ``folder`` (relative), with size and mtime when ``details``."""
    out = {}
    for path in sorted(folder.rglob("*")) if folder.is_dir() else ():
        stat = path.lstat()
        out[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns) if details else ()
    return out


def changes(before: dict, after: dict) -> str:
    new = [k for k in after if k not in before]
    gone = [k for k in before if k not in after]
    changed = [k for k in after if k in before and after[k] != before[k]]
    return f"new {new[:10]}, removed {gone[:10]}, changed {changed[:10]}"


def project_outputs() -> dict[str, tuple]:
    """Where a run, a W&B run or a report lands when no folder is given: the project's own output folders."""
    return {name: tuple(listing(ROOT / name)) for name in ("outputs", "multirun", "wandb", "report")}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A real short run (trainer checkpoints at steps 2 and 4) to resume."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run_dir}", *SHORT], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir


def command(case: Case, values: dict[str, str]) -> list[str]:
    args = [a.format(**values) for a in case.args]
    if case.tool == "train":
        # a resumed run's folder is its own; every other run gets one that must not come to exist
        run_dir = [] if any(a.startswith("resume=") for a in args) else [f"hydra.run.dir={values['tmp']}/run"]
        return [sys.executable, str(ROOT / "train.py"), *args, *run_dir]
    if case.tool == "analyze":
        return [sys.executable, str(ROOT / "analyze.py"), *args]
    return [sys.executable, "-m", "langneurons.sweep", *args]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_bad_input_is_one_line_exit_2_and_leaves_nothing_behind(case: Case, tmp_path, request):
    if case.data and not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set LANGNEURONS_SHARED_DATA)")
    if case.non_root and os.geteuid() == 0:
        pytest.skip("root reads a file whatever its mode")
    inputs = tmp_path / "in"
    if case.make is not None:
        case.make(inputs)
    values = {"tmp": str(tmp_path), "in": str(inputs), "out": str(tmp_path / "out"), "run": ""}
    resumed = None
    if any("{run}" in a for a in case.args):
        resumed = request.getfixturevalue("finished_run")
        values["run"] = str(resumed)
    before = {"tmp": listing(tmp_path), "cache": listing(CACHE), "project": project_outputs(),
              "resumed": listing(resumed, details=True) if resumed else {}}

    out = subprocess.run(command(case, values), cwd=ROOT, capture_output=True, text=True, timeout=600)
    show = f"\n--- stderr ---\n{out.stderr[-3000:]}\n--- stdout ---\n{out.stdout[-2000:]}"
    try:
        assert out.returncode == 2, f"exit code {out.returncode}" + show
        assert "Traceback" not in out.stdout + out.stderr, show
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, f"{len(lines)} lines on stderr" + show
        prefix = case.prefix or {"train": "error: ", "sweep": "error: ",
                                 "analyze": f"analyze.py {case.args[0]}: error: "}[case.tool]
        assert lines[0].startswith(prefix), f"the line does not start with {prefix!r}" + show
        phrases = [p.format(**values) if isinstance(p, str) else p for p in case.phrases]
        unnamed = [p if isinstance(p, str) else p.pattern for p in phrases if not names(lines[0], p)]
        assert not unnamed, f"the line does not name {unnamed}" + show
        print(f"{case.id} | {lines[0]}")
        # nothing got going: a run prints its first line (the tiny base, MAPO's pairs, training) on stdout
        assert not out.stdout.strip(), "it started before it failed (a model loaded?)" + show
    finally:
        # chmod 000 inputs must not keep pytest from removing tmp_path
        for path in inputs.rglob("*") if inputs.is_dir() else ():
            path.chmod(0o755 if path.is_dir() else 0o644)
    # nothing left behind
    assert not (tmp_path / "run").exists(), "a run folder was left behind"
    assert not (tmp_path / "out").exists(), "an output folder was left behind"
    assert listing(tmp_path) == before["tmp"], "files left behind: " + changes(before["tmp"], listing(tmp_path))
    assert listing(CACHE) == before["cache"], f"the cache {CACHE} changed: " + changes(before["cache"], listing(CACHE))
    assert project_outputs() == before["project"], "a run, W&B run or report landed in the project's folders"
    if resumed is not None:
        now = listing(resumed, details=True)
        assert now == before["resumed"], "the resumed run's folder changed: " + changes(before["resumed"], now)
