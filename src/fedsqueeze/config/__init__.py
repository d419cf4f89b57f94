"""Typed experiment configuration: a TOML file plus dotted ``--set key=value`` overrides.

Every key is validated: unknown keys get a "did you mean" error, invalid values name the key and
the allowed range. Algorithm- and codec-specific options are validated by their own dataclasses.

The dataclasses are in ``schema``, the checks in ``validate`` (``from_dict``), reading and writing TOML
and ``--set`` overrides in ``toml_io``; this module loads a config file or preset (``load_config``) and
exports them all.
"""
from __future__ import annotations

from pathlib import Path

from fedsqueeze.config.schema import (FAULT_KINDS, CodecConfig, Config, DataConfig, EngineConfig, EvalConfig,
                                      ModelConfig, TrainConfig)
from fedsqueeze.config.toml_io import (TOML_BYTES_MAX, apply_overrides, parse_override, parse_toml, read_toml,
                                       to_toml, toml_string)
from fedsqueeze.config.validate import (BATCH_MAX, CLIENTS_MAX, EPOCHS_MAX, LR_MAX, NAME_MAX, OPTION_DEPTH_MAX,
                                        ROUNDS_MAX, SEED_MAX, SPEC_CHARS_MAX, SPEC_STAGES_MAX, STEPS_MAX, STRING_MAX,
                                        TIMEOUT_MAX, TIMEOUT_MIN, check_name, from_dict)
from fedsqueeze.errors import ConfigError

__all__ = [
    "Config", "DataConfig", "ModelConfig", "TrainConfig", "CodecConfig", "EvalConfig", "EngineConfig", "FAULT_KINDS",
    "load_config", "from_dict", "check_name", "read_toml", "parse_toml", "to_toml", "toml_string", "parse_override",
    "apply_overrides", "ConfigError", "NAME_MAX", "SEED_MAX", "ROUNDS_MAX", "CLIENTS_MAX", "BATCH_MAX", "EPOCHS_MAX",
    "STEPS_MAX", "TIMEOUT_MIN", "TIMEOUT_MAX", "LR_MAX", "STRING_MAX", "SPEC_CHARS_MAX", "SPEC_STAGES_MAX",
    "OPTION_DEPTH_MAX", "TOML_BYTES_MAX",
]


def load_config(path: str | Path | None = None, overrides: list | None = None) -> Config:
    raw: dict = {}
    if path is not None:
        p = Path(path)
        try:
            exists = p.exists()
        except OSError:  # e.g. a name longer than the file system allows
            exists = False
        if not exists:
            from fedsqueeze import presets

            preset = presets.path(str(path)) if len(str(path)) <= 200 else None
            if preset is None:
                raise ConfigError(f"config file {str(p)[:200]!r} not found; give a TOML file or a preset name "
                                  "(`fedsqueeze presets` lists them, e.g. digits-quick)")
            p = preset
        raw = read_toml(p)
    return from_dict(apply_overrides(raw, overrides or []))

