"""``fedsqueeze bench badinput``: bad configs, options and data files through the real command line.

``CASES`` is a table of mistakes users make — unknown names, out-of-range or mistyped values,
impossible combinations, malformed TOML and ``--set`` syntax, bad codec specs, missing or corrupt
dataset files, resuming what cannot be resumed. Each case is run through ``fedsqueeze.cli.main``
(in this process, with the case's folder as the working directory) and must end with exit code 2 and
exactly one line ``error: ...`` that names the problem and the fix (both checked by a phrase per case),
with no traceback, within ``CASE_SECONDS``, and with the case's folder byte-for-byte as it was (a
snapshot of the tree before and after: nothing created, removed or changed). The hostile and careless
inputs beyond the first table are in ``fedsqueeze.bench.badinput_cases``. The test suite
(``tests/test_bad_input.py``) runs the same table; this command prints the coverage figure.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsqueeze.config import to_toml

DELETE = object()  # as a value in Case.set: remove that key from the base config

BASE: dict[str, Any] = {
    "name": "bad-input", "seed": 0, "rounds": 1,
    "data": {"source": "digits", "num_clients": 4, "partition": "iid"},
    "model": {"name": "logreg"},
    "train": {"clients_per_round": 2, "local_steps": 1, "batch_size": 16, "lr": 0.1},
    "algorithm": {"name": "fedavg"},
    "eval": {"every": 1, "personal_every": 0},
    "engine": {"checkpoint_every": 1},
}


@dataclass(frozen=True)
class Case:
    """One bad input. ``problem`` and ``fix``: phrases the error line must contain (case-insensitive)."""
    name: str
    problem: str
    fix: str
    set: dict[str, Any] = field(default_factory=dict)   # dotted key -> value (or DELETE) on BASE
    toml: str | None = None        # the config file's text instead of BASE (+ set)
    args: tuple[str, ...] = ()     # extra arguments after `run CONFIG`; "{dir}" = the case's folder
    argv: tuple[str, ...] = ()     # the whole command line instead of `run CONFIG ...`
    files: Callable[[Path], None] | None = None  # writes data files into the case's folder first


# ---- fake Fashion-MNIST files (tiny, written per case) ------------------------------------------
def idx_bytes(magic: int, dims: tuple[int, ...], data: bytes | None = None) -> bytes:
    """An IDX file: big-endian magic and dims, then the bytes (zeros unless given)."""
    head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    return head + (bytes(int(np.prod(dims))) if data is None else data)


def fake_fashion(folder: Path, *, n_train: int = 12, n_test: int = 4, **replace: bytes) -> None:
    """Four valid tiny IDX files (28x28 images, labels 0..9) in ``folder``; ``replace`` swaps one
    file's bytes by its role (train_images, train_labels, test_images, test_labels)."""
    from fedsqueeze.data.sources import FASHION_FILES, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC

    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "train_images": idx_bytes(IDX_IMAGES_MAGIC, (n_train, 28, 28)),
        "train_labels": idx_bytes(IDX_LABELS_MAGIC, (n_train,), bytes(i % 10 for i in range(n_train))),
        "test_images": idx_bytes(IDX_IMAGES_MAGIC, (n_test, 28, 28)),
        "test_labels": idx_bytes(IDX_LABELS_MAGIC, (n_test,), bytes(i % 10 for i in range(n_test))),
    }
    files.update(replace)
    for role, data in files.items():
        (folder / FASHION_FILES[role]).write_bytes(data)


def _fashion(**replace: bytes) -> Callable[[Path], None]:
    return lambda folder: fake_fashion(folder / "fmnist", **replace)


def _corrupt_gzip(folder: Path) -> None:
    from fedsqueeze.data.sources import FASHION_FILES

    fake_fashion(folder / "fmnist")
    p = folder / "fmnist" / FASHION_FILES["train_images"]
    p.unlink()
    p.with_name(p.name + ".gz").write_bytes(gzip.compress(b"x" * 100)[:15])


_FINISHED: dict[str, Path] = {}  # one real run per process, copied into each case that needs it


