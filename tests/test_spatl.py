"""SPATL: row-sparse payloads, FLOPs, channel groups, selectors, masked aggregation, then on digits."""
from __future__ import annotations

import struct

import pytest
import torch
from torch import nn

import fedsqueeze
from conftest import digits_config
from fedsqueeze.algorithms.base import Reply, Setup
from fedsqueeze.algorithms.salient import SelectionProblem, greedy_l2, uniform_l2
from fedsqueeze.algorithms.spatl import SPATL, SPATLParams, validation_split
from fedsqueeze.codecs.rowsparse import RowSparse, kept_mask
from fedsqueeze.errors import ConfigError, PayloadError
from fedsqueeze.models.flops import count_flops, layer_flops
from fedsqueeze.models.pruning import ChannelGroup, CostModel, apply_masks, channel_groups, tensor_masks
from fedsqueeze.models.resnet import ResNet
from fedsqueeze.models.zoo import SmallCNN

T = torch.tensor


# ---- the row-sparse codec -------------------------------------------------------------------------
def test_rowsparse_tensor_format_exact_bytes():
    x = T([[0.0, 0.0], [1.5, -2.0], [0.0, 0.0]])
    assert RowSparse().encode_tensor(x, 0) == bytes([0b01000000]) + struct.pack("<2f", 1.5, -2.0)
    # with cols: rows 11, input slices 011 (slice 0 is zero in every row), block [[3, 0], [4, 5]]
    w = T([[[0.0], [3.0], [0.0]], [[0.0], [4.0], [5.0]]])
    chunk = RowSparse(cols=True).encode_tensor(w, 0)
    assert chunk == bytes([0b11000000, 0b01100000]) + struct.pack("<4f", 3.0, 0.0, 4.0, 5.0)
    assert torch.equal(RowSparse(cols=True).decode_tensor(memoryview(chunk), (2, 3, 1), 0), w)
    half = RowSparse(values="fp16").encode_tensor(x, 0)
    assert half == bytes([0b01000000]) + struct.pack("<2e", 1.5, -2.0)


def test_rowsparse_round_trip_and_kept_mask():
    codec = RowSparse(cols=True)
    w = torch.zeros(4, 5, 3, 3)
    w[1, 2], w[1, 4], w[3, 4, 0, 0] = 1.0, -2.0, 0.5
    b = T([0.0, 3.0, 0.0, 1.0])
    out = codec.decode(codec.encode({"w": w, "b": b}, seed=0))
    assert torch.equal(out["w"], w) and torch.equal(out["b"], b)
    mask = kept_mask(out["w"])
    assert mask.sum() == 2 * 2 * 9 and mask[1, 2].all() and mask[3, 4].all() and not mask[1, 0].any()
    assert torch.equal(kept_mask(out["b"]), T([False, True, False, True]))
    # 4 rows + 5 slices -> 1 + 1 bitmap bytes, 2 x 2 x 9 kept values
    assert len(codec.encode_tensor(w, 0)) == 2 + 4 * 36


def test_rowsparse_rejects_inconsistent_bodies():
    codec = RowSparse()
    with pytest.raises(PayloadError):
        codec.decode_tensor(memoryview(bytes([0b01000000]) + b"\0" * 4), (3, 2), 0)  # 2 values announced
    with pytest.raises(PayloadError):
        codec.decode_tensor(memoryview(bytes([0b01000001]) + b"\0" * 8), (3, 2), 0)  # padding bit set


# ---- FLOPs and channel groups ---------------------------------------------------------------------
def test_flops_of_known_layers():
    assert count_flops(nn.Conv2d(3, 8, 3, padding=1), (3, 5, 5)) == 8 * 25 * 3 * 9
    assert count_flops(nn.Conv2d(3, 8, 3, stride=2), (3, 5, 5)) == 8 * 4 * 27
    assert count_flops(nn.Conv2d(4, 4, 3, groups=4), (4, 3, 3)) == 4 * 9
    assert count_flops(nn.Linear(10, 4), (10,)) == 40
    flops = layer_flops(SmallCNN((1, 8, 8), 10), (1, 8, 8))
    assert [f.macs for f in flops.values()] == [16 * 64 * 9, 32 * 16 * 16 * 9, 128 * 64, 640]


