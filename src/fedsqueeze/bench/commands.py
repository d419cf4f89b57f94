"""``fedsqueeze bench ...``: the benchmark subcommands (engine, codecs, fuzz, kill, badinput, throughput,
vectorize). Each benchmark module is imported only when its command runs, so building the parser
imports no torch."""
from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path


def _main_of(module: str) -> Callable:
    return importlib.import_module(f"fedsqueeze.bench.{module}").main


def _entropy_stage(console, updates, settings, label) -> None:
    from fedsqueeze.bench import entropy_stage

    rows = entropy_stage.measure(updates, settings.get("rdq", []))
    if rows:
        entropy_stage.print_rows(console, rows, label)


def cmd_bench_codecs(args) -> int:
    from rich.console import Console

    from fedsqueeze.bench import codecs as bench
    from fedsqueeze.bench.capture import capture_updates

    console = Console(width=160)
    out = Path(args.out)
    wanted = [c.strip() for c in args.codecs.split(",") if c.strip()] if args.codecs else None

    def settings(updates):
        return {k: v for k, v in bench.default_settings(updates).items() if wanted is None or k in wanted}

    if args.source in ("real", "both"):
        console.print(f"capturing real updates: FedAvg on {args.dataset}, CNN, {args.warmup} warm-up rounds ...")
        updates = capture_updates(dataset=args.dataset, warmup=args.warmup, clients=args.clients,
                                  data_dir=args.data_dir or "", cache=out / "updates.pt")
        chosen = settings(updates)
        bench.run(updates, "real", out, settings=chosen, repeats=args.repeats, console=console)
        _entropy_stage(console, updates, chosen, "real")
    if args.source in ("laplace", "both"):
        updates = bench.synthetic_laplace(args.dim)
        chosen = settings(updates)
        bench.run(updates, "laplace", out, settings=chosen, repeats=args.repeats, console=console)
        _entropy_stage(console, updates, chosen, "laplace")
    return 0


