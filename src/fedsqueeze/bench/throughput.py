"""``fedsqueeze bench throughput``: how many client updates per second the engine delivers, and how
its memory scales with the size of the federation.

**Speed.** FedAvg on Fashion-MNIST (the ``bench engine`` federation: 100 Dirichlet(0.5) clients,
``k`` per round, fp32 both ways) for each model: the plain PyTorch loop (one process) and the
engine in each worker mode (0 = in process, N = a pool of N worker processes) each run their own
copy of the same trajectory, all interleaved round by round with a rotating order, after one
warm-up round. Client updates per second = ``k`` / median seconds per round (a whole round: the
engine's figure includes encoding, ledger, decoding and aggregation). Every side takes identical
SGD steps, so the final weights of each engine mode must equal the plain loop's exactly.

**Memory.** FedPer (a personal head kept per client in the client state store) on a synthetic
source, each measurement in a fresh subprocess so its peak RSS is that run's own. The peak is read
from ``VmHWM`` in ``/proc/self/status``, not from ``ru_maxrss``: Linux carries ``ru_maxrss`` across
fork + exec, so a child started by a large parent reports the parent's peak. Before the measured
rounds every client is given a stored head, written through the store a round's worth at a time —
the state of a federation whose clients have all been sampled before — so a store that kept
states in memory would grow with the total number of clients. Reported: the whole-run peak, the
peak during the rounds alone (``VmHWM`` reset after setup), and the most states the store held in
memory at once.
"""
from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from fedsqueeze.bench.engine import PlainLoop, bench_config, engine_side, interleaved, max_weight_diff
from fedsqueeze.errors import FedsqueezeError

PLAIN = "plain loop"


def _engine_mode(workers: int) -> str:
    return "engine, in process" if workers == 0 else f"engine, {workers} worker{'s' if workers > 1 else ''}"


# ---- speed ------------------------------------------------------------------------------------------
def measure_speed(model: str, *, workers: tuple[int, ...] = (0, 1, 2), rounds: int = 5, k: int = 10,
                  dataset: str = "fashion_mnist", data_dir: str | None = None, data=None,
                  progress: Callable[[str], None] | None = None, device: str = "cpu") -> list[dict[str, Any]]:
    """One row per side (the plain loop first, then each engine worker mode): median seconds per
    round, client updates per second, ratio vs the plain loop and the final-weight difference."""
    torch.set_num_threads(1)
    if data is None:  # loaded once for every side
        from fedsqueeze.engine.simulation import load_dataset
        data = load_dataset(bench_config(model, dataset=dataset, data_dir=data_dir))
    with ExitStack() as stack:
        sims = {w: stack.enter_context(engine_side(bench_config(model, dataset=dataset, data_dir=data_dir, k=k,
                                                                workers=w, device=device), data))
                for w in workers}
        from fedsqueeze.engine.device import compute_mode
        first = next(iter(sims.values()))
        stack.enter_context(compute_mode([first.runtime.device], first.cfg.engine.deterministic,
                                         first.cfg.engine.tf32))
        plain = PlainLoop(next(iter(sims.values())))
        sides: dict[str, Callable[[int], object]] = {PLAIN: plain.round}
        sides.update({_engine_mode(w): sim.run_round for w, sim in sims.items()})
        done: dict[str, float] = {}

        def report(rnd: int, side: str, seconds: float) -> None:
            done[side] = seconds
            if len(done) == len(sides) and progress is not None:
                label = "warm-up" if rnd == 1 else f"round {rnd - 1}/{rounds}"
                progress(f"{model} {label}: " + " · ".join(f"{s} {done[s]:.2f} s" for s in sides))
            if len(done) == len(sides):
                done.clear()

        times = interleaved(sides, rounds, report)
        diffs = {_engine_mode(w): max_weight_diff(sim, plain) for w, sim in sims.items()}
    plain_s = statistics.median(times[PLAIN])
    inproc = _engine_mode(0)
    inproc_s = statistics.median(times[inproc]) if inproc in times else None
    worker_count = {_engine_mode(w): w for w in workers}
    rows = []
    for side, ts in times.items():
        s = statistics.median(ts)
        w = worker_count.get(side, "")
        # scaling: the pool against the in-process engine (speedup), and that per worker (efficiency)
        speedup = inproc_s / s if inproc_s is not None and side != PLAIN else None
        rows.append({"model": model, "device": str(first.runtime.device), "mode": side, "workers": w,
                     "clients_per_round": k, "rounds": rounds, "s_per_round": s, "updates_per_s": k / s,
                     "ratio_vs_plain": plain_s / s, "max_abs_weight_diff": diffs.get(side, 0.0),
                     "speedup_vs_in_process": speedup,
                     "efficiency": speedup / w if speedup is not None and isinstance(w, int) and w > 0 else None})
    return rows


