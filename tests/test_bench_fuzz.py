"""The fuzz command's harness: real codecs survive it; a decoder that crashes or hangs is caught."""
from __future__ import annotations

import time

import torch

from fedsqueeze.bench import entropy_stage, fuzz
from fedsqueeze.registry import CODECS


def test_every_codec_survives_a_short_fuzz_run():
    rep = fuzz.fuzz(42, seed=1)
    assert rep["cases"] == 42 * len(CODECS.names())
    assert rep["bad"] == 0, rep["failures"][:3]
    assert rep["outcomes"]["rejected"] > rep["outcomes"]["decoded"] > 0


def test_harness_catches_crashes_and_hangs(monkeypatch):
    def crash(data, **kw):
        raise ValueError("boom")
    monkeypatch.setattr(fuzz, "decode_any", crash)
    rep = fuzz.fuzz(7, ["fp32"])
    assert rep["bad"] == 7 and rep["failures"][0][2] == "ValueError('boom')"

    def hang(data, **kw):
        time.sleep(5)
    monkeypatch.setattr(fuzz, "decode_any", hang)
    rep = fuzz.fuzz(2, ["fp32"], time_limit=0.05)
    assert rep["outcomes"]["hang"] == 2 and rep["bad"] == 2


def test_entropy_stage_within_half_a_percent_of_the_entropy():
    torch.manual_seed(0)
    update = {"w": torch.distributions.Laplace(0.0, 1e-3).sample((200_000,))}
    rows = entropy_stage.measure([update], ["rdq(step=0.001, coder='ans')", "rdq(step=0.001)", "fp32"])
    assert [r["codec"] for r in rows] == ["rdq(step=0.001, coder='ans')"]  # only the ANS stage is measured
    assert 0 <= rows[0]["overhead_pct"] < 0.5 and rows[0]["symbols"] == 200_000
