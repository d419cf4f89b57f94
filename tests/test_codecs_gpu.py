"""Codecs on a GPU (issue #17 item 2): the bytes do not depend on where the inputs live, and
``decode(device=...)`` returns exactly the CPU decode, moved.

Every registered codec (the conformance kit's default configs, plus switches that change the
arithmetic), the golden fixtures, and the stateful codecs over three rounds. Runs only where CUDA
is available (``pytest -m gpu``). ``FEDSQUEEZE_GPU_TEST_DEVICE=cpu`` runs the same checks with the
CPU as the "other" device: a dry run of the test logic on a machine without a GPU.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from codec_kit import all_codec_ids, default_codec, sample_update
from fedsqueeze.codecs.rdq import RDQ, rd_scores, vote_step
from fedsqueeze.codecs.spec import decode_any, make_codec
from fedsqueeze.codecs.svd import SVD
from fedsqueeze.wire.payload import TensorSpec

DEVICE = os.environ.get("FEDSQUEEZE_GPU_TEST_DEVICE", "cuda")
DEVICE_TYPE = torch.device(DEVICE).type
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE_TYPE == "cuda" and not torch.cuda.is_available(),
                                 reason="needs CUDA: torch.cuda.is_available() is False")]

GOLDEN = Path(__file__).parent / "golden"
IDS = all_codec_ids()
# switches that change the arithmetic, beyond the defaults the conformance kit uses
EXTRA = [
    "drive(scale='biased', chunk=16)", "eden(bits=1)", "eden(bits=3, chunk=64)", "eden(bits=4)",
    "topk(fraction=0.1, values='fp16')", "topk(k=5)", "randk(fraction=0.5)", "randk(fraction=0.1, values='fp16')",
    "qsgd(norm='max', levels=4, bucket=64)", "terngrad(clip=0)", "signsgd(scale='none')",
    "threelc(multiplier=1.5)", "threelc(zero_run=False)", "rowsparse(cols=True, values='fp16')",
    "rdq(rounding='stochastic', step=1e-3, coder='gamma', normalize=False, dead_zone=0.0, alloc='one')", "rdq(rounding='dither', coder='ans', step=1e-3, normalize=False, dead_zone=0.0, alloc='one')", "rdq(normalize=True, step=0.1, coder='gamma', dead_zone=0.0, alloc='one')",
    "rdq(dead_zone=0.2, coder='ans', step=1e-3, normalize=False, alloc='one')", "rdq(target_bytes=700, coder='gamma', normalize=False, dead_zone=0.0, alloc='one')", "svd(threshold=0.5)", "powersgd(rank=4)",
    "powersgd(rank=1, warm_start=False, error_feedback=False)",
    "svd(threshold=0.9) | rdq(step=0.01, coder='gamma', normalize=False, dead_zone=0.0, alloc='one')", "svd | rdq(coder='ans', step=1e-3, normalize=False, dead_zone=0.0, alloc='one')", "svd(threshold=0.8) | topk(fraction=0.2)",
    "ef(inner='signsgd')", "ef(inner='threelc')", "ef(inner='svd | rdq(coder=\"ans\", step=1e-3, normalize=False, dead_zone=0.0, alloc=\"one\")')",
]
SPECS = IDS + EXTRA
STATEFUL = ["ef", "ef(inner='signsgd')", "ef(inner='threelc')", "ef(inner='qsgd')",
            "ef(inner='svd | rdq(coder=\"ans\", step=1e-3, normalize=False, dead_zone=0.0, alloc=\"one\")')", "powersgd", "powersgd(rank=4)",
            "powersgd(error_feedback=False)", "powersgd(warm_start=False)"]


def inputs(seed: int) -> list[dict[str, torch.Tensor]]:
    """The kit's small update, a larger one (several Hadamard rows, 77 k values), and other dtypes."""
    g = torch.Generator().manual_seed(1000 + seed)
    big = {"w": torch.randn(300, 257, generator=g) * 0.01, "b": torch.randn(300, generator=g) * 0.001,
           "n": torch.tensor([3, 1], dtype=torch.int32)}
    mixed = {"h": (torch.randn(64, 32, generator=g) * 0.01).half(),
             "bf": (torch.randn(100, generator=g) * 0.01).bfloat16(),
             "d": torch.randn(10, 12, generator=g, dtype=torch.float64),
             "mask": torch.rand(7, generator=g) > 0.5}
    return [sample_update(seed), big, mixed]


def to_dev(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(DEVICE) for k, v in x.items()}


def awkward_dev(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same values on the device as non-contiguous views; float tensors require grad."""
    out = {}
    for k, v in x.items():
        t = v.to(DEVICE)
        if t.dim() >= 2:
            t = t.transpose(0, 1).contiguous().transpose(0, 1)
        elif t.dim() == 1 and t.numel() > 1:
            t = torch.stack([t, t], dim=1)[:, 0]
        if t.is_floating_point():
            t = t.requires_grad_(True)
        out[k] = t
    return out


def leaves(state, path: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a (nested dict) codec state by its path."""
    if isinstance(state, torch.Tensor):
        return {path: state}
    out: dict[str, torch.Tensor] = {}
    if isinstance(state, dict):
        for k, v in state.items():
            out.update(leaves(v, f"{path}/{k}"))
    return out


def state_to(state, device):
    if isinstance(state, torch.Tensor):
        return state.to(device)
    if isinstance(state, dict):
        return {k: state_to(v, device) for k, v in state.items()}
    return state


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k].cpu(), b[k].cpu()), f"{k} differs"


