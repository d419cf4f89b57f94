"""Round checkpoints: everything needed to continue a run exactly where it stopped.

``checkpoint.pt`` holds the round, the server state, the engine's codec states, the ledger, the
metrics history and the client-state index; it carries a SHA-256 of its content, is written
atomically, and the previous checkpoint is kept as ``checkpoint.prev.pt`` so a corrupt latest file
falls back to the one before. Randomness needs no saved RNG state: every draw is derived from
(seed, round, client, purpose) — see ``fedsqueeze.seeding``.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from fedsqueeze.engine.atomic import atomic_write_bytes, crash_point

LATEST = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
CORRUPT = "checkpoint.corrupt.pt"
_MAGIC = b"FSQCKPT1"


def save_checkpoint(run_dir: Path, content: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(content, buf)
    body = buf.getvalue()
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
    if len(raw) < 40 or raw[:8] != _MAGIC or hashlib.sha256(raw[40:]).digest() != raw[8:40]:
        return None
    return torch.load(io.BytesIO(raw[40:]), weights_only=False)


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
