"""The payload format: what crosses the wire, byte for byte.

Layout (all integers little-endian)::

    magic  b"FSQZ"            4 bytes
    version                  u8      (FORMAT_VERSION)
    header_len               u16
    body_len                 u32
    header                   header_len bytes (below)
    body                     body_len bytes (the codec's own format)
    crc32                    u32 over every preceding byte

Header::

    codec id                 u8 length + ASCII
    seed                     varint  (the shared seed the codec's randomness came from)
    config                   varint length + compact JSON object (the codec's configuration)
    tensor count             varint
    per tensor: name (u8 length + UTF-8), dtype code (u8), ndim (u8), dims (varints)

A payload is decoded only after its length fields and CRC check out; declared shapes are
bounded (``MAX_NUMEL``) before anything is allocated. Every failure raises ``PayloadError``.

Bounded by the receiver, not the sender (issue #22): ``unpack`` takes the receiver's ``Limits`` (most
payload bytes, elements and tensors it accepts) and, optionally, the tensors it *expects*
(``expect``: the names, shapes and dtypes it holds for that message). The length is checked before
the CRC is computed; the tensor count before any tensor entry is read; every entry is compared with
the expected one as soon as it is read (``SpecMismatch``, a ``PayloadError``), so a payload that
declares other tensors is refused before the codec is even built. Exact integer bounds of the
header, each checked with ``>`` (the bound itself is valid)::

    seed         0 .. MAX_SEED = 2**63 - 1   (what ``seeding.derive_seed`` can hash)
    codec id     0 .. 255 bytes (u8)           config   0 .. bytes left in the header
    tensors      0 .. min(limits.max_tensors, bytes left / 3)   (an entry takes at least 3 bytes;
                 with ``expect``: exactly as many as expected)
    name         0 .. 255 bytes (u8)           dtype    a code of ``DTYPES``
    ndim         0 .. MAX_NDIM = 8             dim      0 .. MAX_NUMEL = 2**31
    elements     sum of the shapes' products 0 .. min(MAX_NUMEL, limits.max_numel)
"""
from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from fedsqueeze.errors import PayloadError
from fedsqueeze.wire.varint import Reader, encode_varint

MAGIC = b"FSQZ"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<4sBHI")
_CRC = struct.Struct("<I")
OVERHEAD = _PREFIX.size + _CRC.size
MAX_NDIM = 8
MAX_NUMEL = 1 << 31  # per payload; a declared shape beyond this is rejected before allocation
MAX_SEED = (1 << 63) - 1  # seeds are hashed as signed 64-bit integers (``seeding.derive_seed``)
MAX_TENSORS = 1 << 16  # more entries than a 65,535-byte header can hold (3 bytes each at least)
MIN_ENTRY = 3  # name length, dtype code, ndim: the smallest tensor entry in bytes

DTYPES: dict[int, torch.dtype] = {
    1: torch.float32, 2: torch.float16, 3: torch.bfloat16, 4: torch.float64,
    5: torch.int64, 6: torch.int32, 7: torch.int16, 8: torch.int8, 9: torch.uint8, 10: torch.bool,
}
DTYPE_CODES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @classmethod
    def of(cls, name: str, tensor: torch.Tensor) -> "TensorSpec":
        if tensor.dtype not in DTYPE_CODES:
            raise PayloadError(f"tensor {name!r} has unsupported dtype {tensor.dtype}")
        return cls(name, tuple(tensor.shape), tensor.dtype)


class SpecMismatch(PayloadError):
    """The payload declares other tensors than the receiver expects (names, shapes or dtypes);
    ``detail`` says which, without the preamble."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"payload tensors do not match the expected ones: {detail}")
        self.detail = detail


@dataclass(frozen=True)
class Limits:
    """What a receiver accepts in one payload: at most ``max_bytes`` bytes (None: any length the frame
    allows), ``max_numel`` elements and ``max_tensors`` tensors. Checked while the frame and header are
    read, before anything the header declares is allocated."""

    max_numel: int = MAX_NUMEL
    max_tensors: int = MAX_TENSORS
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_numel", "max_tensors", "max_bytes"):
            v = getattr(self, name)
            if v is None and name == "max_bytes":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"Limits.{name} must be an integer >= 0, got {v!r}")


def expected_map(expect) -> dict[str, TensorSpec] | None:
    """The receiver's expected tensors by name (from a sequence of ``TensorSpec`` or a mapping)."""
    if expect is None:
        return None
    if isinstance(expect, Mapping):
        return dict(expect)
    return {s.name: s for s in expect}


