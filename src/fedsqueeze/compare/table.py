"""The comparison table: accuracy, megabytes, and bytes / rounds / time to a target accuracy.

"To target" = the first evaluated round whose global accuracy is >= the target; its cumulative
bytes (from the ledger, up + down), round number, measured wall-clock and simulated time per
network profile. ``x_fewer_bytes`` = the baseline's MB to target / this run's (> 1 = fewer bytes).
Runs without a global model (personalised-only methods) have no "to target" figures.

With several seeds (``seed_rows``) every entry gets one row: each figure's mean over its seeds ±
the half-width of the 95% Student-t interval (``fedsqueeze.compare.stats``); figures "to target"
over the seeds that reached it, with how many did (``reached_target`` of ``n_seeds``); "× fewer
bytes" per seed against the baseline's run with the same seed (the same federation), then averaged.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsqueeze.compare.network import NetworkProfile, round_times
from fedsqueeze.compare.stats import mean_ci95
from fedsqueeze.errors import ConfigError
from fedsqueeze.metrics.results import _spec_text


@dataclass
class RunData:
    name: str
    config: dict
    history: list[dict]
    ledger: list[tuple[int, int, str, str, int]]
    label: str = ""
    budget_mb: float = 0.0

    @property
    def final_acc(self) -> float | None:
        return _last(self.history, "global_acc")


def _last(history: list[dict], key: str) -> Any:
    for rec in reversed(history):
        if rec.get(key) is not None:
            return rec[key]
    return None


def load_run(run_dir: Path, name: str, *, label: str = "", budget_mb: float = 0.0) -> RunData:
    run_dir = Path(run_dir)
    try:
        config = json.loads((run_dir / "config.json").read_text())
        history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        with open(run_dir / "ledger.csv", newline="") as f:
            rows = list(csv.reader(f))[1:]
    except FileNotFoundError as e:
        raise ConfigError(f"{run_dir} is not a finished run ({e.filename} missing); re-run the suite") from e
    ledger = [(int(r[0]), int(r[1]), r[2], r[3], int(r[4])) for r in rows]
    return RunData(name, config, history, ledger, label, budget_mb)


def traffic(ledger: list[tuple[int, int, str, str, int]]) -> dict[int, dict[int, list[int]]]:
    """``{round: {client: [up_bytes, down_bytes, messages]}}``."""
    out: dict[int, dict[int, list[int]]] = {}
    for rnd, client, direction, _kind, nbytes in ledger:
        slot = out.setdefault(rnd, {}).setdefault(client, [0, 0, 0])
        slot[0 if direction == "up" else 1] += nbytes
        slot[2] += 1
    return out


def compute_times(history: list[dict], traffic_: dict[int, dict[int, list[int]]],
                  workers: int = 0) -> dict[int, dict[int, float]]:
    """Measured seconds per client and round (``client_s``). Runs recorded before the engine measured
    clients get an estimate: the round's wall time shared evenly by its clients (times the number of
    worker processes that ran them in parallel)."""
    out = {}
    for rec in history:
        measured = rec.get("client_s")
        if measured:
            out[rec["round"]] = {int(c): float(s) for c, s in measured.items()}
        else:
            clients = traffic_.get(rec["round"], {})
            share = float(rec.get("round_s") or 0.0) * max(workers, 1) / max(len(clients), 1)
            out[rec["round"]] = {c: share for c in clients}
    return out


def simulated_elapsed(run: RunData, prof: NetworkProfile) -> dict[int, float]:
    """Cumulative simulated seconds at the end of each round."""
    rounds = [rec["round"] for rec in run.history]
    tr = traffic(run.ledger)
    workers = int(run.config.get("engine", {}).get("workers", 0) or 0)
    per = round_times(rounds, tr, compute_times(run.history, tr, workers), prof)
    total, out = 0.0, {}
    for rnd in rounds:
        total += per[rnd]
        out[rnd] = total
    return out


def target_of(runs: dict[str, RunData], baselines: list[str], target: float | None) -> float:
    if target is not None:
        return target
    finals = [(runs[b].final_acc, b) for b in baselines if b in runs]
    finals = [(a, b) for a, b in finals if a is not None]
    if not finals:
        raise ConfigError("no baseline run has a global accuracy to derive the target from; "
                          "set target = <accuracy> in the suite")
    return max(finals)[0] - 0.01


def target_of_seeds(groups: dict[str, dict[int, RunData]], baselines: list[str], target: float | None) -> float:
    """The given target, else the best of the baselines' mean final accuracies over seeds − 1 point."""
    if target is not None:
        return target
    means = [mean_ci95([r.final_acc for r in groups[b].values()])[0] for b in baselines if b in groups]
    means = [m for m in means if m is not None]
    if not means:
        raise ConfigError("no baseline run has a global accuracy to derive the target from; "
                          "set target = <accuracy> in the suite")
    return max(means) - 0.01


