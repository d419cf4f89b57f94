"""Where the engine computes: ``engine.device`` (and ``engine.devices`` for a worker pool).

``resolve`` turns a spec ("auto" | "cpu" | "cuda" | "cuda:N" | "mps") into a ``torch.device`` with a
clear error when the accelerator is missing; ``auto`` is CUDA when available, else CPU — so on a CPU
machine nothing changes. ``to_device`` moves nested containers of tensors; ``compute_mode`` applies
the reproducibility switches (``engine.deterministic``, ``engine.tf32``) for CUDA and restores the
previous settings afterwards. On CPU it changes nothing (CPU results stay bit-for-bit as before).
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from fedsqueeze.errors import ConfigError

_SPEC = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"


def valid_spec(spec: Any) -> bool:
    return isinstance(spec, str) and bool(_SPEC.match(spec))


def resolve(spec: str) -> torch.device:
    """The device a spec names, checked against what this torch build and machine provide."""
    if not valid_spec(spec):
        raise ConfigError(f"engine.device = {spec!r} is invalid: it must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if spec == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{spec} requested but torch.cuda.is_available() is False; use engine.device = 'cpu' "
                              "or install a CUDA build of torch (docs/gpu.md)")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{spec} requested but this machine has {torch.cuda.device_count()} CUDA device(s) "
                              f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
        return dev
    if spec == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError("mps requested but torch.backends.mps.is_available() is False; use engine.device = "
                              "'cpu' (mps needs Apple silicon and a torch build with MPS)")
        return torch.device("mps")
    return torch.device("cpu")


def worker_devices(engine: Any) -> list[torch.device]:
    """The devices a worker pool's workers use, round-robin: ``engine.devices`` or else ``engine.device``."""
    specs = list(engine.devices) or [engine.device]
    return [resolve(s) for s in specs]


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor in nested dicts/lists/tuples moved to ``device`` (no copy when already there)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_device(v, device) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(to_device(v, device) for v in obj)
    return obj


def to_cpu(obj: Any) -> Any:
    return to_device(obj, torch.device("cpu"))


def describe(device: torch.device, engine: Any) -> dict:
    """What a run records of where it ran (``device.json``)."""
    out: dict[str, Any] = {"device": str(device), "requested": engine.device, "torch": torch.__version__}
    if device.type == "cuda":
        out.update(name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   deterministic=engine.deterministic, tf32=engine.tf32)
    if engine.workers and (engine.devices or device.type != "cpu"):
        out["worker_devices"] = [str(d) for d in worker_devices(engine)]
    return out


@contextmanager
def compute_mode(devices: list[torch.device], deterministic: bool, tf32: bool) -> Iterator[None]:
    """Reproducibility switches while a run computes on CUDA; the previous settings come back after.
    ``deterministic``: ``torch.use_deterministic_algorithms(True, warn_only=True)``, cuDNN deterministic and not
    benchmarking, ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (unless already set). ``tf32``: TF32 matmuls
    and convolutions (faster on Ampere and later, ~1e-3 relative error) — off by default."""
    if not any(d.type == "cuda" for d in devices):
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             os.environ.get(CUBLAS_ENV), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        apply_mode(deterministic, tf32)
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[6])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1], saved[2]
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[3], saved[4]
        if saved[5] is None:
            os.environ.pop(CUBLAS_ENV, None)
        else:
            os.environ[CUBLAS_ENV] = saved[5]


def apply_mode(deterministic: bool, tf32: bool) -> None:
    if deterministic:
        os.environ.setdefault(CUBLAS_ENV, ":4096:8")
        # warn_only: an op without a deterministic CUDA kernel warns instead of stopping the run
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
