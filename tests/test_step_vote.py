"""rdq(step="vote") in the round loop: votes and the adopted step travel as ledger payloads, the server
adopts the majority, a resumed run keeps the adopted step."""
from __future__ import annotations

import pytest
import torch

import fedsqueeze
from conftest import digits_config
from fedsqueeze.algorithms.base import Reply
from fedsqueeze.algorithms.fedavg import FedAvg
from fedsqueeze.algorithms.step_vote import STATE_KEY, StepVote
from fedsqueeze.codecs.rdq import RDQ, rd_scores
from fedsqueeze.codecs.spec import make_codec
from fedsqueeze.errors import CodecError, ConfigError
from fedsqueeze.registry import ALGORITHMS

A = [0.5, -0.25, 0.125, 0.0]
B = [1.0, -0.75, 0.5, 0.25]
C = [3.0, -2.0, 1.5, 1.0]
D = [0.25, 0.0, 0.0, 0.0]
# (round, client) -> the update that client sends
UPDATES = {(1, 0): A, (1, 1): C, (1, 2): D, (2, 0): A, (2, 1): B, (2, 2): C, (3, 0): A, (3, 1): A, (3, 2): A}
LAM = 0.005
SPEC = f"rdq(step='vote', lam={LAM}, candidates=[0.5, 0.25], coder='gamma', normalize=False, dead_zone=0.0, alloc='one')"


class FixedUpdates(FedAvg):
    """Sends the table's update; the server keeps what it decoded (the model never changes)."""

    name = "t-fixed-updates"

    def client_update(self, ctx, down, state):
        return Reply(ctx.client, 1, {"update": {"v": torch.tensor(UPDATES[(ctx.round, ctx.client)])}}, state)

    def upload_spec(self, rnd, step, down):
        return {"update": {"v": ((4,), torch.float32)}}

    def aggregate(self, state, rnd, step, replies):
        return {**state, f"r{rnd}": torch.stack([r.up["update"]["v"] for r in replies])}


@pytest.fixture
def fixed():
    ALGORITHMS.register(FixedUpdates.name, FixedUpdates, replace=True)
    yield
    ALGORITHMS.unregister(FixedUpdates.name)


def _cfg(rounds=3, codec=None):
    return digits_config(rounds=rounds, data={"source": "digits", "num_clients": 3, "partition": "iid"},
                         train={"clients_per_round": 3, "local_epochs": 1, "batch_size": 16, "lr": 0.1},
                         algorithm={"name": FixedUpdates.name}, codec=codec or {"up": SPEC, "down": "fp32"},
                         eval={"every": 0, "personal_every": 0}, engine={"checkpoint_every": 1})


def _score(v, step):
    """D + λR with D by hand below and R = 8·(real payload bytes)/d."""
    t = {"update/v": torch.tensor(v)}
    return 8 * len(RDQ(step=step, coder="gamma", normalize=False, dead_zone=0.0, alloc="one").encode(t)) / 4


def test_scores_by_hand():
    # D = mean squared error of round-half-to-even quantisation
    assert [s[1] for s in rd_scores({"update/v": torch.tensor(A)}, [0.25, 0.5])] == [0.125 ** 2 / 4,
                                                                                     (0.25 ** 2 + 0.125 ** 2) / 4]
    assert [s[1] for s in rd_scores({"update/v": torch.tensor(B)}, [0.25, 0.5])] == [0.0, 4 * 0.25 ** 2 / 4 / 2]
    assert [s[1] for s in rd_scores({"update/v": torch.tensor(C)}, [0.25, 0.5])] == [0.0, 0.0]
    assert [s[1] for s in rd_scores({"update/v": torch.tensor(D)}, [0.25, 0.5])] == [0.0, 0.25 ** 2 / 4]
    # the votes the protocol test relies on: A and B prefer 0.25, C and D prefer 0.5
    d_by_hand = {"A": (0.125 ** 2 / 4, 0.078125 / 4), "B": (0.0, 0.03125), "C": (0.0, 0.0), "D": (0.0, 0.015625)}
    for name, v in zip("ABCD", (A, B, C, D)):
        fine = d_by_hand[name][0] + LAM * _score(v, 0.25)
        coarse = d_by_hand[name][1] + LAM * _score(v, 0.5)
        assert (fine <= coarse) == (name in "AB"), (name, fine, coarse)


