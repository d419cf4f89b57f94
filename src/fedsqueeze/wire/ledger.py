"""The ledger: one record per payload that crossed the wire, with its real length in bytes.

Reported communication is always a sum over these records, never a formula.
"""
from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

Direction = Literal["up", "down"]


@dataclass(frozen=True)
class Record:
    round: int
    client: int
    direction: Direction
    kind: str
    nbytes: int


class Ledger:
    """Append-only byte accounting. ``record`` takes the payload itself, so only real bytes count."""

    def __init__(self, records: Iterable[Record] = ()) -> None:
        self._records: list[Record] = list(records)

    def record(self, round: int, client: int, direction: Direction, kind: str, payload: bytes) -> bytes:
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be 'up' or 'down', not {direction!r}")
        self._records.append(Record(round, client, direction, kind, len(payload)))
        return payload

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self):
        return iter(self._records)

    def total(self, direction: Direction | None = None, *, round: int | None = None,
              kind: str | None = None, client: int | None = None) -> int:
        return sum(r.nbytes for r in self._records
                   if (direction is None or r.direction == direction)
                   and (round is None or r.round == round)
                   and (kind is None or r.kind == kind)
                   and (client is None or r.client == client))

    def per_round(self) -> dict[int, dict[str, int]]:
        """{round: {"up": bytes, "down": bytes}} for every round with traffic."""
        out: dict[int, dict[str, int]] = defaultdict(lambda: {"up": 0, "down": 0})
        for r in self._records:
            out[r.round][r.direction] += r.nbytes
        return dict(out)

    def truncate_after(self, round: int) -> None:
        """Drop records of rounds after ``round`` (used when resuming from a checkpoint)."""
        self._records = [r for r in self._records if r.round <= round]

    def to_state(self) -> list[tuple]:
        return [(r.round, r.client, r.direction, r.kind, r.nbytes) for r in self._records]

    @classmethod
    def from_state(cls, rows: list[tuple]) -> "Ledger":
        return cls(Record(int(a), int(b), c, d, int(e)) for a, b, c, d, e in rows)

    def write_csv(self, path: str | Path) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["round", "client", "direction", "kind", "bytes"])
            w.writerows(self.to_state())