def test_small_cnn_groups_masks_and_pruned_costs():
    model = SmallCNN((1, 8, 8), 10)
    groups = channel_groups(model)
    assert [(g.layer, g.channels, g.consumer, g.per_channel) for g in groups] == [
        ("encoder.0.0", 16, "encoder.0.3", 1), ("encoder.0.3", 32, "encoder.2", 4), ("encoder.2", 64, "head", 1)]
    keep = {g.layer: torch.ones(g.channels, dtype=torch.bool) for g in groups}
    keep["encoder.0.0"][8:] = False       # half of conv1
    keep["encoder.0.3"][1] = False        # one conv2 filter: fc input features 4..7 go with it
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    masks = tensor_masks(shapes, groups, keep)
    assert masks["encoder.0.0.bias"].sum() == 8 and masks["encoder.0.3.weight"].sum() == 31 * 8 * 9
    assert not masks["encoder.2.weight"][:, 4:8].any() and masks["encoder.2.weight"].sum() == 64 * 124
    assert masks["head.weight"].all()
    counts = {g: int(k.sum()) for g, k in keep.items()}
    total = 9216 + 73728 + 8192 + 640
    flops = CostModel.flops(model, (1, 8, 8), groups).fraction(counts)
    assert flops == pytest.approx((9216 / 2 + 73728 * 0.5 * 31 / 32 + 8192 * 31 / 32 + 640) / total)
    enc = {k: s for k, s in shapes.items() if k.startswith("encoder.")}
    size = CostModel.size(enc, groups).fraction(counts)
    assert size == pytest.approx((80 + 31 * 8 * 9 + 31 + 64 * 124 + 64) / (160 + 4640 + 8256))


def test_zeroed_channels_compute_what_the_smaller_model_computes():
    torch.manual_seed(0)
    model = ResNet((1, 8, 8), 10).eval()
    groups = channel_groups(model)
    assert len(groups) == 9 and groups[0].consumer == "encoder.blocks.0.conv2"
    keep = {g.layer: torch.arange(g.channels) % 2 == 0 for g in groups}
    w = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    model.load_state_dict(apply_masks(w, tensor_masks({k: v.shape for k, v in w.items()}, groups, keep)),
                          strict=False)
    seen = {}
    model.encoder.blocks[0].conv2.register_forward_hook(lambda m, i, o: seen.setdefault("in", i[0]))
    model(torch.randn(3, 1, 8, 8))
    assert (seen["in"][:, 1::2] == 0).all() and (seen["in"][:, 0::2] != 0).any()


# ---- selectors -------------------------------------------------------------------------------------
def _problem(budget):
    groups = [ChannelGroup("a", 4, ("a.weight",)), ChannelGroup("b", 4, ("b.weight",))]
    weights = {"a.weight": T([[4.0], [3.0], [2.0], [1.0]]), "b.weight": T([[1.0], [5.0], [2.0], [7.0]])}
    cost = CostModel([(1.0, "a", None), (1.0, "b", None)], groups)

    def score(keep):  # pruning a costs 0.1 accuracy per filter, b 0.01
        return 1 - 0.1 * int((~keep["a"]).sum()) - 0.01 * int((~keep["b"]).sum()), 0.0
    return SelectionProblem(groups, weights, score, cost, budget, min_ratio=0.25, step=0.25)


