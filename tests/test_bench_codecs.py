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
    specs = ["fp32", "rdq(step=2.0, normalize=True, coder='ans')"]
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
