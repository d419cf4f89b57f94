"""Run outputs: per-round JSONL, CSV tables, and the ``Result`` object the Python API returns."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsqueeze.wire.ledger import Ledger

ROUND_FIELDS = ["round", "global_acc", "global_loss", "personal_acc", "personal_acc_clients", "train_loss",
                "clients", "rejected", "no_reply", "stragglers", "skipped", "client_metrics", "bytes_up", "bytes_down",
                "cum_bytes_up", "cum_bytes_down", "cum_bytes", "round_s", "eval_s", "elapsed_s", "client_s"]
TIMING_FIELDS = ("round_s", "eval_s", "elapsed_s", "client_s")
# written only by the runs that report them (SPATL's pruned personal models), after the fixed fields
OPTIONAL_FIELDS = ("personal_acc_pruned", "flops_pruned")


def _record(rec: dict, fields: list[str] | tuple[str, ...] = ROUND_FIELDS) -> dict:
    out = {k: _clean(rec.get(k)) for k in fields}
    out.update({k: _clean(rec[k]) for k in OPTIONAL_FIELDS if k in rec})
    return out


def _clean(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


def round_fields(recs: list[dict]) -> list[str]:
    """``ROUND_FIELDS`` plus the configured extra metrics (``global_top5``, ...; ``eval.metrics``) after
    ``global_loss``; exactly ``ROUND_FIELDS`` for runs without extra metrics."""
    extra = sorted({k for rec in recs for k in rec if k.startswith("global_") and k not in ROUND_FIELDS})
    i = ROUND_FIELDS.index("global_loss") + 1
    return ROUND_FIELDS[:i] + extra + ROUND_FIELDS[i:]


@dataclass
class Result:
    run_dir: Path
    config: dict
    history: list[dict] = field(default_factory=list)
    ledger: Ledger = field(default_factory=Ledger)

    def last(self, key: str) -> Any:
        for rec in reversed(self.history):
            if rec.get(key) is not None:
                return rec[key]
        return None

    @property
    def final_accuracy(self) -> float | None:
        return self.last("global_acc")

    @property
    def personal_accuracy(self) -> float | None:
        return self.last("personal_acc")

    @property
    def total_bytes(self) -> int:
        return self.ledger.total()

    def summary(self) -> dict[str, Any]:
        cfg = self.config
        accs = [r["global_acc"] for r in self.history if r.get("global_acc") is not None]
        return {
            "name": cfg["name"], "algorithm": cfg["algorithm"]["name"], "model": cfg["model"]["name"],
            "codec_up": _spec_text(cfg["codec"]["up"]), "codec_down": _spec_text(cfg["codec"]["down"]),
            "rounds": len(self.history), "final_acc": self.final_accuracy, "best_acc": max(accs) if accs else None,
            "personal_acc": self.personal_accuracy,
            "mb_up": self.ledger.total("up") / 1e6, "mb_down": self.ledger.total("down") / 1e6,
            "mb_total": self.total_bytes / 1e6,
            "wall_s": self.history[-1]["elapsed_s"] if self.history else 0.0,
        }


def _spec_text(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, dict):
        rest = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "name")
        return f"{spec.get('name')}({rest})" if rest else str(spec.get("name"))
    if isinstance(spec, list):
        return " | ".join(_spec_text(s) for s in spec)
    return str(spec)


class RunWriter:
    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir

    def rewrite_rounds(self, history: list[dict]) -> None:
        with open(self.dir / "metrics.jsonl", "w") as f:
            for rec in history:
                f.write(json.dumps(_record(rec, round_fields([rec]))) + "\n")

    def append_round(self, rec: dict) -> None:
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(_record(rec, round_fields([rec]))) + "\n")

    def finish(self, result: Result) -> None:
        extra = sorted({k for rec in result.history for k in (rec.get("client_metrics") or {})})
        base = [f for f in round_fields(result.history) if f not in ("client_metrics", "client_s")]
        optional = [k for k in OPTIONAL_FIELDS if any(k in rec for rec in result.history)]
        fields = base + optional + [f"client_{k}" for k in extra]
        with open(self.dir / "rounds.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for rec in result.history:
                row = _record(rec, base)
                row.update({f"client_{k}": _clean(v) for k, v in (rec.get("client_metrics") or {}).items()})
                w.writerow(row)
        summary = result.summary()
        with open(self.dir / "summary.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(summary))
            w.writeheader()
            w.writerow(summary)
        result.ledger.write_csv(self.dir / "ledger.csv")


def read_history(run_dir: Path) -> list[dict]:
    """The round records of ``metrics.jsonl``; a damaged file is a one-line DataError naming the line."""
    from fedsqueeze.errors import DataError

    path = Path(run_dir) / "metrics.jsonl"
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path} is damaged (not UTF-8 text); the run's records cannot be read") from None
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            rec = None
        if not isinstance(rec, dict) or not isinstance(rec.get("round"), int) \
                or not isinstance(rec.get("cum_bytes", 0), (int, float)):
            raise DataError(f"{path} is damaged at line {number} (not a round record); restore the file or "
                            "rerun that run")
        out.append(rec)
    return out


def check_run_config(run_dir: Path) -> None:
    """A one-line DataError unless ``run_dir/config.json`` (if present) is a readable run config."""
    from fedsqueeze.errors import DataError

    path = Path(run_dir) / "config.json"
    if not path.exists():
        return
    try:
        cfg = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        cfg = None
    if not (isinstance(cfg, dict) and isinstance(cfg.get("codec"), dict) and isinstance(cfg.get("algorithm"), dict)
            and isinstance(cfg.get("name"), str) and isinstance(cfg["algorithm"].get("name"), str)):
        raise DataError(f"{path} is damaged (not a run config); restore it from the run's config.toml")
