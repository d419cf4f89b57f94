"""Per-client personalised accuracy of a finished run, grouped as the algorithm groups its clients.

``fedsqueeze personal RUN_DIR`` restores the run's last checkpoint (server state and every client's
stored state), evaluates each client's personalised model on its own held-out split, and groups the
clients by the algorithm's ``client_profile`` (QuPeD: "1-bit mlp", "2-bit mlp", ...), with the
deployed model size where the algorithm reports one.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from fedsqueeze.errors import ConfigError, DataError, FedsqueezeError


def client_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    from fedsqueeze.api import run_config
    from fedsqueeze.engine.simulation import Simulation

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    if not (run_dir / "checkpoint.pt").exists() and not (run_dir / "checkpoint.prev.pt").exists():
        raise ConfigError(f"{run_dir} has no checkpoint to restore; personal reports need engine.checkpoint_every > 0")
    sim = Simulation(cfg, run_dir)
    sim.load_readonly()  # a report never modifies the run: no temp-file cleanup, no rewrite of metrics
    rows = []
    try:
        for client, correct, n, profile in sim.personal_accuracies():
            rows.append({"client": client, "group": profile.get("group", "all"), "correct": correct, "n": n,
                         "accuracy": correct / n, "model_bytes": profile.get("model_bytes")})
    except FedsqueezeError:
        raise
    except (OSError, EOFError, RuntimeError) as e:
        raise DataError(f"{run_dir}: a client state file could not be read ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); `fedsqueeze run --resume {run_dir}` may "
                        "recover it") from e
    if not rows:
        raise ConfigError(f"{cfg.algorithm_name!r} has no personalised or global model to evaluate")
    return rows


def group_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    out = []
    for name, members in sorted(groups.items()):
        sizes = [m["model_bytes"] for m in members if m["model_bytes"] is not None]
        out.append({"group": name, "clients": len(members),
                    "accuracy_pooled": sum(m["correct"] for m in members) / sum(m["n"] for m in members),
                    "accuracy_mean": statistics.fmean(m["accuracy"] for m in members),
                    "model_bytes_median": statistics.median(sizes) if sizes else None})
    return out
