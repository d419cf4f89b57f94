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


def _round_line(cfg_rounds: int):
    """One plain line per round on stdout (output redirected to a file or a pipe: no progress bar there)."""
    def line(rec: dict) -> None:
        acc = rec.get("global_acc")
        pacc = rec.get("personal_acc")
        text = f"round {rec['round']}/{cfg_rounds}"
        text += f"  acc {100 * acc:.2f}%" if acc is not None else ""
        if acc is None and rec.get("global_loss") is not None:
            text += f"  loss {rec['global_loss']:.4g}"
        text += f"  personal {100 * pacc:.2f}%" if pacc is not None else ""
        text += (f"  up {rec['bytes_up'] / 1e6:.3f} MB  down {rec['bytes_down'] / 1e6:.3f} MB"
                 f"  {rec['round_s'] + rec.get('eval_s', 0.0):.1f} s")
        print(text, flush=True)
    return line


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
    fedsqueeze.api._check_rebuildable(cfg, None)  # a part that cannot be found: one line, before any output
    callbacks = []
    if args.log_to:
        from fedsqueeze.callbacks import trackers
        callbacks = trackers(args.log_to)  # a missing package is one line, before the run starts
    console.print(f"[bold]fedsqueeze[/] {cfg.name}: {cfg.algorithm_name} · {cfg.model.name} · {cfg.data.source} "
                  f"({cfg.data.num_clients} clients, {cfg.data.partition}) · up={cfg.codec.up} down={cfg.codec.down}")
    progress = None
    prog = None
    if not args.quiet:
        updates = []
        if console.is_terminal:
            prog, bar = _progress_printer(cfg.rounds, console)
            updates.append(bar)
            prog.start()
        if not sys.stdout.isatty():
            updates.append(_round_line(cfg.rounds))
        progress = (lambda rec: [u(rec) for u in updates]) if updates else None
    try:
        result = fedsqueeze.run(cfg, run_dir=run_dir, resume=bool(args.resume), overwrite=args.overwrite,
                                progress=progress, callbacks=callbacks,
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
    if args.seeds is not None:
        from fedsqueeze.compare.suite import parse_seeds
        suite = suite.with_seeds(parse_seeds(args.seeds, "--seeds"))
    if args.report_only:
        report(suite, Path(args.out) / suite.name, console=console)
        return 0

    def progress_factory(cfg):
        return _progress_printer(cfg.rounds, console) if not args.quiet else (_Quiet(), None)

    run_suite(suite, args.out, workers=args.workers, device=args.device, rerun=tuple(args.rerun or ()), only=tuple(args.only or ()),
              console=console, progress_factory=progress_factory, jobs=args.jobs)
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

    from fedsqueeze.catalog import CATALOG, PSEUDO_METRICS
    from fedsqueeze.registry import ALL

    console = _console()
    kinds = [args.kind] if args.kind else list(ALL)
    for kind in kinds:
        if kind not in ALL:
            raise FedsqueezeError(f"unknown kind {kind!r}; choose from {', '.join(ALL)}")
        reg = ALL[kind]
        known = CATALOG.get(kind, {})  # built-ins: described without importing them (fedsqueeze.catalog)
        t = Table(title=kind, show_header=False, title_justify="left")
        t.add_column("name", style="bold")
        t.add_column("description")
        if kind == "metrics":
            for name, desc in PSEUDO_METRICS.items():
                t.add_row(name, desc)
        for name in reg.names():
            if name in known and isinstance(reg._entries.get(name), str):
                desc, size = known[name]
            else:
                desc, size = reg.describe(name), None
                if kind == "models":
                    try:
                        size = _param_count(name)
                    except FedsqueezeError:
                        size = None
            if kind == "models":
                desc += (f" [dim]({size:,} parameters on 1x28x28, 10 classes)[/]" if size is not None
                         else " [dim](sequence model: size depends on the vocabulary)[/]")
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
    r.add_argument("--quiet", action="store_true", help="no progress bar (and no per-round lines)")
    r.add_argument("--log-to", metavar="TRACKERS",
                   help="also log every round to experiment trackers: tensorboard, mlflow, wandb (comma-separated; "
                        "each an extra, e.g. pip install 'fedsqueeze[tensorboard]')")
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
    c.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process with one torch thread "
                   "(default 1; results are the same as one at a time)")
    c.add_argument("--device", help="where clients train and models are evaluated: auto (CUDA if available), cpu, cuda, cuda:N, mps" + " for every run (a finished run counts as done on any device)")
    c.add_argument("--only", action="append", metavar="RUN", help="run only this suite entry, or ENTRY/seedN with --seeds (repeatable)")
    c.add_argument("--rerun", action="append", metavar="RUN", help="discard and redo this entry (all its seeds), or ENTRY/seedN (repeatable)")
    c.add_argument("--report-only", action="store_true", help="no runs: table and plots from finished runs")
    c.add_argument("--seeds", metavar="LIST", help="run every entry once per seed, e.g. 0,1,2 (folders RUN/seedN; "
                                                    "overrides the suite's seeds = [...]); tables show mean ± 95%% "
                                                    "t-interval, plots mean curves with min-max bands")
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

    ls = sub.add_parser("list", help="list algorithms, codecs, models, datasets, partitioners, losses and metrics",
                        description="What exists, with one-line descriptions.")
    ls.add_argument("kind", nargs="?", help="algorithms | codecs | models | datasets | partitioners | losses | metrics")
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

    _add_bench(sub)
    _add_flower(sub)
    return p


def _add_bench(sub) -> None:
    from fedsqueeze.bench.commands import add_parser
    add_parser(sub)


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
