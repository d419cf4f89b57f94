"""``fedsqueeze bench codecs --speed``: the speed table (bench/speed.py)."""
from __future__ import annotations

import pytest

from fedsqueeze.bench import speed
from fedsqueeze.cli import main


def test_rows_have_the_payload_rate_and_positive_speeds():
    rows = speed.measure(["fp16", "qsgd(levels=4)", "drive"], numel=20_000, repeats=1)
    assert [r["codec"] for r in rows] == ["fp16", "qsgd(levels=4)", "drive"]
    fp16, _, drive = rows
    assert fp16["bits_per_param"] == pytest.approx(16.0, abs=0.05)  # 40000 bytes + header
    # 20000 values -> rows 16384 and 4096 (2048 + 1024 + 544 padded to 1024, merged): 20480 bits + 2 scales
    assert 8 * (20480 // 8 + 8) / 20_000 < drive["bits_per_param"] < 1.07
    for r in rows:
        assert all(r[k] > 0 for k in ("encode_mb_s", "decode_mb_s", "encode_cpu_mb_s", "decode_cpu_mb_s"))


def test_cli_prints_the_table(capsys):
    assert main(["bench", "codecs", "--speed", "--codecs", "qsgd,signsgd", "--speed-params", "5000",
                 "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "qsgd(levels=4)" in out and "signsgd" in out and "dec MB/s (CPU)" in out and "drive" not in out
    assert main(["bench", "codecs", "--speed", "--codecs", "qsgd", "--speed-params", "0"]) == 2
