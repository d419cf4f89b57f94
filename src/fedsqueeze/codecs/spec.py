"""Codec specifications as users write them: ``"fp16"``, ``"topk(fraction=0.01)"``,
``{name = "topk", fraction = 0.01}`` in TOML, or a pipeline ``"svd(threshold=0.95) | rdq(step=0.01)"``
(a list of stages in TOML). ``make_codec`` turns any of these into a codec object.

Specs also arrive in payload headers (a pipeline's ``stages``, error feedback's ``inner``), written by
a sender the receiver does not trust, so parsing is linear in the text and capped before anything
else (issue #22): a spec holds at most ``MAX_SPEC_CHARS`` characters, nests parentheses/brackets at
most ``MAX_SPEC_DEPTH`` deep and a pipeline has at most ``MAX_STAGES`` stages; beyond a cap is a
``SpecLimitError`` (a ``CodecError`` and a ``ConfigError``) naming it. Options are ``key=value``
pairs of Python literals (or bare words), read with ``ast`` only after the caps passed; ``**kw`` and
positional values are refused.
"""
from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from typing import Any

from fedsqueeze.codecs.base import Codec
from fedsqueeze.errors import CodecError, ConfigError
from fedsqueeze.registry import CODECS

MAX_SPEC_CHARS = 4096  # a spec string, whole pipeline included
MAX_SPEC_DEPTH = 16    # nested parentheses/brackets/braces outside quotes
MAX_STAGES = 16        # stages of one pipeline

_NAME = re.compile(r"[A-Za-z_][\w\-]*")  # one character class after a fixed first one: linear


class SpecLimitError(CodecError, ConfigError):
    """A codec spec beyond a parser cap (length, nesting depth, pipeline stages)."""


def _short(text: str) -> str:
    return repr(text) if len(text) <= 60 else repr(text[:60]) + f"... ({len(text):,} characters)"


def check_spec_text(text: str) -> None:
    """``SpecLimitError`` if ``text`` is longer than ``MAX_SPEC_CHARS`` or nests deeper than
    ``MAX_SPEC_DEPTH`` (one pass over at most ``MAX_SPEC_CHARS`` characters)."""
    if len(text) > MAX_SPEC_CHARS:
        raise SpecLimitError(f"codec spec {_short(text)} is longer than {MAX_SPEC_CHARS} characters "
                             "(the spec length cap); write a shorter spec")
    depth = 0
    quote = ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
            if depth > MAX_SPEC_DEPTH:
                raise SpecLimitError(f"codec spec {_short(text)} nests parentheses more than {MAX_SPEC_DEPTH} "
                                     "deep (the spec depth cap)")
        elif ch in ")]}":
            depth -= 1


def parse_spec(text: str) -> tuple[str, dict[str, Any]]:
    """``"topk(fraction=0.01, values='fp16')"`` -> ``("topk", {"fraction": 0.01, "values": "fp16"})``."""
    if not isinstance(text, str):
        raise CodecError(f"a codec spec must be a string, not {type(text).__name__}")
    check_spec_text(text)
    body = text.strip()
    m = _NAME.match(body)
    rest = body[m.end():].lstrip() if m else None
    if m is None or (rest and not (rest[0] == "(" and rest[-1] == ")" and len(rest) >= 2)):
        raise CodecError(f"cannot parse codec spec {_short(text)}; write e.g. 'topk(fraction=0.01)'")
    name, args = m.group(0), (rest[1:-1] if rest else None)
    params: dict[str, Any] = {}
    if args and args.strip():
        how = ("write key=value pairs separated by commas, strings quoted")
        try:
            call = ast.parse(f"f({args})", mode="eval").body
            if not isinstance(call, ast.Call) or call.args:
                raise CodecError(f"cannot parse the options of codec spec {_short(text)}: {how}")
            for kw in call.keywords:
                if kw.arg is None:
                    raise CodecError(f"codec spec {_short(text)}: '**' is not allowed in a codec spec; {how}")
                if kw.arg in params:
                    raise CodecError(f"cannot parse the options of codec spec {_short(text)}: option {kw.arg!r} is given twice; {how}")
                params[kw.arg] = _literal(kw.value)
        except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as e:
            raise CodecError(f"cannot parse the options of codec spec {_short(text)}: {how}") from e
    return name, params


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Name):  # allow bare words: values=fp16; TOML's true/false are booleans
        return {"true": True, "false": False}.get(node.id, node.id)
    return ast.literal_eval(node)


