"""What ``analyze.py`` says while it works, on stderr (stdout keeps the one JSON line).

Every long phase is one line, ``report: counts ... 0.3 s``: its name when it starts, its seconds when it ends, so a
log file reads one line per phase. A phase with many steps (deactivation passes, identifications) shows a tqdm bar
when stderr is a terminal and, elsewhere, a plain line now and then (:class:`Bar`).
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

SHOW_AFTER = 0.5  # seconds: a phase still running then says "<label> ..."; a shorter one is one line when it ends
_lock = threading.RLock()
_open_line: list[str] = []  # the phase whose "<label> ..." line still waits for its seconds
_pending: list = []  # phases started but not said yet: said before any other line, so lines stay in order


def interactive() -> bool:
    """Is stderr a terminal (bars), or a file or pipe (plain lines)?"""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


def _write(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def _end_open_line() -> None:
    if _open_line:
        _write("\n")
        _open_line.clear()


def _new_line() -> None:
    """Say the phases under way that were not said yet, and end a phase line left open: the cursor is then at the
    start of a line, below every phase line it belongs under."""
    with _lock:
        for show in list(_pending):
            show()
        _end_open_line()


def say(line: str) -> None:
    """One line on stderr (after the lines of the phases under way)."""
    with _lock:
        _new_line()
        _write(line + "\n")


def note(message: str) -> None:
    """``note: <message>`` on stderr."""
    say(f"note: {message}")


@contextmanager
def phase(label: str, *, chatty: bool = False) -> Iterator[None]:
    """``<label> ... <seconds> s`` on stderr around the block: ``<label> ...`` once it has run ``SHOW_AFTER``
    seconds, its seconds when it ends (a shorter phase: the whole line at its end; a failed one says nothing more
    than its error, so that errors stay one line). ``chatty``: the block prints lines or a bar of its own, so
    ``<label> ...`` is a line of its own at once and the last one says ``<label>: done in <seconds> s``; a line
    interrupted by another (a note) ends the same way."""
    started = time.perf_counter()
    shown = threading.Event()
    timer = None

    def show() -> None:
        with _lock:
            if shown.is_set():
                return
            shown.set()
            if show in _pending:
                _pending.remove(show)
            _end_open_line()
            if chatty:
                _write(f"{label} ...\n")
            else:
                _write(f"{label} ...")
                _open_line.append(label)

    if chatty:
        show()
    else:
        with _lock:
            _pending.append(show)
        timer = threading.Timer(SHOW_AFTER, show)
        timer.daemon = True
        timer.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        if timer is not None:
            timer.cancel()
        seconds = time.perf_counter() - started
        with _lock:
            if not shown.is_set():
                shown.set()  # a timer about to fire finds the phase over
                if show in _pending:
                    _pending.remove(show)
                if ok:
                    _end_open_line()
                    _write(f"{label} ... {seconds:.1f} s\n")
            elif _open_line == [label]:
                _open_line.clear()
                _write(f" {seconds:.1f} s\n" if ok else f" failed after {seconds:.1f} s\n")
            else:
                _write(f"{label}: done in {seconds:.1f} s\n" if ok else f"{label}: failed after {seconds:.1f} s\n")


class Bar:
    """Progress over ``total`` steps: a tqdm bar on a terminal; elsewhere ``<desc>: <n>/<total> <unit>s, <seconds> s
    (last: <what>)`` at most every ``every`` seconds, so a log file gets a few readable lines instead of bar redraws.
    ``enabled=False``: silent."""

    def __init__(self, total: int, desc: str, unit: str = "step", *, enabled: bool = True, every: float = 10.0):
        self.total, self.desc, self.unit, self.every = int(total), desc, unit, float(every)
        self.n = 0
        self.what = ""
        self.started = self.last = time.perf_counter()
        self.bar = None
        self.lines = enabled and not interactive()
        if enabled and not self.lines:
            from tqdm.auto import tqdm

            _new_line()
            self.bar = tqdm(total=self.total, desc=desc, unit=unit, leave=False, file=sys.stderr, disable=None)

    def set_postfix_str(self, what: str) -> None:
        """What the step under way does (beside the bar; in the line written after it)."""
        self.what = what
        if self.bar is not None:
            self.bar.set_postfix_str(what)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.lines and self.n < self.total and time.perf_counter() - self.last >= self.every:
            self.last = time.perf_counter()
            last = f" (last: {self.what})" if self.what else ""
            units = self.unit + ("es" if self.unit.endswith("s") else "s")
            say(f"{self.desc}: {self.n}/{self.total} {units}, {self.last - self.started:.0f} s{last}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
