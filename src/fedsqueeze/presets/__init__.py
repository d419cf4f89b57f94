"""The shipped experiment presets: ``fedsqueeze run digits-quick`` works by name in any directory.

The TOML files next to this module are copies of the repository's ``configs/`` (the source of truth,
which the README and the Makefile use); ``python scripts/sync_presets.py`` refreshes them and
tests/test_packaging.py fails when the two differ. Suites are in ``suites/``.
"""
from __future__ import annotations

from pathlib import Path

DIR = Path(__file__).resolve().parent


def names() -> list[str]:
    """Preset names (file stems), sorted."""
    return sorted(p.stem for p in DIR.glob("*.toml"))


def path(name: str) -> Path | None:
    """The packaged file of preset ``name`` (``digits-quick`` or ``digits-quick.toml``), or None."""
    stem = name[:-5] if name.endswith(".toml") else name
    if not stem or "/" in stem or "\\" in stem:
        return None
    p = DIR / f"{stem}.toml"
    return p if p.is_file() else None


def describe(name: str) -> str:
    """The first line of the preset's leading comment."""
    p = path(name)
    if p is None:
        return ""
    for line in p.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip().rstrip(",:")
        if line.strip():
            break
    return ""


STARTER = '''\
# A starter experiment: edit it, then `fedsqueeze run {file}`.
# Every key is optional (defaults shown where it matters); `fedsqueeze list` shows every algorithm,
# codec, model, data source and partitioner; `fedsqueeze presets` lists complete examples.
name = "my-experiment"
seed = 0
rounds = 20                  # communication rounds

[data]
source = "digits"            # digits (needs fedsqueeze[digits]), fashion_mnist, synthetic, fortunes, ...
num_clients = 20
partition = "dirichlet"      # iid | dirichlet | shards ...
alpha = 0.5                  # Dirichlet concentration: smaller = stronger label skew

[model]
name = "mlp"                 # mlp | cnn | small_cnn ... (`fedsqueeze list models`)

[train]
clients_per_round = 5
local_epochs = 1
batch_size = 32
lr = 0.05

[algorithm]
name = "fedavg"              # fedavg | fedprox | scaffold | fedkd | feddkd | spatl | quped ...

[codec]
up = "fp32"                  # client -> server, e.g. "topk(fraction=0.01)", "qsgd(levels=16)"
down = "fp32"                # server -> client

[eval]
every = 1                    # global test accuracy every N rounds
'''


def write_starter(target: str | Path) -> Path:
    """Write the commented starter config; refuses to overwrite an existing file."""
    from fedsqueeze.errors import ConfigError

    p = Path(target)
    if p.is_dir():
        p = p / "experiment.toml"
    if p.exists():
        raise ConfigError(f"{p} already exists; choose another path or remove it first")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(STARTER.format(file=p))
    return p
