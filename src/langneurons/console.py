"""What a run prints, and where its full log goes.

In a terminal a run shows one progress bar for training (step, loss, the DPO reward margin) and one per phase of a
neuron checkpoint (answering, counting), and one line per checkpoint with its accuracy and neuron counts. When
stderr is not a terminal (``agent.log``, a SLURM log, a pipe) there are no bars: training prints one line at every
tenth of its steps instead. Only rank 0 prints. Everything the Trainer logs (its loss dicts, every ``logging_steps``)
goes to the run's ``train.log`` (:data:`TRAIN_LOG`), beside Hydra's own log lines.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tqdm.auto import tqdm
from transformers import TrainerCallback

from . import faults
from .distributed import is_rank_zero

TRAIN_LOG = "train.log"
log = logging.getLogger("langneurons")
# The full record of a run, written to train.log only (never to the console).
full_log = logging.getLogger("langneurons.full")
full_log.propagate = False


class ConsoleFormatter(logging.Formatter):
    """Console lines: the message alone; warnings and errors prefixed with their level and source."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()} ({record.name}): {message}"
        return message


def interactive() -> bool:
    """Whether this process draws progress bars: rank 0, writing to a terminal."""
    return is_rank_zero() and sys.stderr.isatty()


def bar(total: int | None = None, desc: str = "", **kwargs: Any) -> tqdm:
    """A progress bar on stderr that draws only when :func:`interactive` (a disabled bar still counts)."""
    return tqdm(total=total, desc=desc, disable=not interactive(), leave=False, dynamic_ncols=True, **kwargs)


def _file_handler(path: Path) -> logging.Handler | None:
    for h in full_log.handlers:
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve():
            return h
    return None


@contextmanager
def run_console(run_dir: Path) -> Iterator[None]:
    """The console of one run: its full log appended to ``run_dir/train.log``; on ranks other than 0, no log lines
    below errors, no warnings and no progress bars (every rank would print the same)."""
    import transformers

    path = Path(run_dir) / TRAIN_LOG
    handler = None
    if is_rank_zero():
        path.parent.mkdir(parents=True, exist_ok=True)
        if _file_handler(path) is None:
            handler = logging.FileHandler(path)
            handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
            full_log.addHandler(handler)
        full_log.setLevel(logging.INFO)
    root, level = logging.getLogger(), logging.getLogger().level
    verbosity = transformers.utils.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    with warnings.catch_warnings():
        if not is_rank_zero():
            warnings.simplefilter("ignore")
            root.setLevel(logging.ERROR)
            transformers.utils.logging.set_verbosity_error()
        if not interactive():
            transformers.utils.logging.disable_progress_bar()
        try:
            yield
        finally:
            root.setLevel(level)
            transformers.utils.logging.set_verbosity(verbosity)
            if bars:
                transformers.utils.logging.enable_progress_bar()
            if handler is not None:
                full_log.removeHandler(handler)
                handler.close()


def record_error(message: str) -> None:
    """Write a run's error line into its train.log (the console has it already)."""
    full_log.error("%s", message)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class TrainingProgress(TrainerCallback):
    """The Trainer's console: a bar with step, loss and DPO reward margin in a terminal, a line at every tenth of
    the steps otherwise; every log dict goes to train.log. Replaces transformers' ProgressCallback and
    PrinterCallback (which print each log dict, ~400 characters every ``logging_steps``)."""

    def __init__(self, parts: int = 10):
        self.parts = parts
        self.bar: tqdm | None = None
        self.started = 0.0
        self.first_step = 0
        self.next_mark = 0
        self.last: dict[str, float] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()
        self.first_step = state.global_step
        self.next_mark = self._mark_after(state.global_step, state.max_steps)
        if interactive():
            self.bar = bar(total=state.max_steps, desc="training", unit="step", initial=state.global_step)
        elif is_rank_zero():
            log.info("training: %d step%s%s", state.max_steps, "" if state.max_steps == 1 else "s",
                     f", from step {state.global_step}" if state.global_step else "")

    def _mark_after(self, step: int, total: int) -> int:
        every = max(1, total // self.parts)
        return (step // every + 1) * every

    def on_step_end(self, args, state, control, **kwargs):
        faults.reach("train.step")
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not is_rank_zero() or not logs:
            return
        full_log.info("step %d %s", state.global_step, json.dumps(logs, default=str))
        self.last.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
        shown = self._shown()
        if self.bar is not None:
            self.bar.set_postfix_str(shown, refresh=False)
        elif state.global_step >= self.next_mark and state.global_step < state.max_steps:
            self.next_mark = self._mark_after(state.global_step, state.max_steps)
            elapsed = time.perf_counter() - self.started
            done = state.global_step - self.first_step
            left = elapsed / done * (state.max_steps - state.global_step) if done else 0.0
            log.info("training: step %d/%d (%d%%) %s, %s, ~%s left", state.global_step, state.max_steps,
                     100 * state.global_step // state.max_steps, shown, _duration(elapsed), _duration(left))

    def _shown(self) -> str:
        parts = []
        if "loss" in self.last:
            parts.append(f"loss {self.last['loss']:.4f}")
        if "rewards/margins" in self.last:
            parts.append(f"margin {self.last['rewards/margins']:.2f}")
        if "eval_loss" in self.last:
            parts.append(f"eval loss {self.last['eval_loss']:.4f}")
        return ", ".join(parts)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if is_rank_zero():
            steps = state.global_step - self.first_step
            seconds = time.perf_counter() - self.started
            log.info("training: %d step%s in %s%s (neuron checkpoints included)", steps, "" if steps == 1 else "s",
                     _duration(seconds),
                     f" ({1000 * seconds / steps:.0f} ms a step)" if steps else "")
