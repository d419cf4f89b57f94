"""Reading and writing SPATL agent files (``fedsqueeze spatl pretrain-agent --out FILE``; ``algorithm.agent``).

The file is an ``engine.safe_io`` container (no pickle): ``{"format": "fedsqueeze-spatl-agent",
"version": 1, "hidden": H, "layers": L, "features": [...], "weights": {name: tensor}}``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from fedsqueeze.algorithms.spatl_agent import FEATURES, FORMAT, AgentConfig, AgentNet
from fedsqueeze.engine import safe_io
from fedsqueeze.errors import ConfigError, SafeIOError

VERSION = 1
_CACHE: dict[tuple[str, int, int], dict[str, torch.Tensor]] = {}


def save_agent(path: str | Path, weights: dict[str, torch.Tensor], config: AgentConfig) -> None:
    data = safe_io.dumps({"format": FORMAT, "version": VERSION, "hidden": config.hidden, "layers": config.layers,
                          "features": list(FEATURES), "weights": {k: v.detach().cpu() for k, v in weights.items()}})
    Path(path).write_bytes(data)


def load_agent(path: str | Path, hidden: int, layers: int = 2) -> dict[str, torch.Tensor]:
    """The weights in an agent file, checked against the configured agent; one-line ``ConfigError``s."""
    key = (str(Path(path).resolve()), hidden, layers)
    if key in _CACHE:
        return _CACHE[key]
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"algorithm.agent = {str(path)!r}: no such file; write one with "
                          f"`fedsqueeze spatl pretrain-agent CONFIG --out {path}` or set agent = \"\"")
    try:
        obj = safe_io.loads(p.read_bytes())
    except SafeIOError as e:
        raise ConfigError(f"algorithm.agent = {str(path)!r} is not a SPATL agent file ({e})") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("version") != VERSION:
        raise ConfigError(f"algorithm.agent = {str(path)!r} is not a SPATL agent file (version {VERSION}); "
                          "write one with `fedsqueeze spatl pretrain-agent`")
    if obj.get("hidden") != hidden or obj.get("layers") != layers or obj.get("features") != list(FEATURES):
        raise ConfigError(f"algorithm.agent = {str(path)!r} holds an agent of width {obj.get('hidden')}; "
                          f"set algorithm.agent_hidden = {obj.get('hidden')} or pre-train one of width {hidden}")
    weights = obj.get("weights")
    with torch.device("meta"):
        own = AgentNet(hidden, layers).state_dict()
    if not isinstance(weights, dict) or set(weights) != set(own) or any(
            not isinstance(weights[k], torch.Tensor) or tuple(weights[k].shape) != tuple(own[k].shape)
            or weights[k].dtype != torch.float32 or not bool(torch.isfinite(weights[k]).all()) for k in own):
        raise ConfigError(f"algorithm.agent = {str(path)!r}: its weights do not fit the agent (corrupt file?)")
    _CACHE[key] = weights
    return weights
