"""The command line: ``fedsqueeze run | compare | personal | plot | list | presets | init | bench | flower | spatl``.

``--help`` on each. torch and the other heavy modules are imported inside the commands that need them, so
``fedsqueeze --help``, ``presets`` and ``init`` start in a fraction of a second.

This module builds the parser and runs a command, turning errors into one ``error:`` line; the commands
are in ``experiments`` (run, compare), ``reports`` (personal, plot) and ``listing`` (list, presets, init),
what they print in ``output``; ``bench``, ``flower`` and ``spatl`` add their own subcommands.
"""
from __future__ import annotations

import argparse
import sys
import traceback

from fedsqueeze.cli.experiments import cmd_compare, cmd_run
from fedsqueeze.cli.listing import cmd_init, cmd_list, cmd_presets
from fedsqueeze.cli.output import one_line as _one_line, os_error_line
from fedsqueeze.cli.reports import PLOT_SUFFIXES, cmd_personal, cmd_plot
from fedsqueeze.errors import FedsqueezeError

__all__ = ["PLOT_SUFFIXES", "build_parser", "cmd_compare", "cmd_init", "cmd_list", "cmd_personal", "cmd_plot",
           "cmd_presets", "cmd_run", "main", "os_error_line"]


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