def measure_speed_isolated(model: str, *, workers: tuple[int, ...], rounds: int, k: int, dataset: str,
                           data_dir: str | None, device: str, timeout: float = 3600) -> list[dict[str, Any]]:
    """:func:`measure_speed` in a fresh Python process (its progress lines pass through on stderr).

    Each model gets its own process because the pools are forked: a process that has already run
    backward passes (the previous model) may have started autograd's device threads — it does on a
    machine with CUDA, even for CPU work — and a child forked after that cannot train ("Unable to
    handle autograd's threading in combination with fork-based multiprocessing")."""
    spec = {"model": model, "workers": list(workers), "rounds": rounds, "k": k, "dataset": dataset,
            "data_dir": data_dir, "device": device}
    proc = subprocess.run([sys.executable, "-m", "fedsqueeze.bench.throughput", "--speed-run", json.dumps(spec)],
                          stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise FedsqueezeError(f"the speed measurement subprocess for {model} failed (exit {proc.returncode}; "
                              "its error is above); fix it or measure fewer modes, e.g. --workers 0,2")
    return json.loads(lines[-1])


# ---- memory -----------------------------------------------------------------------------------------
def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM (Linux >= 4.0), so it measures from now on; False if unavailable."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def memory_run(total_clients: int, clients_per_round: int, rounds: int, *, num_samples: int,
               prefill: bool = True) -> dict[str, Any]:
    """The measured run itself (called inside the fresh subprocess): FedPer, MLP, synthetic data."""
    from fedsqueeze.algorithms.fedper import split_head
    from fedsqueeze.config import from_dict
    from fedsqueeze.engine.simulation import Simulation

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    start_kb = _proc_status_kb("VmRSS")
    cfg = from_dict({
        "name": "bench-memory", "seed": 0, "rounds": 10_000,  # rounds are driven one at a time; no evaluation
        "data": {"source": "synthetic", "num_clients": total_clients, "partition": "iid", "holdout_fraction": 0.0,
                 "options": {"num_samples": num_samples, "num_features": 20, "num_classes": 10}},
        "model": {"name": "mlp"}, "train": {"clients_per_round": clients_per_round, "batch_size": 32, "lr": 0.05},
        "algorithm": {"name": "fedper"}, "codec": {"up": "fp32", "down": "fp32"},
        "eval": {"every": 0, "personal_every": 0}, "engine": {"checkpoint_every": 0, "workers": 0}})
    with tempfile.TemporaryDirectory() as tmp:
        sim = Simulation(cfg, tmp)
        sim.start()
        store = sim.store
        head = split_head(sim.runtime.initial_weights())[1]
        state_bytes = sum(t.numel() * t.element_size() for t in head.values())
        if prefill:  # every client already holds a head, put and committed a round's worth at a time
            for c in range(total_clients):
                store.put(c, {"algo": {"head": {n: t.clone() for n, t in head.items()}}, "codec": {}})
                if store.in_memory == clients_per_round or c == total_clients - 1:
                    store.commit(0)
        setup_kb = _proc_status_kb("VmRSS")
        setup_peak_kb = _proc_status_kb("VmHWM")
        reset = _reset_peak_rss()
        most = 0
        commit = store.commit

        def counting_commit(rnd: int) -> None:
            nonlocal most
            most = max(most, store.in_memory)
            commit(rnd)

        store.commit = counting_commit  # type: ignore[method-assign]
        for rnd in range(1, rounds + 1):
            sim.run_round(rnd)
        after_kb = _proc_status_kb("VmHWM")
        on_disk = len(store)
    if after_kb is None or setup_peak_kb is None:
        raise FedsqueezeError("peak RSS needs Linux's /proc/self/status (VmHWM); run the memory benchmark on "
                              "Linux or pass --skip-memory")
    mb = lambda kb: None if kb is None else kb / 1024  # noqa: E731
    return {"total_clients": total_clients, "clients_per_round": clients_per_round, "rounds": rounds,
            "prefilled": prefill, "num_samples": num_samples,
            "peak_rss_mb": mb(max(setup_peak_kb, after_kb)), "rounds_peak_rss_mb": mb(after_kb) if reset else None, "start_rss_mb": mb(start_kb), "setup_rss_mb": mb(setup_kb),
            "max_states_in_memory": most, "states_on_disk": on_disk, "state_kb_per_client": state_bytes / 1024,
            "all_states_in_memory_mb": total_clients * state_bytes / 2**20, "seconds": time.perf_counter() - t0}