def _shape_str(shape: tuple[int, ...]) -> str:
    return str(tuple(shape))


def check_entry(spec: TensorSpec, want: dict[str, TensorSpec]) -> None:
    """``SpecMismatch`` unless ``spec`` is one of the expected tensors, with the same shape and dtype."""
    w = want.get(spec.name)
    if w is None:
        raise SpecMismatch(f"unexpected tensors {[spec.name]}")
    if tuple(w.shape) != spec.shape or w.dtype != spec.dtype:
        raise SpecMismatch(f"tensor {spec.name!r} is {_shape_str(spec.shape)} {spec.dtype}, expected "
                           f"{_shape_str(w.shape)} {w.dtype}")


@dataclass(frozen=True)
class Header:
    codec_id: str
    seed: int
    config: dict[str, Any]
    tensors: tuple[TensorSpec, ...]


def _encode_header(h: Header) -> bytes:
    out = bytearray()
    cid = h.codec_id.encode("ascii")
    out.append(len(cid))
    out += cid
    if isinstance(h.seed, bool) or not isinstance(h.seed, int) or not 0 <= h.seed <= MAX_SEED:
        raise PayloadError(f"seed {h.seed!r} is outside 0..2**63-1")
    out += encode_varint(h.seed)
    cfg = json.dumps(h.config, separators=(",", ":"), sort_keys=True).encode() if h.config else b""
    out += encode_varint(len(cfg))
    out += cfg
    out += encode_varint(len(h.tensors))
    for spec in h.tensors:
        name = spec.name.encode()
        if len(name) > 255 or len(spec.shape) > MAX_NDIM:
            raise PayloadError(f"tensor {spec.name!r}: name over 255 bytes or more than {MAX_NDIM} dims")
        out.append(len(name))
        out += name
        out.append(DTYPE_CODES[spec.dtype])
        out.append(len(spec.shape))
        for d in spec.shape:
            out += encode_varint(d)
    return bytes(out)


