"""The Flower adapter in process: records, run config, generated app, and the server's round loop over
an in-memory stand-in for Flower's Grid (parity with the simulation engine, dropouts, retries, skips).
The same code over real SuperLink/SuperNode processes: tests/test_flower.py."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("flwr")

from flwr.app import RecordDict  # noqa: E402

from conftest import digits_config  # noqa: E402
from flower_kit import FakeGrid, flat_state, set_task_identity, strip  # noqa: E402
from fedsqueeze.config import from_dict  # noqa: E402
from fedsqueeze.engine.simulation import Simulation  # noqa: E402
from fedsqueeze.errors import ConfigError, PayloadError  # noqa: E402
from fedsqueeze.flower import client_app, records  # noqa: E402
from fedsqueeze.flower.server_app import FlowerServer, TooFewReplies  # noqa: E402
from fedsqueeze.registry import CODECS  # noqa: E402

LOSSY_UP = "topk(fraction=0.1)" if "topk" in CODECS.names() else "fp16"


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    set_task_identity(monkeypatch)


def flower_config(**over) -> dict:
    base = dict(rounds=2, data={"source": "digits", "num_clients": 3, "partition": "dirichlet", "alpha": 0.5},
                train={"clients_per_round": 3, "local_epochs": 1, "batch_size": 16, "lr": 0.1},
                codec={"up": LOSSY_UP, "down": "fp16"}, eval={"every": 1, "personal_every": 0},
                engine={"round_timeout": 0.3, "retries": 0, "min_replies": 1})
    base.update(over)
    return digits_config(**base)


def serve(tmp_path, cfg_dict, grid, digits, name="flower") -> FlowerServer:
    logs: list[str] = []
    server = FlowerServer(from_dict(cfg_dict), tmp_path / name, grid, dataset=digits, log=logs.append)
    server.logs = logs  # type: ignore[attr-defined]
    return server


# ---- records and config ------------------------------------------------------------------------------
def test_payload_bytes_ride_unchanged_with_codec_id_as_stype():
    from fedsqueeze.codecs.spec import make_codec

    p = make_codec("fp16").encode({"w": torch.arange(6.0).reshape(2, 3)}, seed=1)
    rec = records.pack_payloads({"update": p})
    assert rec["update"].stype == "fp16" and rec["update"].dtype == "uint8"
    assert tuple(rec["update"].shape) == (len(p),) and bytes(rec["update"].data) == p
    assert records.unpack_payloads(rec) == {"update": p}
    rec["update"].stype = "fp32"
    with pytest.raises(PayloadError, match="altered"):
        records.unpack_payloads(rec)


def test_experiment_config_round_trips_through_flower_run_config():
    from flwr.common.config import flatten_dict

    raw = from_dict(digits_config(codec={"up": ["topk(fraction=0.1)", "fp16"], "down": {"name": "fp16"}})).to_dict()
    run_config = records.to_run_config(raw, {"run-dir": "/x"})
    for v in flatten_dict(run_config).values():
        assert isinstance(v, (bool, int, float, str))
    experiment, deploy = records.from_run_config(flatten_dict(run_config))
    assert from_dict(experiment).to_dict() == raw and deploy == {"run-dir": "/x"}
    with pytest.raises(ConfigError, match="deploy"):
        records.to_run_config({**raw, "deploy": {}})


def test_generated_app_passes_flowers_own_validation(tmp_path):
    from flwr.cli.config_utils import load_and_validate
    from flwr.common.config import flatten_dict

    from fedsqueeze.flower.app_template import write_app

    cfg = from_dict(flower_config())
    out = write_app(cfg, tmp_path / "app", run_dir="/results")
    config, _ = load_and_validate(out / "pyproject.toml", check_module=True)
    app = config["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "fedsqueeze_app.server_app:app",
                                 "clientapp": "fedsqueeze_app.client_app:app"}
    experiment, deploy = records.from_run_config(flatten_dict(app["config"]))
    assert from_dict(experiment).to_dict() == cfg.to_dict() and deploy == {"run-dir": "/results"}
    readme = (out / "README.md").read_text()
    assert "--root-certificates" in readme and "--ssl-certfile" in readme and "--insecure" not in readme
    insecure = write_app(cfg, tmp_path / "plain", insecure=True)
    assert "--insecure" in (insecure / "README.md").read_text()


# ---- the server's round loop -------------------------------------------------------------------------
def test_same_bytes_and_parameters_as_the_simulation(tmp_path, digits):
    cfg = flower_config()
    sim = Simulation(from_dict(cfg), tmp_path / "sim", dataset=digits)
    ref = sim.run()
    server = serve(tmp_path, cfg, FakeGrid(cfg, 3), digits)
    res = server.run()
    assert res.ledger.to_state() == ref.ledger.to_state()
    assert strip(res.history) == strip(ref.history)
    a, b = flat_state(sim.server_state), flat_state(server.server_state)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert server.dropouts == [] and res.history[-1]["personal_acc"] is None


def test_a_silent_client_is_left_out_and_logged(tmp_path, digits):
    cfg = flower_config(rounds=1)
    grid = FakeGrid(cfg, 3)
    server = serve(tmp_path, cfg, grid, digits)
    server.start()
    grid.silent.add(102)   # crashes after saying its partition
    rec = server.run_round(1)
    ups = {r.client for r in server.ledger if r.direction == "up"}
    downs = {r.client for r in server.ledger if r.direction == "down"}
    assert ups == {0, 1} and downs == {0, 1, 2}
    assert server.dropouts == [(1, 0, 2)] and any("no reply from client(s) [2]" in m for m in server.logs)
    assert rec["global_acc"] is not None

    server = serve(tmp_path, cfg, grid, digits, name="b")   # silent from the start: never mapped
    server.start()
    assert sorted(server.node_of) == [0, 1] and any("missing partitions [2]" in m for m in server.logs)


def test_error_replies_and_offline_nodes_are_dropouts(tmp_path, digits):
    cfg = flower_config(rounds=2)
    grid = FakeGrid(cfg, 3)
    server = serve(tmp_path, cfg, grid, digits)
    server.start()
    grid.failing.add(101)
    server.run_round(1)
    grid.offline.add(100)   # the SuperLink noticed: node 100 is not listed, nothing is sent to it
    server.run_round(2)
    assert server.dropouts == [(1, 0, 1), (2, 0, 0), (2, 0, 1)]
    assert any("client 1 failed: ClientApp crashed" in m for m in server.logs)
    assert any("client(s) [0] have no connected SuperNode" in m for m in server.logs)
    assert grid.sent[-2:] == [(101, "train"), (102, "train")]
    assert {r.client for r in server.ledger if r.round == 2} == {1, 2}


def test_too_few_replies_skip_the_round_or_fail_the_run(tmp_path, digits):
    cfg = flower_config(rounds=1, engine={"round_timeout": 0.3, "retries": 1, "min_replies": 2, "too_few": "skip"})
    grid = FakeGrid(cfg, 3)
    server = serve(tmp_path, cfg, grid, digits)
    server.start()
    grid.silent |= {101, 102}
    before = flat_state(server.server_state)
    rec = server.run_round(1)
    after = flat_state(server.server_state)
    assert all(torch.equal(before[k], after[k]) for k in before)   # nothing half-applied
    assert rec["global_acc"] is not None and any("round 1 skipped" in m for m in server.logs)
    assert any("attempt 2 of 2" in m for m in server.logs)
    # the live client's reply was decoded and counted; the silent ones were not re-sent (same nodes)
    assert [n for n, t in grid.sent if t == "train"] == [100, 101, 102]

    cfg["engine"]["too_few"] = "fail"
    server = serve(tmp_path, cfg, grid, digits, name="fail")
    with pytest.raises(TooFewReplies, match="1 replies, engine.min_replies = 2"):
        server.run()


def test_retry_reaches_a_client_whose_supernode_came_back(tmp_path, digits):
    cfg = flower_config(rounds=1, engine={"round_timeout": 0.3, "retries": 1, "min_replies": 3})
    grid = FakeGrid(cfg, 3)
    server = serve(tmp_path, cfg, grid, digits)
    server.start()
    grid.silent.add(102)

    def restart(g: FakeGrid) -> None:  # after the first push: the SuperNode of partition 2 crashed and came
        g.offline.add(102)             # back under a new node id
        g.add_node(202, 2)
    grid.after_push.append(restart)
    server.run_round(1)
    assert server.node_of[2] == 202 and server.dropouts == []
    assert sorted(r.client for r in server.ledger if r.direction == "up") == [0, 1, 2]
    downs = sorted(r.client for r in server.ledger if r.direction == "down")
    assert downs == [0, 1, 2, 2]  # FedAvg sends one payload down; client 2's went twice


def test_a_late_partition_answer_is_picked_up_without_asking_again(tmp_path, digits):
    cfg = flower_config(rounds=1)
    grid = FakeGrid(cfg, 3)
    grid.slow.add(102)
    server = serve(tmp_path, cfg, grid, digits)
    server.start()
    assert sorted(server.node_of) == [0, 1]
    grid.release()
    server.run_round(1)
    assert server.node_of[2] == 102 and server.dropouts == []
    assert grid.sent.count((102, "query")) == 1 and (102, "train") in grid.sent


def test_nodes_must_match_the_experiment_partition(tmp_path, digits):
    cfg = flower_config(rounds=1)
    grid = FakeGrid(cfg, 3, node_parts={100: 0, 101: 1, 102: 1})
    with pytest.raises(ConfigError, match="both have partition-id=1"):
        serve(tmp_path, cfg, grid, digits).start()
    grid = FakeGrid(cfg, 4)
    with pytest.raises(ConfigError, match="num-partitions=4"):
        serve(tmp_path, cfg, grid, digits, name="b").start()
    with pytest.raises(ConfigError, match="min_replies = 5"):
        serve(tmp_path, flower_config(engine={"min_replies": 5}), grid, digits, name="c")


def test_client_state_stays_in_the_node_context():
    """What a client stores (algorithm state, error-feedback residuals) lives in Context.state."""
    state = RecordDict()
    assert client_app.load_stored(state) is None
    client_app.save_stored(state, {"algo": {"x": torch.ones(2)}, "codec": {}})
    assert torch.equal(client_app.load_stored(state)["algo"]["x"], torch.ones(2))
    client_app.save_stored(state, None)
    assert client_app.load_stored(state) is None


# ---- command line ------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["flower"], ["flower", "app"], ["flower", "local"], ["flower", "certs"]])
def test_flower_commands_have_help(args, capsys):
    from fedsqueeze.cli import main

    with pytest.raises(SystemExit) as e:
        main(args + ["--help"])
    assert e.value.code == 0 and "usage:" in capsys.readouterr().out


def test_flower_app_and_certs_commands_write_files(tmp_path, capsys):
    from fedsqueeze.cli import main

    assert main(["flower", "app", "configs/digits-flower.toml", str(tmp_path / "app"), "--rounds", "1",
                 "--superlink", "10.0.0.5:8000"]) == 0
    text = (tmp_path / "app" / "pyproject.toml").read_text()
    assert 'serverapp = "fedsqueeze_app.server_app:app"' in text and "rounds = 1" in text
    readme = (tmp_path / "app" / "README.md").read_text()
    assert "--superlink 10.0.0.5:8000" in readme and str(tmp_path / "app" / "certs" / "ca.crt") in readme
    assert main(["flower", "certs", str(tmp_path / "certs"), "--hosts", "10.0.0.5,server.example.org"]) == 0
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((tmp_path / "certs" / "server.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert sans.get_values_for_type(x509.DNSName) == ["server.example.org"]


def test_flower_local_needs_one_supernode_per_client(capsys):
    from fedsqueeze.cli import main

    assert main(["flower", "local", "configs/digits-flower.toml", "--nodes", "2"]) == 2
    assert "one SuperNode per client" in capsys.readouterr().err


def test_no_local_worker_pool_on_flower(tmp_path, digits):
    cfg = flower_config(rounds=1, engine={"workers": 2, "round_timeout": 0.3})
    server = serve(tmp_path, cfg, FakeGrid(cfg, 3), digits)
    assert server.cfg.engine.workers == 0
    server.run()
    assert server.pool is None and len(server.history) == 1


# ---- deployment security -------------------------------------------------------------------------------
class HostileGrid(FakeGrid):
    """A FakeGrid whose ``tamper[node]`` rewrites that node's train replies (a hostile or broken client)."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.tamper: dict = {}

    def push_messages(self, messages):
        ids = super().push_messages(messages)
        for mid, msg in zip(ids, messages):
            node = msg.metadata.dst_node_id
            if node in self.tamper and mid in self._ready and msg.metadata.message_type == "train":
                self.tamper[node](self._ready[mid].content)
        return ids