def _finished_run(folder: Path) -> None:
    """A real one-round run (with its checkpoint) to resume, as ``folder/done``."""
    import atexit
    import shutil

    import fedsqueeze

    if "run" not in _FINISHED or not _FINISHED["run"].is_dir():
        keep = Path(tempfile.mkdtemp(prefix="fedsqueeze-badinput-run-"))
        atexit.register(shutil.rmtree, keep, True)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            fedsqueeze.run(dict(BASE), run_dir=keep / "done", plot=False)
        _FINISHED["run"] = keep / "done"
    shutil.copytree(_FINISHED["run"], folder / "done", symlinks=True)


FMNIST = {"data.source": "fashion_mnist", "data.dir": "{dir}/fmnist"}
_L, _I = 0x00000801, 0x00000803  # IDX magics: labels, images

CASES: list[Case] = [
    # -- names that are not registered
    Case("unknown algorithm", "unknown algorithm 'fedavgg'", "did you mean 'fedavg'", {"algorithm.name": "fedavgg"}),
    Case("unknown codec", "unknown codec 'topkk'", "did you mean 'topk'", {"codec.up": "topkk(fraction=0.1)"}),
    Case("unknown model", "unknown model 'cnnn'", "did you mean 'cnn'", {"model.name": "cnnn"}),
    Case("unknown dataset", "unknown dataset 'fashion-mnist'", "did you mean 'fashion_mnist'",
         {"data.source": "fashion-mnist"}),
    Case("unknown partition", "unknown partition", "did you mean 'dirichlet'", {"data.partition": "dirichlett"}),
    # -- values out of range
    Case("negative learning rate", "'train.lr' = -0.1 is invalid", "a number > 0", {"train.lr": -0.1}),
    Case("zero learning rate", "'train.lr' = 0.0 is invalid", "a number > 0", {"train.lr": 0}),
    Case("zero rounds", "'rounds' = 0 is invalid", "an integer >= 1", {"rounds": 0}),
    Case("negative seed", "'seed' = -3 is invalid", "an integer >= 0", {"seed": -3}),
    Case("alpha zero", "'data.alpha' = 0.0 is invalid", "a number > 0", {"data.alpha": 0}),
    Case("alpha negative", "'data.alpha' = -0.5 is invalid", "a number > 0", {"data.alpha": -0.5}),
    Case("momentum one", "'train.momentum' = 1.0 is invalid", "in [0, 1)", {"train.momentum": 1}),
    Case("batch size zero", "'train.batch_size' = 0 is invalid", "an integer >= 1", {"train.batch_size": 0}),
    Case("holdout fraction one", "'data.holdout_fraction' = 1.0 is invalid", "in [0, 1)",
         {"data.holdout_fraction": 1.0}),
    Case("client fraction above one", "'train.client_fraction' = 1.5 is invalid", "in [0, 1]",
         {"train.client_fraction": 1.5}),
    Case("negative workers", "'engine.workers' = -1 is invalid", "in [0, 64]", {"engine.workers": -1}),
    # -- impossible combinations
    Case("more clients than samples", "data.num_clients = 5000 exceeds the 1438 training samples",
         "lower data.num_clients", {"data.num_clients": 5000}),
    Case("clients per round above clients", "train.clients_per_round = 6 exceeds data.num_clients = 4",
         "lower train.clients_per_round", {"train.clients_per_round": 6}),
    Case("too few samples for synthetic", "num_samples must be at least 20, got 10", "at least 20",
         {"data.source": "synthetic", "data.options": {"num_samples": 10, "num_classes": 10}}),
    # -- wrong types
    Case("string for an int", "'rounds' must be of type int", "got 'ten' (str)", {"rounds": "ten"}),
    Case("list for a float", "'train.lr' must be of type float", "got [0.1] (list)", {"train.lr": [0.1]}),
    Case("bool for an int", "'data.num_clients' must be of type int", "got True (bool)", {"data.num_clients": True}),
    Case("scalar for a section", "data must be a table", "got 3", {"data": 3}),
    # -- unknown keys, broken files and options
    Case("unknown top-level key", "unknown config key 'roundz'", "did you mean 'rounds'", {"roundz": 3}),
    Case("unknown section", "unknown config key 'trian'", "did you mean 'train'", {"trian": {"lr": 0.1}}),
    Case("unknown key in a section", "unknown config key 'train.learning_rate'", "allowed keys: train.",
         {"train.learning_rate": 0.1}),
    Case("malformed TOML", "invalid TOML: invalid value (at line 1, column 10)", "fix the syntax",
         toml="rounds = = 3\n"),
    Case("missing config file", "config file '{dir}/nope.toml' not found", "`fedsqueeze presets` lists them",
         argv=("run", "{dir}/nope.toml")),
    Case("no config and no resume", "run needs a CONFIG.toml", "--resume RUN_DIR", argv=("run",)),
    Case("--set without '='", "override 'train.lr' must look like key=value", "e.g. train.lr=0.1",
         args=("--set", "train.lr")),
    Case("--set with an empty key", "override '=3' has an empty key", "write key=value", args=("--set", "=3")),
    Case("--set into a value", "'rounds' is not a table", "rounds.x=1", args=("--set", "rounds.x=1")),
    # -- codec specs and algorithm options
    Case("codec option without a value", "cannot parse the options of codec spec 'topk(fraction=)'",
         "key=value pairs", {"codec.up": "topk(fraction=)"}),
    Case("codec option out of range", "fraction must be a number in (0, 1]", "got 2",
         {"codec.up": "topk(fraction=2)"}),
    Case("unknown codec option", "codec 'topk' has no option 'fractoin'", "did you mean 'fraction'",
         {"codec.up": "topk(fractoin=0.1)"}),
    Case("codec spec of the wrong type", "a codec spec must be a string, table or list", "not int",
         {"codec.down": 3}),
    Case("unknown algorithm option", "algorithm 'fedavg' has no option 'algorithm.server_lrr'",
         "did you mean 'algorithm.server_lr'",
         {"algorithm.server_lrr": 1.0}),
    Case("algorithm without a name", "the [algorithm] table needs a string 'name'", 'name = "fedavg"',
         {"algorithm.name": DELETE}),
    # -- data files
    Case("missing data dir", "data.dir '{dir}/fmnist' does not exist", "fix the path",
         FMNIST),
    Case("IDX with a bad magic number", "IDX magic number 0x00000801, expected 0x00000803", "replace it",
         FMNIST, files=_fashion(train_images=idx_bytes(_L, (12,)))),
    Case("truncated IDX file", "truncated: 7000 bytes", "replace it",
         FMNIST, files=_fashion(train_images=idx_bytes(_I, (12, 28, 28))[:7000])),
    Case("IDX image and label counts differ", "holds 12 images but", "replace it",
         FMNIST, files=_fashion(train_labels=idx_bytes(_L, (11,)))),
    Case("IDX label out of range", "label 12 outside 0..9", "replace it",
         FMNIST, files=_fashion(test_labels=idx_bytes(_L, (4,), bytes([1, 2, 12, 3])))),
    Case("IDX header cut short", "truncated inside the IDX header", "replace it",
         FMNIST, files=_fashion(test_images=idx_bytes(_I, (4, 28, 28))[:9])),
    Case("corrupt gzip", "corrupt gzip data", "replace it", FMNIST, files=_corrupt_gzip),
    # -- resuming
    Case("resume a folder that is not a run", "is not a fedsqueeze run directory", "a folder made by `fedsqueeze run`",
         argv=("run", "--resume", "{dir}")),
    Case("resume with a different config", "was started with a different configuration",
         "only 'rounds' may change", argv=("run", "--resume", "{dir}/done", "--set", "train.lr=0.5", "--quiet"),
         files=_finished_run),
    # -- other commands
    Case("list an unknown kind", "unknown kind 'codec'", "choose from", argv=("list", "codec")),
]


