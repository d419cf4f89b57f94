"""The commands that train: ``fedsqueeze run`` (one experiment) and ``fedsqueeze compare`` (a suite)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

from fedsqueeze.cli.output import Quiet, console as _console, one_line, progress_printer, round_line, summary_table
from fedsqueeze.errors import FedsqueezeError


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
        raise FedsqueezeError(f"--resume {one_line(args.resume, 100)} continues that run with its own saved "
                              f"config; CONFIG {one_line(args.config, 100)} contradicts it: drop CONFIG (change "
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
    short = lambda v: escape(one_line(v, 120))  # noqa: E731
    console.print(f"[bold]fedsqueeze[/] {short(cfg.name)}: {short(cfg.algorithm_name)} · {short(cfg.model.name)} · "
                  f"{short(cfg.data.source)} ({cfg.data.num_clients} clients, {short(cfg.data.partition)}) · "
                  f"up={short(cfg.codec.up)} down={short(cfg.codec.down)}")
    progress = None
    prog = None
    if not args.quiet:
        updates = []
        if console.is_terminal:
            prog, bar = progress_printer(cfg.rounds, console)
            updates.append(bar)
            prog.start()
        if not sys.stdout.isatty():
            updates.append(round_line(cfg.rounds))
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
    summary_table(result, console)
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
        return progress_printer(cfg.rounds, console) if not args.quiet else (Quiet(), None)

    run_suite(suite, args.out, workers=args.workers, device=args.device, rerun=tuple(args.rerun or ()), only=tuple(args.only or ()),
              console=console, progress_factory=progress_factory, jobs=args.jobs)
    return 0
