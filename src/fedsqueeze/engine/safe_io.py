"""A serialisation format that cannot run code: fedsqueeze's replacement for ``torch.save``/``torch.load``.

Checkpoints, client states, delta mirrors and Flower's stored client state hold nested containers of
tensors and plain values. Pickle (what ``torch.load`` reads unless told ``weights_only``) executes whatever a
crafted file tells it to, and run folders get shared; this format only ever builds the types below.

Supported values: ``None``, ``bool``, ``int``, ``float``, ``str``, ``list``, ``tuple``, ``dict`` (keys any
hashable supported value: str, int, float, bool, None, tuples of those), ``torch.Tensor`` (every dtype in
``_TORCH_DTYPES``, any device: written from the CPU, read back on the CPU, contiguous, without
``requires_grad``; an ``nn.Parameter`` reads back as a plain tensor) and numeric/bool ``numpy.ndarray``.
numpy scalars are written as the Python bool/int/float they equal. Anything else is refused when writing
(``TypeError``), never silently pickled.

Layout (all integers little-endian)::

    magic    8 bytes   b"FSQSAFE\\0"
    version  u32       1
    hlen     u64       length of the header
    header   hlen bytes, UTF-8 JSON (ASCII only): {"root": NODE, "data_bytes": N}
    data     N bytes: every tensor's raw little-endian bytes, back to back, in header order

NODE is a JSON string (a ``str``), ``null``, ``true``/``false``, a JSON integer (an ``int``), or a list
whose first element is a tag: ``["f", "<16 hex digits>"]`` (a float's IEEE-754 bits, so -0.0, inf and
NaN payloads survive), ``["L", [NODE...]]``, ``["T", [NODE...]]``, ``["D", [[KEY, NODE]...]]`` (insertion
order kept), ``["t", DTYPE, [SHAPE...], NBYTES]`` (torch) and ``["n", DTYPE, [SHAPE...], NBYTES]`` (numpy;
DTYPE as numpy's little-endian ``dtype.str``). The bytes are a function of the value alone
(deterministic: same value, same file).

Reading checks everything before it allocates: the magic and version, that the header and the data fit
exactly in the file, each tensor's byte count against its dtype and shape, and that the tensors cover
the data section exactly. Any malformed input raises ``SafeIOError`` with one clear line.
"""
from __future__ import annotations

import json
import math
import re
import struct
import sys
from typing import Any

import numpy as np
import torch

from fedsqueeze.errors import SafeIOError

__all__ = ["MAGIC", "VERSION", "SafeIOError", "dumps", "loads", "is_legacy_pickle"]

MAGIC = b"FSQSAFE\0"
VERSION = 1
_PREFIX = struct.Struct("<8sIQ")  # magic, version, header length
MAX_DEPTH = 64

_TORCH_DTYPES: dict[str, torch.dtype] = {
    "bool": torch.bool, "uint8": torch.uint8, "int8": torch.int8, "int16": torch.int16,
    "int32": torch.int32, "int64": torch.int64, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float32": torch.float32, "float64": torch.float64, "complex64": torch.complex64,
    "complex128": torch.complex128,
}
_TORCH_NAMES = {v: k for k, v in _TORCH_DTYPES.items()}
_NUMPY_KINDS = "biufc"  # bool, signed, unsigned, float, complex: no objects, strings or records
_NUMPY_DTYPE = re.compile(r"\|b1|\|[iu]1|<[iu][248]|<f[248]|<c(8|16)")  # what dumps writes, as numpy spells it
_LEGACY_PREFIXES = (b"PK\x03\x04", b"\x80")  # torch's zip format, a raw pickle stream


def is_legacy_pickle(data: bytes) -> bool:
    """True for the bytes of a ``torch.save`` file (zip archive or raw pickle) — never to be loaded."""
    return data.startswith(_LEGACY_PREFIXES)


# ---- writing ----------------------------------------------------------------------------------------

def _le_bytes(flat_u8: np.ndarray, itemsize: int) -> bytes:
    if sys.byteorder != "little" and itemsize > 1:
        flat_u8 = flat_u8.reshape(-1, itemsize)[:, ::-1]
    return flat_u8.tobytes()


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous().reshape(-1)
    if t.numel() == 0:
        return b""
    return _le_bytes(t.view(torch.uint8).numpy(), t.element_size())


