"""The command line: ``fedsqueeze run | compare | personal | plot | list | presets | init | bench | flower | spatl``.

``--help`` on each. torch and the other heavy modules are imported inside the commands that need them, so
``fedsqueeze --help``, ``presets`` and ``init`` start in a fraction of a second.
"""
from __future__ import annotations

import argparse
import math
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
        overrides.append(("data.dir", args.data_dir))  # a value, never pasted into TOML text
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
        overrides.append(("engine.device", args.device))
    if args.resume and args.config:
        raise FedsqueezeError(f"--resume {_one_line(args.resume, 100)} continues that run with its own saved "
                              f"config; CONFIG {_one_line(args.config, 100)} contradicts it: drop CONFIG (change "
                              "rounds with --rounds) or start a new run without --resume")
    if args.budget_mb is not None and not (math.isfinite(args.budget_mb) and args.budget_mb > 0):
        raise FedsqueezeError(f"--budget-mb must be a finite number of megabytes > 0, got {args.budget_mb!r}")
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
    from rich.markup import escape  # user strings: truncated (rich wraps long words in quadratic time), escaped
    short = lambda v: escape(_one_line(v, 120))  # noqa: E731
    console.print(f"[bold]fedsqueeze[/] {short(cfg.name)}: {short(cfg.algorithm_name)} · {short(cfg.model.name)} · "
                  f"{short(cfg.data.source)} ({cfg.data.num_clients} clients, {short(cfg.data.partition)}) · "
                  f"up={short(cfg.codec.up)} down={short(cfg.codec.down)}")
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
    except OSError as e:  # a write error (a full disk) carries no file name: name the run folder
        e.filename = e.filename or str(run_dir if run_dir is not None else cfg.output_dir)
        raise
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
    if args.workers is not None or args.device is not None:  # checked as config values, before any folder
        from fedsqueeze.config import apply_overrides, from_dict
        extra = [("engine.workers", args.workers)] if args.workers is not None else []
        extra += [("engine.device", args.device)] if args.device is not None else []
        from_dict(apply_overrides(suite.runs[0].config.to_dict(), extra))
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

    if args.csv:
        _check_report_target(Path(args.csv), [Path(args.run)], "--csv", (".csv", ".txt", ""))
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
        try:
            with open(args.csv, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
        except OSError as e:  # e.g. a full disk: name the file (a write error carries no file name)
            e.filename = e.filename or args.csv
            raise
        print(f"wrote {args.csv}")
    return 0


def cmd_plot(args) -> int:
    from fedsqueeze.metrics.plots import plot_runs

    from fedsqueeze.metrics.results import check_run_config, read_history

    out = Path(args.out) if args.out else Path("comparison.png")  # never inside a run: reports leave runs as they are
    if out.is_dir():
        out = out / "comparison.png"
    runs = [Path(r) for r in args.runs]
    _check_report_target(out, runs, "--out", PLOT_SUFFIXES)
    for rd in runs:  # every run readable before anything is drawn or written
        if not rd.is_dir() or not (rd / "metrics.jsonl").is_file():
            raise FedsqueezeError(f"{_one_line(rd, 200)} is not a run directory (no metrics.jsonl); pass folders "
                                  "made by `fedsqueeze run`")
        read_history(rd)
        check_run_config(rd)
    plot_runs(runs, out, metric=args.metric, title=_one_line(args.title, 200) if args.title else None)
    print(f"wrote {out}")
    return 0


PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def _check_report_target(out: Path, runs: list[Path], flag: str, suffixes: tuple[str, ...]) -> None:
    """A report file must be a file name (not a folder), with a known suffix, in an existing folder, and
    outside every run it reads (``plot`` and ``personal`` never modify a run)."""
    if out.is_dir():
        raise FedsqueezeError(f"{flag} {_one_line(out, 200)} is a folder; give a file name, e.g. "
                              f"{out / ('clients' + (suffixes[0] or '.csv'))}")
    if out.suffix.lower() not in suffixes:
        raise FedsqueezeError(f"{flag} {_one_line(out, 200)} must end in {', '.join(s for s in suffixes if s)}"
                              f"{' (or have no suffix)' if '' in suffixes else ''}")
    parent = out.parent
    if not parent.is_dir():
        raise FedsqueezeError(f"{flag} {_one_line(out, 200)}: the folder {_one_line(parent, 200)} does not exist; "
                              "create it or choose another place")
    for rd in runs:
        if rd.is_dir() and (parent.resolve() == rd.resolve() or parent.resolve().is_relative_to(rd.resolve())):
            raise FedsqueezeError(f"{flag} {_one_line(out, 200)} is inside the run {_one_line(rd, 200)}; reports "
                                  "never write into a run: choose a place outside it")


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
    p = _Parser(prog="fedsqueeze", description="Communication-efficient federated learning "
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
    _add_spatl(sub)
    return p


def _add_bench(sub) -> None:
    from fedsqueeze.bench.commands import add_parser
    add_parser(sub)


def _add_spatl(sub) -> None:
    from fedsqueeze.algorithms.spatl_pretrain import add_parser
    add_parser(sub)


def _add_flower(sub) -> None:
    from fedsqueeze.flower.commands import add_parser
    add_parser(sub)


class _Parser(argparse.ArgumentParser):
    """argparse with the project's error format: one ``error:`` line naming the fix, exit code 2 (no usage
    block: ``--help`` prints it)."""

    def error(self, message: str):  # type: ignore[override]
        print(f"error: {self.prog}: {message}; see `{self.prog} --help`", file=sys.stderr)
        sys.exit(2)


def _one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, at most ``limit`` characters (a user's 100 KB value is not echoed whole)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit] + f"... ({len(flat):,} characters)"


def os_error_line(e: OSError) -> str:
    """One line for an OS error (disk full, permissions, a path through a file): what, where, the fix."""
    import errno

    path = e.filename if e.filename is not None else "a file"
    what = e.strerror or type(e).__name__
    fix = {errno.ENOSPC: "free some disk space (or choose another --out) and run again",
           errno.EDQUOT: "free some disk space (or choose another --out) and run again",
           errno.EACCES: "fix its permissions or choose another place",
           errno.EPERM: "fix its permissions or choose another place",
           errno.EROFS: "the file system is read-only: choose another place",
           errno.ENOTDIR: "a part of that path is a file, not a folder: fix the path",
           errno.EISDIR: "it is a folder: give a file name",
           errno.ENOENT: "a folder on that path does not exist: fix the path or create it",
           errno.EEXIST: "a file of that name is in the way where a folder is needed: fix the path",
           errno.ENAMETOOLONG: "shorten the path"}.get(e.errno, "check the path, its permissions and free space")
    return f"cannot use {str(path)!r}: {what}; {fix}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except FedsqueezeError as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {_one_line(e, 2000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with `fedsqueeze run --resume RUN_DIR`", file=sys.stderr)
        return 130
    except OSError as e:  # disk full, read-only or missing folders, permissions: the path and the fix
        if args.debug:
            traceback.print_exc()
        print(f"error: {_one_line(os_error_line(e), 2000)}", file=sys.stderr)
        return 2
    except (RecursionError, MemoryError) as e:
        if args.debug:
            traceback.print_exc()
        what = "nested too deeply" if isinstance(e, RecursionError) else "too large for this machine's memory"
        print(f"error: an input is {what}; make the config, spec or file smaller (--debug shows where)",
              file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001  last resort: a bug, not a user mistake; exit 1 so tests notice
        if args.debug:
            traceback.print_exc()
        print(f"error: internal error ({type(e).__name__}: {_one_line(e, 200)}); this is a bug in fedsqueeze: "
              "rerun with --debug for the traceback and please report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