def test_reply_size_cap_is_checked_before_anything_is_copied_or_parsed():
    from fedsqueeze.codecs.spec import make_codec

    p = make_codec("fp32").encode({"w": torch.ones(3)}, seed=0)
    rec = records.pack_payloads({"update": p, "control": p})
    assert records.unpack_payloads(rec, max_bytes=2 * len(p)) == {"update": p, "control": p}
    with pytest.raises(PayloadError, match=f"{2 * len(p):,} payload bytes, more than the {2 * len(p) - 1:,} allowed"):
        records.unpack_payloads(rec, max_bytes=2 * len(p) - 1)


def test_an_oversized_or_malformed_reply_is_refused_and_the_run_goes_on(tmp_path, digits, monkeypatch):
    from flwr.app import Array, ArrayRecord

    from fedsqueeze.wire.payload import OVERHEAD

    cfg = flower_config(rounds=2)
    grid = HostileGrid(cfg, 3)
    server = serve(tmp_path, cfg, grid, digits)
    cap = server.max_reply_bytes
    assert cap == OVERHEAD + 0xFFFF + 8 * (4 * server.runtime.model_numel() + 4096)

    def oversize(content):  # one byte over the cap, garbage that would fail to decode anyway
        content[records.PAYLOADS] = ArrayRecord({"update": Array(dtype="uint8", shape=(cap + 1,), stype="fp32",
                                                                 data=bytes(cap + 1))})
    grid.tamper[101] = oversize
    grid.tamper[102] = lambda content: content.pop(records.META)
    seen: list[int] = []
    peek = records.peek_codec
    monkeypatch.setattr(records, "peek_codec", lambda data: seen.append(len(data)) or peek(data))
    res = server.run()
    assert len(res.history) == 2 and res.history[-1]["global_acc"] is not None
    assert server.dropouts == [(1, 0, 1), (1, 0, 2), (2, 0, 1), (2, 0, 2)]
    assert any(f"client 1 refused: {cap + 1:,} payload bytes, more than the {cap:,} allowed" in m
               for m in server.logs)
    assert any("client 2 refused: reply without" in m for m in server.logs)
    assert seen and max(seen) < cap  # the oversized payload was never even peeked at
    assert {r.client for r in server.ledger if r.direction == "up"} == {0}


