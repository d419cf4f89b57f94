#!/usr/bin/env python3
"""rdq's two coders on real FedAvg updates: the paper's Elias-γ run-length code against ANS, at the same
quantiser (the same step, so the same levels and the same distortion), and the step the D + λR vote picks.

Trains the first round's clients of a preset (FedAvg from the seeded initial model, the preset's local
recipe) and encodes every client's update with ``rdq(step=u, coder=...)`` for absolute steps u (one step
for every layer, the paper's setting) and for the per-tensor normalised steps the suites use. Prints, per
step: bits per parameter of each coder (whole payloads, headers included) and the γ/ANS size ratio.

    PYTHONPATH=src python scripts/rdq_gamma_vs_ans.py fmnist-mlp [--clients 10] [--lam 1e-7]
"""
from __future__ import annotations

import argparse
import statistics

from fedsqueeze.codecs.rdq import RDQ, vote_step
from fedsqueeze.config import load_config
from fedsqueeze.engine.sampling import sample_clients
from fedsqueeze.engine.simulation import Simulation

STEPS = [2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3]
NORMALISED = [1.0, 2.0, 4.0]


def client_updates(preset: str, clients: int, run_dir: str) -> list[dict]:
    cfg = load_config(preset)
    sim = Simulation(cfg, run_dir)
    rt = sim.runtime
    model = rt.build("model")
    model.load_state_dict(rt.initial_weights("model"), strict=False)
    down = rt.algo.broadcast(rt.algo.init_server(model), 1, 0)
    k = min(clients, cfg.data.num_clients)
    out = []
    for c in sample_clients(cfg.data.num_clients, k, seed=cfg.seed, rnd=1):
        ctx, d, stored, _ = rt.open_client(int(c), 1, 0, down, None)
        out.append(rt.algo.client_update(ctx, d, stored.get("algo")).up["update"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("preset")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--lam", type=float, default=1e-7)
    ap.add_argument("--run-dir", default="/tmp/rdq_gamma_vs_ans")
    a = ap.parse_args()
    ups = client_updates(a.preset, a.clients, a.run_dir)
    d = sum(t.numel() for t in ups[0].values())
    print(f"{a.preset}: {len(ups)} client updates of {d} parameters (round 1)")
    print(f"{'quantiser':<28}{'γ bits/param':>14}{'ANS bits/param':>16}{'γ / ANS':>10}")
    old = dict(normalize=False, dead_zone=0.0, alloc="one")  # the settings this table was made with
    rows = [(f"absolute step {u:g}", dict(old, step=u)) for u in STEPS]
    rows += [(f"normalised step {s:g}·RMS", dict(old, step=s, normalize=True)) for s in NORMALISED]
    for label, opts in rows:
        g = [8 * len(RDQ(coder="gamma", **opts).encode(up)) / d for up in ups]
        n = [8 * len(RDQ(coder="ans", **opts).encode(up)) / d for up in ups]
        ratios = [x / y for x, y in zip(g, n)]
        print(f"{label:<28}{statistics.mean(g):>14.3f}{statistics.mean(n):>16.3f}"
              f"{min(ratios):>6.2f}–{max(ratios):.2f}")
    votes = [vote_step(up, STEPS, a.lam) for up in ups]
    print(f"D + λR votes (γ coder, λ = {a.lam:g}): " + ", ".join(f"{v:g}" for v in votes))


if __name__ == "__main__":
    main()
