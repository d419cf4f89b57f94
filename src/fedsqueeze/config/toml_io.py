"""Reading and writing TOML: config files (bounded, UTF-8, one-line errors), ``--set`` overrides, and a
small writer for resolved configs."""
from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

from fedsqueeze.errors import ConfigError

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]{1,100}")  # a key TOML takes unquoted


TOML_BYTES_MAX = 4 << 20  # a config or suite file larger than this is not one


def parse_toml(text: str, where: str) -> dict:
    """``tomllib.loads`` with one-line errors: invalid syntax, and nesting too deep for the parser."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: invalid TOML: {e}; fix the syntax there") from e
    except RecursionError:
        raise ConfigError(f"{where}: arrays or tables are nested too deeply for a config; a few levels "
                          "at most") from None


def read_toml(path: str | Path, what: str = "config file") -> dict:
    """A TOML file's tables, or a one-line ConfigError: not a file, too large, not UTF-8, invalid TOML."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{what} {str(p)!r} is a folder; give the TOML file inside it")
    if not p.is_file():
        raise ConfigError(f"{what} {str(p)!r} is not a regular file; give a TOML file")
    size = p.stat().st_size
    if size > TOML_BYTES_MAX:
        raise ConfigError(f"{what} {str(p)!r} is {size:,} bytes, more than a config can be "
                          f"({TOML_BYTES_MAX:,}); give the right file")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {str(p)!r} is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); "
                          "save it as UTF-8") from None
    return parse_toml(text, str(p))


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in "\b\t\n\f\r":
            out.append({"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=0.1"`` -> (["train", "lr"], 0.1). Values are TOML; bare words become strings."""
    if "=" not in text:
        raise ConfigError(f"override {text[:80]!r} must look like key=value, e.g. train.lr=0.1")
    key, _, value = text.partition("=")
    key = key.strip()
    if not key or any(not p.strip() for p in key.split(".")):
        raise ConfigError(f"override {text[:80]!r} has an empty key; write key=value, e.g. train.lr=0.1")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    except RecursionError:
        raise ConfigError(f"override {key!r}: the value is nested too deeply; give a number, string or "
                          "short list") from None
    return key.split("."), parsed


def apply_overrides(raw: dict, overrides: list) -> dict:
    """``raw`` with each override applied: ``"key=TOML value"`` from the command line, or a ``(dotted_key,
    value)`` pair for values that are data, not TOML (paths: ``("data.dir", folder)``)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if isinstance(item, tuple):
            text = f"{item[0]}=..."
            path, value = item[0].split("."), item[1]
        else:
            text = item
            path, value = parse_override(item)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text[:80]!r}: {part!r} is not a table")
        node[path[-1]] = value
    return raw

def to_toml(data: dict) -> str:
    """A small TOML writer for resolved configs (tables, scalars, lists, inline tables)."""
    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return toml_string(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{key(k)} = {scalar(x)}" for k, x in v.items()) + "}"
        raise TypeError(f"cannot write {v!r} as TOML")

    def key(k: Any) -> str:  # bare when it may be, else a quoted key
        return k if isinstance(k, str) and _BARE_KEY.fullmatch(k) else toml_string(str(k))

    lines: list[str] = []
    tables = []
    for k, v in data.items():
        if isinstance(v, dict):
            tables.append((k, v))
        else:
            lines.append(f"{key(k)} = {scalar(v)}")
    for name, table in tables:
        lines.append(f"\n[{key(name)}]")
        for k, v in table.items():
            lines.append(f"{key(k)} = {scalar(v)}")
    return "\n".join(lines) + "\n"
