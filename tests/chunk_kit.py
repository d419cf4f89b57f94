"""Helpers for codec tests that look inside a payload: one tensor's chunk out, a forged chunk in."""
from __future__ import annotations

from fedsqueeze.wire.payload import Header, pack, unpack
from fedsqueeze.wire.varint import Reader, write_chunk


def only_chunk(payload: bytes) -> bytes:
    """The codec's bytes for the single tensor of ``payload``."""
    return bytes(Reader(unpack(payload)[1]).chunk())


def with_chunk(payload: bytes, chunk: bytes) -> bytes:
    """``payload`` with its single tensor's bytes replaced (re-framed: a valid CRC)."""
    h = unpack(payload)[0]
    body = bytearray()
    write_chunk(body, chunk)
    return pack(Header(h.codec_id, h.seed, h.config, h.tensors), bytes(body))
