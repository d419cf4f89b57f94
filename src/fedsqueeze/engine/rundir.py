"""Run folders belong to their run, and everything else belongs to the user.

* Only ``--out`` / ``run_dir`` / ``output_dir`` choose where a run writes; names never do
  (``fedsqueeze.config.check_name``).
* ``check_target`` decides, without touching anything, whether a run may use a folder: a new or
  empty folder is fine; an existing run folder needs ``resume`` (continue it) or ``overwrite``
  (replace *its own* files: ``RUN_FILES`` and the state files under ``clients/`` and ``mirrors/``);
  a non-empty folder that is not a run is refused unless ``overwrite``, and even then no file of the
  user's is deleted or written over: if one has a name a run writes, the run is refused.
* ``claim`` creates the folder (only after the config, data and model were validated), takes an
  exclusive lock on ``<run>/.lock`` (``fcntl.flock``, released by the kernel when the process ends,
  crash included) and, with ``overwrite``, removes the run's own files.
* Deletions go through ``remove_inside``: the path is resolved and must lie inside the run folder.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from fedsqueeze.errors import ConfigError, FedsqueezeError

LOCK = ".lock"
# the files a run writes at its top level (its temp files are ".<name>.<random>.tmp")
RUN_FILES = ("config.json", "config.toml", "metrics.jsonl", "rounds.csv", "summary.csv", "ledger.csv",
             "partition.json", "rejections.jsonl", "checkpoint.pt", "checkpoint.prev.pt", "checkpoint.corrupt.pt",
             "accuracy_vs_mb.png")
STATE_FOLDERS = ("clients", "mirrors")
_STATE_FILE = re.compile(r"\d+\.r\d+\.pt|\..+\.tmp")
_TEMP_OF_RUN_FILE = re.compile(r"\.(" + "|".join(re.escape(f) for f in RUN_FILES) + r")\..+\.tmp")


def inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (symlinks resolved) lies strictly inside ``root``."""
    p, r = Path(path).resolve(), Path(root).resolve()
    return p != r and p.is_relative_to(r)


def remove_inside(path: Path, root: Path) -> None:
    """Unlink the file ``path`` only if it lies inside ``root``; anything else is a bug, not a cleanup."""
    path = Path(path)
    if path.is_symlink():  # remove the link itself, never what it points to
        if not inside(path.parent, root) and path.parent.resolve() != Path(root).resolve():
            raise FedsqueezeError(f"refusing to delete {path}: it is outside the run folder {root}")
        path.unlink()
        return
    if not inside(path, root):
        raise FedsqueezeError(f"refusing to delete {path}: it is outside the run folder {root}")
    path.unlink()


def is_run_folder(folder: Path) -> bool:
    """A folder made by a fedsqueeze run: its config.json is a run config, or it holds our checkpoint."""
    folder = Path(folder)
    try:
        cfg = json.loads((folder / "config.json").read_text())
        if isinstance(cfg, dict) and {"algorithm", "codec", "data"} <= set(cfg):
            return True
    except (OSError, ValueError):
        pass
    from fedsqueeze.engine.checkpoint import _MAGIC
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        try:
            with open(folder / name, "rb") as f:
                if f.read(len(_MAGIC)) == _MAGIC:
                    return True
        except OSError:
            pass
    return False


def only_run_files(folder: Path) -> bool:
    """Whether every entry of ``folder`` is one a run makes (its files, state folders, lock, temp files)."""
    return all(e.name in RUN_FILES or e.name in STATE_FOLDERS or e.name == LOCK
               or _TEMP_OF_RUN_FILE.fullmatch(e.name) for e in os.scandir(folder))


def _contents(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.name != LOCK)


def check_target(folder: Path, *, resume: bool = False, overwrite: bool = False, locked: bool = False) -> None:
    """Raise a one-line error if a run may not use ``folder`` (``locked``: this process holds its lock);
    changes nothing."""
    folder = Path(folder)
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it; pass one of them")
    if not folder.exists() and not folder.is_symlink():
        return
    if not folder.is_dir():
        raise ConfigError(f"{folder} exists and is not a folder; choose another --out")
    if not locked:
        RunLock(folder).check_free()
    contents = _contents(folder)
    if not contents:
        return
    if is_run_folder(folder):
        if resume or overwrite:
            return
        raise ConfigError(f"{folder} already holds a run; continue it with `fedsqueeze run --resume {folder}`, "
                          "replace its results with --overwrite, or choose another --out")
    if resume:
        raise ConfigError(f"{folder} is not a fedsqueeze run folder (no run config.json or checkpoint); "
                          "pass a folder made by `fedsqueeze run`")
    if not overwrite:
        raise ConfigError(f"{folder} is a non-empty folder that is not a fedsqueeze run ({len(contents)} entries, "
                          f"e.g. {contents[0]!r}); choose a new or empty --out (--overwrite writes beside its files)")
    clash = [n for n in contents if n in RUN_FILES or n in STATE_FOLDERS]
    if clash:
        raise ConfigError(f"{folder} is not a fedsqueeze run and holds {clash[0]!r}, a file a run would write over; "
                          "--overwrite never replaces files it did not make: choose a new or empty --out")


def clear_run_files(folder: Path) -> int:
    """Remove a run's own files from ``folder`` (see ``RUN_FILES``); other files stay. Returns how many."""
    folder = Path(folder)
    removed = 0
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            continue
        if entry.name in RUN_FILES or _TEMP_OF_RUN_FILE.fullmatch(entry.name):
            remove_inside(Path(entry.path), folder)
            removed += 1
    for sub in STATE_FOLDERS:
        path = folder / sub
        if path.is_symlink() or not path.is_dir():
            continue
        for entry in os.scandir(path):
            if _STATE_FILE.fullmatch(entry.name) and not entry.is_dir(follow_symlinks=False):
                remove_inside(Path(entry.path), folder)
                removed += 1
        if not any(os.scandir(path)):
            path.rmdir()
    return removed


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``<folder>/.lock``, with this process's id in the file."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.fd: int | None = None

    def _take(self, create: bool) -> int | None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return None
        try:
            fd = os.open(self.folder / LOCK, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise FedsqueezeError(f"run folder {self.folder} is in use by process {pid}; wait for it or choose "
                                  "another --out") from None
        return fd

    def check_free(self) -> None:
        """Raise the 'in use' error if another process holds the lock; takes nothing, creates nothing."""
        fd = self._take(create=False)
        if fd is not None:
            os.close(fd)

    def acquire(self) -> RunLock:
        fd = self._take(create=True)
        if fd is None:
            return self
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def claim(folder: Path, *, resume: bool = False, overwrite: bool = False) -> Iterator[Path]:
    """Create ``folder`` if needed, hold its lock for the ``with`` block and, for ``overwrite``, remove
    the previous run's own files first. Call ``check_target`` (and validate everything) before."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = RunLock(folder).acquire()
    try:
        check_target(folder, resume=resume, overwrite=overwrite, locked=True)  # again: nobody else writes now
        if overwrite and not resume and not created:
            clear_run_files(folder)
        yield folder
    finally:
        lock.release()
