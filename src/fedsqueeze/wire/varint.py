"""Unsigned LEB128 varints and a bounds-checked byte reader used by headers and codec bodies."""
from __future__ import annotations

from fedsqueeze.errors import PayloadError

MAX_VALUE = (1 << 63) - 1  # the default bound of a decoded varint: it fits a signed 64-bit integer


def encode_varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("varints are unsigned")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class Reader:
    """Reads from a byte buffer; every overrun raises PayloadError instead of IndexError."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes | memoryview, pos: int = 0, end: int | None = None) -> None:
        self.buf = memoryview(buf)
        self.pos = pos
        self.end = len(self.buf) if end is None else end

    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int) -> memoryview:
        if n < 0 or n > self.end - self.pos:
            raise PayloadError(f"truncated payload: wanted {n} bytes, {self.end - self.pos} left")
        view = self.buf[self.pos:self.pos + n]
        self.pos += n
        return view

    def u8(self) -> int:
        return self.take(1)[0]

    def varint(self, limit: int = MAX_VALUE) -> int:
        """The next varint; ``PayloadError`` if it is above ``limit`` (the limit itself is valid), takes
        more than 10 bytes or overruns the buffer."""
        shift = 0
        value = 0
        for _ in range(10):
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if value > limit:
                    raise PayloadError(f"declared value {value} exceeds the limit {limit}")
                return value
            shift += 7
        raise PayloadError("malformed varint (more than 10 bytes)")

    def chunk(self, limit: int | None = None) -> memoryview:
        """A varint length followed by that many bytes."""
        n = self.varint(self.remaining() if limit is None else min(limit, self.remaining()))
        return self.take(n)

    def expect_end(self) -> None:
        if self.pos != self.end:
            raise PayloadError(f"{self.end - self.pos} unexpected trailing bytes")


def write_chunk(out: bytearray, data: bytes) -> None:
    out += encode_varint(len(data))
    out += data
