"""No pickle: checkpoints, client states, delta mirrors and Flower's stored state use ``engine.safe_io``, a
format that cannot run code. Exact-number tests of the format, then pickle payloads planted where a run
folder or a SuperNode keeps state: each is refused with one clear line, and its code never runs."""
from __future__ import annotations

import hashlib
import io
import json
import math
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import digits_config
from fedsqueeze.engine import safe_io
from fedsqueeze.engine.safe_io import SafeIOError, dumps, loads
from fedsqueeze.errors import FedsqueezeError, LegacyRunError

SRC = Path(__file__).resolve().parents[1] / "src"


def bits(t: torch.Tensor) -> list[int]:
    """A tensor's raw bytes, for bit-exact comparison (NaN != NaN, -0.0 == 0.0 hide differences)."""
    return list(t.contiguous().reshape(-1).view(torch.uint8).tolist()) if t.numel() else []


def f32(pattern: int) -> torch.Tensor:
    return torch.tensor([pattern - (1 << 32) if pattern >= 1 << 31 else pattern], dtype=torch.int32).view(torch.float32)


# ---- the format ---------------------------------------------------------------------------------------

ODD_FLOATS = [0.0, -0.0, 1.5, -2.25, math.inf, -math.inf, 5e-324, 1.7976931348623157e308]


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                                   torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64,
                                   torch.complex128])
def test_every_dtype_round_trips_bit_exactly(dtype):
    if dtype == torch.bool:
        t = torch.tensor([[True, False, True], [False, False, True]])
    elif dtype.is_floating_point:
        t = torch.tensor(ODD_FLOATS + [math.nan], dtype=torch.float64).to(dtype).reshape(3, 3)
    elif dtype.is_complex:
        t = torch.tensor([complex(1.5, -0.0), complex(math.inf, math.nan)], dtype=dtype)
    else:
        info = torch.iinfo(dtype)
        t = torch.tensor([info.min, -1 if info.min < 0 else 0, 0, 1, info.max], dtype=dtype)
    back = loads(dumps({"t": t}))["t"]
    assert back.dtype == dtype and back.shape == t.shape and back.device.type == "cpu"
    assert bits(back) == bits(t)


def test_nan_payloads_and_negative_zero_survive_in_tensors_and_python_floats():
    quiet_payload, signalling, neg_zero = 0x7FC00123, 0x7F800001, 0x80000000
    t = torch.cat([f32(quiet_payload), f32(signalling), f32(neg_zero), f32(0xFFC00000)])
    back = loads(dumps(t))
    assert back.view(torch.int32).tolist() == t.view(torch.int32).tolist()
    payload = struct.unpack("<d", struct.pack("<Q", 0x7FF8_0000_DEAD_BEEF))[0]
    out = loads(dumps([payload, -0.0, 0.1, math.inf]))
    assert struct.pack("<d", out[0]) == struct.pack("<Q", 0x7FF8_0000_DEAD_BEEF)
    assert struct.pack("<d", out[1]) == struct.pack("<d", -0.0) and out[2] == 0.1 and out[3] == math.inf


def test_plain_values_and_containers_keep_their_types():
    value = {
        "none": None, "t": True, "f": False, "i": -7, "big": 2 ** 70, "neg_big": -(2 ** 65), "x": 0.1, "s": "é ✓ \n\"",
        "list": [1, [2, (3, "4")]], "tuple": (1, (2.0, None)), "empty": [[], (), {}],
        3: "int key", -1: 0, (1, "a"): "tuple key", 2.5: "float key", None: "none key", False: "bool key",
    }
    back = loads(dumps(value))
    assert back == value
    assert list(back) == list(value)  # insertion order kept
    assert type(back["list"][1][1]) is tuple and type(back["tuple"]) is tuple and type(back["list"]) is list
    assert type(back["i"]) is int and type(back["x"]) is float and type(back["t"]) is bool
    assert type(next(k for k in back if k == 3 and not isinstance(k, bool))) is int