def test_tls_is_the_default_and_insecure_an_explicit_opt_out(tmp_path):
    from fedsqueeze.cli import build_parser
    from fedsqueeze.flower.app_template import connection_toml
    from fedsqueeze.flower.local import LocalFederation

    parser = build_parser()
    for argv in (["flower", "app", "c.toml", "out"], ["flower", "local", "c.toml"]):
        assert parser.parse_args(argv).insecure is False and parser.parse_args(argv + ["--insecure"]).insecure
    fed = LocalFederation(tmp_path, 1)
    fed.certs = type("C", (), {"ca": "ca.crt", "cert": "s.pem", "key": "s.key"})()
    assert fed.tls_args("superlink") == ["--ssl-ca-certfile", "ca.crt", "--ssl-certfile", "s.pem", "--ssl-keyfile",
                                         "s.key"]
    assert fed.tls_args("supernode") == ["--root-certificates", "ca.crt"]
    assert LocalFederation(tmp_path, 1, insecure=True).tls_args("supernode") == ["--insecure"]
    assert 'root-certificates = "/x/ca.crt"' in connection_toml("h:1", insecure=False, root_certificates="/x/ca.crt")
    with pytest.raises(Exception, match="SuperNode authentication needs TLS"):
        LocalFederation(tmp_path, 1, insecure=True, auth=True)