def add_parser(sub) -> None:
    b = sub.add_parser("bench", help="benchmarks (engine speed, codecs, vectorised clients)", description="Benchmarks.")
    bsub = b.add_subparsers(dest="bench", required=True, metavar="BENCH")
    be = bsub.add_parser("engine", help="engine wall time per round vs a plain PyTorch loop",
                         description="FedAvg on Fashion-MNIST: the engine vs a plain PyTorch loop doing the same "
                                     "SGD steps in the same process, alternated, medians and ratio.")
    be.add_argument("--models", default="mlp,cnn", help="comma-separated model names (default mlp,cnn)")
    be.add_argument("--rounds", type=int, default=5, help="measured rounds per side and model (default 5)")
    be.add_argument("--clients-per-round", type=int, default=10)
    be.add_argument("--dataset", default="fashion_mnist")
    be.add_argument("--data-dir")
    be.add_argument("--device", default="cpu", help="where both sides compute: cpu (default), cuda, cuda:N, mps, auto")
    be.add_argument("--out", default="runs/bench-engine", help="folder for the CSV")
    be.set_defaults(func=lambda a: _main_of("engine")(a))
    bc = bsub.add_parser("codecs", help="rate, distortion and speed of every codec vs the rate-distortion limit",
                         description="Every codec across its settings on real FedAvg updates (Fashion-MNIST, CNN) and "
                                     "on synthetic Laplace vectors: bits/parameter (headers included), NMSE, encode and "
                                     "decode MB/s, the Gaussian and Blahut-Arimoto limits; table, CSV and R-D plot.")
    bc.add_argument("--source", choices=["real", "laplace", "both"], default="both")
    bc.add_argument("--codecs", help="comma-separated codec ids (default: all registered)")
    bc.add_argument("--dataset", default="fashion_mnist")
    bc.add_argument("--data-dir")
    bc.add_argument("--warmup", type=int, default=3, help="FedAvg rounds before capturing updates")
    bc.add_argument("--clients", type=int, default=3, help="client updates captured")
    bc.add_argument("--dim", type=int, default=1_000_000, help="Laplace vector length")
    bc.add_argument("--repeats", type=int, default=5)
    bc.add_argument("--out", default="runs/bench-codecs")
    bc.set_defaults(func=cmd_bench_codecs)
    bf = bsub.add_parser("fuzz", help="hostile payloads against the decoders: only our own errors allowed",
                         description="Mutated payloads of every codec (truncation, bit flips, random bytes, frame "
                                     "length fields, body bytes and inflated varints re-framed with a valid CRC, "
                                     "inflated shapes, hostile header fields and codec configs, swapped codec ids, "
                                     "spliced bodies) through the server-side decode path, in worker processes with "
                                     "a per-case time limit, a watchdog and a memory cap. Prints per-codec counts, "
                                     "failures, the slowest case and the peak extra memory; exit 1 on any failure.")
    bf.add_argument("--cases", type=int, default=100_000,
                    help="cases PER CODEC (default 100,000; the total is this times the number of codecs)")
    bf.add_argument("--codecs", help="comma-separated codec ids (default: all registered)")
    bf.add_argument("--seed", type=int, default=0)
    bf.add_argument("--jobs", type=int, default=1, help="worker processes running cases in parallel (default 1)")
    bf.add_argument("--time-limit", type=float, default=1.0,
                    help="seconds per case before it counts as a hang (default 1)")
    bf.add_argument("--max-numel", type=int, default=1 << 22, help="element cap of the decoder")
    bf.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="what the time limit counts: wall-clock seconds (default) or the worker's CPU seconds "
                         "(for a loaded, shared machine; 10x the limit in wall time still fails a case)")
    bf.add_argument("--max-tensors", type=int, default=1024,
                    help="tensors the receiver accepts per payload (default 1,024)")
    bf.add_argument("--mem-cap-mb", type=int, default=256,
                    help="address space a worker may add to its size at start (MB, default 256); beyond it is a "
                         "failure")
    bf.set_defaults(func=lambda a: _main_of("fuzz")(a))
    bk = bsub.add_parser("kill", help="SIGKILL a run at random points, resume each time: metrics must be identical",
                         description="A small run (digits, SCAFFOLD, error-feedback uplink, simulated client faults) is "
                                     "killed with SIGKILL at random points — inside checkpoint and client-state writes, "
                                     "between a round's metrics and its checkpoint, or after a random delay — and "
                                     "resumed each time; some latest checkpoints are also truncated. Every finished run "
                                     "must match an uninterrupted one bit for bit (metrics, ledger, rejections, server "
                                     "state). Exit 1 otherwise.")
    bk.add_argument("--points", type=int, default=20, help="kills to land (default 20)")
    bk.add_argument("--rounds", type=int, default=6, help="rounds per run (default 6)")
    bk.add_argument("--seed", type=int, default=0, help="seed of the run and of the kill points")
    bk.add_argument("--out", help="keep the run folders here (default: a temporary folder, removed)")
    bk.add_argument("--quiet", action="store_true", help="only the result lines")
    bk.set_defaults(func=lambda a: _main_of("kill")(a))
    bb = bsub.add_parser("badinput", help="bad configs, options and data files: each must give one clean error line",
                         description="Run the table of bad inputs (fedsqueeze.bench.badinput.CASES: unknown names, "
                                     "out-of-range and mistyped values, malformed TOML and --set, bad codec specs, "
                                     "missing or corrupt data files, bad resumes) through this command line; print "
                                     "how many gave exactly one 'error:' line naming the problem and the fix, exit "
                                     "code 2 and no traceback.")
    bb.add_argument("--verbose", action="store_true", help="also print every case with its error line")
    bb.set_defaults(func=lambda a: _main_of("badinput")(a))
    bt = bsub.add_parser("throughput", help="client updates/s (engine with 0/1/2 workers vs plain PyTorch) and "
                                            "peak RSS vs total clients",
                         description="Speed: FedAvg on Fashion-MNIST, the plain PyTorch loop and the engine in each "
                                     "worker mode, interleaved; medians of client updates/s and ratios. Memory: FedPer "
                                     "with a stored head per client, peak RSS of fresh subprocesses for each total "
                                     "number of clients and clients per round. One torch thread per process.")
    bt.add_argument("--models", default="mlp,cnn", help="comma-separated model names (default mlp,cnn)")
    bt.add_argument("--rounds", type=int, default=5, help="measured rounds per side and model (default 5)")
    bt.add_argument("--workers", default="0,1,2", help="engine worker counts, 0 = in process (default 0,1,2)")
    bt.add_argument("--clients-per-round", type=int, default=10)
    bt.add_argument("--dataset", default="fashion_mnist")
    bt.add_argument("--data-dir")
    bt.add_argument("--memory-clients", default="1000,10000", help="total clients per memory run (default 1000,10000)")
    bt.add_argument("--memory-per-round", default="10,50", help="clients per round in the memory runs (default 10,50)")
    bt.add_argument("--memory-rounds", type=int, default=3, help="rounds per memory run (default 3)")
    bt.add_argument("--device", default="cpu", help="where the speed runs compute: cpu (default), cuda, cuda:N, mps, "
                    "auto (memory runs stay on the CPU)")
    bt.add_argument("--skip-speed", action="store_true", help="memory only")
    bt.add_argument("--skip-memory", action="store_true", help="speed only")
    bt.add_argument("--out", default="runs/bench-throughput", help="folder for throughput.csv and memory.csv")
    bt.set_defaults(func=lambda a: _main_of("throughput")(a))
    bv = bsub.add_parser("vectorize", help="local training of N clients, sequential vs vectorised (engine.vectorize)",
                         description="The same clients' local SGD on synthetic 1x28x28 data, the sequential loop vs "
                                     "torch.func.vmap (fedsqueeze.engine.vectorized), alternated; medians of client-steps/s, "
                                     "the ratio and max|dw|.")
    bv.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cpu (default cpu)")
    bv.add_argument("--model", default="mlp", help="mlp, cnn or mlp,cnn (default mlp)")
    bv.add_argument("--clients", type=int, help="clients (default 100 for mlp, 50 for cnn)")
    bv.add_argument("--steps", type=int, default=15, help="local SGD steps per client (default 15)")
    bv.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    bv.add_argument("--repeats", type=int, default=3, help="timed repeats per side (default 3)")
    bv.set_defaults(func=lambda a: _main_of("vectorize")(a))
