"""The codec benchmark: columns, exact bits per parameter, files written."""
from __future__ import annotations

import csv
import io
import json

import pytest
from rich.console import Console

from fedsqueeze.bench.codecs import COLUMNS, default_settings, run, synthetic_laplace
from fedsqueeze.codecs.spec import make_codec
from fedsqueeze.errors import FedsqueezeError
from fedsqueeze.registry import CODECS


def test_synthetic_laplace_is_seeded():
    a, b = synthetic_laplace(1000, 3), synthetic_laplace(1000, 3)
    assert len(a) == 1 and sum(t.numel() for t in a[0].values()) == 1000
    assert all((a[0][k] == b[0][k]).all() for k in a[0])
    assert not (synthetic_laplace(1000, 4)[0]["layer.weight"] == a[0]["layer.weight"]).all()


def test_run_writes_csv_png_and_exact_bits(tmp_path):
    updates = synthetic_laplace(5000, 0)
    specs = ["fp32", "rdq(step=2.0, normalize=True, coder='ans', dead_zone=0.0, alloc='one')"]
    out = io.StringIO()
    rows = run(updates, "tiny", tmp_path, settings={"fp32": specs[:1], "rdq": specs[1:]}, repeats=2,
               console=Console(file=out, width=200))
    with open(tmp_path / "codecs_tiny.csv") as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == COLUMNS and [r["codec"] for r in got] == specs
    for spec, row, crow in zip(specs, rows, got):
        payload = make_codec(spec).encode(updates[0], seed=0)
        assert row["bits_per_param"] == 8 * len(payload) / 5000
        assert float(crow["bits_per_param"]) == row["bits_per_param"]
        assert row["bytes"] == len(payload)
    assert rows[0]["nmse"] == 0.0 and rows[0]["bits_per_param"] > 32
    rdq = rows[1]
    assert 0.8 < rdq["bits_per_param"] < 2.0 and 0.1 < rdq["nmse"] < 0.5
    assert 1.0 < rdq["rate_over_ba"] < 2.0  # near the limit (headers included), never below it
    assert rdq["ba_rate"] < rdq["gauss_rate"]
    assert (tmp_path / "codecs_tiny.png").stat().st_size > 1000
    meta = json.loads((tmp_path / "codecs_tiny.json").read_text())
    assert meta["params"] == 5000 and meta["machine"]["cpus"] >= 1
    assert "rdq(step=2.0" in out.getvalue()


def test_default_settings_cover_registered_codecs():
    s = default_settings()
    assert "fp32" in s and len(s["rdq"]) >= 4
    assert ("pipeline" in s) == ("svd" in CODECS)  # the degenerate default pipeline is not benchmarked


def test_unknown_codec_in_settings_is_an_error(tmp_path):
    with pytest.raises(FedsqueezeError, match="not registered"):
        run(synthetic_laplace(100, 0), "x", tmp_path, settings={"nope": ["nope"]}, repeats=1,
            console=Console(file=io.StringIO()))


def test_conditional_entropy_by_hand():
    import numpy as np

    from fedsqueeze.bench.codecs import conditional_entropy_bits

    assert conditional_entropy_bits(np.array([0, 1, 0, 1, 0, 1])) == 0.0  # each symbol fixed by the previous one
    # previous symbols: (none), 0, 0, 1 -> after a 0 come 0 and 1 (2 bits), the rest is determined
    assert conditional_entropy_bits(np.array([0, 0, 1, 1])) == pytest.approx(2.0)


def test_both_limits_and_symbol_entropies(tmp_path):
    import math

    import torch

    g = torch.Generator().manual_seed(0)
    big = torch.randn(200, 100, generator=g) * 0.01 * torch.sign(torch.randn(200, 1, generator=g)).abs()
    up = [{"w": big, "b": torch.randn(50, generator=g) * 0.1}]
    specs = ["rdq(step=1.0, normalize=True, coder='ans', dead_zone=0.0, alloc='one')", "rdq(step=1.0, normalize=True, coder='ctx', dead_zone=0.0, alloc='one')", "fp16"]
    rows = run(up, "lim", tmp_path, settings={"rdq": specs[:2], "fp16": specs[2:]}, repeats=1,
               console=Console(file=io.StringIO(), width=250))
    ans, ctxr, half = rows
    for r in (ans, ctxr):
        assert r["ba_rate"] <= r["ba_nmse_rate"]      # the free allocation is the lower limit
        assert r["rate_over_ba_nmse"] == r["bits_per_param"] / r["ba_nmse_rate"]
        assert 0 < r["h1"] <= r["h0"] and r["h0"] == pytest.approx(ans["h0"])
    assert math.isnan(half["h0"]) and math.isnan(half["h1"])
    with open(tmp_path / "codecs_lim.csv") as f:
        assert list(csv.DictReader(f))[0].keys() >= {"ba_nmse_rate", "rate_over_ba_nmse", "h0", "h1"}


def test_speed_bench_command(capsys):
    from fedsqueeze.bench.codec_speed import measure, update_like
    from fedsqueeze.cli import main

    w = update_like(8000)
    assert w.shape == (2, 4000) and abs(float(w.double().square().mean().sqrt()) - 0.01) < 1e-6
    rows = measure(8000, repeats=1, specs=["rdq(step=1.0, normalize=True, coder='ans', dead_zone=0.0, alloc='one')",
                                           "rdq(step=1.0, normalize=True, coder='ctx', dead_zone=0.0, alloc='one')"])
    assert [r["params"] for r in rows] == [8000, 8000]
    assert rows[1]["bits_per_param"] < rows[0]["bits_per_param"]  # rows share a sign: contexts pay
    assert all(r["encode_MBps"] > 0 and r["decode_MBps"] > 0 for r in rows)
    assert main(["bench", "codecs", "--speed", "--speed-params", "8000", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "coder='ctx'" in out and "load average" in out
    assert "constriction AnsCoder only" in out and "constriction Range coder only" in out


def test_constriction_only_rows_code_the_rdq_symbols():
    from fedsqueeze.bench.codec_speed import constriction_only

    rows = constriction_only(8000, repeats=1)
    assert [r["codec"] for r in rows] == ["constriction AnsCoder only", "constriction Range coder only"]
    assert all(r["params"] == 8000 and r["encode_MBps"] > 0 and r["decode_MBps"] > 0 for r in rows)
