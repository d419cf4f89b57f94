"""A compare suite: one shared federation (the base config) and the runs compared on it.

::

    name = "fmnist-noniid"
    base = "../fmnist-noniid-base.toml"   # the federation every run shares (relative to this file)
    baseline = "fedavg-fp32"              # ratios are against this run (default: the first run)
    baselines = ["fedavg-fp32"]           # target = best final accuracy of these − 1 point ...
    target = 0.80                         # ... unless a target accuracy is given
    network = ["lte", "iot"]              # profiles for simulated time (names or tables)
    seeds = [0, 1, 2]                     # optional: every run once per seed (OUT/<suite>/<run>/seed<N>/)
    [base_set]                            # optional dotted overrides of the base for every run
    "eval.every" = 2
    [[run]]
    name = "fedavg-topk"
    set = {"codec.up" = "topk(fraction=0.01)"}   # dotted keys as in `fedsqueeze run --set`
    algorithm = {name = "fedkd", ...}            # optional: replaces the base's [algorithm] table
    budget_mb = 40                               # optional: rdq budget mode (see budget.py)

Every run must keep the federation: data, seed, rounds, clients per round. A run that changes one
of them is refused — results on different federations are not comparable.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsqueeze.compare.network import NetworkProfile, parse_profiles
from fedsqueeze.config import NAME_MAX, SEED_MAX, Config, check_name, from_dict, read_toml
from fedsqueeze.errors import ConfigError

# keys that define the federation: runs may not change them
FEDERATION_KEYS = ("data", "seed", "rounds", "train.clients_per_round", "train.client_fraction")
_SUITE_KEYS = {"name", "base", "baseline", "baselines", "target", "network", "base_set", "run", "description", "seeds"}
SEEDS_MAX = 100
_RUN_KEYS = {"name", "set", "algorithm", "budget_mb", "label"}


@dataclass
class RunSpec:
    name: str
    config: Config
    label: str = ""
    budget_mb: float = 0.0


@dataclass
class Suite:
    name: str
    path: Path
    runs: list[RunSpec]
    baseline: str
    baselines: list[str]
    target: float | None
    networks: list[NetworkProfile] = field(default_factory=list)
    description: str = ""
    seeds: list[int] = field(default_factory=list)   # empty: each run once, with the base's seed

    def with_seeds(self, seeds: list[int]) -> Suite:
        """The suite with its runs repeated over ``seeds`` (as ``--seeds`` sets them)."""
        return Suite(self.name, self.path, self.runs, self.baseline, self.baselines, self.target, self.networks,
                     self.description, list(seeds))

    def jobs(self) -> list[tuple[str, RunSpec, str]]:
        """``(key, spec, folder)`` for every run to make: one per entry (key and folder the entry's name)
        without seeds; with seeds one per entry and seed, key and folder ``<entry>/seed<N>``, the
        config's seed replaced (so each seed is its own draw of the federation, shared by all entries)."""
        if not self.seeds:
            return [(r.name, r, r.name) for r in self.runs]
        out = []
        for r in self.runs:
            for seed in self.seeds:
                raw = r.config.to_dict()
                raw["seed"] = seed
                if len(raw["name"]) + len(f"-seed{seed}") <= NAME_MAX:  # else the entry's name alone
                    raw["name"] = f"{raw['name']}-seed{seed}"
                key = f"{r.name}/seed{seed}"
                out.append((key, RunSpec(r.name, from_dict(raw), r.label, r.budget_mb), key))
        return out

    def run(self, name: str) -> RunSpec:
        for r in self.runs:
            if r.name == name:
                return r
        raise ConfigError(f"suite {self.name!r} has no run {name!r}; runs: {', '.join(r.name for r in self.runs)}")


def _set_dotted(raw: dict, key: str, value: Any, where: str) -> None:
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"{where}: bad key {key!r}; use dotted keys like \"codec.up\"")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {part!r} in {key!r} is not a table")
    node[parts[-1]] = copy.deepcopy(value)


def _get_dotted(raw: dict, key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def parse_seeds(value: Any, where: str = "seeds") -> list[int]:
    """Seeds from a list of integers or a comma-separated string (``"0,1,2"``): distinct, >= 0."""
    fix = "give distinct integers >= 0, e.g. seeds = [0, 1, 2] (or --seeds 0,1,2)"
    if isinstance(value, str):
        try:
            value = [int(x) for x in value.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is not a comma-separated list of integers; {fix}") from None
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where} must be a non-empty list; {fix}")
    if any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= SEED_MAX for v in value):
        raise ConfigError(f"{where}: {str(value)[:80]} has an entry that is not an integer >= 0 (at most 2**63 - 1); {fix}")
    if len(set(value)) != len(value) or len(value) > SEEDS_MAX:
        raise ConfigError(f"{where}: seeds must be distinct and at most {SEEDS_MAX}; {fix}")
    return list(value)


