"""Decode bounded by the receiver (issue #22, item 3): header integers at their exact bounds, expected
specs refused before allocation, hostile-but-valid codec configs, the spec parser's caps."""
from __future__ import annotations

import json
import random
import time
import tracemalloc

import pytest
import torch

from fedsqueeze.bench import fuzz
from fedsqueeze.bench.fuzz_cases import frame, hostile_specs, make_case, raw_header
from fedsqueeze.codecs.base import Codec
from fedsqueeze.codecs.floats import Float32
from fedsqueeze.codecs.spec import MAX_SPEC_CHARS, MAX_SPEC_DEPTH, MAX_STAGES, decode_any, make_codec, parse_spec
from fedsqueeze.engine.validation import Rejection, admit, expected_specs
from fedsqueeze.errors import CodecError, ConfigError, PayloadError
from fedsqueeze.seeding import derive_seed
from fedsqueeze.wire.payload import (MAX_NDIM, MAX_NUMEL, MAX_SEED, OVERHEAD, Header, Limits, SpecMismatch,
                                     TensorSpec, pack, unpack)
from fedsqueeze.wire.varint import MAX_VALUE, Reader, encode_varint

F32 = 1  # dtype code of float32
X = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([0.5, -1.5])}
WANT = (TensorSpec("w", (2, 3), torch.float32), TensorSpec("b", (2,), torch.float32))


def fp32_payload(seed: int, entries=None, count=None, config=b"") -> bytes:
    """An fp32 payload of ``X`` written field by field (any seed, any entries)."""
    entries = entries if entries is not None else [(b"w", F32, [2, 3]), (b"b", F32, [2])]
    body = b"".join(encode_varint(len(c)) + c for c in (X["w"].numpy().tobytes(), X["b"].numpy().tobytes()))
    return frame(raw_header(b"fp32", seed, config, len(entries) if count is None else count, entries), body)


# ---- header integers at bound - 1, bound, bound + 1 ----------------------------------------------------
@pytest.mark.parametrize("seed, ok", [(MAX_SEED - 1, True), (MAX_SEED, True), (MAX_SEED + 1, False),
                                      ((1 << 64) - 1, False)])
def test_seed_at_its_bound(seed, ok):
    data = fp32_payload(seed)
    if ok:
        assert unpack(data)[0].seed == seed
        assert torch.equal(decode_any(data)["w"], X["w"])
        derive_seed(seed, 0)  # what the per-tensor codecs hash: must not raise struct.error
    else:
        with pytest.raises(PayloadError, match="exceeds the limit 9223372036854775807"):
            decode_any(data)


def test_a_seed_of_two_to_the_63_never_reaches_derive_seed_and_is_never_written():
    qsgd = make_codec("qsgd(bucket=4)")
    good = qsgd.encode({"w": torch.randn(5)}, seed=MAX_SEED)  # the bound itself is a valid seed
    assert unpack(good)[0].seed == MAX_SEED and decode_any(good)["w"].shape == (5,)
    header, body = unpack(good)
    cfg = json.dumps(header.config, separators=(",", ":"), sort_keys=True).encode()
    bad = frame(raw_header(b"qsgd", 1 << 63, cfg, 1, [(b"w", F32, [5])]), bytes(body))
    with pytest.raises(PayloadError):
        decode_any(bad)
    with pytest.raises(PayloadError, match="outside 0..2"):
        pack(Header("fp32", 1 << 63, {}, ()), b"")
    with pytest.raises(PayloadError, match="outside 0..2"):
        Float32().encode(X, seed=-1)


@pytest.mark.parametrize("ndim, ok", [(MAX_NDIM - 1, True), (MAX_NDIM, True), (MAX_NDIM + 1, False)])
def test_ndim_at_its_bound(ndim, ok):
    data = fp32_payload(0, [(b"w", F32, [1] * (ndim - 1) + [6])])
    if ok:
        assert unpack(data)[0].tensors[0].shape == (1,) * (ndim - 1) + (6,)
    else:
        with pytest.raises(PayloadError, match=f"declares {ndim} dims"):
            unpack(data)


