"""Files the harness writes and caches it shares: one home for the helpers every part uses.

- atomic writes: :func:`atomic_write` (a file via a temporary name and ``os.replace``), :func:`fsync_dir`;
- cache keys: :func:`digest` (a stable hash of JSON-able parts), :func:`folder_state` (so that edited local data
  changes a key);
- the user's names: :func:`is_path` (a local path, not a hub id);
- on-disk caches built once and shared by runs (the tiny base, ``base/cache.py``; converted offline models,
  ``offline.py``): an entry is built in a temporary folder beside it and renamed into place (:func:`tmp_sibling`,
  :func:`publish`; a crash never leaves a half-written entry), and a lock file makes a second process (another rank,
  a parallel run) wait for the first build instead of repeating it (:func:`exclusive_lock`); what killed builds
  left is cleared (:func:`remove_stale_tmp`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .errors import HarnessError

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
# A build's temporary folder older than this belongs to a build that died: it may be removed.
STALE_TMP_SECONDS = 6 * 3600
try:
    import fcntl  # noqa: F401  (POSIX locks: exclusive_lock really excludes)
    _HAVE_LOCKS = True
except ImportError:
    _HAVE_LOCKS = False


def is_path(name: str) -> bool:
    """Whether ``name`` (a model or data set named by the user) is a local path rather than an ``org/name`` hub id:
    it starts like a path or has more than one slash. A path that does not exist is then the user's mistake, not a
    hub lookup to try."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


# ---- atomic writes ---------------------------------------------------------------------------------------------
def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename: a crash leaves the
    old file or the new one, never a truncated one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def fsync_dir(directory: Path) -> None:
    """Make the renames in ``directory`` durable (where the platform lets a directory be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---- cache keys --------------------------------------------------------------------------------------------------
def digest(parts: Mapping[str, Any]) -> str:
    """A stable SHA-256 hex digest of ``parts`` (JSON-serialisable, anything else by ``str``; key order does not
    matter)."""
    text = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def folder_state(path: str | Path | None) -> list[tuple[str, int, int]] | None:
    """(name, size, mtime) of the files in a local folder, so that edited data changes a cache key; None for
    anything that is not a folder (a hub id, a generated set)."""
    if not path or not Path(str(path)).expanduser().is_dir():
        return None
    folder = Path(str(path)).expanduser()
    return sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in folder.iterdir() if p.is_file())


# ---- shared caches -----------------------------------------------------------------------------------------------

def cache_root(raw: str | os.PathLike | None, what: str, setting: str) -> Path:
    """The folder ``raw`` names (``~`` and ``$VARS`` expanded), created; a one-line error naming ``setting`` when it
    is empty or cannot be created."""
    if not raw:
        raise HarnessError(f"{setting} is empty: give a folder for {what} (or set LANGNEURONS_CACHE)")
    root = Path(os.path.expandvars(str(raw))).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HarnessError(f"{setting}={root} cannot be created ({e.strerror}): point it (or LANGNEURONS_CACHE) at "
                           "a writable folder") from None
    return root


def tmp_sibling(entry: Path) -> Path:
    """A fresh temporary folder beside ``entry``, unique to this process (created)."""
    tmp = entry.with_name(f"{TMP_PREFIX}{entry.name}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, entry: Path, complete: Callable[[Path], bool]) -> None:
    """Rename the finished build ``tmp`` into place as ``entry``. When another process got there first (``entry``
    exists and ``complete(entry)``), its entry is kept and ``tmp`` is left for the caller to remove."""
    try:
        tmp.rename(entry)
    except OSError:
        if not complete(entry):  # not "someone else finished first": a real failure
            raise


@contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[None]:
    """An exclusive lock on ``path`` for the block (released by the OS if the process dies)."""
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): concurrent builders each build; the rename keeps one
        yield
        return
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: another process is building it; waiting for %s", what, path)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def remove_stale_tmp(root: Path, entry: str | None = None) -> None:
    """Temporary folders of builds that crashed long ago (a running build's folder is younger), and every one of
    ``entry``'s builds when the caller holds that entry's :func:`exclusive_lock` (no live process builds it: the
    builder of any such folder died, e.g. killed)."""
    now = time.time()
    mine = f"{TMP_PREFIX}{entry}-" if entry is not None and _HAVE_LOCKS else None
    for path in root.glob(f"{TMP_PREFIX}*"):
        try:
            if (mine is not None and path.name.startswith(mine)) or now - path.stat().st_mtime > STALE_TMP_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass
