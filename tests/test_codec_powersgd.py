"""PowerSGD: exactness on low rank, warm start, error feedback, body format."""
from __future__ import annotations

import math
import struct

import pytest
import torch

from fedsqueeze.codecs.powersgd import PowerSGD
from fedsqueeze.codecs.spec import make_codec
from fedsqueeze.errors import CodecError, PayloadError


def rel_err(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(((x.double() - y.double()) ** 2).sum() / (x.double() ** 2).sum())


def spectrum_matrix(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(40, 30, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))
    sigma = torch.tensor([10.0, 8.0, 3.0, 2.5, 2.0] + [0.5] * 25, dtype=torch.float64)
    return (u * sigma @ v.T).float()


def test_exact_on_rank_one_and_rank_r():
    a = torch.outer(torch.arange(1.0, 7.0), torch.tensor([2.0, -1.0, 0.5, 3.0]))
    codec = PowerSGD()  # rank 2 >= rank 1: exact up to float rounding
    y = codec.decode(codec.encode({"a": a}, seed=3))["a"]
    assert torch.allclose(y, a, atol=1e-5)
    b = torch.randn(20, 3) @ torch.randn(3, 12)
    y = PowerSGD(rank=3).decode(PowerSGD(rank=3).encode({"b": b}, seed=1))["b"]
    assert torch.allclose(y, b, atol=1e-4)


def test_body_is_p_then_q_and_rank_is_clipped():
    m = torch.randn(3, 5)
    body = PowerSGD(rank=4).encode_tensor(m, 7)  # rank min(4, 3, 5) = 3
    assert len(body) == 4 * 3 * (3 + 5)
    vals = torch.tensor(struct.unpack(f"<{3 * 8}f", body))
    p, q = vals[:9].view(3, 3), vals[9:].view(5, 3)
    assert torch.allclose(p.T @ p, torch.eye(3), atol=1e-5)  # P̂ orthonormal
    assert torch.allclose(p @ q.T, m, atol=1e-5)  # full rank here: exact
    conv = torch.randn(4, 2, 3, 3)
    assert len(PowerSGD().encode_tensor(conv, 0)) == 4 * 2 * (4 + 18)
    assert PowerSGD().encode_tensor(torch.tensor([1.5, -2.0]), 0) == struct.pack("<2f", 1.5, -2.0)


def test_stateless_encode_is_seeded_and_projects():
    m = spectrum_matrix()
    codec = PowerSGD()
    assert codec.encode({"m": m}, seed=4) == codec.encode({"m": m}, seed=4)
    assert codec.encode({"m": m}, seed=4) != codec.encode({"m": m}, seed=5)
    y = codec.decode(codec.encode({"m": m}, seed=4))["m"]
    assert rel_err(m, y) < 1.0
    # a projection: the residual is orthogonal to the estimate
    assert abs(float((m - y).double().flatten() @ y.double().flatten())) < 1e-3 * float((m.double() ** 2).sum())


def test_warm_start_error_decreases_to_the_best_rank_r_error():
    m = spectrum_matrix()
    codec = PowerSGD(rank=2, error_feedback=False)
    state, errors = None, []
    for t in range(12):
        payload, state = codec.encode_stateful({"m": m}, seed=t, state=state)
        errors.append(rel_err(m, codec.decode(payload)["m"]))
    assert all(b <= a + 1e-6 for a, b in zip(errors, errors[1:]))
    assert errors[-1] < errors[0]
    best = float((torch.linalg.svdvals(m.double())[2:] ** 2).sum() / (m.double() ** 2).sum())
    assert errors[-1] == pytest.approx(best, rel=1e-3)  # subspace iteration converged (Eckart–Young)
    cold = [rel_err(m, codec.decode(codec.encode({"m": m}, seed=t))["m"]) for t in range(3)]
    assert min(cold) > errors[-1] * 1.01  # without the warm start no progress accumulates


def test_error_feedback_delays_and_never_loses():
    g = torch.Generator().manual_seed(2)
    inputs = [torch.randn(12, 9, generator=g) for _ in range(5)]
    codec = PowerSGD(rank=1)
    state, sent = None, torch.zeros(12, 9, dtype=torch.float64)
    prev_res = torch.zeros(12, 9)
    for t, m in enumerate(inputs):
        payload, state = codec.encode_stateful({"m": m, "b": torch.ones(3)}, seed=t, state=state)
        out = codec.decode(payload)
        assert torch.equal(out["b"], torch.ones(3)) and "b" not in state["residual"]
        res = state["residual"]["m"]
        assert torch.allclose(res, (m + prev_res) - out["m"], atol=1e-6)  # e ← (M + e) − M̂
        prev_res = res
        sent += out["m"].double()
    total = sum(x.double() for x in inputs)
    assert torch.allclose(sent + prev_res.double(), total, atol=1e-4)  # Σ M̂ + e_T = Σ M


def test_switching_features_off():
    m = spectrum_matrix()
    plain = PowerSGD(warm_start=False, error_feedback=False)
    p1, s1 = plain.encode_stateful({"m": m}, seed=1, state=None)
    p2, s2 = plain.encode_stateful({"m": m}, seed=1, state=s1)
    assert p1 == p2 == plain.encode({"m": m}, seed=1) and s2["residual"] == {}
    # a state whose shapes no longer match is ignored
    payload, _ = PowerSGD().encode_stateful({"m": m}, seed=1,
                                            state={"q": {"m": torch.zeros(3, 3)}, "residual": {"m": torch.zeros(2)}})
    assert payload == PowerSGD().encode({"m": m}, seed=1)


def test_config_and_decoder_checks():
    assert make_codec("powersgd(rank=4)") == PowerSGD(rank=4)
    for bad in ({"rank": 0}, {"rank": 2.0}, {"rank": True}, {"warm_start": 1}, {"error_feedback": "yes"}):
        with pytest.raises(CodecError):
            PowerSGD(**bad)
    codec = PowerSGD()
    good = codec.encode_tensor(torch.randn(5, 4), 0)
    for bad in (good[:-4], good + bytes(4), struct.pack("<f", math.nan) + good[4:]):
        with pytest.raises(PayloadError):
            codec.decode_tensor(memoryview(bad), (5, 4), 0)
    with pytest.raises(PayloadError):
        codec.decode_tensor(memoryview(bytes(3)), (1,), 0)