def test_protocol_over_rounds(tmp_path, fixed):
    res = fedsqueeze.run(_cfg(), run_dir=tmp_path / "v", plot=False)
    # round 1 encodes at the first candidate (0.25); votes A→0.25, C→0.5, D→0.5: 0.5 is adopted;
    # round 2 encodes at 0.5; votes A→0.25, B→0.25, C→0.5: 0.25 is adopted for round 3
    steps = [r["client_metrics"]["rdq_step"] for r in res.history]
    assert steps == [0.25, 0.5, 0.25]
    assert [r["client_metrics"]["rdq_vote"] for r in res.history[:2]] == [pytest.approx(1.25 / 3),
                                                                          pytest.approx(1.0 / 3)]
    # what the server decoded in round 2 is A, B, C at step 0.5 (round half to even)
    from fedsqueeze.engine.checkpoint import restore_checkpoint
    ckpt, _ = restore_checkpoint(tmp_path / "v")
    assert torch.equal(ckpt["server_state"]["r2"], torch.tensor([[0.5, -0.0, 0.0, 0.0], [1.0, -1.0, 0.5, 0.0],
                                                                 [3.0, -2.0, 1.5, 1.0]]))
    assert torch.equal(ckpt["server_state"]["r1"][0], torch.tensor([0.5, -0.25, 0.0, 0.0]))  # step 0.25
    assert ckpt["server_state"][STATE_KEY] == 0.25  # round 3: A, A, A
    # every vote and every broadcast step is a payload in the ledger: one byte of index in a frame
    from fedsqueeze.engine.runtime import payload_seed

    def index_payload(*where):
        return len(make_codec("fp32").encode({"index": torch.tensor([1], dtype=torch.uint8)},
                                             seed=payload_seed(0, *where)))
    for rnd in (1, 2, 3):
        for c in range(3):
            assert res.ledger.total("up", round=rnd, kind="rdq_vote", client=c) == index_payload(
                "up", rnd, 0, c, "rdq_vote")
            assert res.ledger.total("down", round=rnd, kind="rdq_step", client=c) == index_payload(
                "down", rnd, 0, -1, "rdq_step")
            assert res.ledger.total("up", round=rnd, kind="rdq_vote", client=c) <= 45
    # the update payloads are plain fixed-step rdq payloads (their header names only the step)
    assert res.ledger.total("up", round=2, kind="update", client=0) == len(
        RDQ(step=0.5, coder="gamma", normalize=False, dead_zone=0.0, alloc="one").encode({"v": torch.tensor(A)}, seed=payload_seed(0, "up", 2, 0, 0, "update")))


def test_resume_keeps_the_adopted_step(tmp_path, fixed):
    whole = fedsqueeze.run(_cfg(), run_dir=tmp_path / "whole", plot=False)
    fedsqueeze.run(_cfg(rounds=2), run_dir=tmp_path / "cut", plot=False)
    more = fedsqueeze.resume(tmp_path / "cut", overrides=["rounds=3"], plot=False)
    assert [r["client_metrics"]["rdq_step"] for r in more.history] == [0.25, 0.5, 0.25]
    assert more.ledger.to_state() == whole.ledger.to_state()