def split_pipeline(text: str) -> list[str]:
    """Split ``"a(x=1) | b"`` at the ``|`` outside parentheses and quotes, so an option may itself hold a
    pipeline: ``"ef(inner='svd | rdq')"`` is one stage. One pass; ``SpecLimitError`` beyond the caps."""
    check_spec_text(text)
    stages, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            stages.append(text[start:i])
            start = i + 1
            if len(stages) >= MAX_STAGES:
                raise SpecLimitError(f"codec pipeline {_short(text)} has more than {MAX_STAGES} stages "
                                     "(the pipeline stage cap)")
    stages.append(text[start:])
    return stages


def make_codec(spec: "str | Mapping[str, Any] | list | Codec") -> Codec:
    if isinstance(spec, Codec):
        return spec
    if isinstance(spec, str) and "|" in spec:
        stages = split_pipeline(spec)
        if len(stages) > 1:
            spec = stages
    if isinstance(spec, (list, tuple)):
        if len(spec) > MAX_STAGES:
            raise SpecLimitError(f"codec pipeline of {len(spec):,} stages has more than {MAX_STAGES} "
                                 "(the pipeline stage cap)")
        if len(spec) == 1:
            return make_codec(spec[0])
        if "pipeline" not in CODECS:
            raise CodecError("codec pipelines are not available in this build")
        stages = [make_codec(s) for s in spec]
        return CODECS.get("pipeline").of(stages)
    if isinstance(spec, str):
        name, params = parse_spec(spec)
    elif isinstance(spec, Mapping):
        params = dict(spec)
        if "name" not in params:
            raise CodecError(f"codec table {dict(spec)} needs a 'name' key")
        name = params.pop("name")
        if not isinstance(name, str):
            raise CodecError(f"codec table: 'name' must be a codec name string, not {name!r}")
        check_spec_text(name)
    else:
        raise CodecError(f"a codec spec must be a string, table or list, not {type(spec).__name__}")
    return CODECS.get(name).from_config(params)


def decode_any(data: bytes, *, allowed: set[str] | None = None, device: Any = None, expect: Any = None,
               max_numel: int = 1 << 27, max_tensors: int | None = None, max_bytes: int | None = None):
    """Decode a payload of any registered codec (named in its header); ``allowed`` limits which.
    ``expect``, ``max_numel``, ``max_tensors``, ``max_bytes``: the receiver's expected tensors and limits
    (see ``Codec.decode``); ``device``: where the returned tensors go (default: the CPU)."""
    from fedsqueeze.codecs.base import DEFAULT_MAX_TENSORS, decode_with, receiver_limits, resolve_device
    from fedsqueeze.errors import PayloadError, RegistryError
    from fedsqueeze.wire.payload import unpack

    target = resolve_device(device)
    limits = receiver_limits(max_numel, DEFAULT_MAX_TENSORS if max_tensors is None else max_tensors, max_bytes)
    header, body = unpack(data, limits=limits, expect=expect)
    if allowed is not None and header.codec_id not in allowed:
        raise PayloadError(f"codec {header.codec_id!r} is not accepted here (allowed: {sorted(allowed)})")
    try:
        cls = CODECS.get(header.codec_id)
    except RegistryError as e:
        raise PayloadError(f"payload names unknown codec {header.codec_id!r}") from e
    return decode_with(cls, header, body, expect=expect, max_numel=max_numel, device=target)
