"""The codec contract (after numcodecs): ``encode(tensors, seed=) -> bytes``, ``decode(bytes) -> tensors``.

A codec is a frozen dataclass whose fields are its configuration; ``get_config``/``from_config``
round-trip through JSON. Its output is a full wire payload (see ``fedsqueeze.wire.payload``): the
header names the codec, its config, the seed and the tensors, so ``decode`` needs nothing else.

Subclasses implement either the per-tensor hooks ``encode_tensor``/``decode_tensor`` (the body is
then one length-prefixed chunk per tensor) or the whole-body hooks ``encode_body``/``decode_body``.
Randomness comes only from the seed: same input and seed, same bytes.

Stateful tricks (error feedback) override ``encode_stateful``; the engine keeps the state in the
client (or server) state store, never in the codec object.

Devices (issue #17 item 2). Inputs may live on any device; the bytes never depend on which:

- ``encode`` (and ``encode_stateful``) first moves every input to the CPU with ``host_tensors``:
  detached, contiguous, same dtype (a copy only when the tensor is elsewhere or non-contiguous).
  All arithmetic of every codec then runs on the CPU, so a CUDA tensor encodes to exactly the bytes
  of the same values on the CPU. ``meta`` tensors (no values) are refused with a ``CodecError``.
- ``decode(payload, device=None)`` decodes on the CPU and returns CPU tensors, or, with ``device``,
  the same tensors moved there once at the end (``place``). Decoded values never depend on the
  device: ``decode(p, device="cuda")`` equals ``decode(p)`` moved to the GPU, bit for bit.
- State returned by ``encode_stateful`` (error-feedback residuals, PowerSGD's warm-start ``Q``) is
  always on the CPU; state handed in may be on any device (the engine may move client states to
  the GPU and back) and is moved to the CPU before use.

Per codec, why the safe CPU path (no codec opts into a device path today):

- ``fp32``, ``fp16``, ``bf16``: element-wise casts (round to nearest) would give the same bytes on a
  GPU, but there is nothing to gain: the payload has to come to the CPU anyway.
- ``topk``, ``randk``, ``rowsparse``: selection by exact comparisons and copies (numpy); exact on any
  device in principle, but ``torch.topk`` breaks ties differently on CUDA, and the values are needed
  on the CPU to be written.
- ``signsgd``, ``terngrad``, ``qsgd``, ``threelc``: sign/level bits are exact, but the per-tensor
  scales (``||p||_1``, RMS, bucket ``||v||_2``) are fp32 reductions whose summation order differs
  between devices (and between CPU builds); ``terngrad``/``qsgd`` also draw from the CPU generator.
- ``drive``, ``eden``: the Hadamard butterfly is only additions and subtractions (exact order), but
  the row scales are fp32 norms (reduction order) and EDEN's inner products too.
- ``svd``, ``powersgd``: LAPACK vs cuSOLVER (QR, SVD) and matmul order give different factors (and
  singular-vector signs): never identical bytes.
- ``rdq``: ``x / u`` and rounding are element-wise, but ``normalize`` and the budget mode use
  reductions (RMS), and the step search re-encodes; the ANS/γ coders are numpy.
- ``ef``: the residual arithmetic is element-wise, around an inner codec that runs on the CPU.
- ``pipeline``: every stage (``svd.forward``/``inverse``) runs on the CPU; only the final decoded
  tensors are moved to ``device``.
"""
from __future__ import annotations

import dataclasses
import difflib
import struct
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Union

import torch

from fedsqueeze.errors import CodecError, PayloadError
from fedsqueeze.seeding import derive_seed
from fedsqueeze.wire.payload import (Header, Limits, SpecMismatch, TensorSpec, check_entry, expected_map,
                                     pack, unpack)
from fedsqueeze.wire.varint import Reader, write_chunk

Tensors = dict[str, torch.Tensor]
DeviceLike = Union[str, torch.device, int, None]  # what ``decode(device=...)`` accepts
DEFAULT_MAX_NUMEL = 1 << 27  # 128 M elements (512 MB as fp32) unless the caller says otherwise
# tensors per payload unless the caller says otherwise (or passes ``expect``): tiny tensors cost ~0.2 ms
# each to decode with the rotation/bucket codecs, so this bounds a hostile header's 16,000+ to about 1 s
DEFAULT_MAX_TENSORS = 1 << 12


