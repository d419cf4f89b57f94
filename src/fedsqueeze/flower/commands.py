"""``fedsqueeze flower app | local | sim | certs``: the command-line side of the Flower adapter (flwr imported lazily)."""
from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

from fedsqueeze.errors import FedsqueezeError


def _config(args):
    from fedsqueeze.config import load_config

    overrides = list(args.set or [])
    if args.rounds is not None:
        overrides.append(f"rounds={args.rounds}")
    return load_config(args.config, overrides)


def cmd_app(args) -> int:
    from fedsqueeze.flower import require_flwr
    from fedsqueeze.flower.app_template import write_app

    host, _, port = args.superlink.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise FedsqueezeError(f"--superlink {args.superlink[:60]!r} must be HOST:PORT with a port in [1, 65535], "
                              "e.g. --superlink 127.0.0.1:8000")
    _check_hosts(host, (host.strip("[]"),))
    require_flwr()
    cfg = _config(args)
    if args.auth and args.insecure:
        raise FedsqueezeError("SuperNode authentication needs TLS (Flower refuses it in plaintext); "
                              "drop --insecure or --auth")
    out = write_app(cfg, args.out_dir, insecure=args.insecure, run_dir=args.run_dir or "",
                    superlink=args.superlink, auth=args.auth,  # the path goes into a TOML comment: one line
                    source=args.config.translate({i: "?" for i in [*range(32), 127]}))
    print(f"wrote the Flower app for {cfg.name!r} to {out}/ (pyproject.toml, fedsqueeze_app/, README.md)")
    mode = "plaintext (--insecure)" if args.insecure else "TLS" + (" + SuperNode authentication" if args.auth else "")
    print(f"{mode}; how to run it: {out / 'README.md'}")
    return 0


def run_local(cfg, nodes: int, out: Path, *, insecure: bool = False, auth: bool = False,
              timeout: float | None = None, workdir: Path | None = None, log=print, on_line=print,
              long_lived: bool = True, node_poll_s: float = 0.1) -> list[dict]:
    """Write the app, start a local federation of ``nodes`` SuperNodes, run, stop; the round history."""
    from fedsqueeze.flower import require_flwr
    from fedsqueeze.flower.local import LocalFederation

    require_flwr()
    if auth and insecure:
        raise FedsqueezeError("SuperNode authentication needs TLS (Flower refuses it in plaintext); "
                              "drop --insecure or --auth")
    if cfg.data.num_clients != nodes:
        raise FedsqueezeError(f"--nodes {nodes} but data.num_clients = {cfg.data.num_clients}: one SuperNode per "
                              f"client; pass --set data.num_clients={nodes} or --nodes {cfg.data.num_clients}")
    return finish_run(cfg, out, workdir, lambda work: LocalFederation(work, nodes, insecure=insecure, auth=auth,
                                                                      log=log, long_lived=long_lived,
                                                                      node_poll_s=node_poll_s),
                      insecure=insecure, timeout=timeout, on_line=on_line)


def finish_run(cfg, out: Path, workdir: Path | None, federation, *, insecure: bool, timeout: float | None,
               on_line) -> list[dict]:
    """Write the app into the work folder, run it on ``federation(work)`` (a ``LocalFederation``), check that
    every round is in ``out``; the round history. The work folder is deleted after a success unless given."""
    from fedsqueeze.flower.app_template import write_app
    from fedsqueeze.metrics.results import read_history

    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="fedsqueeze-flower-")) if own else Path(workdir)
    out = Path(out).resolve()
    app = write_app(cfg, work / "app", insecure=insecure, run_dir=str(out))
    started = time.time()
    ok = False
    try:
        with federation(work) as fed:
            rc = fed.run(app, timeout=timeout, on_line=on_line)
        summary = out / "summary.csv"
        fresh = summary.exists() and summary.stat().st_mtime >= started  # not a previous run's
        history = read_history(out) if fresh else []
        if rc != 0 or not fresh or len(history) != cfg.rounds:
            raise FedsqueezeError(f"the Flower run did not complete (flwr run exit code {rc}, {len(history)} of "
                                  f"{cfg.rounds} rounds in {out}); logs in {work / 'logs'}")
        ok = True
        return history
    finally:
        if own and ok:
            shutil.rmtree(work, ignore_errors=True)


