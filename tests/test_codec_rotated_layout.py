"""DRIVE/EDEN ``layout='split'``: tail rows without power-of-two padding waste (issue #20 item 5)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from codec_kit import long_tail_update
from fedsqueeze.codecs.drive import Drive
from fedsqueeze.codecs.eden import Eden, lloyd_max_gaussian
from fedsqueeze.codecs.hadamard import ChunkLayout, random_signs
from fedsqueeze.codecs.spec import decode_any, make_codec
from fedsqueeze.errors import CodecError, PayloadError
from fedsqueeze.wire.payload import Header, pack, unpack
from rotation_kit import bias_over_seeds, sylvester, vnmse

GOLDEN = Path(__file__).parent / "golden"
MLP = {"fc1.weight": (200, 784), "fc1.bias": (200,), "fc2.weight": (200, 200), "fc2.bias": (200,),
       "fc3.weight": (10, 200), "fc3.bias": (10,)}  # the 2NN MLP 784-200-200-10


def test_split_rows_by_hand():
    # 156800 = 2 x 65536 + 16384 + 8192 + 1024 + 128 (the last 128 values: one row, no padding)
    lay = ChunkLayout(156_800, 1 << 16, 1024)
    assert lay.widths().tolist() == [65536, 65536, 16384, 8192, 1024, 128]
    assert [lay.start(r) for r in range(lay.rows)] == [0, 65536, 131072, 147456, 155648, 156672]
    assert lay.padded == 156_800
    assert ChunkLayout(40_000, 1 << 16, 1024).widths().tolist() == [32768, 4096, 2048, 1024, 64]
    assert ChunkLayout(40_000, 1 << 16).widths().tolist() == [65536]  # pow2: 25536 padding values
    assert ChunkLayout(1024 + 1000, 1 << 16, 1024).widths().tolist() == [2048]  # 1024 + pad(1000) merged
    assert ChunkLayout(1024 + 100, 1 << 16, 1024).widths().tolist() == [1024, 128]
    for n in (1, 10, 200, 1000, 1023, 2048, 3 * 65536):  # tails < 1024 or powers of two: as pow2
        assert ChunkLayout(n, 1 << 16, 1024).widths().tolist() == ChunkLayout(n, 1 << 16).widths().tolist()
    assert list(ChunkLayout(40_000, 1 << 16, 1024).slabs()) == [(0, 1, 32768), (1, 1, 4096), (2, 1, 2048),
                                                               (3, 1, 1024), (4, 1, 64)]


def test_one_bit_drive_on_the_mlp_costs_at_most_1_02_bits_per_parameter():
    g = torch.Generator().manual_seed(0)
    x = {k: torch.randn(s, generator=g) * 0.01 for k, s in MLP.items()}
    d = sum(v.numel() for v in x.values())
    assert d == 199_210
    # body bytes per tensor: 4 per row (fp32 scale) + one bit per padded coordinate
    by_hand = {"fc1.weight": 4 * 6 + 156800 // 8, "fc1.bias": 4 + 256 // 8, "fc2.weight": 4 * 5 + 40000 // 8,
               "fc2.bias": 4 + 256 // 8, "fc3.weight": 4 + 2048 // 8, "fc3.bias": 4 + 16 // 8}
    for k, v in x.items():
        assert len(Drive().encode_tensor(v, 3)) == by_hand[k], k
    assert sum(by_hand.values()) == 24_982  # 199376 coordinates (166 padding) + 15 scales
    split = 8 * len(Drive().encode(x, seed=0)) / d
    pow2 = 8 * len(Drive(layout="pow2").encode(x, seed=0)) / d
    assert 1.0 < split <= 1.02 < 1.17 < pow2  # headers included
    assert 8 * len(Eden(bits=1).encode(x, seed=0)) / d <= 1.02


def dense_split(x: torch.Tensor, seed: int, chunk: int, levels, scale) -> torch.Tensor:
    """Rotate-quantize-unrotate row by row with dense float64 Hadamard matrices on the split layout."""
    x = x.reshape(-1).double()
    signs = random_signs(x.numel(), seed).double()
    lay = ChunkLayout(x.numel(), chunk, 1024)
    out = torch.zeros(x.numel(), dtype=torch.float64)
    for r, w in enumerate(lay.widths().tolist()):
        seg = slice(lay.start(r), min(lay.start(r) + w, x.numel()))
        u = torch.zeros(w, dtype=torch.float64)
        u[:seg.stop - seg.start] = (signs * x)[seg]
        h = sylvester(w) / math.sqrt(w)
        rot = h @ u
        q = levels(rot * math.sqrt(w) / u.norm())
        out[seg] = (h @ (scale(u, rot, q) * q))[:seg.stop - seg.start] * signs[seg]
    return out


def test_split_layout_matches_a_dense_reference():
    x = torch.randn(2048 + 1024 + 100, generator=torch.Generator().manual_seed(5)) ** 3  # rows 2048, 1024, 128
    assert ChunkLayout(x.numel(), 2048, 1024).widths().tolist() == [2048, 1024, 128]
    c = Drive(chunk=2048)
    y = c.decode_tensor(memoryview(c.encode_tensor(x, 7)), (x.numel(),), 7)
    ref = dense_split(x, 7, 2048, lambda z: torch.where(z < 0, -1.0, 1.0).double(),
                      lambda u, rot, q: (u @ u) / rot.abs().sum())
    assert torch.allclose(y.double(), ref, rtol=1e-4, atol=1e-5 * float(x.abs().max()))
    lv = torch.tensor(lloyd_max_gaussian(2), dtype=torch.float64)
    e = Eden(bits=2, chunk=2048)
    y = e.decode_tensor(memoryview(e.encode_tensor(x, 7)), (x.numel(),), 7)
    ref = dense_split(x, 7, 2048, lambda z: lv[(z[:, None] - lv).abs().argmin(1)],
                      lambda u, rot, q: (u @ u) / (rot @ q))
    assert torch.allclose(y.double(), ref, rtol=1e-3, atol=1e-4 * float(x.abs().max()))


def test_split_rows_keep_the_theory():
    # rows 65536, 16384, 4096, 512 (+ padding to 512): vNMSE of 1-bit DRIVE -> pi/2 - 1, EDEN 2 bits 0.133 / 0.867
    x = torch.randn(65536 + 16384 + 4096 + 300, generator=torch.Generator().manual_seed(2))
    assert vnmse(Drive(), x) == pytest.approx(math.pi / 2 - 1, rel=0.03)
    assert vnmse(Eden(bits=2), x) == pytest.approx(0.1175 / (1 - 0.1175), rel=0.05)


def test_eden_split_rows_stay_unbiased():
    x = torch.randn(1024 + 100, generator=torch.Generator().manual_seed(3))  # rows 1024 and 128
    bias2, noise = bias_over_seeds(Eden(bits=2), x, 300)
    assert bias2 < 2.0 * noise


def test_unrotated_projection_is_exact_per_payload():
    x = long_tail_update(4)["fc.weight"].reshape(-1)
    y = Drive().decode(Drive().encode({"x": x}, seed=1))["x"]
    assert math.isclose(float(y.double() @ x.double()), float(x.double() @ x.double()), rel_tol=1e-5)


def test_payload_without_layout_decodes_as_pow2():
    x = long_tail_update(1)
    for old in (Drive(layout="pow2"), Eden(bits=3, layout="pow2")):
        payload = old.encode(x, seed=9)
        header, body = unpack(payload)
        legacy = {k: v for k, v in header.config.items() if k != "layout"}  # a header from before the option
        stripped = pack(Header(header.codec_id, header.seed, legacy, header.tensors), bytes(body))
        want = old.decode(payload)
        for got in (decode_any(stripped), make_codec(old.codec_id).decode(stripped)):
            assert all(torch.equal(got[k], want[k]) for k in want)
    assert make_codec("drive").layout == "split" and make_codec("eden").layout == "split"
    with pytest.raises(CodecError, match="layout"):
        make_codec("drive(layout='tight')")


@pytest.mark.parametrize("name", ["drive-split", "eden-split"])
def test_split_golden_fixture_still_decodes(name):
    expected = json.loads((GOLDEN / f"{name}.json").read_text())
    out = decode_any((GOLDEN / f"{name}.bin").read_bytes())
    assert list(out) == list(expected)
    for k, v in out.items():
        assert [float(t).hex() for t in v.reshape(-1).double()] == expected[k], f"{name}: {k} changed"


def test_pipeline_payload_from_before_the_layout_option_still_decodes():
    """A pipeline payload made when ``"drive"`` meant the power-of-two layout: the stage spec says ``drive``
    and the nested header has no ``layout``; it decodes as that layout, as it did then."""
    x = long_tail_update(2)
    old = make_codec("svd(threshold=0.9) | drive(layout='pow2')")
    payload = old.encode(x, seed=5)
    want = old.decode(payload)
    header, body = unpack(payload)
    inner_header, inner_body = unpack(bytes(body))
    legacy_inner = pack(Header(inner_header.codec_id, inner_header.seed,
                               {k: v for k, v in inner_header.config.items() if k != "layout"}, inner_header.tensors),
                        bytes(inner_body))
    legacy = pack(Header(header.codec_id, header.seed, {**header.config, "stages": ["svd(threshold=0.9)", "drive"]},
                         header.tensors), legacy_inner)
    got = decode_any(legacy)
    assert all(torch.equal(got[k], want[k]) for k in want)
    # a stage whose written options differ from the nested header's is refused
    forged = pack(Header(header.codec_id, header.seed, {**header.config, "stages": ["svd(threshold=0.9)", "drive(chunk=512)"]},
                         header.tensors), legacy_inner)
    with pytest.raises(PayloadError):
        decode_any(forged)
