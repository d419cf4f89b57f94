"""Crash-safe file writes: temp file in the same directory, fsync, rename, fsync the directory.

``crash_point`` is a testing hook for crash-safety tests and ``fedsqueeze bench kill``: with
``FEDSQUEEZE_CRASH_AT="<point>:<n>"`` in the environment (or ``arm_crash``), the process kills itself
with SIGKILL the n-th time it passes ``<point>`` — e.g. ``checkpoint-temp`` (the new checkpoint is
fully in its temp file, not yet renamed), ``checkpoint-rotated`` (the old checkpoint was renamed to
``checkpoint.prev.pt``, the new one not yet written), ``state-temp`` (a client state's temp file),
``round-recorded`` (a round is in ``metrics.jsonl`` but not yet in a checkpoint). Unset: a no-op.
"""
from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path
from typing import Any

CRASH_ENV = "FEDSQUEEZE_CRASH_AT"
_armed: tuple[str, int] | None = None
_passes: dict[str, int] = {}


def arm_crash(spec: str | None) -> None:
    """Kill this process at ``"<point>:<n>"`` (see the module doc); None disarms. Resets the counts."""
    global _armed
    _passes.clear()
    if not spec:
        _armed = None
        return
    point, _, n = spec.rpartition(":")
    if not point or not n.isdigit() or int(n) < 1:
        raise ValueError(f"crash point {spec!r} must look like '<point>:<n>' with n >= 1, e.g. 'checkpoint-temp:2'")
    _armed = (point, int(n))


def crash_point(name: str) -> None:
    """Die here (SIGKILL, no cleanup) if this is the armed point's n-th pass."""
    if _armed is None:
        env = os.environ.get(CRASH_ENV)
        if not env:
            return
        arm_crash(env)
        os.environ.pop(CRASH_ENV, None)  # armed once per process; children do not inherit it
    assert _armed is not None
    if name != _armed[0]:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] == _armed[1]:
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_write_bytes(path: str | Path, data: bytes, *, crash_tag: str = "file") -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        crash_point(f"{crash_tag}-temp")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def atomic_save(obj: Any, path: str | Path, *, crash_tag: str = "file") -> None:
    """``obj`` in fedsqueeze's non-executable format (``engine.safe_io``), written atomically."""
    from fedsqueeze.engine import safe_io

    atomic_write_bytes(path, safe_io.dumps(obj), crash_tag=crash_tag)


def remove_temp_files(directory: str | Path) -> int:
    """Delete the temp files an interrupted ``atomic_write_bytes`` left in ``directory`` (call only when
    nothing else writes there, e.g. before a run starts or resumes); returns how many."""
    removed = 0
    for entry in os.scandir(directory):
        if entry.is_file() and entry.name.startswith(".") and entry.name.endswith(".tmp"):
            os.unlink(entry.path)
            removed += 1
    return removed