def test_shapes_scalars_empty_and_non_contiguous_tensors():
    base = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    cases = {"scalar": torch.tensor(3.25), "empty": torch.zeros(0, 5), "empty_i": torch.zeros(3, 0, dtype=torch.int64),
             "transposed": base.transpose(0, 2), "sliced": base[:, ::2, 1], "grad": torch.ones(3, requires_grad=True),
             "param": torch.nn.Parameter(torch.full((2,), -0.0))}
    back = loads(dumps(cases))
    for k, t in cases.items():
        assert back[k].shape == t.shape and back[k].dtype == t.dtype, k
        assert bits(back[k]) == bits(t.detach()), k
        assert back[k].is_contiguous() and not back[k].requires_grad and type(back[k]) is torch.Tensor
    back["transposed"].add_(1)  # readers return owned, writable memory
    assert base[0, 0, 0] == 0


def test_numpy_arrays_and_scalars():
    arrays = {"f4": np.array([1.5, -0.0, np.nan], dtype="<f4"), "be": np.arange(4, dtype=">i8").reshape(2, 2),
              "b": np.array([True, False]), "u2": np.array([65535], dtype=np.uint16), "c": np.array([1 + 2j]),
              "scalar": np.float64(0.25), "iscalar": np.int64(-3), "bscalar": np.bool_(True)}
    back = loads(dumps(arrays))
    for k in ("f4", "be", "b", "u2", "c"):
        a = arrays[k]
        assert back[k].dtype == a.dtype.newbyteorder("=") and back[k].shape == a.shape, k
        assert back[k].astype(a.dtype).tobytes() == a.tobytes(), k
    assert (back["scalar"], back["iscalar"], back["bscalar"]) == (0.25, -3, True)
    assert type(back["iscalar"]) is int and type(back["bscalar"]) is bool


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.is_available() is False")
def test_cuda_tensors_are_written_from_the_cpu_and_read_on_the_cpu():
    t = torch.tensor([1.0, -0.0, math.nan], device="cuda", dtype=torch.bfloat16)
    back = loads(dumps({"w": t}))["w"]
    assert back.device.type == "cpu" and bits(back) == bits(t.cpu())


def test_exact_bytes_of_a_small_value():
    header = b'{"root":["D",[["w",["t","float32",[2],8]],[3,["f","000000000000f83f"]]]],"data_bytes":8}'
    expected = b"FSQSAFE\0" + struct.pack("<IQ", 1, len(header)) + header + struct.pack("<2f", 1.0, -2.0)
    assert dumps({"w": torch.tensor([1.0, -2.0]), 3: 1.5}) == expected
    assert loads(expected)[3] == 1.5


def test_bytes_are_deterministic():
    def make():
        g = torch.Generator().manual_seed(0)
        return {"w": torch.randn(4, 3, generator=g), "c": {"q": torch.randn(2, generator=g).half()}, "n": [1, 2.5]}
    assert dumps(make()) == dumps(make()) == dumps(loads(dumps(make())))


def test_unsupported_values_are_refused_when_writing():
    for bad in (object(), {1, 2}, b"bytes", torch.float32, {"deep": [lambda: 0]},
                torch.zeros(2).to_sparse(), np.array(["a"], dtype=object)):
        with pytest.raises(TypeError):
            dumps(bad)


SAMPLE = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": [1, (2.5, "x")],
          3: torch.tensor([True, False]), "n": np.arange(3, dtype=np.int16)}


def test_every_truncation_is_refused():
    data = dumps(SAMPLE)
    for cut in range(len(data)):
        with pytest.raises(SafeIOError):
            loads(data[:cut])
    with pytest.raises(SafeIOError, match="padded"):
        loads(data + b"\0")


def test_every_single_bit_flip_is_refused_or_reads_as_plain_data():
    """No checksum inside the format (checkpoints add one): a flip is either caught or changes a value,
    never another exception, never a crash."""
    data = dumps(SAMPLE)
    hlen = struct.unpack_from("<Q", data, 12)[0]
    refused = 0
    for i in range(len(data)):
        for b in range(8):
            flipped = bytearray(data)
            flipped[i] ^= 1 << b
            try:
                loads(bytes(flipped))
            except SafeIOError:
                refused += 1
    assert refused > 8 * 20  # every flip in magic, version and the length fields
    for i in range(20):
        for b in range(8):
            flipped = bytearray(data)
            flipped[i] ^= 1 << b
            with pytest.raises(SafeIOError):
                loads(bytes(flipped))
    assert hlen > 0


