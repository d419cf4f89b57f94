"""How close the entropy-coding stage of ``rdq`` comes to the empirical entropy of the symbols it codes.

Two figures per rdq setting with ``coder="ans"`` or ``"ctx"``:

- ``stage``: coded bits of the symbols alone (count models included) / (count × empirical order-0
  entropy H0), summed over the float tensors — the ANS stage on its own (``ans`` only);
- ``whole``: the *whole payload* (wire header, tensor specs, per-tensor steps, mode tags, tables)
  / Σ n·H0 of every tensor's symbols. Small tensors (biases) pay more for a count table than for
  their symbols; the ``ctx`` coder's per-tensor fallback (constant / raw / γ / order-0 / context
  model, the cheapest) keeps them cheap, and its context model goes below H0 on the large ones;
- ``body``: the same without the wire header (codec name, JSON config, tensor specs: ~150 bytes,
  0.5% of a 200 k-parameter update at 1.2 bits/parameter).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedsqueeze.codecs.entropy import encode_symbols, entropy_bits
from fedsqueeze.codecs.rdq import RDQ
from fedsqueeze.codecs.spec import make_codec
from fedsqueeze.seeding import derive_seed
from fedsqueeze.wire.payload import unpack


def measure(updates: Sequence[dict[str, torch.Tensor]], specs: Sequence[str]) -> list[dict]:
    rows = []
    for spec in specs:
        codec = make_codec(spec)
        if not isinstance(codec, RDQ) or codec.coder not in ("ans", "ctx") or codec.alloc != "one":
            continue
        coded = ideal = whole = body = 0.0
        symbols = 0
        for up in updates:
            payload = codec.encode(up, seed=0)
            whole += 8 * len(payload)
            body += 8 * len(unpack(payload)[1])
            for i, t in enumerate(up.values()):
                if not t.is_floating_point() or not t.numel():
                    continue
                x = t.detach().to(torch.float32).reshape(-1).clone()
                q = codec.quantize(x, codec._unit(x), derive_seed(0, i)).numpy()
                if codec.coder == "ans":
                    coded += 8 * len(encode_symbols(q))
                ideal += entropy_bits(q)
                symbols += len(q)
        rows.append({"codec": spec, "symbols": symbols, "entropy_bits": ideal,
                     "coded_bits": coded if codec.coder == "ans" else float("nan"), "payload_bits": whole,
                     "overhead_pct": 100 * (coded / ideal - 1) if ideal and codec.coder == "ans" else float("nan"),
                     "payload_pct": 100 * (whole / ideal - 1) if ideal else float("nan"),
                     "body_pct": 100 * (body / ideal - 1) if ideal else float("nan")})
    return rows


def print_rows(console, rows: list[dict], label: str) -> None:
    from rich.table import Table

    t = Table(title=f"entropy stage (rdq) on {label}: coded size vs the order-0 entropy H0 of its symbols")
    for col in ("codec", "symbols", "H0 (bits/symbol)", "stage (bits/symbol)", "stage vs H0",
                "whole payload (bits/symbol)", "payload vs H0", "body vs H0"):
        t.add_column(col, justify="right")
    for r in rows:
        n = max(r["symbols"], 1)
        stage = "—" if np.isnan(r["coded_bits"]) else f"{r['coded_bits'] / n:.4f}"
        over = "—" if np.isnan(r["overhead_pct"]) else f"{r['overhead_pct']:+.3f}%"
        t.add_row(r["codec"], f"{r['symbols']:,}", f"{r['entropy_bits'] / n:.4f}", stage, over,
                  f"{r['payload_bits'] / n:.4f}", f"{r['payload_pct']:+.3f}%", f"{r['body_pct']:+.3f}%")
    console.print(t)
    worst = max((r["overhead_pct"] for r in rows if np.isfinite(r["overhead_pct"])), default=float("nan"))
    console.print(f"worst ANS-stage overhead {worst:+.3f}% (target: within 0.5%; per-tensor count models included); "
                  "'whole payload' counts every byte on the wire (headers, steps, mode tags, tables)")