def test_greedy_prunes_the_cheap_layer_by_l2_rank():
    keep = greedy_l2(_problem(0.75))   # two notches needed; both taken from b (its top-2 norms: rows 3, 1)
    assert torch.equal(keep["a"], T([True] * 4)) and torch.equal(keep["b"], T([False, True, False, True]))
    keep = greedy_l2(_problem(0.5))    # b bottoms out at 1 filter, then a gives one
    assert int(keep["b"].sum()) == 1 and torch.equal(keep["a"], T([True, True, True, False]))
    lazy = greedy_l2(_problem(0.5), lazy=True)  # independent layers: lazy re-scoring changes nothing
    assert all(torch.equal(lazy[k], keep[k]) for k in keep)
    keep = uniform_l2(_problem(0.75))  # the same ratio everywhere
    assert torch.equal(keep["a"], T([True, True, True, False])) and torch.equal(keep["b"], T([False, True, True, True]))


def test_validation_split_is_fixed_disjoint_and_nonempty():
    tr, va = validation_split(50, 0.1, seed=3)
    tr2, va2 = validation_split(50, 0.1, seed=3)
    assert torch.equal(va, va2) and len(va) == 5 and len(tr) == 45
    assert sorted(torch.cat([tr, va]).tolist()) == list(range(50))
    assert len(validation_split(3, 0.1, seed=0)[1]) == 1 and len(validation_split(1, 0.1, seed=0)[1]) == 0


# ---- server ----------------------------------------------------------------------------------------
def _algo(**p):
    return SPATL(SPATLParams(**p), Setup("small_cnn", {}, (1, 8, 8), 10, rounds=1))


def test_masked_aggregation_averages_each_filter_over_its_senders():
    """Client A (n=1) sends filters 0, 1; client B (n=3) sends filter 1 only; nobody sends filter 2."""
    x = {"w": torch.ones(3, 2), "b": torch.ones(3)}
    state = {"weights": x, "c": {"w": torch.zeros(3, 2)}}
    a = Reply(0, 1, {"update": {"w": T([[1.0, 1.0], [2.0, 2.0], [0.0, 0.0]]), "b": T([1.0, 2.0, 0.0])},
                     "control": {"w": T([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])}}, None)
    b = Reply(1, 3, {"update": {"w": T([[0.0, 0.0], [4.0, 4.0], [0.0, 0.0]]), "b": T([0.0, 4.0, 0.0])},
                     "control": {"w": T([[0.0, 0.0], [2.0, 2.0], [0.0, 0.0]])}}, None)
    out = _algo().aggregate(state, 1, 0, [a, b])
    # filter 0: A alone (+1); filter 1: (1*2 + 3*4)/4 = 3.5; filter 2 unchanged
    assert torch.equal(out["weights"]["w"], T([[2.0, 2.0], [4.5, 4.5], [1.0, 1.0]]))
    assert torch.equal(out["weights"]["b"], T([2.0, 4.5, 1.0]))
    assert torch.equal(out["c"]["w"], T([[1.0, 1.0], [2.0, 2.0], [0.0, 0.0]]))
    assert torch.equal(_algo(num_clients=10).aggregate(state, 1, 0, [a, b])["c"]["w"][:2, 0], T([0.1, 0.2]))
    # released code: pruned weights averaged with zeros: filter 0 (1*2 + 3*0)/4, filter 2 -> 0
    dense = _algo(aggregation="dense").aggregate(state, 1, 0, [a, b])
    assert torch.equal(dense["weights"]["w"], T([[0.5, 0.5], [4.5, 4.5], [0.0, 0.0]]))