# figures summarised over seeds as mean ± 95% t half-interval (the "to target" ones over the seeds that reached it)
SEED_FIGURES = ("final_acc", "best_acc", "personal_acc", "mb_total", "mb_to_target", "x_fewer_bytes",
                "rounds_to_target", "wall_s_to_target")


def seed_rows(groups: dict[str, dict[int, RunData]], *, baseline: str, target: float,
              networks: list[NetworkProfile]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(per-seed rows, one summary row per entry)`` for ``groups = {entry: {seed: run}}``. A per-seed
    row is a ``rows`` row (``run`` = ``entry/seedN``) plus ``entry`` and ``seed``; a summary row has
    ``<figure>_mean`` and ``<figure>_ci95`` (the half-width; None with one value) per figure."""
    seeds = sorted({s for g in groups.values() for s in g})
    by_seed: dict[tuple[str, int], dict[str, Any]] = {}
    for seed in seeds:
        runs = {f"{name}/seed{seed}": g[seed] for name, g in groups.items() if seed in g}
        for name, row in zip([n for n, g in groups.items() if seed in g],
                             rows(runs, baseline=f"{baseline}/seed{seed}", target=target, networks=networks)):
            by_seed[(name, seed)] = {"entry": name, "seed": seed, **row}
    figures = list(SEED_FIGURES) + [f"sim_s_to_target[{p.name}]" for p in networks]
    per_seed, summary = [], []
    for name, group in groups.items():
        mine = [by_seed[(name, s)] for s in sorted(group)]
        per_seed += mine
        first = mine[0]
        row: dict[str, Any] = {k: first[k] for k in ("label", "algorithm", "model", "codec_up", "codec_down")}
        row = {"run": name, **row, "seeds": " ".join(str(r["seed"]) for r in mine), "n_seeds": len(mine),
               "reached_target": sum(r["mb_to_target"] is not None for r in mine), "target": target,
               "budget_mb": first["budget_mb"]}
        for key in figures:
            row[f"{key}_mean"], row[f"{key}_ci95"] = mean_ci95([r[key] for r in mine if r[key] is not None])
        summary.append(row)
    return per_seed, summary


def rows(runs: dict[str, RunData], *, baseline: str, target: float,
         networks: list[NetworkProfile]) -> list[dict[str, Any]]:
    out = []
    for name, run in runs.items():
        cfg = run.config
        accs = [r["global_acc"] for r in run.history if r.get("global_acc") is not None]
        up = sum(b for _, _, d, _, b in run.ledger if d == "up")
        down = sum(b for _, _, d, _, b in run.ledger if d == "down")
        hit = next((r for r in run.history if r.get("global_acc") is not None and r["global_acc"] >= target), None)
        row: dict[str, Any] = {
            "run": name, "label": run.label, "algorithm": cfg["algorithm"]["name"], "model": cfg["model"]["name"],
            "codec_up": _spec_text(cfg["codec"]["up"]), "codec_down": _spec_text(cfg["codec"]["down"]),
            "rounds": len(run.history), "final_acc": accs[-1] if accs else None, "best_acc": max(accs) if accs else None,
            "personal_acc": _last(run.history, "personal_acc"),
            "personal_acc_pruned": _last(run.history, "personal_acc_pruned"),  # SPATL: the deployed model
            "flops_pruned": _last(run.history, "flops_pruned"),
            "mb_up": up / 1e6, "mb_down": down / 1e6, "mb_total": (up + down) / 1e6,
            "budget_mb": run.budget_mb or None, "target": target,
            "mb_to_target": hit["cum_bytes"] / 1e6 if hit else None,
            "rounds_to_target": hit["round"] if hit else None,
            "wall_s_to_target": hit.get("elapsed_s") if hit else None,
        }
        for prof in networks:
            row[f"sim_s_to_target[{prof.name}]"] = simulated_elapsed(run, prof)[hit["round"]] if hit else None
            row[f"sim_s_total[{prof.name}]"] = simulated_elapsed(run, prof)[run.history[-1]["round"]] \
                if run.history else None
        out.append(row)
    base = next((r for r in out if r["run"] == baseline), None)
    for row in out:
        ok = base is not None and base["mb_to_target"] and row["mb_to_target"]
        row["x_fewer_bytes"] = base["mb_to_target"] / row["mb_to_target"] if ok else None
        row["x_fewer_bytes_total"] = base["mb_total"] / row["mb_total"] if base and row["mb_total"] else None
    return out


# ---- output -----------------------------------------------------------------------------------------
def _pct(v: Any) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def _mb(v: Any) -> str:
    return "—" if v is None else (f"{v:,.1f}" if v >= 10 else f"{v:.3f}")


def _x(v: Any) -> str:
    return "—" if v is None else f"{v:.1f}×"


def _time(v: Any) -> str:
    if v is None:
        return "—"
    return f"{v:.0f} s" if v < 120 else (f"{v / 60:.1f} min" if v < 7200 else f"{v / 3600:.1f} h")


def display_rows(table: list[dict[str, Any]], networks: list[NetworkProfile]) -> tuple[list[str], list[list[str]]]:
    head = ["run", "codec up / down", "final acc", "personal acc", "MB total", "MB to target", "× fewer bytes",
            "rounds to target", "wall to target"] + [f"time to target ({p.name})" for p in networks]
    body = []
    for r in table:
        codecs = f"{r['codec_up']} / {r['codec_down']}"
        if r["budget_mb"]:
            codecs += f" (budget {r['budget_mb']:g} MB)"
        body.append([r["run"], codecs, _pct(r["final_acc"]), _pct(r["personal_acc"]), _mb(r["mb_total"]),
                     _mb(r["mb_to_target"]), _x(r["x_fewer_bytes"]),
                     "—" if r["rounds_to_target"] is None else str(r["rounds_to_target"]),
                     _time(r["wall_s_to_target"])]
                    + [_time(r[f"sim_s_to_target[{p.name}]"]) for p in networks])
    if any(r.get("personal_acc_pruned") is not None for r in table):  # SPATL in the suite: its pruned models
        head.insert(4, "pruned personal acc (FLOPs)")
        for r, line in zip(table, body):
            acc, flops = r.get("personal_acc_pruned"), r.get("flops_pruned")
            line.insert(4, "—" if acc is None else f"{_pct(acc)} ({100 * flops:.0f}%)")
    return head, body


def _pm(m: Any, h: Any, fmt: Any, unit: str = "") -> str:
    """``mean ± half-width`` (both written as ``fmt(value, mean)`` writes them: the mean picks the precision
    or time unit); the mean alone without an interval; — without a mean."""
    if m is None:
        return "—"
    return f"{fmt(m, m)}{unit}" if h is None else f"{fmt(m, m)} ± {fmt(h, m)}{unit}"


def _num(v: float, ref: float) -> str:
    return f"{v:.1f}"


def _pct_num(v: float, ref: float) -> str:
    return f"{100 * v:.2f}"


def _mb_as(v: float, ref: float) -> str:
    return f"{v:,.1f}" if ref >= 10 else f"{v:.3f}"


def _pm_time(m: Any, h: Any) -> str:
    """``mean ± half-width unit``, the unit (s, min, h) chosen by the mean."""
    if m is None:
        return "—"
    div, unit, digits = (1, "s", 0) if m < 120 else ((60, "min", 1) if m < 7200 else (3600, "h", 1))
    return f"{m / div:.{digits}f} {unit}" if h is None else f"{m / div:.{digits}f} ± {h / div:.{digits}f} {unit}"


def seed_display_rows(table: list[dict[str, Any]],
                      networks: list[NetworkProfile]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the seeds table: mean ± 95% t half-interval per figure."""
    head = ["run", "codec up / down", "seeds", "final acc", "personal acc", "MB total", "MB to target", "reached",
            "× fewer bytes", "rounds to target"] + [f"time to target ({p.name})" for p in networks]
    body = []
    for r in table:
        codecs = f"{r['codec_up']} / {r['codec_down']}"
        if r["budget_mb"]:
            codecs += f" (budget {r['budget_mb']:g} MB)"

        def pm(key, fmt, unit=""):
            return _pm(r[f"{key}_mean"], r[f"{key}_ci95"], fmt, unit)
        body.append([r["run"], codecs, str(r["n_seeds"]), pm("final_acc", _pct_num, "%"), pm("personal_acc", _pct_num, "%"),
                     pm("mb_total", _mb_as), pm("mb_to_target", _mb_as), f"{r['reached_target']}/{r['n_seeds']}",
                     pm("x_fewer_bytes", _num, "×"), pm("rounds_to_target", _num)]
                    + [_pm_time(r[f"sim_s_to_target[{p.name}]_mean"], r[f"sim_s_to_target[{p.name}]_ci95"]) for p in networks])
    return head, body


def _display(table: list[dict[str, Any]], networks: list[NetworkProfile]) -> tuple[list[str], list[list[str]]]:
    return (seed_display_rows if table and "n_seeds" in table[0] else display_rows)(table, networks)


def markdown(table: list[dict[str, Any]], networks: list[NetworkProfile]) -> str:
    head, body = _display(table, networks)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def write_csv(table: list[dict[str, Any]], path: Path) -> None:
    fields = list(table[0]) if table else []
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(table)


def print_table(table: list[dict[str, Any]], networks: list[NetworkProfile], console: Any, title: str) -> None:
    from rich.table import Table

    head, body = _display(table, networks)
    t = Table(title=title)
    for i, h in enumerate(head):
        t.add_column(h, justify="left" if i < 2 else "right")
    for row in body:
        t.add_row(*row)
    console.print(t)