def cmd_local(args) -> int:
    from fedsqueeze.flower.local import interrupt_on_termination

    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
        raise FedsqueezeError(f"--timeout must be a finite number of seconds > 0, got {args.timeout!r}")
    if args.nodes is not None and not 1 <= args.nodes <= 1000:
        raise FedsqueezeError(f"--nodes must be an integer in [1, 1000], got {args.nodes}")
    cfg = _config(args)
    if not args.node_poll >= 0:
        raise FedsqueezeError(f"--node-poll must be >= 0 seconds, got {args.node_poll}")
    nodes = args.nodes if args.nodes is not None else cfg.data.num_clients
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path(cfg.output_dir) / f"{cfg.name}-flower-{stamp}"
    print(f"fedsqueeze on Flower: {cfg.name}, {nodes} SuperNodes on 127.0.0.1, results in {out}", file=sys.stderr)
    try:
        with interrupt_on_termination():
            history = run_local(cfg, nodes, out, insecure=args.insecure, auth=args.auth, timeout=args.timeout,
                                workdir=Path(args.workdir) if args.workdir else None,
                                log=lambda m: print(m, file=sys.stderr), on_line=print,
                                long_lived=not args.per_message_clientapps, node_poll_s=args.node_poll)
    except KeyboardInterrupt:
        print("interrupted; the local federation was stopped", file=sys.stderr)
        return 130
    acc = history[-1].get("global_acc")
    print(f"done: {len(history)} rounds, final accuracy {'—' if acc is None else f'{100 * acc:.2f}%'}, "
          f"{history[-1]['cum_bytes']:,} bytes; run folder: {out}", file=sys.stderr)
    if args.timing:
        print(timing_report(cfg, history))
    return 0


def timing_report(cfg, history: list[dict]) -> str:
    """Deployment round times against the embedded engine's (in process, one torch thread, as `fedsqueeze
    run`) on the same config, one line each and the ratio of the medians; the first round (imports, data
    loading) is reported apart."""
    import statistics

    import torch

    from fedsqueeze.engine.simulation import Simulation

    torch.set_num_threads(1)  # as `fedsqueeze run` and every ClientApp
    with tempfile.TemporaryDirectory(prefix="fedsqueeze-timing-") as tmp:
        sim = Simulation(cfg, Path(tmp) / "sim", progress=lambda rec: None, log=lambda msg: None)
        ref = [rec["round_s"] for rec in sim.run().history]
    dep = [rec["round_s"] for rec in history]
    later = slice(1, None) if len(dep) > 1 else slice(None)
    d, s = statistics.median(dep[later]), statistics.median(ref[later])
    lines = [f"timing ({cfg.name}, {cfg.data.num_clients} clients, {len(dep)} rounds; seconds per round)",
             "  deployment: " + " ".join(f"{x:.2f}" for x in dep),
             "  simulation: " + " ".join(f"{x:.2f}" for x in ref),
             f"  median round{' after the first' if len(dep) > 1 else ''}: deployment {d:.2f} s, simulation "
             f"{s:.2f} s, ratio {d / s if s > 0 else float('inf'):.2f}"]
    return "\n".join(lines)