def test_client_uploads_exactly_the_pruned_encoder_and_keeps_its_head():
    from fedsqueeze.algorithms.context import ClientContext, ClientData
    from fedsqueeze.config import TrainConfig

    torch.manual_seed(0)
    model = SmallCNN((1, 8, 8), 10)
    algo = _algo(selector="uniform", target="bytes", budget=0.5, num_clients=10)
    server = algo.init_server(model)
    assert set(server["c"]) == {k for k, _ in model.named_parameters() if k.startswith("encoder.")}
    x, y = torch.randn(20, 1, 8, 8), torch.arange(20) % 10
    ctx = ClientContext(3, 1, 0, ClientData(x, y, lambda: (x[:0], y[:0])), TrainConfig(batch_size=8, lr=0.1),
                        lambda s: model, 0, lambda s: {k: v.clone() for k, v in model.state_dict().items()})
    c_i = {k: torch.full_like(v, 0.5) for k, v in server["c"].items()}
    reply = algo.client_update(ctx, algo.broadcast(server, 1, 0), {"head": {"head.weight": torch.zeros(10, 64),
                                                                              "head.bias": torch.zeros(10)}, "c": c_i})
    assert set(reply.up["update"]) == set(server["weights"]) and not any(k.startswith("head.") for k in reply.up["update"])
    assert reply.metrics["upload_ratio"] <= 0.5 and 0 < reply.metrics["flops_ratio"] < 1
    for k, d in reply.up["control"].items():   # c_i moved exactly where the control delta was sent
        assert torch.equal(reply.state["c"][k], c_i[k] + d)
    sent = sum(int(kept_mask(v).sum()) for v in reply.up["update"].values())
    total = sum(v.numel() for v in reply.up["update"].values())
    assert sent / total == pytest.approx(reply.metrics["upload_ratio"])
    assert set(reply.state["head"]) == {"head.weight", "head.bias"} and reply.state["head"]["head.bias"].abs().sum() > 0
    codec = algo.codec("update", "up", 1)
    payload = codec.encode(reply.up["update"])
    assert len(payload) < 0.55 * 4 * total
    fp16 = SPATL(SPATLParams(), Setup("small_cnn", {}, (1, 8, 8), 10, rounds=1, codec_up="fp16"))
    assert fp16.codec("update", "up", 1) == RowSparse(values="fp16", cols=True)
    assert fp16.codec("control", "up", 1) == RowSparse(values="fp32", cols=True)
    assert fp16.codec("control", "down", 1).codec_id == "fp32"


