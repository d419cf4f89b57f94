"""Codecs on any device (issue #17 item 2), the part a CPU can check: inputs are taken to the CPU
(detached, contiguous) before any arithmetic, ``meta`` inputs are refused, ``decode(device=...)``
places the result, and stateful codecs return their state on the CPU. The CUDA half of these checks
is tests/test_codecs_gpu.py."""
from __future__ import annotations

import pytest
import torch

from codec_kit import all_codec_ids, default_codec, sample_update
from fedsqueeze.codecs.base import host, host_state, host_tensors
from fedsqueeze.codecs.rdq import RDQ, rd_scores
from fedsqueeze.codecs.spec import decode_any, make_codec
from fedsqueeze.codecs.svd import SVD
from fedsqueeze.errors import CodecError

IDS = all_codec_ids()


def awkward(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same values as non-contiguous views, float tensors requiring grad (as model parameters)."""
    out = {}
    for k, v in x.items():
        if v.dim() >= 2:
            t = v.transpose(0, 1).contiguous().transpose(0, 1)  # same values, transposed strides
            assert not t.is_contiguous()
        elif v.dim() == 1 and v.numel() > 1:
            t = torch.stack([v, v], dim=1)[:, 0]  # stride 2
            assert not t.is_contiguous()
        else:
            t = v.clone()
        if t.is_floating_point():
            t = torch.nn.Parameter(t.clone(), requires_grad=True) if t.is_contiguous() else t.requires_grad_(True)
        out[k] = t
    return out


@pytest.mark.parametrize("cid", IDS)
def test_non_contiguous_and_requires_grad_inputs_give_the_same_bytes(cid):
    codec = default_codec(cid)
    x = sample_update(2)
    assert codec.encode(awkward(x), seed=9) == codec.encode(x, seed=9)


@pytest.mark.parametrize("cid", IDS)
def test_meta_tensors_are_refused(cid):
    x = sample_update()
    x["fc.weight"] = torch.empty(16, 40, device="meta")
    with pytest.raises(CodecError, match="meta"):
        default_codec(cid).encode(x, seed=0)


@pytest.mark.parametrize("cid", IDS)
def test_decode_on_the_cpu_by_default_and_on_request(cid):
    codec = default_codec(cid)
    payload = codec.encode(sample_update(4), seed=3)
    base = codec.decode(payload)
    for device in ("cpu", torch.device("cpu")):
        for out in (codec.decode(payload, device=device), decode_any(payload, device=device)):
            assert list(out) == list(base)
            for k, v in out.items():
                assert v.device.type == "cpu" and v.dtype == base[k].dtype and torch.equal(v, base[k])


@pytest.mark.parametrize("cid", IDS)
def test_decode_to_another_device_moves_every_tensor(cid):
    # the meta device stands in for a GPU here: a real non-CPU device that exists on every machine
    codec = default_codec(cid)
    payload = codec.encode(sample_update(4), seed=3)
    base = codec.decode(payload)
    for out in (codec.decode(payload, device="meta"), decode_any(payload, device=torch.device("meta"))):
        assert list(out) == list(base)
        for k, v in out.items():
            assert v.device.type == "meta" and v.shape == base[k].shape and v.dtype == base[k].dtype


def test_decode_keeps_its_old_signature_and_rejects_a_bad_device():
    codec = make_codec("topk(fraction=0.1)")
    payload = codec.encode(sample_update(), seed=0)
    assert list(codec.decode(payload, expect=None, max_numel=1 << 20)) == list(sample_update())
    with pytest.raises(CodecError, match="not a device"):
        codec.decode(payload, device="gpu please")
    with pytest.raises(CodecError, match="not a device"):
        decode_any(payload, device="gpu please")


def test_pipeline_and_ef_thread_the_device():
    x = sample_update(5)
    for spec in ("svd(threshold=0.9) | rdq(step=0.01, coder='gamma', normalize=False, dead_zone=0.0, alloc='one')", "ef(inner='svd | rdq(coder=\"ans\", step=1e-3, normalize=False, dead_zone=0.0, alloc=\"one\")')",
                 "ef(inner='signsgd')"):
        codec = make_codec(spec)
        payload = codec.encode(x, seed=1)
        base = codec.decode(payload)
        moved = codec.decode(payload, device="meta")
        assert all(v.device.type == "meta" and v.shape == base[k].shape for k, v in moved.items())
        assert all(torch.equal(v, base[k]) for k, v in codec.decode(payload, device="cpu").items())


@pytest.mark.parametrize("spec", ["ef(inner='topk(fraction=0.1)')", "ef(inner='threelc')", "powersgd(rank=2)"])
def test_stateful_state_is_on_the_cpu_detached_and_input_layout_free(spec):
    codec = make_codec(spec)
    plain_state = grad_state = None
    for t in range(3):
        x = sample_update(10 + t)
        p1, plain_state = codec.encode_stateful(x, seed=t, state=plain_state)
        p2, grad_state = codec.encode_stateful(awkward(x), seed=t, state=grad_state)
        assert p1 == p2
        leaves = []

        def walk(s):
            if isinstance(s, torch.Tensor):
                leaves.append(s)
            elif isinstance(s, dict):
                for v in s.values():
                    walk(v)
        walk(grad_state)
        assert leaves and all(v.device.type == "cpu" and not v.requires_grad for v in leaves)


def test_rdq_budget_mode_and_vote_take_any_layout():
    x = sample_update(6)
    codec = RDQ(target_bytes=700, coder="gamma", normalize=False, dead_zone=0.0, alloc="one")
    assert codec.encode(awkward(x), seed=2) == codec.encode(x, seed=2)
    assert rd_scores(awkward(x), [1e-3, 1e-2]) == rd_scores(x, [1e-3, 1e-2])


def test_svd_transform_takes_any_layout_and_returns_cpu():
    x = sample_update(7)
    svd = SVD(threshold=0.9)
    f1, f2 = svd.forward(x), svd.forward(awkward(x))
    assert list(f1) == list(f2) and all(torch.equal(f1[k], f2[k]) for k in f1)
    from fedsqueeze.wire.payload import TensorSpec
    specs = [TensorSpec.of(k, v) for k, v in x.items()]
    back = svd.inverse(f2, specs)
    assert all(v.device.type == "cpu" for v in back.values())
    assert all(torch.equal(back[k], v) for k, v in svd.inverse(f1, specs).items())


def test_host_helpers():
    t = torch.arange(12.0).reshape(3, 4).T.requires_grad_(True)
    h = host(t)
    assert h.is_contiguous() and not h.requires_grad and torch.equal(h, t.detach())
    c = torch.zeros(3)
    assert host(c).data_ptr() == c.data_ptr()  # already on the CPU and contiguous: no copy
    assert list(host_tensors({"b": c, "a": t})) == ["b", "a"]
    s = host_state({"q": {"w": t}, "n": 3, "l": [t]})
    assert s["n"] == 3 and s["q"]["w"].is_contiguous() and isinstance(s["l"], list)
    with pytest.raises(CodecError, match="not a torch.Tensor"):
        host([1.0], "x")
