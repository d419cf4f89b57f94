"""Config files that are not (readable) config files, and nesting that breaks parsers."""
from __future__ import annotations

import json

from fedsqueeze.bench.badinput import Case
from fedsqueeze.bench.badinput_cases.writers import NESTED, deep, file

CASES: list[Case] = [
    # -- files that are not (readable) config files
    Case("config not UTF-8", "is not utf-8 text", "save it as utf-8",
         argv=("run", "{dir}/x.toml"), files=file("x.toml", b"rounds = 1\n# \xff\xfe\n")),
    Case("config is a folder", "is a folder", "give the toml file inside it", argv=("run", "{dir}")),
    Case("config is a device", "is not a regular file", "give a toml file", argv=("run", "/dev/null")),
    Case("config with a NUL byte", "invalid toml", "fix the syntax", toml="rounds = 1\x00\n"),
    Case("config is a FIFO", "is not a regular file", "give a toml file",
         argv=("run", "{dir}/fifo"), files=lambda folder: __import__("os").mkfifo(folder / "fifo")),
    Case("config larger than 4 MB", "more than a config can be", "give the right file",
         argv=("run", "{dir}/big.toml"), files=file("big.toml", "#" + "x" * (5 << 20) + "\n")),
    Case("config key given twice", "invalid toml", "fix the syntax", toml="rounds = 1\nrounds = 2\n"),
    Case("300-character config name", "not found", "`fedsqueeze presets` lists them", argv=("run", "x" * 300)),
    Case("TOML arrays nested 400 deep", "nested more than 8 levels", "short lists", toml=f"x = {deep(400)}\n"),
    Case("TOML arrays nested 3,000 deep", NESTED, "a few levels", toml=f"x = {deep(3000)}\n"),
    Case("TOML inline tables nested 800 deep", NESTED, "a few levels",
         toml="x = " + "{a = " * 800 + "1" + "}" * 800 + "\n"),
    Case("--set array nested 1,000 deep", NESTED, "short list", args=("--set", f"train.lr={deep(1000)}")),
    Case("--set inline tables nested 600 deep", NESTED, "short list",
         args=("--set", "data.options=" + "{a=" * 600 + "1" + "}" * 600)),
    Case("options nested 20 deep", "nested more than 8 levels", "short lists",
         {"data.source": "synthetic", "data.options": {"x": json.loads(deep(20))}}),
    Case("option key that injects TOML", "has the key 'a = 1\\n[evil]'", "keys are names of letters",
         {"data.source": "synthetic", "data.options": {"a = 1\n[evil]": 2}}),
    Case("option key with a space", "has the key 'num samples'", "keys are names of letters",
         {"data.source": "synthetic", "data.options": {"num samples": 200}}),
    Case("--set with an empty value", "'rounds' must be of type int", "got ''", args=("--set", "rounds=")),
    Case("--set with a space in the key", "config key 'train' has the key ' lr'", "keys are names of letters",
         args=("--set", "train. lr=0.1")),
]