def test_params_are_validated():
    for bad in ({"budget": 0.0}, {"target": "latency"}, {"selector": "ppo"}, {"aggregation": "median"},
                {"val_fraction": 1.0}, {"control_scale": -1.0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            SPATLParams(**bad)


# ---- end to end ------------------------------------------------------------------------------------
def _cfg(algo, rounds=8, model="small_cnn", **over):
    return digits_config(rounds=rounds, algorithm={"name": algo, **over}, model={"name": model, "options": {}},
                         train={"clients_per_round": 4, "local_epochs": 2, "batch_size": 16, "lr": 0.1},
                         eval={"every": 0, "personal_every": 0})


def test_spatl_learns_digits_and_uploads_less_than_fedavg(tmp_path, digits):
    spatl = fedsqueeze.run(_cfg("spatl", target="bytes", budget=0.3), run_dir=tmp_path / "s", dataset=digits,
                           plot=False)
    fedavg = fedsqueeze.run(_cfg("fedavg"), run_dir=tmp_path / "f", dataset=digits, plot=False)
    last = spatl.history[-1]
    assert last["personal_acc"] > 0.75
    assert spatl.ledger.total("up") < 0.6 * fedavg.ledger.total("up")
    m = last["client_metrics"]
    assert m["upload_ratio"] <= 0.3 + 1e-9 and 0 < m["flops_ratio"] < 1
    # the pruned personal models (the clients' last selections applied to the current encoder) beside
    # the unpruned ones; never-sampled clients count with the unpruned model (FLOPs fraction 1)
    assert last["personal_acc_pruned"] > 0.6 and 0 < last["flops_pruned"] < 1
    assert "personal_acc_pruned" not in fedavg.history[-1]
    # the explicit kept-channel mask travels beside the update (rl selector, the default, since the agent)
    assert {r.kind for r in spatl.ledger} == {"model", "control", "update", "mask"}


def test_spatl_runs_on_resnet20(tmp_path, digits):
    cfg = _cfg("spatl", rounds=2, model="resnet20", step=0.25, budget=0.8)
    cfg["train"]["clients_per_round"] = 2
    res = fedsqueeze.run(cfg, run_dir=tmp_path, dataset=digits, plot=False)
    last = res.history[-1]
    assert last["personal_acc"] > 0.1 and last["client_metrics"]["flops_ratio"] <= 0.8 + 1e-9


# ---- explicit kept mask, pruned personal model ------------------------------------------------------
def test_explicit_mask_averages_a_kept_filter_whose_update_is_zero():
    """16 filters in encoder.0.0 (small CNN). A (n=1) keeps filters 0, 1 and its update of filter 0 is
    exactly zero; B (n=3) keeps 0 and 2. Filter 0 = (1*0 + 3*4)/4 = 3; inferred from zeros it would be 4."""
    from fedsqueeze.codecs.bitmask import BitMask

    algo = _algo()
    x = {"encoder.0.0.bias": torch.ones(16)}
    state = {"weights": x, "c": {"encoder.0.0.bias": torch.zeros(16)}}
    full = {g.layer: torch.ones(g.channels) for g in algo._groups()}

    def reply(client, n, kept, values):
        bias = torch.zeros(16)
        bias[kept] = T(values)
        mask = {**full, "encoder.0.0": torch.zeros(16)}
        mask["encoder.0.0"][kept] = 1.0
        up = {"update": {"encoder.0.0.bias": bias}, "control": {"encoder.0.0.bias": torch.zeros(16)}, "mask": mask}
        wire = {k: algo.codec(k, "up", 1) for k in up}  # through the wire: rowsparse drops the zero filter
        return Reply(client, n, {k: wire[k].decode(wire[k].encode(v)) for k, v in up.items()}, None)

    a, b = reply(0, 1, [0, 1], [0.0, 2.0]), reply(1, 3, [0, 2], [4.0, 6.0])
    out = algo.aggregate(state, 1, 0, [a, b])["weights"]["encoder.0.0.bias"]
    assert out[:4].tolist() == [4.0, 3.0, 7.0, 1.0] and torch.equal(out[4:], torch.ones(12))
    inferred = algo.aggregate(state, 1, 0, [Reply(r.client, r.num_samples, {k: v for k, v in r.up.items()
                                                                             if k != "mask"}, None) for r in (a, b)])
    assert inferred["weights"]["encoder.0.0.bias"][0] == 5.0  # the old zero-pattern inference: B alone
    # the mask is one bit per channel: filters 0, 1 of 16 -> 0b11000000 0b00000000
    assert BitMask().encode_tensor(T([1.0, 1.0] + [0.0] * 14), 0) == bytes([0b11000000, 0])
    assert torch.equal(BitMask().decode_tensor(memoryview(bytes([0b10100000])), (3,), 0), T([1.0, 0.0, 1.0]))
    with pytest.raises(PayloadError):
        BitMask().decode_tensor(memoryview(bytes([0b10100001])), (3,), 0)  # padding bit set


def test_pruned_personal_model_zeroes_the_unkept_channels():
    torch.manual_seed(0)
    model = SmallCNN((1, 8, 8), 10)
    algo = _algo()
    server = algo.init_server(model)
    keep = {g.layer: torch.ones(g.channels, dtype=torch.bool) for g in algo._groups()}
    keep["encoder.0.0"][8:] = False
    head = {k: v for k, v in model.state_dict().items() if k.startswith("head.")}
    slot, w, flops = algo.pruned_personal_model(server, {"head": head, "keep": keep})
    assert slot == "model" and not w["encoder.0.0.weight"][8:].any() and not w["encoder.0.3.weight"][:, 8:].any()
    assert torch.equal(w["encoder.0.0.weight"][:8], server["weights"]["encoder.0.0.weight"][:8])
    assert flops == pytest.approx((9216 / 2 + 73728 / 2 + 8192 + 640) / (9216 + 73728 + 8192 + 640))
    _, w0, f0 = algo.pruned_personal_model(server, None)  # never sampled: the unpruned initial model
    assert f0 == 1.0 and torch.equal(w0["encoder.0.0.weight"], server["weights"]["encoder.0.0.weight"])


def test_compare_table_shows_the_pruned_personal_accuracy_when_a_run_has_one():
    from fedsqueeze.compare.table import display_rows

    base = {"codec_up": "fp32", "codec_down": "fp32", "budget_mb": None, "final_acc": None, "personal_acc": 0.9,
            "mb_total": 12.0, "mb_to_target": None, "x_fewer_bytes": None, "rounds_to_target": None,
            "wall_s_to_target": None}
    rows = [{**base, "run": "spatl", "personal_acc_pruned": 0.875, "flops_pruned": 0.6},
            {**base, "run": "fedper", "personal_acc_pruned": None, "flops_pruned": None}]
    head, body = display_rows(rows, [])
    assert head[4] == "pruned personal acc (FLOPs)" and body[0][4] == "87.50% (60%)" and body[1][4] == "—"
    head, body = display_rows(rows[1:], [])
    assert "pruned personal acc (FLOPs)" not in head and len(body[0]) == len(head)


def test_spatl_rl_resume_equals_the_uninterrupted_run(tmp_path, digits):
    """The agents fine-tuned on the clients live in the client states (safe_io checkpoints); a run cut
    after round 2 and resumed ends exactly as the uninterrupted one."""
    from fedsqueeze.config import from_dict
    from fedsqueeze.engine.simulation import Simulation
    from fedsqueeze.metrics.results import TIMING_FIELDS

    cfg = _cfg("spatl", rounds=3, budget=0.5, agent_episodes=4)
    cfg["train"]["local_epochs"] = 1
    cfg["eval"]["personal_every"] = 1
    cfg = from_dict(cfg)
    full = Simulation(cfg, tmp_path / "full", dataset=digits).run()

    class Crash(Exception):
        pass

    def die(rec):
        if rec["round"] == 2:
            raise Crash()
    with pytest.raises(Crash):
        Simulation(cfg, tmp_path / "cut", dataset=digits, callbacks=[die]).run()
    resumed = Simulation(cfg, tmp_path / "cut", dataset=digits).run(resume=True)

    def strip(history):
        return [{k: v for k, v in rec.items() if k not in TIMING_FIELDS} for rec in history]
    assert strip(resumed.history) == strip(full.history)
    assert resumed.ledger.to_state() == full.ledger.to_state()
    assert all("personal_acc_pruned" in rec for rec in resumed.history)


def test_spatl_rl_over_the_flower_adapter_equals_the_simulation(tmp_path, digits, monkeypatch):
    """Same bytes (the mask message included) and the same server state through the Flower adapter."""
    pytest.importorskip("flwr")
    from flower_kit import FakeGrid, flat_state, set_task_identity

    from fedsqueeze.config import from_dict
    from fedsqueeze.engine.simulation import Simulation
    from fedsqueeze.flower.server_app import FlowerServer

    set_task_identity(monkeypatch)
    cfg = digits_config(rounds=2, data={"source": "digits", "num_clients": 3, "partition": "dirichlet", "alpha": 0.5},
                        train={"clients_per_round": 3, "local_epochs": 1, "batch_size": 16, "lr": 0.1},
                        algorithm={"name": "spatl", "budget": 0.5, "agent_episodes": 4},
                        model={"name": "small_cnn", "options": {}}, eval={"every": 0, "personal_every": 0},
                        engine={"round_timeout": 0.3, "retries": 0, "min_replies": 1})
    sim = Simulation(from_dict(cfg), tmp_path / "sim", dataset=digits)
    ref = sim.run()
    server = FlowerServer(from_dict(cfg), tmp_path / "flower", FakeGrid(cfg, 3), dataset=digits, log=lambda *_: None)
    res = server.run()
    assert res.ledger.to_state() == ref.ledger.to_state() and "mask" in {r.kind for r in res.ledger}
    a, b = flat_state(sim.server_state), flat_state(server.server_state)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
