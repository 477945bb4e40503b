"""Named fault points: tests make a run die, or find its disk full, at a chosen moment.

The code calls :func:`reach` at each point below; ``LANGNEURONS_FAULT`` says which of them fail and how, as a
comma-separated list of ``<point>[#<n>]=<action>``: the ``n``-th time this process reaches ``point`` (1-based,
default 1) it performs ``action``:

- ``kill``: SIGKILL to itself, so the process stops at once, as in a power cut or an out-of-memory kill (no
  ``finally``, no atexit, no flush);
- ``enospc``: raise ``OSError(ENOSPC)`` as a write to a full disk does.

For example ``LANGNEURONS_FAULT=checkpoint.write#2=enospc`` fills the disk while the second neuron checkpoint is
written, ``LANGNEURONS_FAULT=base.pretrain#3=kill`` kills the tiny base's build in its third step.

Points:

- ``base.pretrain``: every step of the tiny base's pretraining loop (``base/pretrain.py``);
- ``base.save``: the tiny base saved into its temporary folder, before its manifest and the rename into the cache;
- ``pairs.save``: MAPO pairs written into their temporary folder, before the rename into the cache;
- ``train.step``: the end of every training step (``console.TrainingProgress``, there whatever ``neurons=`` says);
- ``checkpoint.write``: a neuron checkpoint's statistics written into ``step-<N>.tmp``, before its
  ``checkpoint.json`` and the rename;
- ``adapter.save``: the trained adapter saved into ``adapter.tmp``, before the rename into ``adapter/``.

Without the variable :func:`reach` costs a dict lookup.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "LANGNEURONS_FAULT"
POINTS = ("base.pretrain", "base.save", "pairs.save", "train.step", "checkpoint.write", "adapter.save")
ACTIONS = ("kill", "enospc")

_plan: dict[str, dict[int, str]] | None = None  # point -> {n: action}, parsed from ENV on the first reach
_reached: dict[str, int] = {}


def parse(spec: str) -> dict[str, dict[int, str]]:
    """``spec`` (the variable's value) as {point: {n: action}}; a ValueError names what is wrong in it."""
    plan: dict[str, dict[int, str]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        where, _, action = (s.strip() for s in item.partition("="))
        point, counted, n = where.partition("#")
        n = n if counted else "1"
        if point not in POINTS or action not in ACTIONS or not n.isdigit() or int(n) < 1:
            raise ValueError(f"{ENV}: {item!r} is not <point>[#<n>]=<action> with a point of {', '.join(POINTS)}, "
                             f"n >= 1 and an action of {', '.join(ACTIONS)}")
        plan.setdefault(point, {})[int(n)] = action
    return plan


def reset() -> None:
    """Read the variable again at the next :func:`reach` and count every point from zero (tests in one process)."""
    global _plan
    _plan = None
    _reached.clear()


def reach(name: str, path: str | os.PathLike | None = None) -> None:
    """Fault point ``name`` is reached (``path``: the file or folder being written there, named by ``enospc``)."""
    global _plan
    if _plan is None:
        _plan = parse(os.environ.get(ENV, ""))
    if not _plan or name not in _plan:
        return
    _reached[name] = n = _reached.get(name, 0) + 1
    action = _plan[name].get(n)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), *([os.fspath(path)] if path is not None else []))
