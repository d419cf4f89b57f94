"""Checking a config: keys (with "did you mean"), types, ranges, names that become folders, codec spec
shapes, devices and faults. ``from_dict`` builds a ``Config`` from plain tables and checks it all."""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import numbers
import re
import typing
from typing import Any

from fedsqueeze.config.schema import FAULT_KINDS, Config, EngineConfig
from fedsqueeze.config.toml_io import _BARE_KEY
from fedsqueeze.errors import ConfigError

# Names that become a path component (a run's ``name``, a suite's name, its run names, network
# profile names): ASCII letters, digits and ``-_.+=,@`` and space, starting with a letter, digit or
# ``_`` (so never ``.``, ``..`` or a hidden file), not ending in a space, at most 100 characters.
# No path separators, no control characters: only ``--out`` / ``output_dir`` choose locations.
NAME_MAX = 100
_SAFE_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9 _.+=,@-]*[A-Za-z0-9_.+=,@-])?")


def check_name(value: Any, key: str) -> str:
    """``value`` if it is a safe name (see ``NAME_MAX``), else a one-line ConfigError naming ``key``."""
    fix = (f"use letters, digits, '-', '_', '.', '+', '=', ',', '@' or spaces (up to {NAME_MAX} characters, "
           "starting with a letter, digit or '_'); folders are chosen with --out / output_dir")
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string name, got {value!r}; {fix}")
    if not value:
        raise ConfigError(f"{key} is empty; {fix}")
    if len(value) > NAME_MAX:
        raise ConfigError(f"{key} is {len(value)} characters long; {fix}")
    if not _SAFE_NAME.fullmatch(value):
        bad = next((c for c in value if not re.fullmatch(r"[A-Za-z0-9 _.+=,@-]", c)), None)
        why = (f"contains {bad!r}" if bad is not None
               else "is '.' or '..'" if value in (".", "..")
               else f"may not start with {value[0]!r}" if not re.fullmatch(r"[A-Za-z0-9_]", value[0])
               else "may not end with a space")
        raise ConfigError(f"{key} = {value[:40]!r}{'...' if len(value) > 40 else ''} {why}; it names a folder, "
                          f"not a path: {fix}")
    return value


# sane maxima: far beyond any experiment this package runs, small enough that a typo (an extra zero or
# six) is an error line instead of a run that never ends or asks for terabytes
SEED_MAX = 2**63 - 1          # seeds are packed as signed 64-bit integers (fedsqueeze.seeding.derive_seed)
ROUNDS_MAX = 1_000_000
CLIENTS_MAX = 10_000_000
BATCH_MAX = 1 << 20
EPOCHS_MAX = 10_000
STEPS_MAX = 10_000_000
TIMEOUT_MIN, TIMEOUT_MAX = 0.1, 7 * 24 * 3600.0
LR_MAX = 1000.0               # learning rate and weight decay: beyond this every step overflows
STRING_MAX = 4096             # any string value (a path, a name, a spec)
SPEC_CHARS_MAX = 2048         # a codec spec string (a whole pipeline included)
SPEC_STAGES_MAX = 32          # stages of a codec pipeline
OPTION_DEPTH_MAX = 8          # nesting of lists/tables inside an options table