def cmd_sim(args) -> int:
    from fedsqueeze.flower.local import interrupt_on_termination
    from fedsqueeze.flower.sim import run_sim

    cfg = _config(args)
    nodes = args.supernodes if args.supernodes is not None else cfg.data.num_clients
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path(cfg.output_dir) / f"{cfg.name}-flowersim-{stamp}"
    print(f"fedsqueeze on Flower's Simulation Engine: {cfg.name}, {nodes} virtual SuperNodes, results in {out}",
          file=sys.stderr)
    started = time.perf_counter()
    try:
        with interrupt_on_termination():
            history = run_sim(cfg, nodes, out, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                              ray_address=args.ray_address or "", timeout=args.timeout,
                              workdir=Path(args.workdir) if args.workdir else None,
                              log=lambda m: print(m, file=sys.stderr), on_line=print)
    except KeyboardInterrupt:
        print("interrupted; the SuperLink and the Ray cluster were stopped", file=sys.stderr)
        return 130
    acc = history[-1].get("global_acc")
    print(f"done: {len(history)} rounds in {time.perf_counter() - started:.1f} s, final accuracy "
          f"{'—' if acc is None else f'{100 * acc:.2f}%'}, {history[-1]['cum_bytes']:,} bytes; run folder: {out}",
          file=sys.stderr)
    return 0


def _check_hosts(text: str, hosts: tuple[str, ...]) -> None:
    """Each host is an IP address or a DNS name (letters, digits, '-', '.'; at most 253 characters)."""
    import ipaddress
    import re

    if not hosts:
        raise FedsqueezeError(f"--hosts {text[:60]!r} names no host; give comma-separated names or addresses, "
                              "e.g. --hosts 127.0.0.1,localhost")
    for h in hosts:
        try:
            ipaddress.ip_address(h)
            continue
        except ValueError:
            pass
        if len(h) > 253 or not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                                            r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*", h):
            raise FedsqueezeError(f"--hosts entry {h[:60]!r} is neither an IP address nor a DNS name; give e.g. "
                                  "--hosts 127.0.0.1,localhost,server.example.org")


def cmd_certs(args) -> int:
    from fedsqueeze.flower.tls import make_certificates

    from fedsqueeze.flower.auth import make_supernode_keys

    if args.supernode_keys < 0:
        raise FedsqueezeError(f"--supernode-keys must be >= 0, got {args.supernode_keys}")
    if args.supernode_keys > 1000:
        raise FedsqueezeError(f"--supernode-keys must be at most 1000, got {args.supernode_keys}")
    hosts = tuple(h.strip() for h in args.hosts.split(",") if h.strip())
    _check_hosts(args.hosts, hosts)
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FedsqueezeError(f"{args.out_dir} exists and is not a folder; give a folder for the certificates")
    certs = make_certificates(args.out_dir, hosts)
    print(f"wrote {certs.ca} (CA: --root-certificates for SuperNodes, root-certificates for flwr), "
          f"{certs.cert} and {certs.key} (the SuperLink's --ssl-certfile/--ssl-keyfile) for {', '.join(hosts)}; "
          "valid one day, for tests; use your own CA for real deployments")
    keys = make_supernode_keys(args.out_dir, args.supernode_keys)
    if keys:
        print(f"wrote {len(keys)} SuperNode key pair(s) {keys[0].private.parent}/supernode-<i>.key/.pub: start the "
              "SuperLink with --enable-supernode-auth, register each .pub with `flwr supernode register "
              "supernode-<i>.pub <connection>`, give SuperNode i --auth-supernode-private-key supernode-<i>.key")
    return 0


