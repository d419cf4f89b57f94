#!/usr/bin/env python3
"""Copy configs/*.toml and configs/suites/*.toml into src/fedsqueeze/presets/ (the package data the wheel
ships), removing presets that no longer exist. configs/ is the source of truth; tests/test_packaging.py
fails when the two differ."""
from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAIRS = [(ROOT / "configs", ROOT / "src/fedsqueeze/presets"),
         (ROOT / "configs/suites", ROOT / "src/fedsqueeze/presets/suites")]


def main() -> None:
    for src, dst in PAIRS:
        dst.mkdir(parents=True, exist_ok=True)
        wanted = {p.name for p in src.glob("*.toml")}
        for stale in dst.glob("*.toml"):
            if stale.name not in wanted:
                stale.unlink()
                print(f"removed {stale.relative_to(ROOT)}")
        for name in sorted(wanted):
            if not (dst / name).is_file() or (dst / name).read_bytes() != (src / name).read_bytes():
                shutil.copyfile(src / name, dst / name)
                print(f"copied {(src / name).relative_to(ROOT)} -> {(dst / name).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
