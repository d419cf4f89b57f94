"""What the cases write into their folder before the command runs (config and suite files, finished
runs changed by a careless or hostile hand), and the command lines and phrases many cases share."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from fedsqueeze.bench.badinput import BASE, _finished_run
from fedsqueeze.config import to_toml


def file(name: str, data: bytes | str) -> Callable[[Path], None]:
    raw = data.encode() if isinstance(data, str) else data

    def write(folder: Path) -> None:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(raw)
    return write


def all_of(*writers: Callable[[Path], None]) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        for w in writers:
            w(folder)
    return write


CONFIG = file("c.toml", to_toml(BASE))  # a valid config at {dir}/c.toml


def run_then(change: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    """A finished one-round run at {dir}/done, then ``change(run_folder)``."""
    def write(folder: Path) -> None:
        _finished_run(folder)
        if change is not None:
            change(folder / "done")
    return write


def put(name: str, data: bytes | str) -> Callable[[Path], None]:
    raw = data.encode() if isinstance(data, str) else data
    return lambda run: (run / name).write_bytes(raw)


def as_folder(name: str) -> Callable[[Path], None]:
    """Replace a run's file ``name`` by an empty folder of that name."""
    def change(run: Path) -> None:
        (run / name).unlink()
        (run / name).mkdir()
    return change


def edit_config(section: str, key: str, value: object) -> Callable[[Path], None]:
    """Change one key of a run's config.json (as a careless or hostile hand would)."""
    def edit(run: Path) -> None:
        cfg = json.loads((run / "config.json").read_text())
        cfg[section][key] = value
        (run / "config.json").write_text(json.dumps(cfg))
    return edit


def suite(text: str) -> Callable[[Path], None]:
    """A base config {dir}/b.toml and the suite {dir}/s.toml."""
    return all_of(file("b.toml", to_toml(BASE)), file("s.toml", 'base = "b.toml"\n' + text))


def deep(n: int) -> str:
    return "[" * n + "]" * n


RUN = ("run", "{dir}/c.toml", "--quiet", "--out", "{dir}/run")
SUITE = ("compare", "{dir}/s.toml", "--quiet", "--out", "{dir}/out")
NESTED = "nested too deeply"
FINITE = ("a finite number", "not nan or inf")
