"""The command line: ``fedsqueeze run | compare | personal | plot | list | presets | init | bench | flower``.

``--help`` on each. torch and the other heavy modules are imported inside the commands that need them, so
``fedsqueeze --help``, ``presets`` and ``init`` start in a fraction of a second.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from fedsqueeze.errors import FedsqueezeError


def _console():
    from rich.console import Console
    return Console(stderr=True)


def _progress_printer(cfg_rounds: int, console):
    """A live progress bar with the latest accuracy and megabytes."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(TextColumn("[bold]round"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[info]}"), console=console, transient=False)
    task = prog.add_task("run", total=cfg_rounds, info="")

    def update(rec: dict) -> None:
        acc = rec.get("global_acc")
        pacc = rec.get("personal_acc")
        info = f"acc {100 * acc:.2f}%" if acc is not None else ""
        if pacc is not None:
            info += f"  personal {100 * pacc:.2f}%"
        info += f"  {rec['cum_bytes'] / 1e6:.2f} MB"
        prog.update(task, completed=rec["round"], info=info)

    return prog, update


def _summary_table(result, console) -> None:
    from rich.table import Table

    s = result.summary()
    t = Table(title=f"{s['name']} — {s['algorithm']} on {s['model']}")
    for col in ("rounds", "final acc", "best acc", "personal acc", "MB up", "MB down", "MB total", "wall s"):
        t.add_column(col, justify="right")
    pct = lambda v: "—" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    t.add_row(str(s["rounds"]), pct(s["final_acc"]), pct(s["best_acc"]), pct(s["personal_acc"]),
              f"{s['mb_up']:.3f}", f"{s['mb_down']:.3f}", f"{s['mb_total']:.3f}", f"{s['wall_s']:.1f}")
    console.print(t)
    console.print(f"codec up: {s['codec_up']}   codec down: {s['codec_down']}")
    console.print(f"run folder: {result.run_dir}  (metrics.jsonl, rounds.csv, summary.csv, ledger.csv, "
                  "accuracy_vs_mb.png)")


def cmd_run(args) -> int:
    import fedsqueeze
    from fedsqueeze.config import load_config

    console = _console()
    overrides = list(args.set or [])
    if args.data_dir:
        overrides.append(f'data.dir="{args.data_dir}"')
    if args.workers is not None:
        overrides.append(f"engine.workers={args.workers}")
    if getattr(args, "vectorize", False):
        overrides.append("engine.vectorize=true")
    if args.rounds is not None:
        overrides.append(f"rounds={args.rounds}")
    if args.resume and args.out and Path(args.out).resolve() != Path(args.resume).resolve():
        raise FedsqueezeError(f"--resume {args.resume} continues that run in its own folder; --out {args.out} "
                              "contradicts it: drop --out (or start a new run with CONFIG --out)")
    if args.resume and args.overwrite:
        raise FedsqueezeError("--resume continues a run and --overwrite replaces it; pass one of them")
    if args.device:
        overrides.append(f'engine.device="{args.device}"')
    if args.resume:
        run_dir = Path(args.resume)
        cfg = fedsqueeze.api.run_config(run_dir, overrides)
        if args.budget_mb:
            raise FedsqueezeError("--budget-mb is fixed when a run starts; resume without it")
    else:
        if not args.config:
            raise FedsqueezeError("run needs a CONFIG.toml or preset name (`fedsqueeze presets`) or --resume RUN_DIR")
        cfg = load_config(args.config, overrides)
        run_dir = Path(args.out) if args.out else None
        if args.budget_mb is not None:
            from fedsqueeze.compare.budget import plan_budget
            cfg, plan = plan_budget(cfg, args.budget_mb)
            console.print(plan.describe(cfg.rounds, cfg.train.clients_per_round))
    if run_dir is not None:  # refusals (an existing run, a user's folder, a run in progress) before any output
        from fedsqueeze.engine.rundir import check_target
        check_target(run_dir, resume=bool(args.resume), overwrite=args.overwrite)
    console.print(f"[bold]fedsqueeze[/] {cfg.name}: {cfg.algorithm_name} · {cfg.model.name} · {cfg.data.source} "
                  f"({cfg.data.num_clients} clients, {cfg.data.partition}) · up={cfg.codec.up} down={cfg.codec.down}")
    progress = None
    prog = None
    if not args.quiet:
        prog, progress = _progress_printer(cfg.rounds, console)
        prog.start()
    try:
        result = fedsqueeze.run(cfg, run_dir=run_dir, resume=bool(args.resume), overwrite=args.overwrite,
                                progress=progress,
                                log=lambda msg: console.print(f"[dim]{msg}[/]"))
    finally:
        if prog is not None:
            prog.stop()
    for w in getattr(result, "warnings", []):
        console.print(f"[yellow]warning:[/] {w}")
    _summary_table(result, console)
    return 0


