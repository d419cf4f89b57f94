"""The run's ``rejections.jsonl``: one JSON line per rejected client reply (see ``engine.validation``)."""
from __future__ import annotations

import json
from pathlib import Path

from fedsqueeze.engine.validation import Rejection

REJECTIONS = "rejections.jsonl"


class RejectionLog:
    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / REJECTIONS

    def clear(self) -> None:
        self.path.write_text("")

    def append(self, rejection: Rejection, detail: str = "") -> None:
        record = rejection.to_json() | ({"traceback": detail} if detail else {})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def trim(self, last_round: int) -> None:
        """Keep the rejections of the checkpointed rounds only: later ones will be made again."""
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        kept = []
        for ln in lines:
            try:
                if json.loads(ln)["round"] <= last_round:
                    kept.append(ln)
            except (ValueError, KeyError, TypeError):
                continue  # a line a crash cut short
        self.path.write_text("".join(ln + "\n" for ln in kept))
