"""The commands that describe what is there: ``fedsqueeze list``, ``presets`` and ``init`` (a starter config)."""
from __future__ import annotations

from fedsqueeze.cli.output import console as _console
from fedsqueeze.errors import FedsqueezeError


def cmd_list(args) -> int:
    from rich.table import Table

    from fedsqueeze.catalog import CATALOG, PSEUDO_METRICS
    from fedsqueeze.registry import ALL

    console = _console()
    kinds = [args.kind] if args.kind else list(ALL)
    for kind in kinds:
        if kind not in ALL:
            raise FedsqueezeError(f"unknown kind {kind!r}; choose from {', '.join(ALL)}")
        reg = ALL[kind]
        known = CATALOG.get(kind, {})  # built-ins: described without importing them (fedsqueeze.catalog)
        t = Table(title=kind, show_header=False, title_justify="left")
        t.add_column("name", style="bold")
        t.add_column("description")
        if kind == "metrics":
            for name, desc in PSEUDO_METRICS.items():
                t.add_row(name, desc)
        for name in reg.names():
            if name in known and isinstance(reg._entries.get(name), str):
                desc, size = known[name]
            else:
                desc, size = reg.describe(name), None
                if kind == "models":
                    try:
                        size = _param_count(name)
                    except FedsqueezeError:
                        size = None
            if kind == "models":
                desc += (f" [dim]({size:,} parameters on 1x28x28, 10 classes)[/]" if size is not None
                         else " [dim](sequence model: size depends on the vocabulary)[/]")
            t.add_row(name, desc)
        console.print(t)
    return 0


def cmd_presets(args) -> int:
    from fedsqueeze import presets

    names = presets.names()
    width = max(map(len, names), default=0)
    for name in names:
        print(f"{name:<{width}}  {presets.describe(name)}")
    print(f"\nrun one by name: fedsqueeze run {'digits-quick' if 'digits-quick' in names else 'NAME'}; files in {presets.DIR}")
    return 0


def cmd_init(args) -> int:
    from fedsqueeze import presets

    out = presets.write_starter(args.path)
    print(f"wrote {out}; edit it, then: fedsqueeze run {out}")
    return 0


def _param_count(name: str) -> int:
    from fedsqueeze.models.zoo import build_model, count_parameters
    return count_parameters(build_model(name, (1, 28, 28), 10))