@dataclasses.dataclass(frozen=True)
class Codec:
    """Base class; subclasses are frozen dataclasses registered by ``codec_id``."""

    codec_id: ClassVar[str] = ""
    lossless: ClassVar[bool] = False
    unbiased: ClassVar[bool] = False
    stateful: ClassVar[bool] = False

    # ---- configuration -------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Codec":
        names = [f.name for f in dataclasses.fields(cls)]
        for key in config:
            if key not in names:
                hint = difflib.get_close_matches(key, names, n=1)
                allowed = ", ".join(names) or "none"
                raise CodecError(f"codec {cls.codec_id!r} has no option {key!r}"
                                 + (f" (did you mean {hint[0]!r}?)" if hint else f"; options: {allowed}"))
        try:
            return cls(**dict(config))
        except TypeError as e:
            raise CodecError(f"codec {cls.codec_id!r}: {e}") from e

    def spec_config(self) -> dict[str, Any]:
        """Options that rebuild this codec through ``from_config``/``make_codec`` today (unlike a
        header's ``get_config``, which may omit a field whose omission has a fixed old meaning)."""
        return self.get_config()

    @classmethod
    def from_payload_config(cls, config: Mapping[str, Any]) -> "Codec":
        """The codec that wrote a payload whose header carries ``config``. Same as ``from_config``,
        except where a codec gained an option whose absence means the older format (DRIVE/EDEN's
        ``layout``): old payloads keep decoding as they were written."""
        return cls.from_config(config)

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.get_config().items())
        return f"{self.codec_id}({args})" if args else self.codec_id

    # ---- public API ------------------------------------------------------------------------
    def encode(self, tensors: Mapping[str, torch.Tensor], *, seed: int = 0) -> bytes:
        tensors = host_tensors(tensors)  # every codec computes on the CPU: same bytes from any device
        specs = tuple(TensorSpec.of(name, t) for name, t in tensors.items())
        values = []
        for spec, t in zip(specs, tensors.values()):
            if t.is_floating_point():
                t = t.to(torch.float32)
                # a sum is NaN/Inf when any element is (cheap); only then look closer (overflow)
                if t.numel() and not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
                    raise CodecError(f"tensor {spec.name!r} contains NaN or Inf; refusing to encode it")
            values.append(t.contiguous())
        body = self.encode_body(values, specs, seed)
        return pack(Header(self.codec_id, seed, self.get_config(), specs), body)

    def encode_stateful(self, tensors: Mapping[str, torch.Tensor], *, seed: int,
                        state: Any) -> tuple[bytes, Any]:
        """Encode with a per-sender state (error feedback residuals); stateless codecs ignore it."""
        return self.encode(tensors, seed=seed), state

    def decode(self, data: bytes, *, expect: Sequence[TensorSpec] | Mapping[str, TensorSpec] | None = None,
               max_numel: int = DEFAULT_MAX_NUMEL, max_tensors: int = DEFAULT_MAX_TENSORS, max_bytes: int | None = None,
               device: DeviceLike = None) -> Tensors:
        """Decode a payload of this codec, bounded by the receiver (see ``wire.payload``): ``expect``, the
        tensors the receiver knows must arrive (names, shapes, dtypes; any order), refused with
        ``SpecMismatch`` before anything is allocated; ``max_numel``/``max_tensors``/``max_bytes``, its
        limits; ``device``: where the returned tensors go (default: the CPU, where decoding always runs)."""
        target = resolve_device(device)
        header, body = unpack(data, limits=receiver_limits(max_numel, max_tensors, max_bytes), expect=expect)
        if header.codec_id != self.codec_id:
            raise PayloadError(f"payload was encoded by {header.codec_id!r}, expected {self.codec_id!r}")
        return decode_with(type(self), header, body, expect=expect, max_numel=max_numel, device=target)

    # ---- hooks -------------------------------------------------------------------------------
    def encode_body(self, values: list[torch.Tensor], specs: Sequence[TensorSpec], seed: int,
                    per_tensor: Mapping[int, dict] | None = None) -> bytes:
        """One length-prefixed chunk per tensor; ``per_tensor[i]``: extra keyword arguments of
        ``encode_tensor`` for tensor i (e.g. rdq's per-layer step)."""
        out = bytearray()
        for i, (spec, x) in enumerate(zip(specs, values)):
            if not spec.numel:
                chunk = b""
            elif not x.is_floating_point():
                chunk = x.numpy().tobytes()
            else:
                chunk = self.encode_tensor(x, derive_seed(seed, i), **((per_tensor or {}).get(i, {})))
            write_chunk(out, chunk)
        return out  # type: ignore[return-value]  # a bytearray: ``pack`` copies it once into the payload

    def decode_body(self, body: memoryview, specs: Sequence[TensorSpec], seed: int) -> list[torch.Tensor]:
        r = Reader(body)
        out = []
        for i, spec in enumerate(specs):
            chunk = r.chunk()
            if not spec.numel:
                if len(chunk):
                    raise PayloadError(f"tensor {spec.name!r} is empty but carries {len(chunk)} bytes")
                out.append(torch.zeros(spec.shape, dtype=spec.dtype))
            elif not spec.dtype.is_floating_point:
                out.append(raw_tensor(chunk, spec))
            else:
                x = self.decode_tensor(chunk, spec.shape, derive_seed(seed, i))
                if x.numel() != spec.numel:
                    raise PayloadError(f"tensor {spec.name!r}: decoded {x.numel()} values, expected {spec.numel}")
                out.append(x.reshape(spec.shape))
        r.expect_end()
        return out

    def encode_tensor(self, x: torch.Tensor, seed: int) -> bytes:
        raise NotImplementedError

    def decode_tensor(self, data: memoryview, shape: tuple[int, ...], seed: int) -> torch.Tensor:
        raise NotImplementedError


