"""`fedsqueeze list` describes the built-in parts from fedsqueeze.catalog without importing them or
torch; the catalog must match the code (regenerate with `python -m fedsqueeze.catalog`)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fedsqueeze.catalog import CATALOG, build

ROOT = Path(__file__).resolve().parent.parent


def test_catalog_matches_the_code():
    fresh = build()
    stale = [(kind, name) for kind, entries in CATALOG.items() for name, value in entries.items()
             if fresh.get(kind, {}).get(name) != value]
    assert not stale, f"fedsqueeze/catalog.py is stale for {stale}; run `python -m fedsqueeze.catalog`"
    assert CATALOG["models"]["mlp"] == (fresh["models"]["mlp"][0], 199_210)
    assert CATALOG["models"]["char_lstm"][1] is None and "mse" in CATALOG["losses"]


def test_list_does_not_import_torch_and_prints_what_the_code_says():
    code = ("import sys; from fedsqueeze.cli import main; rc = main(['list']); "
            "print('torch' in sys.modules, rc)")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "250"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.split() == ["False", "0"], out.stderr[-2000:]
    text = out.stderr  # the tables go to stderr
    for kind in ("algorithms", "codecs", "models", "datasets", "partitioners", "losses", "metrics"):
        assert kind in text
    assert "199,210 parameters on 1x28x28" in text and "sequence model" in text
    assert "top<k>" in text and "cross_entropy" in text


def test_list_describes_registered_parts_by_importing_them(capsys):
    import torch.nn as nn

    import fedsqueeze
    from fedsqueeze.cli import main

    @fedsqueeze.register_model("t_listed_net")
    class Listed(nn.Module):
        """A registered test model."""

        def __init__(self, input_shape, num_classes):
            super().__init__()
            self.fc = nn.Linear(784, num_classes)

    fedsqueeze.register_metric("t_listed_metric", lambda o, y: 0.0)
    try:
        assert main(["list", "models"]) == 0 and main(["list", "metrics"]) == 0
    finally:
        fedsqueeze.unregister("model", "t_listed_net")
        fedsqueeze.unregister("metric", "t_listed_metric")
    err = " ".join(capsys.readouterr().err.split())
    assert "t_listed_net" in err and "7,850 parameters" in err and "t_listed_metric" in err
