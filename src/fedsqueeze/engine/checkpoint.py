"""Round checkpoints: everything needed to continue a run exactly where it stopped.

``checkpoint.pt`` holds the round, the server state, the engine's codec states, the ledger, the
metrics history and the client-state index; it carries a SHA-256 of its content, is written
atomically, and the previous checkpoint is kept as ``checkpoint.prev.pt`` so a corrupt latest file
falls back to the one before. The content is in ``engine.safe_io``'s format, which cannot run code; a
checkpoint written by an older fedsqueeze (``FSQCKPT1``: a ``torch.save`` pickle inside) is refused with
``LegacyRunError``, never unpickled. Randomness needs no saved RNG state: every draw is derived from
(seed, round, client, purpose) — see ``fedsqueeze.seeding``.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from fedsqueeze.engine import safe_io
from fedsqueeze.engine.atomic import atomic_write_bytes, crash_point
from fedsqueeze.engine.state import legacy_message
from fedsqueeze.errors import LegacyRunError, SafeIOError

LATEST = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
CORRUPT = "checkpoint.corrupt.pt"
_MAGIC = b"FSQCKPT2"  # + SHA-256 of the body + the body (engine.safe_io)
_LEGACY_MAGIC = b"FSQCKPT1"  # + SHA-256 + a torch.save (pickle) body: refused


def save_checkpoint(run_dir: Path, content: dict[str, Any]) -> None:
    body = safe_io.dumps(content)
    latest = run_dir / LATEST
    if latest.exists():
        os.replace(latest, run_dir / PREVIOUS)
        crash_point("checkpoint-rotated")
    atomic_write_bytes(latest, _MAGIC + hashlib.sha256(body).digest() + body, crash_tag="checkpoint")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if raw.startswith(_LEGACY_MAGIC) or safe_io.is_legacy_pickle(raw):
        raise LegacyRunError(legacy_message(path.parent))
    if len(raw) < 40 or raw[:8] != _MAGIC or hashlib.sha256(raw[40:]).digest() != raw[8:40]:
        return None
    try:
        content = safe_io.loads(raw[40:], what=str(path))
    except SafeIOError:  # intact checksum, malformed body (a crafted file): as corrupt, never trusted
        return None
    return content if isinstance(content, dict) else None


def restore_checkpoint(run_dir: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """``load_checkpoint`` for resuming: a corrupt latest checkpoint is renamed to
    ``checkpoint.corrupt.pt`` — else the next save would rotate it over the good previous one,
    leaving no fallback."""
    content, warnings = load_checkpoint(run_dir)
    latest = run_dir / LATEST
    if warnings and latest.exists() and _read(latest) is None:
        os.replace(latest, run_dir / CORRUPT)
        warnings.append(f"kept the corrupt checkpoint as {run_dir / CORRUPT}")
    return content, warnings


def load_checkpoint(run_dir: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The newest intact checkpoint (or None) and warnings about any corrupt one skipped."""
    warnings = []
    for name in (LATEST, PREVIOUS):
        path = run_dir / name
        if not path.exists():
            continue
        content = _read(path)
        if content is not None:
            return content, warnings
        warnings.append(f"{path} is corrupt or half-written (checksum mismatch); trying the previous one")
    return None, warnings