def _float_node(x: float) -> list:
    return ["f", struct.pack("<d", x).hex()]


def dumps(obj: Any) -> bytes:
    """The safe-format bytes of ``obj`` (see the module doc); ``TypeError`` names any unsupported value."""
    chunks: list[bytes] = []
    size = 0

    def enc(x: Any, where: str, depth: int) -> Any:
        nonlocal size
        if depth > MAX_DEPTH:
            raise TypeError(f"{where}: nested deeper than {MAX_DEPTH} levels")
        if x is None or isinstance(x, (bool, np.bool_)):
            return None if x is None else bool(x)
        if isinstance(x, (int, np.integer)):
            return int(x)
        if isinstance(x, (float, np.floating)):
            return _float_node(float(x))
        if isinstance(x, str):
            return x
        if isinstance(x, torch.Tensor):
            if x.layout != torch.strided or x.dtype not in _TORCH_NAMES:
                raise TypeError(f"{where}: cannot save a {x.layout} tensor of dtype {x.dtype}")
            data = _tensor_bytes(x)
            chunks.append(data)
            size += len(data)
            return ["t", _TORCH_NAMES[x.dtype], list(x.shape), len(data)]
        if isinstance(x, np.ndarray):
            if x.dtype.kind not in _NUMPY_KINDS or x.dtype.fields is not None:
                raise TypeError(f"{where}: cannot save a numpy array of dtype {x.dtype}")
            le = x.astype(x.dtype.newbyteorder("<"), copy=False)
            data = np.ascontiguousarray(le).tobytes()
            chunks.append(data)
            size += len(data)
            return ["n", le.dtype.str, list(x.shape), len(data)]
        if isinstance(x, dict):
            return ["D", [[enc(k, f"{where} key", depth + 1), enc(v, f"{where}[{k!r}]", depth + 1)]
                          for k, v in x.items()]]
        if isinstance(x, tuple):
            return ["T", [enc(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(x)]]
        if isinstance(x, list):
            return ["L", [enc(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(x)]]
        raise TypeError(f"{where}: cannot save a value of type {type(x).__name__} (only None, bool, int, float, "
                        "str, list, tuple, dict, torch.Tensor and numpy arrays)")

    root = enc(obj, "value", 0)
    header = json.dumps({"root": root, "data_bytes": size}, separators=(",", ":"), ensure_ascii=True,
                        allow_nan=False).encode("ascii")
    return b"".join([_PREFIX.pack(MAGIC, VERSION, len(header)), header, *chunks])


# ---- reading ----------------------------------------------------------------------------------------

def _shape(node: Any) -> tuple[int, ...]:
    if not isinstance(node, list) or len(node) > 32 or not all(type(d) is int and d >= 0 for d in node):
        raise SafeIOError("a tensor's shape is not a list of at most 32 non-negative integers")
    return tuple(node)


def _no_constant(name: str) -> Any:
    raise ValueError(f"JSON constant {name} is not allowed")


def loads(data: bytes | bytearray | memoryview, *, what: str = "file") -> Any:
    """The value ``dumps`` wrote; ``SafeIOError`` (one line, naming ``what``) for anything malformed."""
    try:
        return _loads(bytes(data), what)
    except SafeIOError:
        raise
    except Exception as e:  # noqa: BLE001 (whatever a crafted file provokes: one clear line, no traceback)
        detail = " ".join(str(e).split())[:200]
        raise SafeIOError(f"{what} is malformed ({type(e).__name__}: {detail})") from None


def _loads(data: bytes, what: str) -> Any:
    if is_legacy_pickle(data):
        raise SafeIOError(f"{what} is a pickle/torch.save file, which fedsqueeze no longer loads (it could run code)")
    if len(data) < _PREFIX.size:
        raise SafeIOError(f"{what} is truncated ({len(data)} bytes, no room for a header)")
    magic, version, hlen = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise SafeIOError(f"{what} is not a fedsqueeze state file (bad magic)")
    if version != VERSION:
        raise SafeIOError(f"{what} has format version {version}; this fedsqueeze reads version {VERSION}")
    body = len(data) - _PREFIX.size
    if hlen > body:
        raise SafeIOError(f"{what} is truncated: its header claims {hlen} bytes, only {body} follow")
    header = json.loads(data[_PREFIX.size:_PREFIX.size + hlen].decode("ascii"), parse_constant=_no_constant)
    if not isinstance(header, dict) or set(header) != {"root", "data_bytes"}:
        raise SafeIOError(f"{what} has a malformed header")
    start = _PREFIX.size + hlen
    n_data = header["data_bytes"]
    if type(n_data) is not int or n_data != len(data) - start:
        raise SafeIOError(f"{what} is truncated or padded: the header declares {n_data!r} data bytes, "
                          f"the file holds {len(data) - start}")
    pos = start
    view = memoryview(data)  # tensor bytes are sliced without a copy, then copied once into owned memory

    def take(nbytes: Any, itemsize: int, shape: tuple[int, ...]) -> memoryview:
        nonlocal pos
        if type(nbytes) is not int or nbytes != math.prod(shape) * itemsize:
            raise SafeIOError(f"{what}: a tensor's byte count {nbytes!r} does not match its shape and dtype")
        if nbytes > len(data) - pos:
            raise SafeIOError(f"{what}: a tensor runs past the end of the file")
        chunk = view[pos:pos + nbytes]
        pos += nbytes
        return chunk

    def dec(node: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise SafeIOError(f"{what} is nested deeper than {MAX_DEPTH} levels")
        if node is None or isinstance(node, (bool, int, str)):
            return node
        if not isinstance(node, list) or not node or not isinstance(node[0], str):
            raise SafeIOError(f"{what} holds a malformed value")
        tag, args = node[0], node[1:]
        if tag == "f" and len(args) == 1 and isinstance(args[0], str) and len(args[0]) == 16:
            return struct.unpack("<d", bytes.fromhex(args[0]))[0]
        if tag in ("L", "T") and len(args) == 1 and isinstance(args[0], list):
            items = [dec(v, depth + 1) for v in args[0]]
            return items if tag == "L" else tuple(items)
        if tag == "D" and len(args) == 1 and isinstance(args[0], list):
            out = {}
            for pair in args[0]:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise SafeIOError(f"{what} holds a malformed dict entry")
                key = dec(pair[0], depth + 1)
                try:
                    hash(key)
                except TypeError:
                    raise SafeIOError(f"{what} holds a dict key that is not hashable") from None
                out[key] = dec(pair[1], depth + 1)
            return out
        if tag == "t" and len(args) == 3:
            dtype = _TORCH_DTYPES.get(args[0]) if isinstance(args[0], str) else None
            if dtype is None:
                raise SafeIOError(f"{what} holds a tensor of unknown dtype {args[0]!r}")
            shape = _shape(args[1])
            itemsize = torch.empty((), dtype=dtype).element_size()
            raw = take(args[2], itemsize, shape)
            if len(raw) == 0:
                return torch.empty(shape, dtype=dtype)
            flat = np.frombuffer(raw, dtype=np.uint8)
            if dtype == torch.bool and flat.max() > 1:
                raise SafeIOError(f"{what} holds a bool tensor with bytes other than 0 and 1")
            if sys.byteorder != "little" and itemsize > 1:
                flat = flat.reshape(-1, itemsize)[:, ::-1].reshape(-1)
            return torch.from_numpy(flat.copy()).view(dtype).reshape(shape)
        if tag == "n" and len(args) == 3:
            ok = isinstance(args[0], str) and _NUMPY_DTYPE.fullmatch(args[0]) is not None
            dtype = np.dtype(args[0]) if ok else None
            if dtype is None or dtype.str != args[0]:
                raise SafeIOError(f"{what} holds a numpy array of unsupported dtype {args[0]!r}")
            shape = _shape(args[1])
            raw = take(args[2], dtype.itemsize, shape)
            return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
        raise SafeIOError(f"{what} holds a value with unknown tag {tag!r}")

    value = dec(header["root"], 0)
    if pos != len(data):
        raise SafeIOError(f"{what} has {len(data) - pos} data bytes no tensor claims")
    return value