@pytest.mark.parametrize("dim, ok", [(MAX_NUMEL - 1, True), (MAX_NUMEL, True), (MAX_NUMEL + 1, False)])
def test_dim_and_element_total_at_the_format_bound(dim, ok):
    limits = Limits(max_numel=MAX_NUMEL)  # the receiver allows what the format allows
    one = fp32_payload(0, [(b"w", F32, [dim])])
    two = fp32_payload(0, [(b"w", F32, [dim - 1]), (b"b", F32, [1])])  # the total at the bound
    for data in (one, two):
        if ok:
            assert sum(s.numel for s in unpack(data, limits=limits)[0].tensors) == dim
        else:
            with pytest.raises(PayloadError, match="exceeds the limit|more than 2147483648 elements"):
                unpack(data, limits=limits)


@pytest.mark.parametrize("cap, ok", [(7, False), (8, True), (9, True)])
def test_receiver_element_cap_at_its_bound(cap, ok):
    data = Float32().encode(X, seed=0)  # 8 elements
    if ok:
        assert decode_any(data, max_numel=cap)["b"].tolist() == [0.5, -1.5]
    else:
        with pytest.raises(PayloadError, match="more than the allowed 7"):
            decode_any(data, max_numel=cap)


@pytest.mark.parametrize("cap, ok", [(1, False), (2, True), (3, True)])
def test_receiver_tensor_cap_at_its_bound(cap, ok):
    data = Float32().encode(X, seed=0)  # 2 tensors
    if ok:
        assert list(Float32().decode(data, max_tensors=cap)) == ["w", "b"]
    else:
        with pytest.raises(PayloadError, match="2 tensors, more than the receiver's limit of 1"):
            Float32().decode(data, max_tensors=cap)


def test_receiver_byte_cap_at_its_bound():
    data = Float32().encode(X, seed=0)
    for cap, ok in ((len(data) - 1, False), (len(data), True), (len(data) + 1, True)):
        if ok:
            assert list(decode_any(data, max_bytes=cap)) == ["w", "b"]
        else:
            with pytest.raises(PayloadError, match=f"exceeds the receiver's limit of {cap}"):
                decode_any(data, max_bytes=cap)


def test_tensor_count_bounded_by_the_header_bytes_left():
    # each entry takes at least 3 bytes: a count beyond (bytes left) / 3 is refused before any entry is read
    entries = [(b"", F32, [])]  # 3 bytes
    assert len(unpack(frame(raw_header(b"fp32", 0, b"", 1, entries), encode_varint(4) + bytes(4)))[0].tensors) == 1
    with pytest.raises(PayloadError, match="exceeds the limit 1"):
        unpack(frame(raw_header(b"fp32", 0, b"", 2, entries), b""))
    with pytest.raises(PayloadError, match="exceeds the limit"):
        unpack(frame(raw_header(b"fp32", 0, b"", MAX_SEED, entries), b""))


def test_config_length_and_names_at_their_bounds():
    cfg = b'{"a":1}'
    ok = fp32_payload(0, config=cfg)
    assert unpack(ok)[0].config == {"a": 1}
    hb = raw_header(b"fp32", 0, cfg, 2, [(b"w", F32, [2, 3]), (b"b", F32, [2])])
    for delta in (-1, 1):  # the config length one off: the rest of the header is misread, refused
        bad = hb[:6] + encode_varint(len(cfg) + delta) + hb[7:]
        with pytest.raises(PayloadError):
            unpack(frame(bad, b""))
    # a config length beyond the header: refused by the reader's bound, never allocated
    with pytest.raises(PayloadError, match="exceeds the limit"):
        unpack(frame(hb[:6] + encode_varint(1 << 40) + hb[7:], b""))
    long = fp32_payload(0, [(b"n" * 255, F32, [2, 3]), (b"b", F32, [2])])  # a u8 length: 255 is the bound
    assert unpack(long)[0].tensors[0].name == "n" * 255


@pytest.mark.parametrize("value, ok", [(MAX_VALUE - 1, True), (MAX_VALUE, True), (MAX_VALUE + 1, False),
                                       ((1 << 70) - 1, False)])
def test_varint_default_bound(value, ok):
    r = Reader(encode_varint(value))
    if ok:
        assert r.varint() == value
    else:
        with pytest.raises(PayloadError, match="exceeds the limit"):
            r.varint()
    with pytest.raises(PayloadError, match="more than 10 bytes"):
        Reader(b"\x80" * 10 + b"\x00").varint()