def test_supernode_keys_and_the_auth_app(tmp_path, capsys):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    from fedsqueeze.cli import main

    assert main(["flower", "certs", str(tmp_path / "certs"), "--supernode-keys", "2"]) == 0
    assert "2 SuperNode key pair(s)" in capsys.readouterr().out
    for i in range(2):
        private = load_ssh_private_key((tmp_path / "certs" / f"supernode-{i}.key").read_bytes(), None)
        public = load_ssh_public_key((tmp_path / "certs" / f"supernode-{i}.pub").read_bytes())
        assert isinstance(private.curve, ec.SECP384R1) and private.public_key().public_numbers() == \
            public.public_numbers()  # what Flower's `flwr supernode register` and SuperNode accept
        assert (tmp_path / "certs" / f"supernode-{i}.key").stat().st_mode & 0o077 == 0
    assert main(["flower", "app", "configs/digits-flower.toml", str(tmp_path / "app"), "--auth"]) == 0
    readme = (tmp_path / "app" / "README.md").read_text()
    assert "--enable-supernode-auth" in readme and "--auth-supernode-private-key certs/supernode-0.key" in readme
    assert "flwr supernode register certs/supernode-$i.pub fedsqueeze" in readme
    assert main(["flower", "app", "configs/digits-flower.toml", str(tmp_path / "x"), "--auth", "--insecure"]) == 2
    assert "needs TLS" in capsys.readouterr().err