def add_parser(sub) -> None:
    f = sub.add_parser("flower", help="run experiments on Flower's Deployment or Simulation Engine (needs fedsqueeze[flower])",
                       description="Real deployments on Flower: write a Flower app for an experiment, or run one "
                                   "on a local federation (SuperLink + SuperNodes on 127.0.0.1).")
    fsub = f.add_subparsers(dest="flower", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("config", help="experiment TOML file")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
        p.add_argument("--rounds", type=int, help="number of rounds (shortcut for --set rounds=N)")
        p.add_argument("--insecure", action="store_true",
                       help="plaintext instead of TLS (only for tests on a trusted network such as 127.0.0.1)")
        p.add_argument("--auth", action="store_true",
                       help="SuperNode authentication: only SuperNodes whose public key was registered may join "
                            "(needs TLS)")

    a = fsub.add_parser("app", help="write a ready Flower app for an experiment config",
                        description="Write OUT_DIR/pyproject.toml ([tool.flwr.app] with the experiment config), "
                                    "the ServerApp/ClientApp modules and a README with the commands to run it.")
    common(a)
    a.add_argument("out_dir", help="folder for the Flower app")
    a.add_argument("--superlink", default="127.0.0.1:8000", help="SuperLink address host:port for the README")
    a.add_argument("--run-dir", help="results folder on the SuperLink host (default runs/<name>-flower)")
    a.set_defaults(func=cmd_app)

    lo = fsub.add_parser("local", help="run an experiment on a local Flower federation (127.0.0.1)",
                         description="Start a SuperLink and N SuperNodes on 127.0.0.1 (free ports, TLS with a "
                                     "throw-away CA unless --insecure), run the experiment with `flwr run`, stream "
                                     "its progress and stop every process started (also on Ctrl-C and errors).")
    common(lo)
    lo.add_argument("--nodes", type=int, help="number of SuperNodes = data.num_clients (default: data.num_clients)")
    lo.add_argument("--out", help="run directory (default <output_dir>/<name>-flower-<timestamp>)")
    lo.add_argument("--timeout", type=float, help="give up after this many seconds")
    lo.add_argument("--workdir", help="keep Flower's home, certificates, app and logs here (default: a temp "
                                      "folder, deleted after a successful run)")
    lo.add_argument("--per-message-clientapps", action="store_true",
                    help="Flower's default: a fresh ClientApp process per message (slow; default: one long-lived "
                         "ClientApp process per SuperNode, --isolation process)")
    lo.add_argument("--node-poll", type=float, default=0.1, metavar="S",
                    help="an idle SuperNode asks the SuperLink for work every S seconds (default 0.1 on loopback; "
                         "0 = Flower's fixed 3 s)")
    lo.add_argument("--timing", action="store_true",
                    help="afterwards run the same config in the embedded engine and print both round times")
    lo.set_defaults(func=cmd_local)

    si = fsub.add_parser("sim", help="run an experiment on Flower's Simulation Engine (Ray; needs fedsqueeze[sim])",
                         description="Run the same ServerApp/ClientApp on Flower's Simulation Engine: a SuperLink in "
                                     "simulation mode on 127.0.0.1 and virtual SuperNodes whose ClientApps run in "
                                     "Ray actors (this machine, or a Ray cluster with --ray-address). Same payload "
                                     "bytes as `fedsqueeze run`.")
    si.add_argument("config", help="experiment TOML file")
    si.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    si.add_argument("--rounds", type=int, help="number of rounds (shortcut for --set rounds=N)")
    si.add_argument("--supernodes", type=int, metavar="N",
                    help="virtual SuperNodes = data.num_clients (default: data.num_clients)")
    si.add_argument("--num-cpus", type=int, metavar="C", help="CPUs per ClientApp (Ray resource; default 2)")
    si.add_argument("--num-gpus", type=float, metavar="G", help="GPUs per ClientApp (Ray resource; default 0)")
    si.add_argument("--ray-address", metavar="HOST:PORT",
                    help="join this Ray cluster (started with `ray start --head`) instead of a private one")
    si.add_argument("--out", help="run directory (default <output_dir>/<name>-flowersim-<timestamp>)")
    si.add_argument("--timeout", type=float, help="give up after this many seconds")
    si.add_argument("--workdir", help="keep Flower's home, the app and the logs here (default: a temp folder, "
                                      "deleted after a successful run)")
    si.set_defaults(func=cmd_sim)

    c = fsub.add_parser("certs", help="a throw-away CA and SuperLink certificate for trying TLS",
                        description="Write OUT_DIR/ca.crt, server.pem and server.key: a one-day test CA and a "
                                    "SuperLink certificate for the given hosts. Use your own CA for real deployments.")
    c.add_argument("out_dir", help="folder for the certificates")
    c.add_argument("--hosts", default="127.0.0.1,localhost",
                   help="comma-separated IP addresses / DNS names the SuperLink is reached at")
    c.add_argument("--supernode-keys", type=int, default=0, metavar="N",
                   help="also write N SuperNode authentication key pairs (supernode-<i>.key / .pub)")
    c.set_defaults(func=cmd_certs)
