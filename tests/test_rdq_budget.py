"""rdq budget mode: payloads never exceed target_bytes and use the budget well."""
import pytest
import torch

from fedsqueeze.codecs.rdq import RDQ
from fedsqueeze.errors import CodecError


def _update(seed=0, n=20_000):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(100, n // 100, generator=g) * 0.01, "b": torch.randn(100, generator=g) * 0.01}


@pytest.mark.parametrize("coder", ["ans", "gamma"])
@pytest.mark.parametrize("target", [200, 1_000, 3_000, 12_000])
def test_payload_fits_and_is_close(coder, target):
    codec = RDQ(coder=coder, target_bytes=target, normalize=False, dead_zone=0.0, alloc="one")
    p = codec.encode(_update(), seed=3)
    assert len(p) <= target
    assert len(p) >= 0.9 * target  # the search lands within 10% of the budget
    out = codec.decode(p)
    assert set(out) == {"w", "b"}


def test_more_bytes_less_distortion():
    u = _update(1)
    errs = []
    for target in (1_000, 4_000, 16_000):
        out = RDQ(coder="ans", target_bytes=target, normalize=False, dead_zone=0.0, alloc="one").decode(RDQ(coder="ans", target_bytes=target, normalize=False, dead_zone=0.0, alloc="one").encode(u, seed=0))
        errs.append(float(sum((out[k] - u[k]).square().sum() for k in u)))
    assert errs[0] > errs[1] > errs[2]


def test_header_records_the_chosen_step():
    from fedsqueeze.wire.payload import unpack
    p = RDQ(coder="ans", target_bytes=2_000, normalize=False, dead_zone=0.0, alloc="one").encode(_update(), seed=0)
    header, _ = unpack(p)
    assert header.config["target_bytes"] == 0 and header.config["step"] != 1e-3


def test_normalized_mode_fits_too():
    p = RDQ(coder="ans", normalize=True, target_bytes=2_500, dead_zone=0.0, alloc="one").encode(_update(2), seed=0)
    assert 0.9 * 2_500 <= len(p) <= 2_500


def test_target_below_overhead_is_a_clear_error():
    with pytest.raises(CodecError, match="raise the budget"):
        RDQ(target_bytes=10, coder="gamma", normalize=False, dead_zone=0.0, alloc="one").encode(_update(), seed=0)


def test_bad_target_rejected():
    with pytest.raises(CodecError, match="target_bytes"):
        RDQ(target_bytes=-5, coder="gamma", normalize=False, dead_zone=0.0, alloc="one")
