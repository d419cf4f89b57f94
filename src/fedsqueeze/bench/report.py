"""What every benchmark prints with its figures: command, versions, machine, load and date."""
from __future__ import annotations

import os
import platform
import sys
import time

import numpy as np
import torch


def environment() -> dict[str, str]:
    import fedsqueeze

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "command": " ".join(["fedsqueeze"] + sys.argv[1:]) if sys.argv and sys.argv[0].endswith("fedsqueeze")
        else " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "fedsqueeze": fedsqueeze.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        "torch_threads": str(torch.get_num_threads()),
    }


def print_environment(console) -> dict[str, str]:
    env = environment()
    for k, v in env.items():
        console.print(f"[dim]{k}:[/] {v}")
    return env