# ---- running a case ---------------------------------------------------------------------------
def _apply(base: dict, changes: dict[str, Any], folder: Path) -> dict:
    import copy

    cfg = copy.deepcopy(base)
    for dotted, value in changes.items():
        node = cfg
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value.replace("{dir}", str(folder)) if isinstance(value, str) else value
    return cfg


def command_line(case: Case, folder: Path) -> list[str]:
    """Write the case's files into ``folder``; the argv for ``fedsqueeze.cli.main``."""
    folder.mkdir(parents=True, exist_ok=True)
    if case.files is not None:
        case.files(folder)
    fill = lambda s: s.replace("{dir}", str(folder))  # noqa: E731
    if case.argv:
        return [fill(a) for a in case.argv]
    config = folder / "config.toml"
    config.write_text(case.toml if case.toml is not None else to_toml(_apply(BASE, case.set, folder)))
    return ["run", str(config), "--quiet", "--out", str(folder / "run"), *[fill(a) for a in case.args]]


CASE_SECONDS = 10.0  # a bad input is refused quickly: no hang, no training first


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder`` (links not followed): kind, and a file's mode and SHA-256."""
    import hashlib
    import os

    out: dict[str, tuple] = {}
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            p = Path(root) / name
            rel = str(p.relative_to(folder))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            elif p.is_file():
                out[rel] = ("file", p.stat().st_mode, hashlib.sha256(p.read_bytes()).hexdigest())
            else:  # a FIFO, socket or device: never read it
                out[rel] = ("special", p.stat().st_mode)
    return out