def measure_memory(total_clients: int, clients_per_round: int = 10, rounds: int = 3, *,
                   num_samples: int | None = None, prefill: bool = True, timeout: float = 1800) -> dict[str, Any]:
    """:func:`memory_run` in a fresh Python process (so its peak RSS is that run's alone)."""
    spec = {"total_clients": total_clients, "clients_per_round": clients_per_round, "rounds": rounds,
            "num_samples": num_samples or max(2000, 5 * total_clients), "prefill": prefill}
    proc = subprocess.run([sys.executable, "-m", "fedsqueeze.bench.throughput", "--memory-run", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise FedsqueezeError(f"the memory measurement subprocess failed ({tail}); rerun with --skip-memory "
                              "to measure speed only, or fix the error above")
    return json.loads(lines[-1])


# ---- the command ----------------------------------------------------------------------------------
def _int_list(text: str, option: str, minimum: int) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < minimum:
        raise FedsqueezeError(f"{option} {text!r} must be comma-separated integers >= {minimum}, e.g. "
                              f"{option} {'0,1,2' if minimum == 0 else '1000,10000'}")
    return values


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _speed_table(console, rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    t = Table(title="client updates per second (median of the measured rounds; ratio = engine ÷ plain loop, "
                    ">1 = faster)")
    for col in ("model", "mode", "updates/s", "ratio vs plain loop", "× in process", "efficiency", "s/round",
                "max |Δw| vs plain"):
        t.add_column(col, justify="right")
    fmt = lambda v, spec: "—" if v is None else format(v, spec)  # noqa: E731
    for r in rows:
        t.add_row(r["model"], r["mode"], f"{r['updates_per_s']:.2f}", f"{r['ratio_vs_plain']:.3f}",
                  fmt(r.get("speedup_vs_in_process"), ".2f"), fmt(r.get("efficiency"), ".0%"),
                  f"{r['s_per_round']:.3f}", "—" if r["mode"] == PLAIN else f"{r['max_abs_weight_diff']:.1e}")
    console.print(t)
    import os
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    console.print(f"scaling measured on {os.cpu_count()} cores, load average after the runs {load[0]:.2f} "
                  f"{load[1]:.2f} {load[2]:.2f} (× in process = in-process engine s/round ÷ pool s/round; "
                  "efficiency = that ÷ workers)")
    for r in rows:
        if r.get("efficiency") is not None:
            console.print(f"  {r['model']} {r['clients_per_round']} clients/round, {r['workers']} workers: "
                          f"{r['speedup_vs_in_process']:.2f}× the in-process engine, efficiency "
                          f"{r['efficiency']:.0%}")


def _memory_table(console, rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    t = Table(title="peak RSS, FedPer heads for every client (each run in a fresh process)")
    for col in ("total clients", "clients/round", "peak RSS MB", "rounds' peak MB", "states in memory (max)",
                "states on disk", "all heads in RAM would be MB"):
        t.add_column(col, justify="right")
    fmt = lambda v: "—" if v is None else f"{v:.1f}"  # noqa: E731
    for r in rows:
        t.add_row(f"{r['total_clients']:,}", str(r["clients_per_round"]), fmt(r["peak_rss_mb"]),
                  fmt(r["rounds_peak_rss_mb"]), str(r["max_states_in_memory"]), f"{r['states_on_disk']:,}",
                  fmt(r["all_states_in_memory_mb"]))
    console.print(t)


def _ratios(console, rows: list[dict[str, Any]]) -> None:
    """Peak-RSS ratios: across total clients at a fixed clients/round, and across clients/round."""
    by = {(r["total_clients"], r["clients_per_round"]): r for r in rows}
    totals = sorted({n for n, _ in by})
    ks = sorted({k for _, k in by})
    for k in ks:
        if (totals[0], k) in by and (totals[-1], k) in by and totals[0] != totals[-1]:
            a, b = by[(totals[0], k)], by[(totals[-1], k)]
            console.print(f"{k} clients/round: peak RSS {totals[-1]:,} vs {totals[0]:,} total clients = "
                          f"{b['peak_rss_mb'] / a['peak_rss_mb']:.3f}×"
                          + (f" (rounds' peak {b['rounds_peak_rss_mb'] / a['rounds_peak_rss_mb']:.3f}×)"
                             if a["rounds_peak_rss_mb"] and b["rounds_peak_rss_mb"] else ""))
    for n in totals:
        if (n, ks[0]) in by and (n, ks[-1]) in by and ks[0] != ks[-1]:
            a, b = by[(n, ks[0])], by[(n, ks[-1])]
            console.print(f"{n:,} total clients: peak RSS {ks[-1]} vs {ks[0]} clients/round = "
                          f"{b['peak_rss_mb'] / a['peak_rss_mb']:.3f}× (+{b['peak_rss_mb'] - a['peak_rss_mb']:.1f} MB)"
                          + (f"; rounds' peak +{b['rounds_peak_rss_mb'] - a['rounds_peak_rss_mb']:.1f} MB"
                             if a["rounds_peak_rss_mb"] and b["rounds_peak_rss_mb"] else ""))


def main(args) -> int:
    from rich.console import Console

    from fedsqueeze.bench.report import print_environment
    from fedsqueeze.engine.simulation import load_dataset

    if args.skip_speed and args.skip_memory:
        raise FedsqueezeError("--skip-speed and --skip-memory together leave nothing to measure; drop one of them")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    workers = list(dict.fromkeys(_int_list(args.workers, "--workers", 0)))  # each mode once
    totals = _int_list(args.memory_clients, "--memory-clients", 1)
    per_round = _int_list(args.memory_per_round, "--memory-per-round", 1)
    if args.rounds < 1 or args.memory_rounds < 1:
        raise FedsqueezeError("--rounds and --memory-rounds must be >= 1, e.g. --rounds 5")
    if not models:
        raise FedsqueezeError("--models is empty; name at least one model, e.g. --models mlp,cnn")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(width=150)
    torch.set_num_threads(1)
    console.print("[bold]bench throughput[/]: client updates/s of the engine vs a plain PyTorch loop, and peak "
                  "RSS vs federation size")
    env = print_environment(console)
    console.print("torch threads: 1 per process (this process, every pool worker, every memory subprocess)")
    (out / "environment.json").write_text(json.dumps(env, indent=1))
    if not args.skip_speed:
        console.print(f"[bold]speed[/]: FedAvg on {args.dataset}, 100 Dirichlet(0.5) clients, "
                      f"{args.clients_per_round}/round, 1 local epoch, batch 32; modes: {PLAIN} (1 process), "
                      + ", ".join(_engine_mode(w) for w in workers)
                      + f"; {args.rounds} measured rounds after 1 warm-up, interleaved with rotating order")
        load_dataset(bench_config("mlp", dataset=args.dataset, data_dir=args.data_dir))  # a missing dataset: error here
        speed: list[dict[str, Any]] = []
        for model in models:  # each in a fresh process (see measure_speed_isolated)
            speed += measure_speed_isolated(model, workers=tuple(workers), rounds=args.rounds, k=args.clients_per_round,
                                            dataset=args.dataset, data_dir=args.data_dir,
                                            device=getattr(args, "device", None) or "cpu")
        _speed_table(console, speed)
        _write_csv(out / "throughput.csv", speed)
        console.print(f"wrote {out / 'throughput.csv'}")
    if not args.skip_memory:
        samples = max(2000, 5 * max(totals))  # one dataset for every size: only the number of clients differs
        console.print(f"[bold]memory[/]: FedPer, MLP, synthetic source ({samples:,} samples, 20 features, 10 "
                      f"classes, IID), {args.memory_rounds} rounds, no evaluation; every client's head stored "
                      "before the rounds")
        memory = []
        for n in totals:
            for k in per_round:
                if k > n:
                    continue
                console.print(f"[dim]memory: {n:,} total clients, {k}/round (fresh subprocess) ...[/]")
                r = measure_memory(n, k, args.memory_rounds, num_samples=samples)
                console.print(f"[dim]  peak RSS {r['peak_rss_mb']:.1f} MB, {r['seconds']:.1f} s[/]")
                memory.append(r)
        _memory_table(console, memory)
        _ratios(console, memory)
        _write_csv(out / "memory.csv", memory)
        console.print(f"wrote {out / 'memory.csv'}")
    return 0


def _memory_run_entry(argv: list[str]) -> int:
    """``python -m fedsqueeze.bench.throughput --memory-run JSON``: one memory measurement, one JSON line
    (``--speed-run JSON``: one model's speed rows, progress on stderr)."""
    if len(argv) == 2 and argv[0] == "--speed-run":
        spec = json.loads(argv[1])
        rows = measure_speed(spec["model"], workers=tuple(spec["workers"]), rounds=spec["rounds"], k=spec["k"],
                             dataset=spec["dataset"], data_dir=spec["data_dir"], device=spec["device"],
                             progress=lambda msg: print(msg, file=sys.stderr, flush=True))
        print(json.dumps(rows))
        return 0
    if len(argv) != 2 or argv[0] != "--memory-run":
        print("usage: python -m fedsqueeze.bench.throughput --memory-run '{\"total_clients\": 1000, ...}'",
              file=sys.stderr)
        return 2
    spec = json.loads(argv[1])
    print(json.dumps(memory_run(spec["total_clients"], spec["clients_per_round"], spec["rounds"],
                                num_samples=spec["num_samples"], prefill=spec["prefill"])))
    return 0


if __name__ == "__main__":
    sys.exit(_memory_run_entry(sys.argv[1:]))