def load_suite(path: str | Path) -> Suite:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"suite file {str(path)!r} not found; shipped suites live in configs/suites/")
    raw = read_toml(path, "suite file")
    unknown = set(raw) - _SUITE_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown suite key(s) {', '.join(sorted(unknown))}; "
                          f"allowed: {', '.join(sorted(_SUITE_KEYS))}")
    if "base" not in raw or not isinstance(raw["base"], str):
        raise ConfigError(f"{path}: the suite needs base = \"<config.toml>\" (the shared federation)")
    base_path = (path.parent / raw["base"]).resolve()
    if not base_path.is_file():
        raise ConfigError(f"{path}: base config {raw['base']!r} not found (looked at {base_path})")
    base = read_toml(base_path, "base config")
    for key, value, want in (("base_set", {}, "a table of dotted keys, e.g. [base_set] \"eval.every\" = 2"),
                             ("run", [], "[[run]] tables"), ("network", ["lte"], "a list of profile names or tables"),
                             ("baselines", [], "a list of run names"), ("baseline", "", "a run name"),
                             ("name", "", "a name"), ("description", "", "a string")):
        if key in raw and not isinstance(raw[key], type(value)):
            raise ConfigError(f"{path}: suite key {key!r} = {str(raw[key])[:40]} must be {want}")
    for key, value in (raw.get("base_set") or {}).items():
        _set_dotted(base, key, value, f"{path} [base_set]")
    suite_name = check_name(raw.get("name", path.stem), f"{path}: suite key 'name'")
    entries = raw.get("run") or []
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: the suite has no runs; add [[run]] tables with a name")
    runs: list[RunSpec] = []
    for i, entry in enumerate(entries):
        where = f"{path} run #{i + 1}"
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"{where}: every [[run]] needs a name, e.g. name = \"fedavg-topk\"")
        check_name(entry["name"], f"{where}: [[run]] key 'name'")
        where = f"{path} run {entry['name']!r}"
        bad = set(entry) - _RUN_KEYS
        if bad:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(bad))}; allowed: {', '.join(sorted(_RUN_KEYS))}")
        cfg_raw = copy.deepcopy(base)
        if "algorithm" in entry:
            if not isinstance(entry["algorithm"], dict):
                raise ConfigError(f"{where}: algorithm must be a table, e.g. algorithm = {{name = \"fedkd\"}}")
            cfg_raw["algorithm"] = copy.deepcopy(entry["algorithm"])
        if not isinstance(entry.get("set", {}), dict):
            raise ConfigError(f"{where}: set must be a table of dotted keys, e.g. set = {{\"codec.up\" = \"fp16\"}}")
        for key, value in (entry.get("set") or {}).items():
            for fed in FEDERATION_KEYS:
                if key == fed or key.startswith(fed + "."):
                    raise ConfigError(f"{where}: {key!r} would change the federation; every run of a suite "
                                      "shares data, seed, rounds and clients per round (change the base instead)")
            _set_dotted(cfg_raw, key, value, where)
        cfg_raw["name"] = f"{suite_name}-{entry['name']}"
        if not isinstance(entry.get("label", ""), str):
            raise ConfigError(f"{where}: label must be a string, e.g. label = \"fedavg, top-k 1%\"")
        budget = entry.get("budget_mb", 0.0)
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 <= budget < float("inf"):
            raise ConfigError(f"{where}: budget_mb must be a number of megabytes > 0")
        try:
            cfg = from_dict(cfg_raw)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from e
        runs.append(RunSpec(entry["name"], cfg, str(entry.get("label", "")), float(budget)))
    names = [r.name for r in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{path}: run names must be unique; repeated: {', '.join(dup)}")
    for fed in FEDERATION_KEYS:  # belt and braces: algorithm tables cannot touch these either
        values = {repr(_get_dotted(r.config.to_dict(), fed)) for r in runs}
        if len(values) > 1:
            raise ConfigError(f"{path}: runs disagree on {fed!r}; a suite compares methods on one federation")
    baseline = raw.get("baseline", names[0])
    baselines = raw.get("baselines", [baseline])
    for b in [baseline, *baselines]:
        if b not in names:
            raise ConfigError(f"{path}: baseline {b!r} is not one of the runs ({', '.join(names)})")
    target = raw.get("target")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1):
        raise ConfigError(f"{path}: target must be an accuracy in (0, 1], e.g. target = 0.8")
    networks = parse_profiles(raw.get("network", ["lte"]), where=str(path))
    seeds = parse_seeds(raw["seeds"], f"{path}: suite key 'seeds'") if "seeds" in raw else []
    return Suite(suite_name, path, runs, baseline, list(baselines),
                 float(target) if target is not None else None, networks, str(raw.get("description", "")), seeds)