def _decode_header(buf: memoryview, limits: Limits = Limits(), expect=None) -> Header:
    want = expected_map(expect)
    r = Reader(buf)
    try:
        codec_id = bytes(r.take(r.u8())).decode("ascii")
    except UnicodeDecodeError as e:
        raise PayloadError("codec id is not ASCII") from e
    seed = r.varint(limit=MAX_SEED)
    cfg_bytes = r.chunk()
    try:
        config = json.loads(bytes(cfg_bytes)) if len(cfg_bytes) else {}
    except (ValueError, RecursionError) as e:
        raise PayloadError(f"codec config is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise PayloadError("codec config must be a JSON object")
    # the count is checked before any entry is read: against the expected tensors when the receiver
    # knows them (its expectation replaces the generic cap), else against its cap
    count = r.varint(limit=min(MAX_TENSORS, r.remaining() // MIN_ENTRY))
    if want is None and count > limits.max_tensors:
        raise PayloadError(f"payload declares {count} tensors, more than the receiver's limit of "
                           f"{limits.max_tensors} (max_tensors)")
    if want is not None and count != len(want):
        raise SpecMismatch(f"payload declares {count} tensors, expected {len(want)}")
    max_numel = limits.max_numel
    specs = []
    names: set[str] = set()
    total = 0
    for _ in range(count):
        try:
            name = bytes(r.take(r.u8())).decode()
        except UnicodeDecodeError as e:
            raise PayloadError("tensor name is not UTF-8") from e
        if name in names:
            raise PayloadError(f"tensor name {name!r} appears twice in the payload header")
        names.add(name)
        code = r.u8()
        if code not in DTYPES:
            raise PayloadError(f"unknown dtype code {code} for tensor {name!r}")
        ndim = r.u8()
        if ndim > MAX_NDIM:
            raise PayloadError(f"tensor {name!r} declares {ndim} dims (max {MAX_NDIM})")
        shape = tuple(r.varint(limit=MAX_NUMEL) for _ in range(ndim))
        total += math.prod(shape)
        if total > MAX_NUMEL:
            raise PayloadError(f"payload declares more than {MAX_NUMEL} elements")
        if total > max_numel:
            raise PayloadError(f"payload declares at least {total} elements, more than the allowed "
                               f"{max_numel}")
        spec = TensorSpec(name, shape, DTYPES[code])
        if want is not None:
            check_entry(spec, want)
        specs.append(spec)
    r.expect_end()
    return Header(codec_id, seed, config, tuple(specs))


def max_payload_bytes(max_numel: int) -> int:
    """The most bytes a receiver should accept for payloads of at most ``max_numel`` elements: the frame,
    the largest header the format allows and 8 bytes per element (raw int64/float64; fp32 needs 4, every
    lossy codec less, a full-rank ``svd`` about 8). Checked on the received length, before the bytes are
    copied, checksummed or parsed."""
    return OVERHEAD + 0xFFFF + 8 * max_numel


def pack(header: Header, body: bytes) -> bytes:
    """Frame a codec body with its header and CRC32."""
    hbytes = _encode_header(header)
    if len(hbytes) > 0xFFFF:
        raise PayloadError(f"header of {len(hbytes)} bytes exceeds 65535 (too many or too long names)")
    head = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(hbytes), len(body)) + hbytes
    crc = zlib.crc32(body, zlib.crc32(head))  # the CRC of head + body, without building it first
    return b"".join((head, body, _CRC.pack(crc)))  # the body is copied once


def _frame(data: bytes | bytearray | memoryview, max_bytes: int | None = None) -> tuple[memoryview, memoryview]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PayloadError(f"a payload must be bytes, got {type(data).__name__}")
    view = memoryview(data)
    if max_bytes is not None and view.nbytes > max_bytes:
        raise PayloadError(f"payload of {view.nbytes} bytes exceeds the receiver's limit of {max_bytes}")
    if len(view) < OVERHEAD:
        raise PayloadError(f"payload of {len(view)} bytes is shorter than the {OVERHEAD}-byte frame")
    magic, version, hlen, blen = _PREFIX.unpack_from(view, 0)
    if magic != MAGIC:
        raise PayloadError(f"bad magic {bytes(magic)!r}: not a fedsqueeze payload")
    if version != FORMAT_VERSION:
        raise PayloadError(f"payload format version {version}; this build reads {FORMAT_VERSION}")
    if len(view) != OVERHEAD + hlen + blen:
        raise PayloadError(
            f"payload length {len(view)} does not match its declared size {OVERHEAD + hlen + blen} (truncated?)")
    (crc,) = _CRC.unpack_from(view, len(view) - _CRC.size)
    if zlib.crc32(view[:-_CRC.size]) != crc:
        raise PayloadError("CRC32 mismatch: the payload was corrupted in transit")
    start = _PREFIX.size
    return view[start:start + hlen], view[start + hlen:start + hlen + blen]


def unpack(data: bytes | bytearray | memoryview, *, limits: Limits | None = None,
           expect=None) -> tuple[Header, memoryview]:
    """Check the frame and CRC, parse the header; return it with the (still encoded) body.

    ``limits``: the receiver's ``Limits`` (default: only the format's own bounds); ``expect``: the
    tensors the receiver expects (``TensorSpec`` sequence or name -> spec mapping, order free), else
    ``SpecMismatch`` as soon as the header differs."""
    limits = limits or Limits()
    hview, body = _frame(data, limits.max_bytes)
    return _decode_header(hview, limits, expect), body


def peek_codec(data: bytes) -> str:
    """The codec id of a payload (after full frame and CRC validation)."""
    return unpack(data)[0].codec_id
