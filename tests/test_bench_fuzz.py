"""The fuzz command's harness: real codecs survive it; a decoder that crashes, hangs (even where the
per-case timer cannot interrupt it), segfaults or allocates past the cap is caught, reported with its
case, and the run goes on with the next case."""
from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from fedsqueeze.bench import entropy_stage, fuzz, fuzz_worker
from fedsqueeze.bench.fuzz_cases import MUTATIONS, make_case, valid_payloads
from fedsqueeze.cli import main
from fedsqueeze.codecs.spec import decode_any
from fedsqueeze.errors import PayloadError
from fedsqueeze.registry import CODECS
from fedsqueeze.wire.payload import _frame, unpack


def test_every_codec_survives_a_short_fuzz_run():
    rep = fuzz.fuzz(40, seed=1)
    assert rep["cases"] == 40 * len(CODECS.names()) and rep["cases_per_codec"] == 40
    assert rep["bad"] == 0, rep["failures"][:3]
    assert all(sum(c.values()) == 40 for c in rep["per_codec"].values())
    assert rep["outcomes"]["rejected"] > rep["outcomes"]["decoded"] > 0
    assert all(n > 0 for n in rep["reached"].values())  # cases of every codec got past frame and header
    assert {how for how, _ in rep["by_mutation"]} == set(MUTATIONS)
    assert 0 < rep["slowest_s"] < 2.0 and rep["peak_extra"][0][0] >= 0


def test_cases_are_deterministic_and_reframed_ones_pass_the_crc():
    goods = valid_payloads("topk")
    assert len(goods) == 8  # default and one extra configuration, 4 inputs each
    for i in range(40):
        how, bad = make_case("topk", i, seed=3, goods=goods)
        assert how == MUTATIONS[i % len(MUTATIONS)] and make_case("topk", i, seed=3, goods=goods)[1] == bad
        if how in ("body_bytes", "inflate_varint", "inflate_shape", "header_field", "swap_codec", "splice"):
            _frame(bad)  # valid frame and CRC: the mutation reaches the parsers behind them
    assert make_case("topk", 4, seed=3)[1] != make_case("topk", 4, seed=4)[1]


def _breaks_on(cid: str, cases: dict[int, object]):
    """A decode_any that misbehaves (callable) on the given cases of ``cid`` and decodes the rest."""
    payloads = {make_case(cid, i)[1]: act for i, act in cases.items()}

    def decode(data, **kw):
        act = payloads.get(bytes(data))
        return act() if act is not None else decode_any(data, **kw)
    return decode


def test_crashes_are_failures_with_their_case(monkeypatch):
    def boom():
        raise ValueError("boom")
    monkeypatch.setattr(fuzz_worker, "decode_any", _breaks_on("fp32", {3: boom}))
    rep = fuzz.fuzz(7, ["fp32"])
    assert rep["bad"] == 1 and rep["outcomes"]["crash"] == 1 and rep["cases"] == 7
    cid, i, how, outcome, detail = rep["failures"][0]
    assert (cid, i, how, outcome) == ("fp32", 3, MUTATIONS[3], "crash") and detail.startswith("ValueError('boom')")


def test_hang_interrupted_by_the_per_case_timer(monkeypatch):
    monkeypatch.setattr(fuzz_worker, "decode_any", _breaks_on("fp32", {1: lambda: time.sleep(5)}))
    t0 = time.monotonic()
    rep = fuzz.fuzz(3, ["fp32"], time_limit=0.1)
    assert rep["outcomes"]["hang"] == 1 and rep["bad"] == 1 and rep["cases"] == 3
    assert time.monotonic() - t0 < 4