def _frame(header: dict | bytes, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return b"FSQSAFE\0" + struct.pack("<IQ", 1, len(raw)) + raw + data


@pytest.mark.parametrize("bad, match", [
    (b"FSQSAFE\0" + struct.pack("<IQ", 1, 2 ** 63) + b"{}", "header claims"),
    (_frame({"root": ["t", "float32", [2 ** 40, 2 ** 40], 4 * 2 ** 80], "data_bytes": 4 * 2 ** 80}), "declares"),
    (_frame({"root": ["t", "float32", [2 ** 40, 2 ** 40], 4 * 2 ** 80], "data_bytes": 8}, b"\0" * 8), "past the end"),
    (_frame({"root": ["t", "float32", [3], 8], "data_bytes": 8}, b"\0" * 8), "byte count"),
    (_frame({"root": ["t", "float32", [-2], -8], "data_bytes": 0}), "shape"),
    (_frame({"root": ["t", "object", [1], 8], "data_bytes": 8}, b"\0" * 8), "dtype"),
    (_frame({"root": ["n", "|O", [1], 8], "data_bytes": 8}, b"\0" * 8), "dtype"),
    (_frame({"root": ["t", "float32", [1], 4], "data_bytes": 8}, b"\0" * 8), "no tensor claims"),
    (_frame({"root": ["t", "bool", [1], 1], "data_bytes": 1}, b"\x07"), "0 and 1"),
    (_frame({"root": ["pickle", "cos"], "data_bytes": 0}), "unknown tag"),
    (_frame({"root": ["f", "nothex"], "data_bytes": 0}), "unknown tag"),
    (_frame({"root": ["f", "nothex_nothex_no"], "data_bytes": 0}), "malformed"),
    (_frame({"root": ["n", "<i,", [1], 4], "data_bytes": 4}, b"\0" * 4), "dtype"),
    (_frame({"root": ["D", [[["L", []], 1]]], "data_bytes": 0}), "hashable"),
    (_frame({"root": 1}), "header"),
    (_frame(b'{"root": NaN, "data_bytes": 0}'), "malformed"),
    (_frame(b"\xff\xfe"), "malformed"),
    (_frame(b"[" * 100000 + b"]" * 100000), "malformed|deeper"),
    (_frame({"root": "x", "data_bytes": 0}).replace(b"FSQSAFE", b"FSQSAFX"), "magic"),
    (b"FSQSAFE\0" + struct.pack("<IQ", 2, 0), "version 2"),
])
def test_malformed_files_raise_one_clear_error(bad, match):
    with pytest.raises(SafeIOError, match=match) as e:
        loads(bad, what="x.pt")
    assert "\n" not in str(e.value) and isinstance(e.value, FedsqueezeError)


def test_deep_nesting_is_refused():
    node: object = 1
    for _ in range(safe_io.MAX_DEPTH + 2):
        node = ["L", [node]]
    with pytest.raises(SafeIOError, match="deeper"):
        loads(_frame({"root": node, "data_bytes": 0}))


# ---- pickle payloads are refused, never run -------------------------------------------------------------

class Evil:
    """Unpickling this creates ``marker``: the proof that a loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_bytes(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"weights": {"w": torch.zeros(2)}, "x": Evil(marker)}, buf)
    return buf.getvalue()


def test_the_payload_does_run_code_when_unpickled(tmp_path):
    """The control: a plain ``torch.load`` of these bytes would create the marker."""
    marker = tmp_path / "ran"
    torch.load(io.BytesIO(evil_bytes(marker)), weights_only=False)  # noqa: S614 (the point of the test)
    assert marker.exists()


def test_safe_io_refuses_pickle_bytes(tmp_path):
    marker = tmp_path / "ran"
    for blob in (evil_bytes(marker), b"\x80\x04" + evil_bytes(marker)[2:]):
        assert safe_io.is_legacy_pickle(blob)
        with pytest.raises(SafeIOError, match="pickle"):
            loads(blob)
    assert not marker.exists()


def _finished_run(tmp_path: Path, digits, algorithm: str = "local") -> tuple[Path, dict]:
    from fedsqueeze.config import from_dict
    from fedsqueeze.engine.simulation import Simulation

    cfg = digits_config(rounds=2, algorithm={"name": algorithm}, eval={"every": 1, "personal_every": 0})
    run = tmp_path / "run"
    Simulation(from_dict(cfg), run, dataset=digits).run()
    return run, cfg


def _cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    from fedsqueeze.cli import main

    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip()]


def _legacy_checkpoint(body: bytes, magic: bytes = b"FSQCKPT1") -> bytes:
    return magic + hashlib.sha256(body).digest() + body


@pytest.mark.parametrize("planting", ["old-format checkpoint", "bare torch.save", "both checkpoints"])
def test_a_pickle_checkpoint_is_refused_by_resume_and_personal(tmp_path, digits, capsys, planting):
    run, _ = _finished_run(tmp_path, digits)
    marker = tmp_path / "ran"
    evil = evil_bytes(marker)
    planted = evil if planting == "bare torch.save" else _legacy_checkpoint(evil)
    (run / "checkpoint.pt").write_bytes(planted)
    if planting == "both checkpoints":
        (run / "checkpoint.prev.pt").write_bytes(planted)
    for argv in (["run", "--resume", str(run), "--quiet"], ["personal", str(run)]):
        rc, lines = _cli(argv, capsys)  # (`run` prints its one-line banner first)
        errors = [line for line in lines if line.startswith("error:")]
        assert rc == 2 and len(errors) == 1 and lines[-1] == errors[0], lines
        assert errors[0].startswith("error: run folder") and "older fedsqueeze (pickle files)" in errors[0]
        assert "start a new run" in errors[0] and not any("Traceback" in line for line in lines)
        assert not marker.exists()
    assert (run / "checkpoint.pt").read_bytes() == planted  # refused, not renamed or rewritten


def test_a_pickle_body_under_the_new_magic_is_never_unpickled(tmp_path, digits, capsys):
    """A crafted checkpoint with the current magic and a recomputed SHA-256 but a pickle body: treated as
    corrupt (the previous checkpoint is used), never unpickled."""
    from fedsqueeze.engine.checkpoint import load_checkpoint

    run, _ = _finished_run(tmp_path, digits)
    marker = tmp_path / "ran"
    (run / "checkpoint.pt").write_bytes(_legacy_checkpoint(evil_bytes(marker), b"FSQCKPT2"))
    ckpt, warnings = load_checkpoint(run)
    assert ckpt is not None and ckpt["round"] == 1 and any("corrupt" in w for w in warnings)
    (run / "checkpoint.prev.pt").unlink()
    assert load_checkpoint(run)[0] is None
    assert not marker.exists()


def test_a_pickle_client_state_is_refused(tmp_path, digits, capsys):
    from fedsqueeze.config import from_dict
    from fedsqueeze.engine.simulation import Simulation
    from fedsqueeze.engine.state import ClientStateStore

    run, cfg = _finished_run(tmp_path, digits)
    marker = tmp_path / "ran"
    files = sorted((run / "clients").iterdir())
    assert files
    for f in files:  # every client: whichever is sampled next, or evaluated, meets a planted file
        f.write_bytes(evil_bytes(marker))
    rc, lines = _cli(["personal", str(run)], capsys)
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: run folder {run} was written by an older fedsqueeze (pickle files)")
    rc, lines = _cli(["run", "--resume", str(run), "--rounds", "4", "--quiet"], capsys)
    assert rc == 2 and lines[-1].startswith(f"error: run folder {run} was written by an older fedsqueeze"), lines
    with pytest.raises(LegacyRunError):
        Simulation(from_dict({**cfg, "rounds": 4}), run, dataset=digits).run(resume=True)
    client, rnd = re.match(r"(\d+)\.r(\d+)\.pt", files[0].name).groups()
    with pytest.raises(LegacyRunError):
        ClientStateStore(run / "clients", {int(client): int(rnd)}).get(int(client))
    assert not marker.exists()


def test_a_pickle_mirror_is_refused(tmp_path, digits):
    from fedsqueeze.config import from_dict
    from fedsqueeze.engine.simulation import Simulation

    cfg = digits_config(rounds=2, codec={"downlink": "delta"}, eval={"every": 1, "personal_every": 0})
    run = tmp_path / "run"
    Simulation(from_dict(cfg), run, dataset=digits).run()
    marker = tmp_path / "ran"
    files = sorted((run / "mirrors").iterdir())
    assert files
    for f in files:
        f.write_bytes(evil_bytes(marker))
    with pytest.raises(LegacyRunError, match="older fedsqueeze"):
        Simulation(from_dict({**cfg, "rounds": 6}), run, dataset=digits).run(resume=True)
    assert not marker.exists()


class _FakeState:
    def __init__(self) -> None:
        self.config_records: dict = {}

    def __setitem__(self, key, value) -> None:
        self.config_records[key] = value

    def __delitem__(self, key) -> None:
        del self.config_records[key]


def test_a_pickle_flower_state_blob_is_refused(tmp_path):
    pytest.importorskip("flwr")
    from fedsqueeze.flower import client_app, records

    state = _FakeState()
    stored = {"algo": {"weights": {"w": torch.tensor([1.0, -0.0])}}, "codec": {"update": {"residual": {}}}}
    client_app.save_stored(state, stored)
    blob = bytes(state.config_records[records.STATE]["blob"])
    assert blob.startswith(safe_io.MAGIC)
    back = client_app.load_stored(state)
    assert bits(back["algo"]["weights"]["w"]) == bits(stored["algo"]["weights"]["w"])
    marker = tmp_path / "ran"
    state.config_records[records.STATE] = {"blob": evil_bytes(marker)}
    with pytest.raises(LegacyRunError, match="pickle"):
        client_app.load_stored(state)
    state.config_records[records.STATE] = {"blob": blob[:-3]}
    with pytest.raises(SafeIOError):
        client_app.load_stored(state)
    assert not marker.exists()


def test_capture_cache_is_not_pickle(tmp_path, monkeypatch):
    from fedsqueeze.bench import capture

    cache = tmp_path / "updates.pt"
    updates = [{"w": torch.tensor([1.0, 2.0])}]
    cache.write_bytes(dumps(updates))
    got = capture.capture_updates(cache=cache)
    assert bits(got[0]["w"]) == bits(updates[0]["w"])
    marker = tmp_path / "ran"
    cache.write_bytes(evil_bytes(marker))
    monkeypatch.setattr(capture, "Simulation", None)  # an old pickle cache is captured anew: stop right there
    with pytest.raises(TypeError):
        capture.capture_updates(cache=cache, dataset="digits", model="mlp")
    assert not marker.exists()


def test_no_pickle_loading_in_src():
    pattern = re.compile(r"weights_only\s*=\s*False|pickle\.loads?\b|torch\.load\(|import pickle|cloudpickle|"
                         r"dill\.load|numpy\.load\(|np\.load\(.*allow_pickle\s*=\s*True")
    found = [f"{p.relative_to(SRC)}:{i}: {line.strip()}" for p in sorted(SRC.rglob("*.py"))
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, "pickle loading in src/:\n" + "\n".join(found)


def test_checkpoint_files_are_in_the_safe_format(tmp_path, digits):
    run, _ = _finished_run(tmp_path, digits)
    raw = (run / "checkpoint.pt").read_bytes()
    assert raw[:8] == b"FSQCKPT2" and raw[40:48] == safe_io.MAGIC
    for f in (run / "clients").iterdir():
        assert f.read_bytes().startswith(safe_io.MAGIC)