def test_initial_step_and_bad_options(tmp_path, fixed):
    res = fedsqueeze.run(_cfg(rounds=1, codec={"up": SPEC[:-1] + ", initial=0.5)", "down": "fp32"}),
                         run_dir=tmp_path / "i", plot=False)
    assert res.history[0]["client_metrics"]["rdq_step"] == 0.5
    with pytest.raises(CodecError, match="needs lam and candidates"):
        make_codec("rdq(step='vote')")
    with pytest.raises(CodecError, match="must be one of the candidates"):
        make_codec("rdq(step='vote', lam=0, candidates=[1e-3], initial=2e-3, coder='gamma', normalize=False, dead_zone=0.0, alloc='one')")
    with pytest.raises(ConfigError, match="uplink protocol"):
        fedsqueeze.run(_cfg(rounds=1, codec={"up": "fp32", "down": SPEC}), run_dir=tmp_path / "d", plot=False)
    # a fixed step keeps its old header: the vote's options are not written
    assert "candidates" not in make_codec("rdq(step=0.01, coder='gamma', normalize=False, dead_zone=0.0, alloc='one')").get_config()


def test_vote_on_a_real_federation_learns(tmp_path, digits):
    """Digits, 10 clients, 4 per round: the vote moves from the first candidate to a coarser step, the
    run learns as fp32 does and the uplink is several times smaller."""
    spec = "rdq(step='vote', lam=1e-5, candidates=[1e-3, 4e-3, 1.6e-2], coder='gamma', normalize=False, dead_zone=0.0, alloc='one')"
    res = fedsqueeze.run(digits_config(rounds=4, codec={"up": spec, "down": "fp32"}), run_dir=tmp_path / "r",
                         dataset=digits, plot=False)
    ref = fedsqueeze.run(digits_config(rounds=4), run_dir=tmp_path / "f", dataset=digits, plot=False)
    steps = [r["client_metrics"]["rdq_step"] for r in res.history]
    assert steps[0] == pytest.approx(1e-3) and steps[-1] == pytest.approx(1.6e-2)
    assert res.final_accuracy > ref.final_accuracy - 0.03 and res.final_accuracy > 0.5
    assert res.ledger.total("up") < ref.ledger.total("up") / 5
    assert res.ledger.total("up", kind="rdq_vote") > 0


def test_wrapper_delegates(digits):
    from fedsqueeze.config import from_dict
    from fedsqueeze.engine.runtime import build_algorithm
    algo = build_algorithm(from_dict(digits_config(codec={"up": SPEC, "down": "fp32"})), (1, 8, 8), 10)
    assert isinstance(algo, StepVote) and algo.name == "fedavg"
    plain = build_algorithm(from_dict(digits_config()), (1, 8, 8), 10)
    assert not isinstance(plain, StepVote)
    pfa = build_algorithm(from_dict(digits_config(algorithm={"name": "perfedavg"}, codec={"up": SPEC, "down": "fp32"})),
                          (1, 8, 8), 10)
    assert isinstance(pfa, StepVote) and pfa.adapts and pfa.p.alpha == 0.01  # evaluation still adapts


def test_worker_pool_matches_in_process(tmp_path, digits):
    """Clients in worker processes vote and encode exactly as in process (the wrapper is rebuilt there)."""
    spec = "rdq(step='vote', lam=1e-5, candidates=[1e-3, 4e-3, 1.6e-2], coder='gamma', normalize=False, dead_zone=0.0, alloc='one')"
    cfg = digits_config(rounds=3, codec={"up": spec, "down": "fp32"}, eval={"every": 3, "personal_every": 0})
    a = fedsqueeze.run(cfg, run_dir=tmp_path / "a", dataset=digits, plot=False)
    b = fedsqueeze.run({**cfg, "engine": {"workers": 2}}, run_dir=tmp_path / "b", dataset=digits, plot=False)
    assert a.ledger.to_state() == b.ledger.to_state()
    assert [r["client_metrics"] for r in a.history] == [r["client_metrics"] for r in b.history]
    with pytest.raises(ConfigError, match="vectorised"):
        fedsqueeze.run({**cfg, "engine": {"vectorize": True}}, run_dir=tmp_path / "c", dataset=digits, plot=False)