@pytest.mark.parametrize("spec", SPECS)
def test_bytes_from_device_inputs_equal_cpu_bytes(spec):
    codec = make_codec(spec)
    for i, x in enumerate(inputs(0)):
        cpu = codec.encode(x, seed=7 + i)
        dev_x = to_dev(x)
        assert codec.encode(dev_x, seed=7 + i) == cpu, f"{spec}: input set {i}"
        assert codec.encode(awkward_dev(x), seed=7 + i) == cpu, f"{spec}: input set {i} (views, grad)"
        same_tensors(dev_x, x)  # the caller's tensors are left alone
        assert all(v.device.type == DEVICE_TYPE for v in dev_x.values())


@pytest.mark.parametrize("spec", SPECS)
def test_decode_on_the_device_equals_cpu_decode(spec):
    codec = make_codec(spec)
    indexed = f"{DEVICE_TYPE}:0" if DEVICE_TYPE == "cuda" else DEVICE
    for i, x in enumerate(inputs(1)):
        payload = codec.encode(to_dev(x), seed=3)
        base = codec.decode(payload)
        assert all(v.device.type == "cpu" for v in base.values())
        for out in (codec.decode(payload, device=DEVICE), codec.decode(payload, device=torch.device(indexed)),
                    decode_any(payload, device=DEVICE)):
            assert all(v.device.type == DEVICE_TYPE for v in out.values()), f"{spec}: input set {i}"
            same_tensors(out, base)


@pytest.mark.parametrize("cid", IDS)
def test_golden_fixture_inputs_give_the_same_bytes_from_the_device(cid):
    codec = default_codec(cid)
    x = sample_update(11)  # what scripts/make_golden.py encodes, with seed 2024
    assert codec.encode(to_dev(x), seed=2024) == codec.encode(x, seed=2024)


@pytest.mark.parametrize("cid", IDS)
def test_golden_fixture_bytes_from_device_inputs(cid):
    codec = default_codec(cid)
    x = sample_update(11)
    golden = (GOLDEN / f"{cid}.bin").read_bytes()
    if codec.encode(x, seed=2024) != golden:
        pytest.skip(f"{cid}: on this machine the CPU encode of the fixture's input differs from "
                    f"tests/golden/{cid}.bin too (config changed since, or fp32 reduction order/RNG of this "
                    "torch build); device independence is checked by the test above")
    assert codec.encode(to_dev(x), seed=2024) == golden


@pytest.mark.parametrize("cid", IDS)
def test_golden_fixture_decodes_on_the_device(cid):
    expected = json.loads((GOLDEN / f"{cid}.json").read_text())
    out = decode_any((GOLDEN / f"{cid}.bin").read_bytes(), device=DEVICE)
    assert list(out) == list(expected)
    for k, v in out.items():
        assert v.device.type == DEVICE_TYPE
        assert [float(t).hex() for t in v.cpu().reshape(-1).double()] == expected[k], f"{cid}: {k} changed"


@pytest.mark.parametrize("spec", STATEFUL)
def test_stateful_codecs_same_bytes_over_three_rounds(spec):
    codec = make_codec(spec)
    for i in range(2):  # the kit's update, and the larger one
        cpu_state = dev_state = None
        for rnd in range(3):
            x = inputs(20 + rnd)[i]
            p_cpu, cpu_state = codec.encode_stateful(x, seed=rnd, state=cpu_state)
            p_dev, dev_state = codec.encode_stateful(awkward_dev(x) if rnd == 1 else to_dev(x),
                                                     seed=rnd, state=dev_state)
            assert p_dev == p_cpu, f"{spec}: round {rnd}, input set {i}"
            a, b = leaves(cpu_state), leaves(dev_state)
            assert a and list(a) == list(b)
            assert all(v.device.type == "cpu" and not v.requires_grad for v in b.values())
            same_tensors(a, b)
            dev_state = state_to(dev_state, DEVICE)  # as the engine may hand it back: on the device
            same_tensors(codec.decode(p_dev, device=DEVICE), codec.decode(p_cpu))


def test_rdq_budget_and_vote_from_device_inputs():
    x = sample_update(6)
    codec = RDQ(target_bytes=700, coder="gamma", normalize=False, dead_zone=0.0, alloc="one")
    assert codec.encode(to_dev(x), seed=2) == codec.encode(x, seed=2)
    steps = [1e-4, 1e-3, 1e-2]
    assert rd_scores(to_dev(x), steps) == rd_scores(x, steps)
    assert vote_step(to_dev(x), steps, lam=1e-6) == vote_step(x, steps, lam=1e-6)
    assert rd_scores(to_dev(x)["fc.weight"], steps) == rd_scores(x["fc.weight"], steps)


def test_svd_transform_takes_device_tensors():
    x = inputs(4)[0]
    svd = SVD(threshold=0.9)
    dev_x = to_dev(x)
    f_cpu, f_dev = svd.forward(x), svd.forward(dev_x)
    for k, v in f_dev.items():  # factors on the CPU; what is not factorised passes through as it is
        assert v is dev_x[k] if k in x else v.device.type == "cpu"
    same_tensors(f_dev, f_cpu)
    specs = [TensorSpec.of(k, v) for k, v in x.items()]
    back = svd.inverse(to_dev(f_cpu), specs)
    assert all(v.device.type == "cpu" for v in back.values())
    same_tensors(back, svd.inverse(f_cpu, specs))