# ---- expected specs, refused before allocation -----------------------------------------------------------
class _Tripwire(Float32):
    """fp32 whose config or body parser must not be reached."""


def test_mismatching_specs_are_refused_before_the_codec_or_any_tensor_is_built(monkeypatch):
    def reached(*a, **k):
        raise AssertionError("decode went past the header")
    monkeypatch.setattr(Float32, "from_config", classmethod(reached))
    monkeypatch.setattr(Float32, "decode_body", reached)
    huge = pack(Header("fp32", 0, {}, (TensorSpec("w", (1 << 30,), torch.float32),)), b"")  # 4 GB declared
    tracemalloc.start()
    try:
        for expect in (WANT, {s.name: s for s in WANT}):
            with pytest.raises(SpecMismatch, match="declares 1 tensors, expected 2"):
                Float32().decode(huge, expect=expect, max_numel=MAX_NUMEL)
        other = pack(Header("fp32", 0, {}, (TensorSpec("w", (1 << 30,), torch.float32), WANT[1])), b"")
        with pytest.raises(SpecMismatch, match=r"tensor 'w' is \(1073741824,\) torch.float32, expected \(2, 3\)"):
            decode_any(other, expect=WANT, max_numel=MAX_NUMEL)
        wrong_dtype = pack(Header("fp32", 0, {}, (TensorSpec("w", (2, 3), torch.float16), WANT[1])), b"")
        with pytest.raises(SpecMismatch, match="torch.float16, expected"):
            decode_any(wrong_dtype, expect=WANT)
        renamed = pack(Header("fp32", 0, {}, (TensorSpec("v", (2, 3), torch.float32), WANT[1])), b"")
        with pytest.raises(SpecMismatch, match=r"unexpected tensors \['v'\]"):
            decode_any(renamed, expect=WANT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_expected_specs_in_any_order_decode_and_many_tensors_are_refused_by_count():
    data = Float32().encode(X, seed=0)
    assert list(Float32().decode(data, expect=WANT[::-1])) == ["w", "b"]
    many = Float32().encode({f"t{i}": torch.zeros(1) for i in range(5000)}, seed=0)
    with pytest.raises(SpecMismatch, match="declares 5000 tensors, expected 2"):
        decode_any(many, expect=WANT)
    with pytest.raises(PayloadError, match="5000 tensors, more than the receiver's limit of 1024"):
        decode_any(many, max_tensors=1024)
    with pytest.raises(PayloadError, match="limit of 4096"):  # the default cap
        decode_any(many)
    assert len(decode_any(many, max_tensors=5000)) == 5000


def test_the_server_rejects_a_mismatching_reply_from_its_header_as_a_spec_failure():
    expected = {"update": {"w": ((2, 3), torch.float32), "b": ((2,), torch.float32)}}
    assert expected_specs("update", expected) == {s.name: s for s in WANT}
    assert expected_specs("update", None) is None and expected_specs("other", expected) is None
    decoded_bodies = []

    def decode(kind, payload):
        out = Float32().decode(payload, expect=expected_specs(kind, expected))
        decoded_bodies.append(kind)
        return out
    bad = Float32().encode({"w": torch.zeros(639), "b": torch.zeros(2)}, seed=0)
    got = admit(1, 0, 7, {"update": bad}, 10, {}, expected, decode, 0.0)
    assert isinstance(got, Rejection) and (got.client, got.check) == (7, "spec")
    assert got.reason == "message 'update': tensor 'w' is (639,) torch.float32, expected (2, 3) torch.float32"
    assert decoded_bodies == []
    ok = admit(1, 0, 7, {"update": Float32().encode(X, seed=0)}, 10, {}, expected, decode, 0.0)
    assert not isinstance(ok, Rejection) and torch.equal(ok.up["update"]["w"], X["w"])


# ---- hostile-but-valid codec configs ---------------------------------------------------------------------
def _with_config(payload: bytes, **changes) -> bytes:
    header, body = unpack(payload)
    return pack(Header(header.codec_id, header.seed, {**header.config, **changes}, header.tensors), bytes(body))


def test_qsgd_bucket_of_two_to_the_24_on_a_tiny_tensor_is_bounded_by_the_tensor():
    x = {"w": torch.tensor([0.3, -1.2, 0.7])}
    small = make_codec("qsgd(bucket=4)").encode(x, seed=5)  # one bucket: the same body for any bucket >= 3
    attack = _with_config(small, bucket=1 << 24)  # valid config; the old decoder allocated 64 MB
    assert len(attack) < 200
    expected = decode_any(small)["w"]
    tracemalloc.start()
    try:
        got = decode_any(attack)["w"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert torch.equal(got, expected) and peak < 1 << 20
    with pytest.raises(PayloadError, match="bucket must be an integer"):  # beyond the codec's own range
        decode_any(_with_config(small, bucket=(1 << 24) + 1))


def test_huge_ranks_chunks_and_k_in_a_header_stay_within_the_tensor_size():
    x = {"m": torch.randn(6, 5), "v": torch.randn(7)}
    cases = [("powersgd(rank=2, warm_start=False, error_feedback=False)", {"rank": 4096}),
             ("eden(chunk=64)", {"chunk": 1 << 30}), ("drive(chunk=64)", {"chunk": 1 << 30}),
             ("qsgd(levels=4)", {"levels": 1 << 20})]
    for spec, change in cases:
        payload = _with_config(make_codec(spec).encode(x, seed=3), **change)
        tracemalloc.start()
        try:
            try:
                out = decode_any(payload)
                assert out["m"].shape == (6, 5)
            except PayloadError:
                pass  # refused is fine too; nothing else
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 4 << 20, (spec, change, peak)


# ---- the spec parser: linear, capped, clean errors ------------------------------------------------------
@pytest.mark.parametrize("spec", [
    "topk(fraction=" + "1" * (1 << 20) + ")",              # 1 MB
    "ef(inner=" + "(" * 10_000 + ")" * 10_000 + ")",       # depth 10,000 (also over the length cap)
    "rdq(step=" + "(" * (MAX_SPEC_DEPTH + 1) + "0.1" + ")" * (MAX_SPEC_DEPTH + 1) + ")",
    "|".join(["svd"] * 10_000),                           # 10,000 stages
    "|".join(["svd"] * (MAX_STAGES + 1)),
    ["svd"] * (MAX_STAGES + 1),
    "topk(" + "x" * 60_000,
    "a" * 100_000,
])
def test_spec_parser_caps_raise_a_config_error_naming_the_cap(spec):
    with pytest.raises(ConfigError, match="cap") as e:
        make_codec(spec)
    assert isinstance(e.value, CodecError) and len(str(e.value)) < 300


@pytest.mark.parametrize("spec, message", [
    ("topk(**kwargs)", "'\\*\\*' is not allowed"),
    ("topk(*a)", "key=value"),
    ("topk(0.1)", "key=value"),
    ("ef(inner=" + "-" * 4000 + "1)", "key=value"),
    ("ef(inner=" + "-" * 50_000 + "1)", "length cap"),
    ("topk(fraction=0.1", "cannot parse"),
    ({"name": 3}, "'name' must be a codec name string"),
])
def test_spec_parser_refuses_hostile_options_cleanly(spec, message):
    with pytest.raises(CodecError, match=message):
        make_codec(spec)


def test_spec_at_the_caps_still_parses():
    spec = "topk(fraction=" + "(" * (MAX_SPEC_DEPTH - 1) + "0.01" + ")" * (MAX_SPEC_DEPTH - 1) + ")"
    assert make_codec(spec).get_config()["fraction"] == 0.01
    assert parse_spec("topk( fraction = 0.01 )") == ("topk", {"fraction": 0.01})
    assert parse_spec("  qsgd  ") == ("qsgd", {})
    assert len(make_codec("|".join(["svd"] * (MAX_STAGES - 1) + ["fp16"])).stages) == MAX_STAGES
    long = "topk(values='fp16'," + " " * (MAX_SPEC_CHARS - 36) + "fraction=0.5)"
    assert len(long) <= MAX_SPEC_CHARS and make_codec(long).get_config()["fraction"] == 0.5
    with pytest.raises(ConfigError, match="length cap"):
        make_codec(long[:-1] + " " * (MAX_SPEC_CHARS - len(long) + 1) + ")")


def test_hostile_specs_in_a_header_are_refused_as_payload_errors():
    good = make_codec("svd | fp16").encode({"m": torch.randn(4, 3)}, seed=0)
    rng = random.Random(0)
    for spec in hostile_specs(rng)[:-2]:
        header, body = unpack(good)
        cfg = {**header.config, "stages": spec}
        hb = raw_header(b"pipeline", 0, json.dumps(cfg).encode(), 1, [(b"m", F32, [4, 3])])
        if len(hb) > 0xFFFF:
            continue
        t0 = time.perf_counter()
        with pytest.raises(PayloadError):
            decode_any(frame(hb, bytes(body)))
        assert time.perf_counter() - t0 < 5  # the real figure is in bench fuzz (deep_spec)


# ---- the fuzz classes -------------------------------------------------------------------------------------
def test_new_fuzz_classes_reach_the_parsers_and_fail_nothing():
    from fedsqueeze.bench.fuzz_cases import MUTATIONS
    new = ("bound_value", "hostile_config", "many_tensors", "deep_spec")
    assert set(new) <= set(MUTATIONS)
    for cid in ("qsgd", "pipeline"):
        for i in range(len(MUTATIONS)):
            how, bad = make_case(cid, i)
            if how in new:
                assert len(bad) > OVERHEAD
    idx = [MUTATIONS.index(h) for h in new]
    rep = fuzz.fuzz(2 * len(MUTATIONS), ["qsgd", "pipeline"], seed=2, time_limit=5.0, mem_cap_mb=256, jobs=2)
    assert rep["bad"] == 0, rep["failures"][:3]
    assert all(sum(rep["by_mutation"].get((h, o), 0) for o in ("decoded", "rejected")) == 4 for h in new)
    assert rep["max_tensors"] == 1024 and idx


def test_cpu_clock_fails_a_case_for_its_own_cpu_time_and_still_catches_a_sleep(monkeypatch):
    from fedsqueeze.bench import fuzz_worker

    def spin():
        t0 = time.process_time()
        while time.process_time() - t0 < 3:
            pass

    acts = {make_case("fp32", 1)[1]: spin, make_case("fp32", 2)[1]: lambda: time.sleep(30)}

    def decode(data, **kw):
        act = acts.get(bytes(data))
        return act() if act is not None else decode_any(data, **kw)
    monkeypatch.setattr(fuzz_worker, "decode_any", decode)
    t0 = time.monotonic()
    rep = fuzz.fuzz(4, ["fp32"], time_limit=0.2, clock="cpu")
    assert time.monotonic() - t0 < 20
    assert rep["outcomes"]["hang"] == 2 and rep["cases"] == 4 and rep["clock"] == "cpu"
    assert [f[1] for f in rep["failures"]] == [1, 2] and "(cpu clock)" in rep["failures"][0][4]


def test_hostile_input_figures_all_end_in_our_errors():
    rows = fuzz.hostile_input_figures()
    assert len(rows) == 7
    assert [err for _, _, err in rows] == ["SpecLimitError"] * 5 + ["SpecMismatch", "PayloadError"]


def test_a_pipelines_nested_header_is_bounded_by_the_outer_tensors():
    good = make_codec("svd | fp16").encode({"m": torch.randn(4, 3)}, seed=0)
    header, _ = unpack(good)
    inner = make_codec("fp16").encode({f"t{i}": torch.zeros(1) for i in range(5)}, seed=0)  # 5 > 4 x 1
    with pytest.raises(PayloadError, match="5 tensors, more than the receiver's limit of 4"):
        decode_any(pack(header, inner))
    assert decode_any(good)["m"].shape == (4, 3)


def test_cpu_clock_wall_timer_spares_a_case_that_only_waited_for_a_core():
    import signal as sig

    from fedsqueeze.bench import fuzz_worker as fw
    now, cpu, queue = time.monotonic(), time.process_time(), fw._run_delay()
    try:
        fw._CASE.update(limit=0.5, wall=now - 5, cpu=cpu, queue=queue - 5)  # 5 s in the run queue: starved
        fw._alarm(sig.SIGALRM, None)  # no exception: the wall timer is re-armed instead
        assert sig.getitimer(sig.ITIMER_REAL)[0] > 0
        fw._CASE.update(queue=queue)  # the same 5 s neither computing nor queued: a sleep
        with pytest.raises(fw._Hang):
            fw._alarm(sig.SIGALRM, None)
        with pytest.raises(fw._Hang):
            fw._alarm(sig.SIGPROF, None)
    finally:
        sig.setitimer(sig.ITIMER_REAL, 0)
        fw._CASE.clear()
