"""``run`` arguments, resuming damaged runs, and the reports on them (``plot``, ``personal``)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fedsqueeze.bench.badinput import Case
from fedsqueeze.bench.badinput_cases.writers import (CONFIG, RUN, all_of, as_folder, deep, edit_config, file, put,
                                                    run_then)

RESUME = ("run", "--resume", "{dir}/done", "--quiet")
PLOT = ("plot", "{dir}/done", "--out", "{dir}/p.png")
PERSONAL = ("personal", "{dir}/done")
# what the error line must name (problem, fix) in several cases
DAMAGED_CONFIG = ("config.json is damaged", "restore it")
NOT_A_RUN = ("is not a run directory (no metrics.jsonl)", "made by `fedsqueeze run`")
MISSING_FOLDER = ("does not exist", "create it or choose another place")
INSIDE_THE_RUN = ("is inside the run", "reports never write into a run")


def _on_run(name: str, problem: str, fix: str, *argv: str, change: Callable[[Path], None] | None = None) -> Case:
    """The command line ``argv`` on a finished one-round run at {dir}/done, first changed by ``change``."""
    return Case(name, problem, fix, argv=argv, files=run_then(change))


CASES: list[Case] = [
    # -- `run` arguments
    Case("--budget-mb nan", "--budget-mb must be a finite number", "got nan", {"codec.up": "rdq"},
         args=("--budget-mb", "nan")),
    Case("--budget-mb inf", "--budget-mb must be a finite number", "got inf", {"codec.up": "rdq"},
         args=("--budget-mb", "inf")),
    Case("--budget-mb zero", "--budget-mb must be a finite number", "> 0", {"codec.up": "rdq"}, args=("--budget-mb", "0")),
    Case("--budget-mb a word", "argument --budget-mb: invalid float value: 'lots'", "fedsqueeze run --help",
         args=("--budget-mb", "lots")),
    Case("--workers a word", "argument --workers: invalid int value: 'abc'", "fedsqueeze run --help",
         args=("--workers", "abc")),
    Case("--workers negative", "'engine.workers' = -1 is invalid", "in [0, 64]", args=("--workers", "-1")),
    Case("--rounds zero", "'rounds' = 0 is invalid", "an integer >= 1", args=("--rounds", "0")),
    Case("--rounds a billion", "'rounds' = 1000000000 is invalid", "at most 1,000,000", args=("--rounds", "1000000000")),
    Case("--device misspelt", "'engine.device' = 'gpu0' is invalid", "'cuda:n'", args=("--device", "gpu0")),
    Case("--device with a quote", "'engine.device' = 'cpu\"' is invalid", "'cuda:n'", args=("--device", 'cpu"')),
    Case("--out a file", "exists and is not a folder", "choose another --out",
         argv=(*RUN[:3], "--out", "{dir}/f"), files=all_of(CONFIG, file("f", "mine"))),
    Case("--out below a file", "not a directory", "a part of that path is a file",
         argv=(*RUN[:3], "--out", "{dir}/f/run"), files=all_of(CONFIG, file("f", "mine"))),
    Case("--out where nothing can be created", "cannot use '/proc/", "fix the path",
         argv=(*RUN[:3], "--out", "/proc/fedsqueeze-nope/run"), files=CONFIG),
    Case("--out a user's folder", "is a non-empty folder that is not a fedsqueeze run", "choose a new or empty --out",
         argv=(*RUN[:3], "--out", "{dir}/mine"), files=all_of(CONFIG, file("mine/notes.txt", "mine"))),
    Case("--out an existing run", "already holds a run", "continue it with `fedsqueeze run --resume",
         argv=(*RUN[:3], "--out", "{dir}/done"), files=all_of(CONFIG, run_then())),
    Case("CONFIG and --resume", "contradicts it: drop config", "--rounds",
         argv=("run", "{dir}/c.toml", "--resume", "{dir}/done", "--quiet"), files=all_of(CONFIG, run_then())),
    _on_run("--resume with --out elsewhere", "contradicts it: drop --out", "start a new run",
            *RESUME[:3], "--out", "{dir}/other", "--quiet"),
    _on_run("--resume with --overwrite", "--resume continues a run and --overwrite replaces it", "pass one of them",
            *RESUME[:3], "--overwrite", "--quiet"),
    _on_run("--resume with --budget-mb", "--budget-mb is fixed when a run starts", "resume without it",
            *RESUME[:3], "--budget-mb", "5", "--quiet"),
    Case("--data-dir that does not exist", "does not exist or is not a folder", "fix the path",
         {"data.source": "fashion_mnist"}, args=("--data-dir", "{dir}/no\tsuch 'folder\"")),
    Case("unknown command", "invalid choice: 'runn'", "fedsqueeze --help", argv=("runn", "x")),
    Case("unknown option", "unrecognized arguments: --roundz", "fedsqueeze --help",
         argv=("run", "{dir}/c.toml", "--roundz", "3"), files=CONFIG),
    Case("no command", "the following arguments are required: command", "fedsqueeze --help", argv=("--debug",)),
    # -- resuming damaged runs
    _on_run("resume with an edited config.json", "config.json is damaged", "restore it from the run's config.toml",
            *RESUME, change=put("config.json", "{garbage")),
    _on_run("resume with config.json a list", "config.json is damaged", "start a new run", *RESUME,
            change=put("config.json", "[1, 2]")),
    _on_run("resume with config.json not UTF-8", *DAMAGED_CONFIG, *RESUME, change=put("config.json", b"\xff\xfe{}")),
    _on_run("resume with config.json nested 100,000 deep", *DAMAGED_CONFIG, *RESUME,
            change=put("config.json", deep(100_000))),
    _on_run("resume without config.json", "is not a fedsqueeze run directory (no config.json)",
            "made by `fedsqueeze run`", *RESUME, change=lambda run: (run / "config.json").unlink()),
    *[_on_run(f"resume with {what}", "no intact previous checkpoint", "--overwrite", *RESUME[:3], "--rounds", "2",
              "--quiet", change=change)
      for what, change in (("a corrupt only checkpoint", put("checkpoint.pt", b"not a checkpoint")),
                           ("checkpoint.pt a folder", as_folder("checkpoint.pt")))],
    _on_run("resume with config.json a folder", "config.json': is a directory", "give a file name", *RESUME,
            change=as_folder("config.json")),
    _on_run("plot with metrics.jsonl a folder", *NOT_A_RUN, *PLOT, change=as_folder("metrics.jsonl")),
    Case("resume a file", "is not a fedsqueeze run directory", "made by `fedsqueeze run`",
         argv=("run", "--resume", "{dir}/f", "--quiet"), files=file("f", "x")),
    Case("resume a folder that does not exist", "is not a fedsqueeze run directory", "made by `fedsqueeze run`",
         argv=("run", "--resume", "{dir}/nowhere", "--quiet")),
    # -- plot
    _on_run("plot a damaged run", "metrics.jsonl is damaged at line 1", "restore the file", *PLOT,
            change=put("metrics.jsonl", "{junk\n")),
    _on_run("plot metrics that are not UTF-8", "metrics.jsonl is damaged (not utf-8 text)", "cannot be read",
            *PLOT, change=put("metrics.jsonl", b"\xff\n")),
    _on_run("plot a record that is a list", "metrics.jsonl is damaged at line 1", "restore the file", *PLOT,
            change=put("metrics.jsonl", "[1, 2]\n")),
    _on_run("plot a run with a damaged config.json", *DAMAGED_CONFIG, *PLOT, change=put("config.json", "{}")),
    _on_run("plot to a .txt", "must end in .png, .pdf, .svg", "p.txt", *PLOT[:3], "{dir}/p.txt"),
    _on_run("plot into a missing folder", *MISSING_FOLDER, *PLOT[:3], "{dir}/no/p.png"),
    _on_run("plot into the run", *INSIDE_THE_RUN, *PLOT[:3], "{dir}/done/p.png"),
    Case("plot a folder that is not a run", *NOT_A_RUN, argv=("plot", "{dir}/mine", "--out", "{dir}/p.png"),
         files=file("mine/notes.txt", "mine")),
    Case("plot a missing run", *NOT_A_RUN, argv=("plot", "{dir}/nope", "--out", "{dir}/p.png")),
    Case("plot a bad metric", "argument --metric: invalid choice: 'acc'", "fedsqueeze plot --help",
         argv=("plot", "{dir}/done", "--metric", "acc")),
    # -- personal
    _on_run("personal --csv a folder", "--csv", "is a folder; give a file name", *PERSONAL, "--csv", "{dir}"),
    _on_run("personal --csv inside the run", *INSIDE_THE_RUN, *PERSONAL, "--csv", "{dir}/done/c.csv"),
    _on_run("personal --csv into a missing folder", *MISSING_FOLDER, *PERSONAL, "--csv", "{dir}/no/c.csv"),
    _on_run("personal --csv to a .png", "must end in .csv, .txt", "or have no suffix", *PERSONAL, "--csv",
            "{dir}/c.png"),
    _on_run("personal --csv on a full disk", "no space left on device", "free some disk space", *PERSONAL, "--csv",
            "/dev/full"),
    Case("personal on a missing run", "is not a fedsqueeze run directory", "made by `fedsqueeze run`",
         argv=("personal", "{dir}/nope")),
    _on_run("personal with a damaged config.json", *DAMAGED_CONFIG, *PERSONAL, change=put("config.json", "not json")),
    *[_on_run(f"personal with an edited {what}", "config.json does not match the run's checkpoint", "config.toml",
              *PERSONAL, change=edit_config(*edit))
      for what, edit in (("config.json", ("model", "name", "mlp")), ("federation", ("data", "num_clients", 3)))],
    _on_run("personal with a corrupt checkpoint", "corrupt", "--resume", *PERSONAL,
            change=put("checkpoint.pt", b"\x00" * 64)),
]
