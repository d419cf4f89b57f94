"""``fedsqueeze bench ...``: the benchmark subcommands (engine, codecs, fuzz, kill, badinput, throughput,
vectorize). Each benchmark module is imported only when its command runs, so building the parser
imports no torch."""
from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path


def _main_of(module: str) -> Callable:
    return importlib.import_module(f"fedsqueeze.bench.{module}").main


def _checked(module: str, **ranges: tuple[float, float]) -> Callable:
    """The benchmark's ``main``, after its numeric arguments are range-checked (``check_ranges``) and
    its ``--out`` (if any) checked to be a usable folder."""
    def run(args) -> int:
        check_ranges(args, **ranges)
        if getattr(args, "out", None):
            check_out_folder(Path(args.out))
        return _main_of(module)(args)
    return run


def _entropy_stage(console, updates, settings, label) -> None:
    from fedsqueeze.bench import entropy_stage

    rows = entropy_stage.measure(updates, settings.get("rdq", []))
    if rows:
        entropy_stage.print_rows(console, rows, label)


def check_ranges(args, **ranges: tuple[float, float]) -> None:
    """Each named argument (when given) a finite number in its [low, high], else a one-line error."""
    import math

    from fedsqueeze.errors import ConfigError

    fmt = lambda v: f"{int(v):,}" if float(v).is_integer() else f"{v:g}"  # noqa: E731
    for name, (low, high) in ranges.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        if low is None:  # the benchmark checks the lower end itself, with its own message
            if math.isfinite(value) and value > high:
                raise ConfigError(f"{flag} must be at most {fmt(high)}, got {value!r}")
        elif not (math.isfinite(value) and low <= value <= high):
            raise ConfigError(f"{flag} must be a number in [{fmt(low)}, {fmt(high)}], got {value!r}")


def check_out_folder(out: Path) -> None:
    """An output folder may exist (as a folder) or be creatable: no part of its path is a file."""
    from fedsqueeze.errors import ConfigError

    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise ConfigError(f"--out {out}: {p} is a file, not a folder; choose another --out")
            return


def check_names(text: str, known: list[str], what: str) -> list[str]:
    """The comma-separated names in ``text``; an unknown one is a one-line error with a did-you-mean."""
    import difflib

    from fedsqueeze.errors import ConfigError

    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise ConfigError(f"--{what} {text[:60]!r} names nothing; give comma-separated names: {', '.join(known)}")
    for name in names:
        if name not in known:
            hint = difflib.get_close_matches(name, known, n=1)
            raise ConfigError(f"--{what}: unknown name {name[:60]!r}"
                              + (f" (did you mean {hint[0]!r}?)" if hint else f"; known: {', '.join(known)}"))
    return names


def cmd_bench_codecs(args) -> int:
    from rich.console import Console

    from fedsqueeze.bench import codecs as bench
    from fedsqueeze.bench.capture import capture_updates

    check_ranges(args, dim=(16, 1 << 28), repeats=(1, 1000), warmup=(0, 1000), clients=(1, 1000))
    console = Console(width=160)
    if getattr(args, "speed", False):
        from fedsqueeze.bench import codec_speed, speed

        if not args.codecs or "rdq" in [c.strip() for c in args.codecs.split(",")]:
            codec_speed.main(console, args.speed_params, args.repeats)
        return speed.main(args, console)
    out = Path(args.out)
    check_out_folder(out)
    wanted = None
    if args.codecs is not None:
        from fedsqueeze.registry import CODECS
        wanted = check_names(args.codecs, sorted(CODECS.names()), "codecs")

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
    be.set_defaults(func=_checked("engine", rounds=(1, 10_000), clients_per_round=(1, 100_000)))
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
    bc.add_argument("--speed", action="store_true",
                    help="only speed tables: the entropy coders' encode/decode MB/s on one big Gaussian tensor (rdq "
                         "ans, ctx, gamma; unless --codecs leaves rdq out), then every codec's (--codecs picks ids)")
    bc.add_argument("--speed-params", type=int, default=10_000_000, help="parameters of the --speed tensor")
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
    bf.set_defaults(func=_checked("fuzz", cases=(None, 10**9), seed=(0, 2**63 - 1), jobs=(None, 256),
                                    time_limit=(0.01, 3600), max_numel=(1, 1 << 31), mem_cap_mb=(16, 1 << 20),
                                    max_tensors=(1, 1 << 20)))
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
    bk.set_defaults(func=_checked("kill", points=(None, 10_000), rounds=(None, 10_000), seed=(0, 2**63 - 1)))
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
    bt.set_defaults(func=_checked("throughput", rounds=(None, 10_000), clients_per_round=(1, 100_000),
                                    memory_rounds=(None, 10_000)))
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
    bv.set_defaults(func=_checked("vectorize", clients=(1, 100_000), steps=(1, 100_000), batch=(1, 1 << 20), repeats=(1, 1000)))
