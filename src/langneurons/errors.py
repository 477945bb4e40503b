"""Errors a user can fix. Entry points print them as one line, without a traceback; :func:`error_line` finds that
line (or a crash's exception line) in a failed run's output."""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class HarnessError(Exception):
    """A problem with the user's input (config, paths, model ids, data), not a bug.

    The message is one line that names the offending thing and says how to fix it.
    """


class UnknownLanguageError(HarnessError, ValueError):
    pass


class ModelLoadError(HarnessError):
    pass


class DataError(HarnessError):
    pass


# errno -> what a full disk says: no space left, or the user's quota used up
DISK_FULL = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up"}


def disk_full(exc: BaseException, what: str, path: str | os.PathLike,
              run_dir: str | os.PathLike | None = None) -> HarnessError | None:
    """The one-line error for ``exc`` when it is a full disk (or quota) that stopped writing ``what`` at ``path``:
    what happened and what to do. None for any other error. Also spots a library's wrapper of the OS error that
    kept only its message (torch's and safetensors' writers)."""
    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    if code not in DISK_FULL:
        code = next((c for c in DISK_FULL if os.strerror(c) in str(exc)), None)
    if code is None:
        return None
    then = f" and continue the run with python train.py resume={shown_path(run_dir)}" if run_dir is not None else ""
    return HarnessError(f"{DISK_FULL[code]} ({os.strerror(code)}) while writing {what} {shown_path(path)}: the run "
                        f"stopped there. Free space on that disk{then}, or start it again on a disk with room "
                        "(hydra.run.dir=<a folder there>)")


@contextmanager
def full_disk_is_one_line(what: str, path: str | os.PathLike,
                          run_dir: str | os.PathLike | None = None) -> Iterator[None]:
    """A full disk (or quota) while the block writes ``what`` at ``path`` raised as :func:`disk_full`'s one-line
    :class:`HarnessError`; any other error as it is."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        error = disk_full(e, what, path, run_dir=run_dir)
        if error is None:
            raise
        raise error from e


HYDRA_HINT = "Set the environment variable HYDRA_FULL_ERROR=1"
MAX_LINE = 500


def error_line(output: str) -> str | None:
    """The line that says why a failed run failed, from its output (stdout and stderr, or stderr alone): the last
    ``error: ...`` line (an entry point's one-line error) or, when a traceback comes after it, the exception line
    that ends the traceback (``ValueError: ...``); else the last non-empty line that is not W&B's or Hydra's closing
    chatter. None when the output is empty. Cut to :data:`MAX_LINE` characters."""
    lines = [line.rstrip() for line in output.splitlines()]
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    tracebacks = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    found = None
    if tracebacks and (not errors or tracebacks[-1] > errors[-1]):
        # the exception line: the first line after the last traceback's header that is not a frame (indented)
        found = next((line for line in lines[tracebacks[-1] + 1:] if line and not line[0].isspace()), None)
    if found is None and errors:
        found = lines[errors[-1]]
    if found is None:
        chatter = ("wandb:", HYDRA_HINT)
        found = next((line for line in reversed(lines) if line.strip() and not line.startswith(chatter)), None)
    if found is None:
        return None
    found = found.strip()
    return found if len(found) <= MAX_LINE else found[:MAX_LINE - 3] + "..."


def tail(path: str | os.PathLike, size: int = 256 * 1024) -> str:
    """The last ``size`` bytes of the text file ``path`` ("" when it does not exist): where a log's error line is."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - size))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def shown_path(path: str | os.PathLike) -> str:
    """``path`` as a message names it: relative to the working directory when it lies inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)