def host(t: torch.Tensor, name: str = "") -> torch.Tensor:
    """``t``'s values on the CPU: detached, contiguous, same dtype (sharing ``t``'s memory when it already is).

    A ``meta`` tensor has no values and is refused (``CodecError``)."""
    if not isinstance(t, torch.Tensor):
        raise CodecError(f"tensor {name!r} is a {type(t).__name__}, not a torch.Tensor")
    if t.device.type == "meta":
        raise CodecError(f"tensor {name!r} is on the meta device (a shape without values); "
                         "codecs need real values")
    t = t.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")
    return t.contiguous()


def host_tensors(tensors: Mapping[str, torch.Tensor]) -> Tensors:
    """Every tensor of ``tensors`` on the CPU (``host``), in the same order."""
    return {name: host(t, name) for name, t in tensors.items()}


def host_state(state: Any) -> Any:
    """Codec state (nested dicts/lists of tensors) with every tensor detached and on the CPU."""
    if isinstance(state, torch.Tensor):
        return host(state)
    if isinstance(state, dict):
        return {k: host_state(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(host_state(v) for v in state)
    return state


def resolve_device(device: DeviceLike) -> torch.device | None:
    """``None`` (the CPU), or ``device`` as a ``torch.device`` (``CodecError`` if it is not one)."""
    if device is None:
        return None
    try:
        return device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise CodecError(f"decode: {device!r} is not a device (write e.g. 'cpu', 'cuda', 'cuda:1')") from e


def place(tensors: Tensors, device: torch.device | None) -> Tensors:
    """``tensors`` moved to ``device`` (unchanged for ``None`` or the CPU)."""
    if device is None or device.type == "cpu":
        return tensors
    return {name: t.to(device) for name, t in tensors.items()}


def raw_tensor(chunk: memoryview, spec: TensorSpec) -> torch.Tensor:
    """A tensor stored as its raw little-endian bytes; the length must match exactly."""
    itemsize = torch.empty((), dtype=spec.dtype).element_size()
    if len(chunk) != spec.numel * itemsize:
        raise PayloadError(f"tensor {spec.name!r}: {len(chunk)} bytes for {spec.numel} x {spec.dtype}")
    return torch.frombuffer(bytearray(chunk), dtype=spec.dtype).reshape(spec.shape)


def receiver_limits(max_numel: int, max_tensors: int = DEFAULT_MAX_TENSORS, max_bytes: int | None = None) -> Limits:
    """The receiver's ``Limits`` from ``decode``'s keyword arguments (``CodecError`` if one is not a count)."""
    try:
        return Limits(max_numel=max_numel, max_tensors=max_tensors, max_bytes=max_bytes)
    except ValueError as e:
        raise CodecError(f"decode: {e}") from e


def decode_with(cls: type[Codec], header: Header, body: memoryview, *,
                expect: Sequence[TensorSpec] | Mapping[str, TensorSpec] | None, max_numel: int,
                device: DeviceLike = None) -> Tensors:
    """Rebuild the sender's codec from the header's config (validated) and decode the body (on the
    CPU); the tensors are returned on ``device`` (default: the CPU)."""
    target = resolve_device(device)
    want = expected_map(expect)
    if want is not None:
        if len(header.tensors) != len(want):
            raise SpecMismatch(f"payload declares {len(header.tensors)} tensors, expected {len(want)}")
        for spec in header.tensors:
            check_entry(spec, want)
    total = sum(s.numel for s in header.tensors)
    if total > max_numel:
        raise PayloadError(f"payload declares {total} elements, more than the allowed {max_numel}")
    try:
        codec = cls.from_payload_config(header.config)
    except (CodecError, ValueError, TypeError, ArithmeticError, RecursionError, MemoryError) as e:
        raise PayloadError(f"payload carries an invalid codec config: {e}") from e
    try:
        values = codec.decode_body(body, header.tensors, header.seed)
    except PayloadError:
        raise
    except (ValueError, IndexError, RuntimeError, ArithmeticError, TypeError, KeyError, MemoryError,
            RecursionError, struct.error) as e:  # defensive: a codec bug on hostile input must not escape raw
        raise PayloadError(f"{cls.codec_id}: malformed body ({type(e).__name__}: {e})") from e
    out: Tensors = {}
    for spec, x in zip(header.tensors, values):
        out[spec.name] = x.to(spec.dtype) if x.dtype != spec.dtype else x
    return place(out, target)


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v