def changes(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    """What a command created, removed or changed, as short descriptions."""
    return ([f"created {k}" for k in sorted(set(after) - set(before))]
            + [f"removed {k}" for k in sorted(set(before) - set(after))]
            + [f"changed {k}" for k in sorted(set(before) & set(after)) if before[k] != after[k]])


def problems(case: Case, folder: Path, code: int, err: str, *, seconds: float | None = None,
             changed: list[str] | None = None) -> list[str]:
    """What is wrong with how the command line handled the case (empty: a clean one-line error, in time,
    with nothing written or changed in the case's folder)."""
    out = []
    if seconds is not None and seconds > CASE_SECONDS:
        out.append(f"took {seconds:.1f} s (more than {CASE_SECONDS:g} s)")
    if changed:
        out.append(f"the folder changed: {', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}")
    if code != 2:
        out.append(f"exit code {code}, not 2")
    if "Traceback" in err:
        out.append("a traceback was printed")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    if len(errors) != 1:
        out.append(f"{len(errors)} 'error:' lines, not 1")
    lines = [line for line in err.splitlines() if line.strip()]
    if errors and lines[-1] != errors[0]:
        out.append("the error is not one line (more follows it)")
    line = errors[0].lower() if errors else ""
    for what, phrase in (("problem", case.problem), ("fix", case.fix)):
        phrase = phrase.replace("{dir}", str(folder)).lower()
        if phrase not in line:
            out.append(f"the error line does not name the {what} ({phrase!r})")
    return out


def run_case(case: Case, folder: Path) -> tuple[int, str, list[str]]:
    """(exit code, stderr, problems) of one case through ``fedsqueeze.cli.main`` in this process, run in
    ``folder`` (the working directory too), whose tree is compared before and after."""
    import os
    import time

    from fedsqueeze.cli import main

    argv = command_line(case, folder)
    before = snapshot(folder)
    err = io.StringIO()
    cwd = os.getcwd()
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            os.chdir(folder)
            code = main(argv)
        except SystemExit as e:  # argparse usage errors
            code = e.code if isinstance(e.code, int) else 1
        except Exception:  # noqa: BLE001  an escaped exception is a finding, not a crash of this command
            import traceback
            traceback.print_exc()
            code = 1
        finally:
            os.chdir(cwd)
    seconds = time.perf_counter() - start
    return code, err.getvalue(), problems(case, folder, code, err.getvalue(), seconds=seconds,
                                          changed=changes(before, snapshot(folder)))


def main(args) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=160)
    clean = 0
    t = Table(title="bad inputs through `fedsqueeze` (in process)")
    for col in ("case", "exit", "error line (or what is wrong)"):
        t.add_column(col, overflow="fold")
    with tempfile.TemporaryDirectory(prefix="fedsqueeze-badinput-") as tmp:
        for i, case in enumerate(CASES):
            code, err, bad = run_case(case, Path(tmp) / f"case{i}")
            clean += not bad
            line = next((ln for ln in err.splitlines() if ln.startswith("error:")), "")
            t.add_row(case.name, str(code), escape(line[:200]) if not bad else "[red]" + escape("; ".join(bad)) + "[/]")
    if args.verbose:
        console.print(t)
    console.print(f"bad inputs covered: {len(CASES)}, clean one-line errors with exit 2: {clean}")
    return 0 if clean == len(CASES) else 1


from fedsqueeze.bench.badinput_cases import MORE_CASES  # noqa: E402  (they use Case and the helpers above)

CASES += MORE_CASES