def cmd_compare(args) -> int:
    from fedsqueeze.compare.runner import report, run_suite
    from fedsqueeze.compare.suite import load_suite

    from rich.console import Console

    console = _console()
    if not console.is_terminal:  # a log file: room for the whole table
        console = Console(stderr=True, width=200)
    suite = load_suite(args.suite)
    if args.report_only:
        report(suite, Path(args.out) / suite.name, console=console)
        return 0

    def progress_factory(cfg):
        return _progress_printer(cfg.rounds, console) if not args.quiet else (_Quiet(), None)

    run_suite(suite, args.out, workers=args.workers, device=args.device, rerun=tuple(args.rerun or ()), only=tuple(args.only or ()),
              console=console, progress_factory=progress_factory)
    return 0


class _Quiet:
    def start(self) -> None: ...

    def stop(self) -> None: ...


def cmd_personal(args) -> int:
    import csv

    from rich.table import Table

    from fedsqueeze.metrics.personal import client_rows, group_rows

    rows = client_rows(args.run)
    groups = group_rows(rows)
    t = Table(title=f"personalised accuracy on each client's held-out split — {args.run}")
    for col in ("group", "clients", "accuracy (pooled)", "accuracy (mean of clients)", "deployed model bytes (median)"):
        t.add_column(col, justify="left" if col == "group" else "right")
    for g in groups:
        size = "—" if g["model_bytes_median"] is None else f"{g['model_bytes_median']:,.0f}"
        t.add_row(g["group"], str(g["clients"]), f"{100 * g['accuracy_pooled']:.2f}%",
                  f"{100 * g['accuracy_mean']:.2f}%", size)
    from rich.console import Console
    Console().print(t)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        print(f"wrote {args.csv}")
    return 0


def cmd_plot(args) -> int:
    from fedsqueeze.metrics.plots import plot_runs

    out = Path(args.out) if args.out else Path("comparison.png")  # never inside a run: reports leave runs as they are
    plot_runs([Path(r) for r in args.runs], out, metric=args.metric, title=args.title)
    print(f"wrote {out}")
    return 0


def cmd_list(args) -> int:
    from rich.table import Table

    from fedsqueeze.registry import ALL

    console = _console()
    kinds = [args.kind] if args.kind else list(ALL)
    for kind in kinds:
        if kind not in ALL:
            raise FedsqueezeError(f"unknown kind {kind!r}; choose from {', '.join(ALL)}")
        reg = ALL[kind]
        t = Table(title=kind, show_header=False, title_justify="left")
        t.add_column("name", style="bold")
        t.add_column("description")
        for name in reg.names():
            desc = reg.describe(name)
            if kind == "models":
                try:
                    desc += f" [dim]({_param_count(name):,} parameters on 1x28x28, 10 classes)[/]"
                except FedsqueezeError:  # a sequence model: its size depends on the vocabulary
                    desc += " [dim](sequence model: size depends on the vocabulary)[/]"
            t.add_row(name, desc)
        console.print(t)
    return 0


