"""Per-client state that spills to disk, so memory grows with the clients sampled in a round,
not with all clients.

Each state is written as ``<dir>/<client>.r<round>.pt`` when the round commits, and dropped from
memory. The *index* (client -> round of its current file) is what a checkpoint saves; files that
are not in the last saved index are removed only after a newer checkpoint is safely on disk, so a
crash at any point leaves a consistent (checkpoint, client files) pair.

Files are in ``engine.safe_io``'s format (they keep the ``.pt`` name); a ``torch.save``/pickle file left
by an older fedsqueeze is refused with ``LegacyRunError``, never unpickled.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fedsqueeze.engine import safe_io
from fedsqueeze.engine.atomic import atomic_save
from fedsqueeze.errors import LegacyRunError


def legacy_message(run_dir: Path) -> str:
    return (f"run folder {run_dir} was written by an older fedsqueeze (pickle files); it cannot be resumed "
            "safely — start a new run")


def read_state_file(path: Path) -> Any:
    """A state file's value; ``LegacyRunError`` for an old pickle file, ``SafeIOError`` if malformed."""
    data = path.read_bytes()
    if safe_io.is_legacy_pickle(data):
        run_dir = path.parent.parent if path.parent.name in ("clients", "mirrors") else path.parent
        raise LegacyRunError(legacy_message(run_dir) + f" ({path.name} is a pickle file)")
    return safe_io.loads(data, what=str(path))


class ClientStateStore:
    def __init__(self, directory: str | Path, index: dict[int, int] | None = None, *, create: bool = True) -> None:
        self.dir = Path(directory)
        if create:
            self.dir.mkdir(parents=True, exist_ok=True)
        self.index: dict[int, int] = dict(index or {})
        self._dirty: dict[int, Any] = {}

    def _path(self, client: int, rnd: int) -> Path:
        return self.dir / f"{client}.r{rnd}.pt"

    def get(self, client: int) -> Any:
        if client in self._dirty:
            return self._dirty[client]
        rnd = self.index.get(client)
        if rnd is None:
            return None
        return read_state_file(self._path(client, rnd))

    def put(self, client: int, state: Any) -> None:
        self._dirty[client] = state

    def discard(self) -> None:
        """Forget the states put since the last commit (a skipped round): every client keeps its old one."""
        self._dirty.clear()

    def commit(self, rnd: int) -> None:
        """Write this round's changed states to disk and free their memory."""
        for client, state in self._dirty.items():
            if state is None:  # the client dropped its state: forget it (its file goes at the next GC)
                self.index.pop(client, None)
                continue
            atomic_save(state, self._path(client, rnd), crash_tag="state")
            self.index[client] = rnd
        self._dirty.clear()

    def collect_garbage(self, also_keep: dict[int, int] | None = None) -> None:
        """Delete state files that neither the current index nor ``also_keep`` (the previous
        checkpoint's index, our fallback) names. Call after a checkpoint is saved."""
        keep = {f"{c}.r{r}.pt" for idx in (self.index, also_keep or {}) for c, r in idx.items()}
        for entry in os.scandir(self.dir):
            if entry.name.endswith(".pt") and entry.name not in keep:
                os.unlink(entry.path)

    @property
    def in_memory(self) -> int:
        """States held in memory: those put since the last commit (at most the round's clients)."""
        return len(self._dirty)

    def __len__(self) -> int:
        return len(self.index)