# (key, predicate, allowed-range text) checked after parsing (floats are also checked to be finite)
_RANGES: list[tuple[str, typing.Callable[[Any], bool], str]] = [
    ("rounds", lambda v: 1 <= v <= ROUNDS_MAX, f"an integer >= 1 (at most {ROUNDS_MAX:,})"),
    ("seed", lambda v: 0 <= v <= SEED_MAX, "an integer >= 0 (at most 2**63 - 1)"),
    ("data.num_clients", lambda v: 1 <= v <= CLIENTS_MAX, f"an integer >= 1 (at most {CLIENTS_MAX:,})"),
    ("data.alpha", lambda v: 0 < v <= 1e6, "a number > 0 (at most 1e6; 100 is already nearly IID)"),
    ("data.shards_per_client", lambda v: 1 <= v <= 1_000_000, "an integer >= 1 (at most 1,000,000)"),
    ("data.holdout_fraction", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("train.clients_per_round", lambda v: 1 <= v <= CLIENTS_MAX, f"an integer >= 1 (at most {CLIENTS_MAX:,})"),
    ("train.client_fraction", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    ("train.local_epochs", lambda v: 0 <= v <= EPOCHS_MAX, f"an integer >= 0 (at most {EPOCHS_MAX:,})"),
    ("train.local_steps", lambda v: 0 <= v <= STEPS_MAX, f"an integer >= 0 (at most {STEPS_MAX:,})"),
    ("train.batch_size", lambda v: 1 <= v <= BATCH_MAX, f"an integer >= 1 (at most {BATCH_MAX:,})"),
    ("train.optimizer", lambda v: v in ("sgd", "adam"), "'sgd' or 'adam'"),
    ("train.lr", lambda v: 0 < v <= LR_MAX, f"a number > 0 (at most {LR_MAX:g})"),
    ("train.momentum", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("train.weight_decay", lambda v: 0 <= v <= LR_MAX, f"a number >= 0 (at most {LR_MAX:g})"),
    ("eval.every", lambda v: 0 <= v <= ROUNDS_MAX, "an integer >= 0 (0 = only the last round)"),
    ("eval.personal_every", lambda v: 0 <= v <= ROUNDS_MAX, "an integer >= 0 (0 = only the last round)"),
    ("eval.batch_size", lambda v: 1 <= v <= BATCH_MAX, f"an integer >= 1 (at most {BATCH_MAX:,})"),
    ("codec.downlink", lambda v: v in ("broadcast", "delta"), "'broadcast' or 'delta'"),
    ("engine.workers", lambda v: 0 <= v <= 64, "an integer in [0, 64]"),
    ("engine.checkpoint_every", lambda v: 0 <= v <= ROUNDS_MAX, "an integer >= 0"),
    ("engine.min_replies", lambda v: 1 <= v <= CLIENTS_MAX, "an integer >= 1"),
    ("engine.round_timeout", lambda v: TIMEOUT_MIN <= v <= TIMEOUT_MAX,
     f"a number of seconds > 0, at least {TIMEOUT_MIN:g} (shorter skips every round) and at most {TIMEOUT_MAX:g}"),
    ("engine.retries", lambda v: 0 <= v <= 1000, "an integer >= 0 (at most 1000)"),
    ("engine.too_few", lambda v: v in ("skip", "fail"), "'skip' or 'fail'"),
    ("engine.max_update_norm", lambda v: v >= 0, "a number >= 0 (0 = no bound)"),
    ("engine.dropout", lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    ("engine.straggler", lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    ("engine.deadline_s", lambda v: 0 <= v < float("inf"), "a number of seconds >= 0 (0 = no deadline)"),
    ("engine.seconds_per_sample", lambda v: 0 <= v < float("inf"), "a number of seconds >= 0 (0 = measured time)"),
]


def _build(cls: type, raw: dict, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            hint = difflib.get_close_matches(key, names, n=1)
            raise ConfigError(f"unknown config key {prefix + key!r}"
                              + (f" (did you mean {prefix + hint[0]!r}?)" if hint
                                 else f"; allowed keys: {', '.join(prefix + n for n in names)}"))
        kwargs[key] = _coerce(hints[key], value, prefix + key)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict:
        if isinstance(value, dict):
            return value
    elif tp is list:
        if isinstance(value, list):
            return value
    name = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"config key {key!r} must be of type {name}, got {value!r} ({type(value).__name__})")


def _get(cfg: Config, dotted: str) -> Any:
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj



def _check_plain(value: Any, key: str, depth: int = 0) -> None:
    """Every value in a config is a finite number, a string, a boolean, or a list/table of them (no TOML
    dates, no NaN/Inf, no absurd nesting), so it can be checked, written to config.toml and read back."""
    if depth > OPTION_DEPTH_MAX:
        raise ConfigError(f"config key {key!r} is nested more than {OPTION_DEPTH_MAX} levels deep; "
                          "options are numbers, strings, booleans or short lists")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str) or not _BARE_KEY.fullmatch(k):
                raise ConfigError(f"config key {key!r} has the key {str(k)[:40]!r}; keys are names of letters, "
                                  "digits, '_' and '-' (at most 100 characters)")
            _check_plain(v, f"{key}.{k}" if key else k, depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{key}[{i}]", depth + 1)
    elif isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        if not math.isfinite(value):
            raise ConfigError(f"config key {key!r} = {value!r} is invalid: it must be a finite number "
                              "(write a number, not nan or inf)")
    elif isinstance(value, str):
        if len(value) > STRING_MAX:
            raise ConfigError(f"config key {key!r} is a string of {len(value):,} characters (at most {STRING_MAX:,}); "
                              "give the intended name, spec or path")
    elif not isinstance(value, numbers.Integral):
        raise ConfigError(f"config key {key!r} = {str(value)[:40]!r} is a {type(value).__name__}; config values "
                          "are numbers, strings, booleans, lists or tables (quote dates and times as strings)")


def _check_codec_spec(spec: Any, key: str, depth: int = 0) -> None:
    """A codec spec's shape (the codec registry checks names and options when the run is built): a string
    of bounded length and pipeline size, a table with a string ``name``, or a list of stages."""
    if isinstance(spec, str):
        if len(spec) > SPEC_CHARS_MAX:
            raise ConfigError(f"{key} is a codec spec of {len(spec):,} characters (at most {SPEC_CHARS_MAX:,}); "
                              f"write e.g. 'topk(fraction=0.01)' (`fedsqueeze list codecs` lists the names)")
        if spec.count("|") >= SPEC_STAGES_MAX:
            raise ConfigError(f"{key} has {spec.count('|') + 1} pipeline stages (at most {SPEC_STAGES_MAX}); "
                              "a pipeline is a few transforms and one codec, e.g. 'svd(threshold=0.95) | rdq'")
        if re.search(r"[(,]\s*\*", spec):
            raise ConfigError(f"{key} = {spec[:60]!r} uses * or ** arguments; write the options as key=value "
                              "pairs, e.g. 'topk(fraction=0.01)'")
    elif isinstance(spec, dict):
        if not isinstance(spec.get("name"), str) or not spec.get("name"):
            raise ConfigError(f"{key} table needs a string 'name', e.g. {{name = \"topk\", fraction = 0.01}}, "
                              f"got name = {spec.get('name')!r}")
        _check_codec_spec(spec["name"], key + ".name", depth)
    elif isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{key} is an empty list; give a codec spec such as \"fp32\" or a list of stages")
        if len(spec) > SPEC_STAGES_MAX or depth > 0:
            raise ConfigError(f"{key} must be a flat list of at most {SPEC_STAGES_MAX} stages, e.g. "
                              "[\"svd(threshold=0.95)\", \"rdq\"]")
        for i, stage in enumerate(spec):
            _check_codec_spec(stage, f"{key}[{i}]", depth + 1)
    else:
        raise ConfigError(f"{key}: a codec spec must be a string, table or list, not {type(spec).__name__} "
                          f"({str(spec)[:40]}); e.g. codec.up = \"topk(fraction=0.01)\"")


def from_dict(raw: dict) -> Config:
    try:
        raw = copy.deepcopy(raw)
    except RecursionError:
        raise ConfigError("the config is nested too deeply; tables and lists are a few levels at most") from None
    _check_plain(raw, "")
    cfg = _build(Config, raw, "")
    for key, ok, allowed in _RANGES:
        value = _get(cfg, key)
        if not ok(value) or (isinstance(value, float) and not math.isfinite(value)):
            raise ConfigError(f"config key {key!r} = {value!r} is invalid: it must be {allowed}")
    for key, path in (("output_dir", cfg.output_dir), ("data.dir", cfg.data.dir)):
        if "\x00" in path:
            raise ConfigError(f"config key {key!r} = {path[:60]!r} contains a NUL character, which no file system "
                              "accepts; give a folder path")
    if cfg.train.local_epochs == 0 and cfg.train.local_steps == 0:
        raise ConfigError("train.local_epochs = 0 and train.local_steps = 0: no client would train; set "
                          "train.local_epochs >= 1 (or train.local_steps >= 1 for a fixed number of SGD steps)")
    _check_codec_spec(cfg.codec.up, "codec.up")
    _check_codec_spec(cfg.codec.down, "codec.down")
    t, d = cfg.train, cfg.data
    if not t.client_fraction and t.clients_per_round > d.num_clients:
        if "clients_per_round" in raw.get("train", {}):
            raise ConfigError(f"train.clients_per_round = {t.clients_per_round} exceeds data.num_clients = "
                              f"{d.num_clients}; lower train.clients_per_round (or raise data.num_clients)")
        t.clients_per_round = d.num_clients  # the default, in a federation smaller than it
    if "name" not in cfg.algorithm or not isinstance(cfg.algorithm["name"], str):
        raise ConfigError("the [algorithm] table needs a string 'name', e.g. name = \"fedavg\"")
    _check_faults(cfg.engine.faults)
    check_name(cfg.name, "config key 'name'")
    _check_devices(cfg.engine)
    return cfg


def _check_devices(engine: EngineConfig) -> None:
    """The device specs' spelling (availability is checked when a run starts: ``engine.device.resolve``)."""
    from fedsqueeze.engine.device import valid_spec
    allowed = "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
    if not valid_spec(engine.device):
        raise ConfigError(f"config key 'engine.device' = {engine.device!r} is invalid: it must be {allowed}")
    for spec in engine.devices:
        if not valid_spec(spec) or spec == "auto":
            raise ConfigError(f"engine.devices entry {spec!r} is invalid: each must be 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if engine.devices and not engine.workers:
        raise ConfigError("engine.devices places pool workers; set engine.workers = N too (or use engine.device)")


def _check_faults(faults: dict) -> None:
    for kind, p in faults.items():
        if kind not in FAULT_KINDS:
            hint = difflib.get_close_matches(str(kind), FAULT_KINDS, n=1)
            raise ConfigError(f"unknown fault 'engine.faults.{kind}'" + (f" (did you mean '{hint[0]}'?)" if hint
                              else f"; faults: {', '.join(FAULT_KINDS)}"))
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ConfigError(f"engine.faults.{kind} = {p!r} is invalid: it must be a probability in [0, 1]")
    if sum(faults.values()) > 1:
        raise ConfigError(f"engine.faults probabilities sum to {sum(faults.values()):g} > 1; a client has at "
                          "most one fault per step, lower them")