def cmd_presets(args) -> int:
    from fedsqueeze import presets

    names = presets.names()
    width = max(map(len, names), default=0)
    for name in names:
        print(f"{name:<{width}}  {presets.describe(name)}")
    print(f"\nrun one by name: fedsqueeze run {'digits-quick' if 'digits-quick' in names else 'NAME'}; files in {presets.DIR}")
    return 0


def cmd_init(args) -> int:
    from fedsqueeze import presets

    out = presets.write_starter(args.path)
    print(f"wrote {out}; edit it, then: fedsqueeze run {out}")
    return 0


def _param_count(name: str) -> int:
    from fedsqueeze.models.zoo import build_model, count_parameters
    return count_parameters(build_model(name, (1, 28, 28), 10))


def cmd_bench_engine(args) -> int:
    from fedsqueeze.bench.engine import main as bench_engine
    return bench_engine(args)


def _entropy_stage(console, updates, settings, label) -> None:
    from fedsqueeze.bench import entropy_stage

    rows = entropy_stage.measure(updates, settings.get("rdq", []))
    if rows:
        entropy_stage.print_rows(console, rows, label)


def cmd_bench_codecs(args) -> int:
    from rich.console import Console

    from fedsqueeze.bench import codecs as bench
    from fedsqueeze.bench.capture import capture_updates

    console = Console(width=160)
    out = Path(args.out)
    wanted = [c.strip() for c in args.codecs.split(",") if c.strip()] if args.codecs else None

    def settings(updates):
        return {k: v for k, v in bench.default_settings(updates).items() if wanted is None or k in wanted}

    if args.source in ("real", "both"):
        console.print(f"capturing real updates: FedAvg on {args.dataset}, CNN, {args.warmup} warm-up rounds ...")
        updates = capture_updates(dataset=args.dataset, warmup=args.warmup, clients=args.clients,
                                  data_dir=args.data_dir or "", cache=out / "updates.pt")
        chosen = settings(updates)
        bench.run(updates, "real", out, settings=chosen, repeats=args.repeats, console=console)
        _entropy_stage(console, updates, chosen, "real")
    if args.source in ("laplace", "both"):
        updates = bench.synthetic_laplace(args.dim)
        chosen = settings(updates)
        bench.run(updates, "laplace", out, settings=chosen, repeats=args.repeats, console=console)
        _entropy_stage(console, updates, chosen, "laplace")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedsqueeze", description="Communication-efficient federated learning "
                                "with real bytes on the wire.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run an experiment on the embedded simulation engine",
                       description="Run an experiment from a TOML config or a shipped preset by name "
                                   "(`fedsqueeze presets` lists them; `fedsqueeze init` writes a starter).")
    r.add_argument("config", nargs="?", help="experiment TOML file or preset name, e.g. digits-quick")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.lr=0.1 --set codec.up='topk(fraction=0.01)'")
    r.add_argument("--out", help="run directory (default: <output_dir>/<name>-<timestamp>); an existing run "
                                 "there is refused unless --resume or --overwrite")
    r.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its own files only; other files are kept, and a "
                        "folder that is not a run is never written over)")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    r.add_argument("--data-dir", help="where the dataset files are")
    r.add_argument("--workers", type=int, help="client worker processes (0 = in process)")
    r.add_argument("--vectorize", action="store_true", help="train a step's clients together (engine.vectorize)")
    r.add_argument("--rounds", type=int, help="number of rounds (shortcut for --set rounds=N)")
    r.add_argument("--device", help="where clients train and models are evaluated: auto (CUDA if available), cpu, cuda, cuda:N, mps" + " (shortcut for --set engine.device=...)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--budget-mb", type=float, metavar="MB",
                   help="keep the whole run (up + down) within MB megabytes: the rdq uplink codec's step is "
                        "chosen per upload to fit (needs codec.up = rdq and a fixed-size downlink)")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("compare", help="run several methods on one federation; table and plots of accuracy vs "
                                       "bytes vs time",
                       description="Run a suite (configs/suites/*.toml): every run on the same federation, cached and "
                                   "resumable; then a table (terminal, Markdown, CSV) of final accuracy, MB, MB/rounds/"
                                   "time to a target accuracy and ratios vs the baseline, and PNG plots.")
    c.add_argument("suite", help="suite TOML file, e.g. configs/suites/fmnist-noniid.toml")
    c.add_argument("--out", default="runs/compare", help="where run folders and results go (default runs/compare)")
    c.add_argument("--workers", type=int, help="client worker processes per run (0 = in process)")
    c.add_argument("--device", help="where clients train and models are evaluated: auto (CUDA if available), cpu, cuda, cuda:N, mps" + " for every run (a finished run counts as done on any device)")
    c.add_argument("--only", action="append", metavar="RUN", help="run only this suite entry (repeatable)")
    c.add_argument("--rerun", action="append", metavar="RUN", help="discard and redo this entry (repeatable)")
    c.add_argument("--report-only", action="store_true", help="no runs: table and plots from finished runs")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.set_defaults(func=cmd_compare)

    pe = sub.add_parser("personal", help="per-client personalised accuracy of a finished run, by client group",
                        description="Restore a run's last checkpoint and evaluate every client's personalised model on "
                                    "its held-out split; grouped as the algorithm groups clients (QuPeD: by bit-width), "
                                    "with deployed model sizes.")
    pe.add_argument("run", help="run directory")
    pe.add_argument("--csv", help="also write one row per client to this CSV")
    pe.set_defaults(func=cmd_personal)

    pl = sub.add_parser("plot", help="plot accuracy vs MB and vs rounds for one or more runs",
                        description="Plot one or more run directories on one chart (PNG).")
    pl.add_argument("runs", nargs="+", help="run directories")
    pl.add_argument("--out", help="output PNG (default: comparison.png in the current folder)")
    pl.add_argument("--metric", default="global_acc", choices=["global_acc", "personal_acc"])
    pl.add_argument("--title")
    pl.set_defaults(func=cmd_plot)

    ls = sub.add_parser("list", help="list algorithms, codecs, models, datasets and partitioners",
                        description="What exists, with one-line descriptions.")
    ls.add_argument("kind", nargs="?", help="algorithms | codecs | models | datasets | partitioners")
    ls.set_defaults(func=cmd_list)

    pr = sub.add_parser("presets", help="list the shipped experiment presets (run one by name)",
                        description="The presets shipped with the package, with one-line descriptions; "
                                    "`fedsqueeze run NAME` runs one from any directory.")
    pr.set_defaults(func=cmd_presets)

    ini = sub.add_parser("init", help="write a commented starter config",
                         description="Write a commented starter experiment TOML (never overwrites a file).")
    ini.add_argument("path", nargs="?", default="experiment.toml",
                     help="where to write it (default experiment.toml; a folder gets experiment.toml inside)")
    ini.set_defaults(func=cmd_init)

    b = sub.add_parser("bench", help="benchmarks (engine speed, codecs, vectorised clients)", description="Benchmarks.")
    bsub = b.add_subparsers(dest="bench", required=True, metavar="BENCH")
    be = bsub.add_parser("engine", help="engine wall time per round vs a plain PyTorch loop",
                         description="FedAvg on Fashion-MNIST: the engine vs a plain PyTorch loop doing the same "
                                     "SGD steps in the same process, alternated, medians and ratio.")
    be.add_argument("--models", default="mlp,cnn", help="comma-separated model names (default mlp,cnn)")
    be.add_argument("--rounds", type=int, default=5, help="measured rounds per side and model (default 5)")
    be.add_argument("--clients-per-round", type=int, default=10)
    be.add_argument("--dataset", default="fashion_mnist")
    be.add_argument("--data-dir")
    be.add_argument("--device", default="cpu", help="where both sides compute: cpu (default), cuda, cuda:N, mps, auto")
    be.add_argument("--out", default="runs/bench-engine", help="folder for the CSV")
    be.set_defaults(func=cmd_bench_engine)
    bc = bsub.add_parser("codecs", help="rate, distortion and speed of every codec vs the rate-distortion limit",
                         description="Every codec across its settings on real FedAvg updates (Fashion-MNIST, CNN) and "
                                     "on synthetic Laplace vectors: bits/parameter (headers included), NMSE, encode and "
                                     "decode MB/s, the Gaussian and Blahut-Arimoto limits; table, CSV and R-D plot.")
    bc.add_argument("--source", choices=["real", "laplace", "both"], default="both")
    bc.add_argument("--codecs", help="comma-separated codec ids (default: all registered)")
    bc.add_argument("--dataset", default="fashion_mnist")
    bc.add_argument("--data-dir")
    bc.add_argument("--warmup", type=int, default=3, help="FedAvg rounds before capturing updates")
    bc.add_argument("--clients", type=int, default=3, help="client updates captured")
    bc.add_argument("--dim", type=int, default=1_000_000, help="Laplace vector length")
    bc.add_argument("--repeats", type=int, default=5)
    bc.add_argument("--out", default="runs/bench-codecs")
    bc.set_defaults(func=cmd_bench_codecs)
    bf = bsub.add_parser("fuzz", help="hostile payloads against the decoders: only our own errors allowed",
                         description="Mutated payloads of every codec (truncation, bit flips, random bytes, frame "
                                     "length fields, body bytes and inflated varints re-framed with a valid CRC, "
                                     "inflated shapes, hostile header fields and codec configs, swapped codec ids, "
                                     "spliced bodies) through the server-side decode path, in worker processes with "
                                     "a per-case time limit, a watchdog and a memory cap. Prints per-codec counts, "
                                     "failures, the slowest case and the peak extra memory; exit 1 on any failure.")
    bf.add_argument("--cases", type=int, default=100_000,
                    help="cases PER CODEC (default 100,000; the total is this times the number of codecs)")
    bf.add_argument("--codecs", help="comma-separated codec ids (default: all registered)")
    bf.add_argument("--seed", type=int, default=0)
    bf.add_argument("--jobs", type=int, default=1, help="worker processes running cases in parallel (default 1)")
    bf.add_argument("--time-limit", type=float, default=2.0, help="seconds per case before it counts as a hang")
    bf.add_argument("--max-numel", type=int, default=1 << 22, help="element cap of the decoder")
    bf.add_argument("--mem-cap-mb", type=int, default=1024,
                    help="address space a worker may add to its size at start (MB); beyond it is a failure")
    bf.set_defaults(func=lambda a: __import__("fedsqueeze.bench.fuzz", fromlist=["main"]).main(a))
    bk = bsub.add_parser("kill", help="SIGKILL a run at random points, resume each time: metrics must be identical",
                         description="A small run (digits, SCAFFOLD, error-feedback uplink, simulated client faults) is "
                                     "killed with SIGKILL at random points — inside checkpoint and client-state writes, "
                                     "between a round's metrics and its checkpoint, or after a random delay — and "
                                     "resumed each time; some latest checkpoints are also truncated. Every finished run "
                                     "must match an uninterrupted one bit for bit (metrics, ledger, rejections, server "
                                     "state). Exit 1 otherwise.")
    bk.add_argument("--points", type=int, default=20, help="kills to land (default 20)")
    bk.add_argument("--rounds", type=int, default=6, help="rounds per run (default 6)")
    bk.add_argument("--seed", type=int, default=0, help="seed of the run and of the kill points")
    bk.add_argument("--out", help="keep the run folders here (default: a temporary folder, removed)")
    bk.add_argument("--quiet", action="store_true", help="only the result lines")
    bk.set_defaults(func=lambda a: __import__("fedsqueeze.bench.kill", fromlist=["main"]).main(a))
    bb = bsub.add_parser("badinput", help="bad configs, options and data files: each must give one clean error line",
                         description="Run the table of bad inputs (fedsqueeze.bench.badinput.CASES: unknown names, "
                                     "out-of-range and mistyped values, malformed TOML and --set, bad codec specs, "
                                     "missing or corrupt data files, bad resumes) through this command line; print "
                                     "how many gave exactly one 'error:' line naming the problem and the fix, exit "
                                     "code 2 and no traceback.")
    bb.add_argument("--verbose", action="store_true", help="also print every case with its error line")
    bb.set_defaults(func=lambda a: __import__("fedsqueeze.bench.badinput", fromlist=["main"]).main(a))
    bt = bsub.add_parser("throughput", help="client updates/s (engine with 0/1/2 workers vs plain PyTorch) and "
                                            "peak RSS vs total clients",
                         description="Speed: FedAvg on Fashion-MNIST, the plain PyTorch loop and the engine in each "
                                     "worker mode, interleaved; medians of client updates/s and ratios. Memory: FedPer "
                                     "with a stored head per client, peak RSS of fresh subprocesses for each total "
                                     "number of clients and clients per round. One torch thread per process.")
    bt.add_argument("--models", default="mlp,cnn", help="comma-separated model names (default mlp,cnn)")
    bt.add_argument("--rounds", type=int, default=5, help="measured rounds per side and model (default 5)")
    bt.add_argument("--workers", default="0,1,2", help="engine worker counts, 0 = in process (default 0,1,2)")
    bt.add_argument("--clients-per-round", type=int, default=10)
    bt.add_argument("--dataset", default="fashion_mnist")
    bt.add_argument("--data-dir")
    bt.add_argument("--memory-clients", default="1000,10000", help="total clients per memory run (default 1000,10000)")
    bt.add_argument("--memory-per-round", default="10,50", help="clients per round in the memory runs (default 10,50)")
    bt.add_argument("--memory-rounds", type=int, default=3, help="rounds per memory run (default 3)")
    bt.add_argument("--device", default="cpu", help="where the speed runs compute: cpu (default), cuda, cuda:N, mps, "
                    "auto (memory runs stay on the CPU)")
    bt.add_argument("--skip-speed", action="store_true", help="memory only")
    bt.add_argument("--skip-memory", action="store_true", help="speed only")
    bt.add_argument("--out", default="runs/bench-throughput", help="folder for throughput.csv and memory.csv")
    bt.set_defaults(func=lambda a: __import__("fedsqueeze.bench.throughput", fromlist=["main"]).main(a))
    bv = bsub.add_parser("vectorize", help="local training of N clients, sequential vs vectorised (engine.vectorize)",
                         description="The same clients' local SGD on synthetic 1x28x28 data, the sequential loop vs "
                                     "torch.func.vmap (fedsqueeze.engine.vectorized), alternated; medians of client-steps/s, "
                                     "the ratio and max|dw|.")
    bv.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cpu (default cpu)")
    bv.add_argument("--model", default="mlp", help="mlp, cnn or mlp,cnn (default mlp)")
    bv.add_argument("--clients", type=int, help="clients (default 100 for mlp, 50 for cnn)")
    bv.add_argument("--steps", type=int, default=15, help="local SGD steps per client (default 15)")
    bv.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    bv.add_argument("--repeats", type=int, default=3, help="timed repeats per side (default 3)")
    bv.set_defaults(func=lambda a: __import__("fedsqueeze.bench.vectorize", fromlist=["main"]).main(a))
    _add_flower(sub)
    return p


def _add_flower(sub) -> None:
    from fedsqueeze.flower.commands import add_parser
    add_parser(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except FedsqueezeError as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with `fedsqueeze run --resume RUN_DIR`", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