def test_hang_the_timer_cannot_interrupt_is_killed_by_the_watchdog_and_the_run_goes_on(monkeypatch):
    def stuck():  # as if stuck inside C code: the SIGALRM handler never runs
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
        time.sleep(60)
    monkeypatch.setattr(fuzz_worker, "decode_any", _breaks_on("fp32", {2: stuck}))
    t0 = time.monotonic()
    rep = fuzz.fuzz(5, ["fp32"], time_limit=0.1, grace=0.5)
    assert time.monotonic() - t0 < 10
    assert rep["cases"] == 5 and rep["outcomes"]["hang"] == 1 and rep["bad"] == 1
    assert rep["failures"][0][:4] == ("fp32", 2, MUTATIONS[2], "hang")
    assert "watchdog" in rep["failures"][0][4]
    # cases 0, 1 (re-run after the kill) and 3, 4 still decoded or were rejected normally
    assert rep["outcomes"]["decoded"] + rep["outcomes"]["rejected"] == 4


def test_a_segfaulting_worker_is_replaced(monkeypatch):
    monkeypatch.setattr(fuzz_worker, "decode_any", _breaks_on("fp32", {0: lambda: os.kill(os.getpid(), signal.SIGSEGV),
                                                                4: lambda: os.kill(os.getpid(), signal.SIGSEGV)}))
    rep = fuzz.fuzz(6, ["fp32"])
    assert rep["cases"] == 6 and rep["outcomes"]["died"] == 2
    assert [f[1] for f in rep["failures"]] == [0, 4] and "SIGSEGV" in rep["failures"][0][4]


def test_allocation_beyond_the_cap_is_a_failure_even_when_wrapped(monkeypatch):
    def hog():
        return bytearray(256 << 20)  # over the 64 MB cap: MemoryError

    def wrapped():
        try:
            hog()
        except MemoryError as e:
            raise PayloadError("malformed body") from e
    monkeypatch.setattr(fuzz_worker, "decode_any", _breaks_on("fp32", {0: hog, 1: wrapped}))
    rep = fuzz.fuzz(3, ["fp32"], mem_cap_mb=64)
    assert rep["outcomes"]["over_cap"] == 2 and rep["bad"] == 2 and rep["cases"] == 3


def test_peak_memory_growth_is_measured(monkeypatch):
    monkeypatch.setattr(fuzz_worker, "decode_any", _breaks_on("fp16", {150: lambda: torch.ones(24 << 20).sum() and {}}))
    rep = fuzz.fuzz(200, ["fp16"])
    (peak, first), cid = rep["peak_extra"]
    assert cid == "fp16" and first == 100 and peak >= 90 << 20  # 96 MB touched by case 150
    assert rep["outcomes"]["bad_output"] == 1  # and its return value is not the header's tensors


def test_cli_prints_per_codec_counts_and_figures(capsys):
    assert main(["bench", "fuzz", "--cases", "30", "--codecs", "fp32,topk", "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "30 mutated payloads PER CODEC x 2 codecs" in out
    assert "cases: 60 (30 per codec x 2 codecs)   failures: 0" in out
    assert "slowest case:" in out and "peak extra memory:" in out and "with 2 job(s)" in out


@pytest.mark.parametrize("argv, message", [(["--codecs", "topkk"], "did you mean 'topk'"),
                                           (["--jobs", "0"], "--jobs >= 1")])
def test_cli_rejects_bad_options(argv, message, capsys):
    assert main(["bench", "fuzz", "--cases", "1", *argv]) == 2
    assert message in capsys.readouterr().err


def test_entropy_stage_within_half_a_percent_of_the_entropy():
    torch.manual_seed(0)
    update = {"w": torch.distributions.Laplace(0.0, 1e-3).sample((200_000,))}
    rows = entropy_stage.measure([update], ["rdq(step=0.001, coder='ans', normalize=False, dead_zone=0.0, alloc='one')", "rdq(step=0.001, coder='gamma', normalize=False, dead_zone=0.0, alloc='one')", "fp32"])
    assert [r["codec"] for r in rows] == ["rdq(step=0.001, coder='ans', normalize=False, dead_zone=0.0, alloc='one')"]  # only the ANS stage is measured
    assert 0 <= rows[0]["overhead_pct"] < 0.5 and rows[0]["symbols"] == 200_000
