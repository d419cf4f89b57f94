"""What the commands print: the stderr console, the live progress bar, one plain line per round, the
summary table, and user text and OS errors shortened to one line."""
from __future__ import annotations


def console():
    from rich.console import Console
    return Console(stderr=True)


def progress_printer(cfg_rounds: int, console):
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


class Quiet:
    """A progress display that shows nothing (``--quiet``)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


def round_line(cfg_rounds: int):
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


def summary_table(result, console) -> None:
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


def one_line(text: str, limit: int = 300) -> str:
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
