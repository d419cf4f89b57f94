"""Codec specifications as users write them: ``"fp16"``, ``"topk(fraction=0.01)"``,
``{name = "topk", fraction = 0.01}`` in TOML, or a pipeline ``"svd(threshold=0.95) | rdq(step=0.01)"``
(a list of stages in TOML). ``make_codec`` turns any of these into a codec object.
"""
from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from typing import Any

from fedsqueeze.codecs.base import Codec
from fedsqueeze.errors import CodecError
from fedsqueeze.registry import CODECS

_CALL = re.compile(r"^\s*([A-Za-z_][\w\-]*)\s*(?:\((.*)\))?\s*$", re.S)


def parse_spec(text: str) -> tuple[str, dict[str, Any]]:
    """``"topk(fraction=0.01, values='fp16')"`` -> ``("topk", {"fraction": 0.01, "values": "fp16"})``."""
    m = _CALL.match(text)
    if not m:
        raise CodecError(f"cannot parse codec spec {text!r}; write e.g. 'topk(fraction=0.01)'")
    name, args = m.group(1), m.group(2)
    params: dict[str, Any] = {}
    if args and args.strip():
        try:
            call = ast.parse(f"f({args})", mode="eval").body
            assert isinstance(call, ast.Call) and not call.args
            for kw in call.keywords:
                if kw.arg is None or kw.arg in params:  # **mapping, or an option given twice
                    raise ValueError(kw.arg)
                params[kw.arg] = _literal(kw.value)
        except (SyntaxError, AssertionError, ValueError) as e:
            raise CodecError(f"cannot parse the options of codec spec {text!r}: write key=value pairs "
                             "separated by commas, strings quoted") from e
    return name, params


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Name):  # allow bare words: values=fp16; TOML's true/false are booleans
        return {"true": True, "false": False}.get(node.id, node.id)
    return ast.literal_eval(node)


def split_pipeline(text: str) -> list[str]:
    """Split ``"a(x=1) | b"`` at the ``|`` outside parentheses and quotes, so an option may itself hold a
    pipeline: ``"ef(inner='svd | rdq')"`` is one stage."""
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
    stages.append(text[start:])
    return [s for s in stages]


def make_codec(spec: "str | Mapping[str, Any] | list | Codec") -> Codec:
    if isinstance(spec, Codec):
        return spec
    if isinstance(spec, str) and "|" in spec:
        stages = split_pipeline(spec)
        if len(stages) > 1:
            spec = stages
    if isinstance(spec, (list, tuple)):
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
    else:
        raise CodecError(f"a codec spec must be a string, table or list, not {type(spec).__name__}")
    return CODECS.get(name).from_config(params)


def decode_any(data: bytes, *, allowed: set[str] | None = None, device: Any = None, **kw: Any):
    """Decode a payload of any registered codec (named in its header); ``allowed`` limits which.
    ``device``: where the returned tensors go (default: the CPU, where decoding always runs)."""
    from fedsqueeze.codecs.base import decode_with, resolve_device
    from fedsqueeze.errors import PayloadError, RegistryError
    from fedsqueeze.wire.payload import unpack

    target = resolve_device(device)
    header, body = unpack(data)
    if allowed is not None and header.codec_id not in allowed:
        raise PayloadError(f"codec {header.codec_id!r} is not accepted here (allowed: {sorted(allowed)})")
    try:
        cls = CODECS.get(header.codec_id)
    except RegistryError as e:
        raise PayloadError(f"payload names unknown codec {header.codec_id!r}") from e
    return decode_with(cls, header, body, expect=kw.get("expect"), max_numel=kw.get("max_numel", 1 << 27),
                       device=target)
