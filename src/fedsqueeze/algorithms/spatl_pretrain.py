"""``fedsqueeze spatl pretrain-agent CONFIG --out FILE``: pre-train SPATL's selection agent on a federation.

As in the paper (the agent is pre-trained, then fine-tuned on each client), the agent first learns on
a few clients of the configured federation: each of ``--clients`` clients (a seeded choice) trains the
configured model exactly as in a SPATL round (its validation split and gradient control), from the
run's initial weights or, with ``--rounds R``, from the encoder, heads and control variates after R
federated rounds of the config without pruning (``selector = "none"``, a throw-away run: models that
have learned something make selection problems whose accuracy moves with the keep), which gives one
salient-selection problem per client; the agent then
runs PPO episodes on those problems, ``batch`` episodes per client in turn, until each client has had
``--episodes``. It starts from ``algorithm.agent`` when that is set (to continue a pre-training), else
from the seeded init. The file (``engine.safe_io``, no pickle) is what ``algorithm.agent`` reads.
"""
from __future__ import annotations

import time
from pathlib import Path

from fedsqueeze.errors import ConfigError


def pretrain_agent(cfg, out: str | Path, *, clients: int = 4, episodes: int = 64, rounds: int = 0, dataset=None,
                   log=print) -> dict:
    """Pre-train and save; returns ``{"clients": [...], "first": mean reward of each client's first
    batch, "last": of its last batch, "seconds": wall time}``."""
    import torch

    from fedsqueeze.algorithms.spatl import SPATL
    from fedsqueeze.algorithms.spatl_agent_io import save_agent
    from fedsqueeze.engine.runtime import Runtime
    from fedsqueeze.engine.simulation import build_partition, load_dataset
    from fedsqueeze.seeding import derive_seed, torch_generator

    if cfg.algorithm_name != "spatl":
        raise ConfigError(f"spatl pretrain-agent needs a SPATL config (algorithm.name = \"spatl\"), "
                          f"not {cfg.algorithm_name!r}")
    if clients < 1 or episodes < 1 or rounds < 0:
        raise ConfigError("spatl pretrain-agent: --clients and --episodes must be at least 1, --rounds at least 0")
    t0 = time.perf_counter()
    dataset = dataset if dataset is not None else load_dataset(cfg)
    runtime = Runtime(cfg, dataset, build_partition(cfg, dataset))
    algo: SPATL = runtime.algo  # type: ignore[assignment]
    n = cfg.data.num_clients
    order = torch.randperm(n, generator=torch_generator(cfg.seed, "spatl-pretrain")).tolist()
    chosen = [c for c in order if runtime.num_samples(c) >= 2][:clients]
    states: dict[int, dict | None] = {c: None for c in chosen}
    if rounds:
        server, states = _warm_up(cfg, rounds, dataset, chosen, log)
    else:
        model = runtime.module()
        model.load_state_dict(runtime.device_initial_weights(), strict=False)
        server = algo.init_server(model)
    down = algo.broadcast(server, rounds + 1, 0)
    problems = []
    for c in chosen:
        ctx, d, stored, _ = runtime.open_client(c, rounds + 1, 0, down, {"algo": states[c]} if states[c] else None)
        problem = algo.train_client(ctx, d, stored.get("algo"))[-1]
        problem.score = problem.score.detached()
        problems.append(problem)
    agent = algo.new_agent()
    batch = agent.config.batch
    gen = torch.Generator()
    gen.manual_seed(derive_seed(cfg.seed, "spatl-pretrain-episodes"))
    seen: dict[int, list[float]] = {c: [] for c in chosen}
    done = 0
    while done < episodes:
        k = min(batch, episodes - done)
        for c, problem in zip(chosen, problems):
            seen[c] += agent.finetune(problem, k, gen)
        done += k
    save_agent(out, agent.weights(), agent.config)
    first = {c: sum(r[:batch]) / len(r[:batch]) for c, r in seen.items()}
    last = {c: sum(r[-batch:]) / len(r[-batch:]) for c, r in seen.items()}
    for c in chosen:
        log(f"client {c}: mean reward {first[c]:.4f} (first {batch} episodes) -> {last[c]:.4f} (last {batch})")
    secs = time.perf_counter() - t0
    log(f"wrote {out} ({len(chosen)} clients x {episodes} episodes, {secs:.1f} s)")
    return {"clients": chosen, "first": first, "last": last, "seconds": secs}


def _warm_up(cfg, rounds: int, dataset, chosen: list[int], log) -> tuple[dict, dict[int, dict | None]]:
    """Server state and the chosen clients' states after ``rounds`` rounds of the config, unpruned."""
    import tempfile

    from fedsqueeze.config import from_dict
    from fedsqueeze.engine.simulation import Simulation

    raw = cfg.to_dict()
    raw["rounds"] = rounds
    raw["algorithm"] = {**raw["algorithm"], "selector": "none"}
    raw["eval"] = {**raw.get("eval", {}), "every": 0, "personal_every": 0}
    log(f"warming up: {rounds} rounds of the federation without pruning ...")
    with tempfile.TemporaryDirectory() as tmp:
        sim = Simulation(from_dict(raw), Path(tmp) / "warmup", dataset=dataset)
        sim.run()
        states = {c: (sim.store.get(c) or {}).get("algo") for c in chosen}
        return sim.server_state, states


def cmd_pretrain(args) -> int:
    from fedsqueeze.config import load_config

    cfg = load_config(args.config, args.set or [])
    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"--out {args.out} is a folder; give a file name, e.g. {out / 'agent.fsq'}")
    pretrain_agent(cfg, out, clients=args.clients, episodes=args.episodes, rounds=args.rounds)
    return 0


def add_parser(sub) -> None:
    s = sub.add_parser("spatl", help="SPATL tools (pre-train the salient-selection agent)",
                       description="SPATL's reinforcement-learning selection agent.")
    ssub = s.add_subparsers(dest="spatl", required=True, metavar="ACTION")
    p = ssub.add_parser("pretrain-agent", help="pre-train the agent on a federation and save it",
                        description="Train a few clients of a SPATL config from the initial weights, run PPO "
                                    "episodes on their selection problems, save the agent (set "
                                    "algorithm.agent = FILE to start every client from it).")
    p.add_argument("config", help="SPATL experiment TOML file or preset name, e.g. fmnist-spatl")
    p.add_argument("--out", required=True, help="the agent file to write")
    p.add_argument("--clients", type=int, default=4, help="clients to pre-train on (default 4)")
    p.add_argument("--episodes", type=int, default=64, help="PPO episodes per client (default 64)")
    p.add_argument("--rounds", type=int, default=0,
                   help="first run this many federated rounds without pruning, and pre-train on the clients' "
                        "models from there (default 0: from the initial weights)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.set_defaults(func=cmd_pretrain)
