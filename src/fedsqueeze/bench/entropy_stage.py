"""How close the entropy-coding stage of ``rdq`` (ANS via constriction) comes to the empirical
entropy of the symbols it codes: coded bits (count model included) / (count × empirical entropy)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedsqueeze.codecs.entropy import encode_symbols, entropy_bits
from fedsqueeze.codecs.rdq import RDQ
from fedsqueeze.codecs.spec import make_codec


def measure(updates: Sequence[dict[str, torch.Tensor]], specs: Sequence[str]) -> list[dict]:
    rows = []
    for spec in specs:
        codec = make_codec(spec)
        if not isinstance(codec, RDQ) or codec.coder != "ans":
            continue
        coded = ideal = 0.0
        symbols = 0
        for up in updates:
            for t in up.values():
                if not t.is_floating_point() or not t.numel():
                    continue
                x = t.detach().to(torch.float32).reshape(-1).clone()
                q = codec.quantize(x, codec._unit(x), 0).numpy()
                coded += 8 * len(encode_symbols(q))
                ideal += entropy_bits(q)
                symbols += len(q)
        rows.append({"codec": spec, "symbols": symbols, "entropy_bits": ideal, "coded_bits": coded,
                     "overhead_pct": 100 * (coded / ideal - 1) if ideal else float("nan")})
    return rows


def print_rows(console, rows: list[dict], label: str) -> None:
    from rich.table import Table

    t = Table(title=f"entropy stage (rdq, ANS) on {label}: coded size vs empirical entropy of its symbols")
    for col in ("codec", "symbols", "entropy (bits/symbol)", "coded (bits/symbol)", "overhead"):
        t.add_column(col, justify="right")
    for r in rows:
        n = max(r["symbols"], 1)
        t.add_row(r["codec"], f"{r['symbols']:,}", f"{r['entropy_bits'] / n:.4f}", f"{r['coded_bits'] / n:.4f}",
                  f"{r['overhead_pct']:+.3f}%")
    console.print(t)
    worst = max((r["overhead_pct"] for r in rows if np.isfinite(r["overhead_pct"])), default=float("nan"))
    console.print(f"worst overhead {worst:+.3f}% (target: within 0.5%; per-tensor count models included)")
