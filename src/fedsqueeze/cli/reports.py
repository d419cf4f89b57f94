"""The commands that read finished runs: ``fedsqueeze personal`` (per-client accuracy) and ``fedsqueeze plot``.
Their report files never go inside a run (``check_report_target``)."""
from __future__ import annotations

from pathlib import Path

from fedsqueeze.cli.output import one_line
from fedsqueeze.errors import FedsqueezeError

PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def cmd_personal(args) -> int:
    import csv

    from rich.table import Table

    from fedsqueeze.metrics.personal import client_rows, group_rows

    if args.csv:
        check_report_target(Path(args.csv), [Path(args.run)], "--csv", (".csv", ".txt", ""))
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
    check_report_target(out, runs, "--out", PLOT_SUFFIXES)
    for rd in runs:  # every run readable before anything is drawn or written
        if not rd.is_dir() or not (rd / "metrics.jsonl").is_file():
            raise FedsqueezeError(f"{one_line(rd, 200)} is not a run directory (no metrics.jsonl); pass folders "
                                  "made by `fedsqueeze run`")
        read_history(rd)
        check_run_config(rd)
    plot_runs(runs, out, metric=args.metric, title=one_line(args.title, 200) if args.title else None)
    print(f"wrote {out}")
    return 0


def check_report_target(out: Path, runs: list[Path], flag: str, suffixes: tuple[str, ...]) -> None:
    """A report file must be a file name (not a folder), with a known suffix, in an existing folder, and
    outside every run it reads (``plot`` and ``personal`` never modify a run)."""
    if out.is_dir():
        raise FedsqueezeError(f"{flag} {one_line(out, 200)} is a folder; give a file name, e.g. "
                              f"{out / ('clients' + (suffixes[0] or '.csv'))}")
    if out.suffix.lower() not in suffixes:
        raise FedsqueezeError(f"{flag} {one_line(out, 200)} must end in {', '.join(s for s in suffixes if s)}"
                              f"{' (or have no suffix)' if '' in suffixes else ''}")
    parent = out.parent
    if not parent.is_dir():
        raise FedsqueezeError(f"{flag} {one_line(out, 200)}: the folder {one_line(parent, 200)} does not exist; "
                              "create it or choose another place")
    for rd in runs:
        if rd.is_dir() and (parent.resolve() == rd.resolve() or parent.resolve().is_relative_to(rd.resolve())):
            raise FedsqueezeError(f"{flag} {one_line(out, 200)} is inside the run {one_line(rd, 200)}; reports "
                                  "never write into a run: choose a place outside it")
