"""The hostile and careless inputs of ``fedsqueeze bench badinput`` beyond the first table: files that are not
config files, nesting that breaks parsers, numbers that are not finite or absurdly large, strings long enough to
hang a terminal renderer, codec specs that try Python syntax, options that would allocate terabytes, damaged
run folders, contradictory flags, report targets that are folders or inside a run, and the arguments of
``plot``, ``personal``, ``compare``, ``flower`` and ``bench``. Each case names the phrase its one ``error:``
line must contain for the problem and for the fix (see ``fedsqueeze.bench.badinput.Case``).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from fedsqueeze.bench.badinput import BASE, Case, _finished_run
from fedsqueeze.config import to_toml

# ---- file helpers (each writes into the case's folder before the command runs) ----------------------


def _file(name: str, data: bytes | str) -> Callable[[Path], None]:
    raw = data.encode() if isinstance(data, str) else data

    def write(folder: Path) -> None:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(raw)
    return write


def _all(*writers: Callable[[Path], None]) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        for w in writers:
            w(folder)
    return write


_CONFIG = _file("c.toml", to_toml(BASE))  # a valid config at {dir}/c.toml


def _run_then(change: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    """A finished one-round run at {dir}/done, then ``change(run_folder)``."""
    def write(folder: Path) -> None:
        _finished_run(folder)
        if change is not None:
            change(folder / "done")
    return write


def _put(name: str, data: bytes | str) -> Callable[[Path], None]:
    raw = data.encode() if isinstance(data, str) else data
    return lambda run: (run / name).write_bytes(raw)


def _edit_config(section: str, key: str, value: object) -> Callable[[Path], None]:
    """Change one key of a run's config.json (as a careless or hostile hand would)."""
    def edit(run: Path) -> None:
        cfg = json.loads((run / "config.json").read_text())
        cfg[section][key] = value
        (run / "config.json").write_text(json.dumps(cfg))
    return edit


def _suite(text: str) -> Callable[[Path], None]:
    """A base config {dir}/b.toml and the suite {dir}/s.toml."""
    return _all(_file("b.toml", to_toml(BASE)), _file("s.toml", 'base = "b.toml"\n' + text))


def _deep(n: int) -> str:
    return "[" * n + "]" * n


_RUN = ("run", "{dir}/c.toml", "--quiet", "--out", "{dir}/run")
_SUITE = ("compare", "{dir}/s.toml", "--quiet", "--out", "{dir}/out")
_NESTED = "nested too deeply"
_FINITE = ("a finite number", "not nan or inf")

MORE_CASES: list[Case] = [
    # -- files that are not (readable) config files
    Case("config not UTF-8", "is not utf-8 text", "save it as utf-8",
         argv=("run", "{dir}/x.toml"), files=_file("x.toml", b"rounds = 1\n# \xff\xfe\n")),
    Case("config is a folder", "is a folder", "give the toml file inside it", argv=("run", "{dir}")),
    Case("config is a device", "is not a regular file", "give a toml file", argv=("run", "/dev/null")),
    Case("config with a NUL byte", "invalid toml", "fix the syntax", toml="rounds = 1\x00\n"),
    Case("config is a FIFO", "is not a regular file", "give a toml file",
         argv=("run", "{dir}/fifo"), files=lambda folder: __import__("os").mkfifo(folder / "fifo")),
    Case("config larger than 4 MB", "more than a config can be", "give the right file",
         argv=("run", "{dir}/big.toml"), files=_file("big.toml", "#" + "x" * (5 << 20) + "\n")),
    Case("config key given twice", "invalid toml", "fix the syntax", toml="rounds = 1\nrounds = 2\n"),
    Case("300-character config name", "not found", "`fedsqueeze presets` lists them", argv=("run", "x" * 300)),
    Case("TOML arrays nested 400 deep", "nested more than 8 levels", "short lists", toml=f"x = {_deep(400)}\n"),
    Case("TOML arrays nested 3,000 deep", _NESTED, "a few levels", toml=f"x = {_deep(3000)}\n"),
    Case("TOML inline tables nested 800 deep", _NESTED, "a few levels",
         toml="x = " + "{a = " * 800 + "1" + "}" * 800 + "\n"),
    Case("--set array nested 1,000 deep", _NESTED, "short list", args=("--set", f"train.lr={_deep(1000)}")),
    Case("--set inline tables nested 600 deep", _NESTED, "short list",
         args=("--set", "data.options=" + "{a=" * 600 + "1" + "}" * 600)),
    Case("options nested 20 deep", "nested more than 8 levels", "short lists",
         {"data.source": "synthetic", "data.options": {"x": json.loads(_deep(20))}}),
    Case("option key that injects TOML", "has the key 'a = 1\\n[evil]'", "keys are names of letters",
         {"data.source": "synthetic", "data.options": {"a = 1\n[evil]": 2}}),
    Case("option key with a space", "has the key 'num samples'", "keys are names of letters",
         {"data.source": "synthetic", "data.options": {"num samples": 200}}),
    Case("--set with an empty value", "'rounds' must be of type int", "got ''", args=("--set", "rounds=")),
    Case("--set with a space in the key", "config key 'train' has the key ' lr'", "keys are names of letters",
         args=("--set", "train. lr=0.1")),
    # -- integers beyond what they mean
    Case("seed of 2**63", "'seed' = 9223372036854775808 is invalid", "at most 2**63 - 1", {"seed": 2**63}),
    Case("seed beyond 64 bits", "'seed' = 18446744073709551616 is invalid", "at most 2**63 - 1", {"seed": 2**64}),
    Case("10**15 rounds", "'rounds' = 1000000000000000 is invalid", "at most 1,000,000", {"rounds": 10**15}),
    Case("10**12 clients", "'data.num_clients' = 1000000000000 is invalid", "at most 10,000,000",
         {"data.num_clients": 10**12}),
    Case("batch size 10**15", "'train.batch_size' = 1000000000000000 is invalid", "at most 1,048,576",
         {"train.batch_size": 10**15}),
    Case("eval batch size zero", "'eval.batch_size' = 0 is invalid", "an integer >= 1", {"eval.batch_size": 0}),
    Case("a million local epochs", "'train.local_epochs' = 1000000 is invalid", "at most 10,000",
         {"train.local_epochs": 10**6}),
    Case("10**9 local steps", "'train.local_steps' = 1000000000 is invalid", "at most 10,000,000",
         {"train.local_steps": 10**9}),
    Case("10**9 retries", "'engine.retries' = 1000000000 is invalid", "at most 1000", {"engine.retries": 10**9}),
    Case("zero min replies", "'engine.min_replies' = 0 is invalid", "an integer >= 1", {"engine.min_replies": 0}),
    Case("negative checkpoint interval", "'engine.checkpoint_every' = -1 is invalid", "an integer >= 0",
         {"engine.checkpoint_every": -1}),
    Case("negative eval interval", "'eval.every' = -1 is invalid", "an integer >= 0", {"eval.every": -1}),
    Case("zero shards per client", "'data.shards_per_client' = 0 is invalid", "an integer >= 1",
         {"data.shards_per_client": 0}),
    Case("a thousand workers", "'engine.workers' = 1000 is invalid", "in [0, 64]", {"engine.workers": 1000}),
    # -- numbers that are not finite, or nonsense
    Case("learning rate inf", "'train.lr' = inf is invalid", _FINITE[0], {"train.lr": float("inf")}),
    Case("learning rate nan", "'train.lr' = nan is invalid", _FINITE[1], {"train.lr": float("nan")}),
    Case("learning rate 1e308", "'train.lr' = 1e+308 is invalid", "at most 1000", {"train.lr": 1e308}),
    Case("alpha 1e300", "'data.alpha' = 1e+300 is invalid", "at most 1e6", {"data.alpha": 1e300}),
    Case("weight decay inf", "'train.weight_decay' = inf is invalid", _FINITE[0], {"train.weight_decay": float("inf")}),
    Case("momentum nan", "'train.momentum' = nan is invalid", _FINITE[0], {"train.momentum": float("nan")}),
    Case("alpha inf", "'data.alpha' = inf is invalid", _FINITE[0], {"data.alpha": float("inf")}),
    Case("holdout fraction nan", "'data.holdout_fraction' = nan is invalid", _FINITE[0],
         {"data.holdout_fraction": float("nan")}),
    Case("client fraction -inf", "'train.client_fraction' = -inf is invalid", _FINITE[0],
         {"train.client_fraction": float("-inf")}),
    Case("server learning rate inf", "'algorithm.server_lr' = inf is invalid", _FINITE[0],
         {"algorithm.server_lr": float("inf")}),
    Case("server learning rate nan via --set", "'algorithm.server_lr' = nan is invalid", _FINITE[1],
         args=("--set", "algorithm.server_lr=nan")),
    Case("nothing trains", "no client would train", "train.local_epochs >= 1",
         {"train.local_steps": 0, "train.local_epochs": 0}),
    Case("round timeout of a nanosecond", "'engine.round_timeout' = 1e-09 is invalid", "at least 0.1",
         {"engine.round_timeout": 1e-9}),
    Case("round timeout inf", "'engine.round_timeout' = inf is invalid", _FINITE[0],
         {"engine.round_timeout": float("inf")}),
    Case("round timeout of a year", "'engine.round_timeout' = 31536000.0 is invalid", "at most 604800",
         {"engine.round_timeout": 365 * 24 * 3600.0}),
    Case("update-norm bound inf", "'engine.max_update_norm' = inf is invalid", _FINITE[0],
         {"engine.max_update_norm": float("inf")}),
    Case("negative update-norm bound", "'engine.max_update_norm' = -1.0 is invalid", "0 = no bound",
         {"engine.max_update_norm": -1}),
    Case("dropout above one", "'engine.dropout' = 1.5 is invalid", "a probability in [0, 1]", {"engine.dropout": 1.5}),
    Case("negative straggler probability", "'engine.straggler' = -0.1 is invalid", "a probability in [0, 1]",
         {"engine.straggler": -0.1}),
    Case("fault probability nan", "'engine.faults.nan' = nan is invalid", _FINITE[0],
         {"engine.faults": {"nan": float("nan")}}),
    Case("unknown fault", "unknown fault 'engine.faults.nann'", "did you mean 'nan'", {"engine.faults": {"nann": 0.1}}),
    # -- wrong types and spellings
    Case("unknown loss", "train.loss: unknown loss 'nosuchloss'", "available: cross_entropy",
         {"train.loss": "nosuchloss"}),
    Case("unknown metric", "eval.metrics: unknown metric 'top0'", "top<k> (e.g. top5)", {"eval.metrics": ["top0"]}),
    Case("metrics as a string", "'eval.metrics' must be of type list", "got 'accuracy'", {"eval.metrics": "accuracy"}),
    Case("learning rate as a string", "'train.lr' must be of type float", "got '0.1' (str)", {"train.lr": "0.1"}),
    Case("fractional rounds", "'rounds' must be of type int", "got 3.5 (float)", {"rounds": 3.5}),
    Case("server learning rate as a string", "option algorithm.server_lr = 'fast' must be a number", "not str",
         {"algorithm.server_lr": "fast"}),
    Case("weighting as a number", "option algorithm.weighting = '3' must be a string", "not int",
         {"algorithm.weighting": 3}),
    Case("optimizer misspelt", "'train.optimizer' = 'sgdd' is invalid", "'sgd' or 'adam'", {"train.optimizer": "sgdd"}),
    Case("too_few misspelt", "'engine.too_few' = 'maybe' is invalid", "'skip' or 'fail'", {"engine.too_few": "maybe"}),
    Case("downlink misspelt", "'codec.downlink' = 'multicast' is invalid", "'broadcast' or 'delta'",
         {"codec.downlink": "multicast"}),
    Case("device misspelt", "'engine.device' = 'gpu' is invalid", "'cuda:n'", {"engine.device": "gpu"}),
    Case("devices without workers", "engine.devices places pool workers", "set engine.workers",
         {"engine.devices": ["cpu"]}),
    Case("vectorize as a string", "'engine.vectorize' must be of type bool", "got 'yes'", {"engine.vectorize": "yes"}),
    Case("devices as a string", "'engine.devices' must be of type list", "got 'cuda'", {"engine.devices": "cuda"}),
    Case("model options as a number", "'model.options' must be of type dict", "got 3", {"model.options": 3}),
    Case("algorithm as an array of tables", "'algorithm' must be of type dict", "got [",
         toml=to_toml({k: v for k, v in BASE.items() if k != "algorithm"}) + '\n[[algorithm]]\nname = "fedavg"\n'),
    Case("codec section a string", "codec must be a table", "got 'fp16'", {"codec": "fp16"}),
    Case("data options as a list", "'data.options' must be of type dict", "got [1, 2]", {"data.options": [1, 2]}),
    Case("output_dir with a NUL", "'output_dir' = 'runs\\x00x' contains a nul character", "give a folder path",
         {"output_dir": "runs\x00x"}, args=()),
    # -- names (they become folder names)
    Case("300-character name", "is 300 characters long", "up to 100 characters", {"name": "n" * 300}),
    Case("name with a newline", "contains '\\n'", "folders are chosen with --out", args=("--set", 'name="a\\nb"')),
    Case("name with a NUL", "contains '\\x00'", "folders are chosen with --out", args=("--set", 'name="a\\u0000b"')),
    Case("name with ..", "contains '/'", "folders are chosen with --out", {"name": "../escape"}),
    Case("absolute name", "contains '/'", "folders are chosen with --out", {"name": "/tmp/escape"}),
    Case("hidden name", "may not start with '.'", "folders are chosen with --out", {"name": ".hidden"}),
    Case("empty name", "config key 'name' is empty", "folders are chosen with --out", {"name": ""}),
    # -- strings long enough to hang a terminal renderer, pipelines too long to parse quickly
    Case("100 KB codec name", "is a string of 100,000 characters", "give the intended name",
         args=("--set", "codec.up=" + "x" * 100_000)),
    Case("100 KB model name", "is a string of 100,000 characters", "give the intended name",
         args=("--set", "model.name=" + "m" * 100_000)),
    Case("100 KB algorithm name", "is a string of 100,000 characters", "give the intended name",
         args=("--set", "algorithm.name=" + "a" * 100_000)),
    Case("100 KB data source", "is a string of 100,000 characters", "give the intended name",
         args=("--set", "data.source=" + "d" * 100_000)),
    Case("3 KB codec spec", "codec spec of 3,000 characters", "`fedsqueeze list codecs`",
         {"codec.up": "topk(fraction=0.1" + " " * 2982 + ")"}),
    Case("1,000-stage pipeline on the command line", "is a string of", "give the intended name",
         args=("--set", "codec.up=" + "|".join(["topk(fraction=0.5)"] * 1000))),
    Case("100-stage pipeline", "100 pipeline stages", "a few transforms and one codec",
         {"codec.up": "|".join(["svd"] * 100)}),
    Case("100-stage pipeline as a list", "at most 32 stages", "flat list", {"codec.up": ["svd"] * 100}),
    Case("nested list of stages", "flat list", "svd(threshold=0.95)", {"codec.up": [["svd", "fp16"]]}),
    Case("ef inner spec of 50,000 minus signs", "is a string of", "give the intended name",
         {"codec.up": "ef(inner='" + "-" * 50_000 + "1')"}),
    # -- codec specs that try Python syntax or the wrong shapes
    Case("codec table with a number for a name", "codec.up table needs a string 'name'", "got name = 3",
         {"codec.up": {"name": 3}}),
    Case("codec table with an empty name", "codec.down table needs a string 'name'", "fraction = 0.01",
         {"codec.down": {"name": ""}}),
    Case("**kwargs in a codec spec", "uses * or ** arguments", "key=value pairs",
         {"codec.up": "topk(**{'fraction': 0.1})"}),
    Case("*args in a codec spec", "uses * or ** arguments", "key=value pairs", {"codec.up": "topk(*[0.1])"}),
    Case("positional codec option", "cannot parse the options of codec spec", "key=value pairs",
         {"codec.up": "topk(0.1)"}),
    Case("codec option given twice", "cannot parse the options of codec spec", "key=value pairs",
         {"codec.up": "topk(fraction=0.1, fraction=0.2)"}),
    Case("unbalanced parenthesis", "cannot parse codec spec", "topk(fraction=0.01)", {"codec.up": "topk(fraction=0.1"}),
    Case("function call as a codec option", "cannot parse the options of codec spec", "strings quoted",
         {"codec.up": "topk(fraction=__import__('os').getpid())"}),
    Case("lambda as a codec option", "cannot parse the options of codec spec", "strings quoted",
         {"codec.up": "topk(fraction=lambda: 0)"}),
    Case("boolean codec spec", "a codec spec must be a string, table or list", "topk(fraction=0.01)", {"codec.up": True}),
    Case("float codec spec", "a codec spec must be a string, table or list", "topk(fraction=0.01)", {"codec.down": 0.5}),
    Case("empty codec list", "codec.up is an empty list", 'such as "fp32"', {"codec.up": []}),
    Case("codec table with a misspelt option", "codec 'topk' has no option 'fractoin'", "did you mean 'fraction'",
         {"codec.up": {"name": "topk", "fractoin": 0.1}}),
    Case("codec option inf", "fraction must be a number in (0, 1]", "got inf", {"codec.up": "topk(fraction=1e999)"}),
    Case("qsgd with zero levels", "levels must be an integer in", "got 0", {"codec.up": "qsgd(levels=0)"}),
    Case("qsgd with 10**23 levels", "levels must be an integer in", "got 99999999999999999999999",
         {"codec.up": "qsgd(levels=99999999999999999999999)"}),
    # -- data and model options that would allocate terabytes (or are not options)
    Case("a date in data.options", "'data.options.when' = '1979-05-27' is a date", "quote dates and times",
         toml=to_toml({k: v for k, v in BASE.items() if k != "data"})
         + '\n[data]\nsource = "synthetic"\nnum_clients = 4\npartition = "iid"\noptions = {when = 1979-05-27}\n'),
    Case("a time in algorithm options", "'algorithm.at' = '07:32:00' is a time", "quote dates and times",
         toml=to_toml({k: v for k, v in BASE.items() if k != "algorithm"}) + '\n[algorithm]\nname = "fedavg"\nat = 07:32:00\n'),
    Case("10**10 synthetic samples", "num_samples must be at most 10,000,000", "got 10,000,000,000",
         {"data.source": "synthetic", "data.options": {"num_samples": 10**10}}),
    Case("10**7 synthetic features", "num_features must be at most 1,000,000", "got 10,000,000",
         {"data.source": "synthetic", "data.options": {"num_features": 10**7}}),
    Case("synthetic data of 10**9 values", "more than 100,000,000 values", "lower data.options",
         {"data.source": "synthetic", "data.options": {"num_samples": 5_000_000, "num_features": 200}}),
    Case("one synthetic class", "num_classes must be at least 2", "got 1",
         {"data.source": "synthetic", "data.options": {"num_classes": 1}}),
    Case("synthetic samples as a word", "num_samples must be an integer", "got 'many'",
         {"data.source": "synthetic", "data.options": {"num_samples": "many"}}),
    Case("negative model size", "option hidden = -5 is out of range", "integers in [0,",
         {"model.name": "mlp", "model.options": {"hidden": -5}}),
    Case("huge model size", "option hidden = 1,000,000,000 is out of range", "integers in [0,",
         {"model.name": "mlp", "model.options": {"hidden": 10**9}}),
    Case("model of 10**11 parameters", "parameters (more than 2,000,000,000)", "lower model.options",
         {"model.name": "mlp", "model.options": {"hidden": 1_000_000}}),
    Case("misspelt model option", "model 'mlp'", "unexpected keyword argument 'hiden'",
         {"model.name": "mlp", "model.options": {"hiden": 5}}),
    # -- `run` arguments
    Case("--budget-mb nan", "--budget-mb must be a finite number", "got nan", {"codec.up": "rdq"},
         args=("--budget-mb", "nan")),
    Case("--budget-mb inf", "--budget-mb must be a finite number", "got inf", {"codec.up": "rdq"},
         args=("--budget-mb", "inf")),
    Case("--budget-mb zero", "--budget-mb must be a finite number", "> 0", {"codec.up": "rdq"}, args=("--budget-mb", "0")),
    Case("--budget-mb a word", "argument --budget-mb: invalid float value: 'lots'", "fedsqueeze run --help",
         args=("--budget-mb", "lots")),
    Case("--workers a word", "argument --workers: invalid int value: 'abc'", "fedsqueeze run --help",
         args=("--workers", "abc")),
    Case("--workers negative", "'engine.workers' = -1 is invalid", "in [0, 64]", args=("--workers", "-1")),
    Case("--rounds zero", "'rounds' = 0 is invalid", "an integer >= 1", args=("--rounds", "0")),
    Case("--rounds a billion", "'rounds' = 1000000000 is invalid", "at most 1,000,000", args=("--rounds", "1000000000")),
    Case("--device misspelt", "'engine.device' = 'gpu0' is invalid", "'cuda:n'", args=("--device", "gpu0")),
    Case("--device with a quote", "'engine.device' = 'cpu\"' is invalid", "'cuda:n'", args=("--device", 'cpu"')),
    Case("--out a file", "exists and is not a folder", "choose another --out",
         argv=(*_RUN[:3], "--out", "{dir}/f"), files=_all(_CONFIG, _file("f", "mine"))),
    Case("--out below a file", "not a directory", "a part of that path is a file",
         argv=(*_RUN[:3], "--out", "{dir}/f/run"), files=_all(_CONFIG, _file("f", "mine"))),
    Case("--out where nothing can be created", "cannot use '/proc/", "fix the path",
         argv=(*_RUN[:3], "--out", "/proc/fedsqueeze-nope/run"), files=_CONFIG),
    Case("--out a user's folder", "is a non-empty folder that is not a fedsqueeze run", "choose a new or empty --out",
         argv=(*_RUN[:3], "--out", "{dir}/mine"), files=_all(_CONFIG, _file("mine/notes.txt", "mine"))),
    Case("--out an existing run", "already holds a run", "continue it with `fedsqueeze run --resume",
         argv=(*_RUN[:3], "--out", "{dir}/done"), files=_all(_CONFIG, _run_then())),
    Case("CONFIG and --resume", "contradicts it: drop config", "--rounds",
         argv=("run", "{dir}/c.toml", "--resume", "{dir}/done", "--quiet"), files=_all(_CONFIG, _run_then())),
    Case("--resume with --out elsewhere", "contradicts it: drop --out", "start a new run",
         argv=("run", "--resume", "{dir}/done", "--out", "{dir}/other", "--quiet"), files=_run_then()),
    Case("--resume with --overwrite", "--resume continues a run and --overwrite replaces it", "pass one of them",
         argv=("run", "--resume", "{dir}/done", "--overwrite", "--quiet"), files=_run_then()),
    Case("--resume with --budget-mb", "--budget-mb is fixed when a run starts", "resume without it",
         argv=("run", "--resume", "{dir}/done", "--budget-mb", "5", "--quiet"), files=_run_then()),
    Case("--data-dir that does not exist", "does not exist or is not a folder", "fix the path",
         {"data.source": "fashion_mnist"}, args=("--data-dir", "{dir}/no\tsuch 'folder\"")),
    Case("unknown command", "invalid choice: 'runn'", "fedsqueeze --help", argv=("runn", "x")),
    Case("unknown option", "unrecognized arguments: --roundz", "fedsqueeze --help",
         argv=("run", "{dir}/c.toml", "--roundz", "3"), files=_CONFIG),
    Case("no command", "the following arguments are required: command", "fedsqueeze --help", argv=("--debug",)),
    # -- resuming damaged runs
    Case("resume with an edited config.json", "config.json is damaged", "restore it from the run's config.toml",
         argv=("run", "--resume", "{dir}/done", "--quiet"), files=_run_then(_put("config.json", "{garbage"))),
    Case("resume with config.json a list", "config.json is damaged", "start a new run",
         argv=("run", "--resume", "{dir}/done", "--quiet"), files=_run_then(_put("config.json", "[1, 2]"))),
    Case("resume with config.json not UTF-8", "config.json is damaged", "restore it",
         argv=("run", "--resume", "{dir}/done", "--quiet"), files=_run_then(_put("config.json", b"\xff\xfe{}"))),
    Case("resume with config.json nested 100,000 deep", "config.json is damaged", "restore it",
         argv=("run", "--resume", "{dir}/done", "--quiet"), files=_run_then(_put("config.json", _deep(100_000)))),
    Case("resume without config.json", "is not a fedsqueeze run directory (no config.json)", "made by `fedsqueeze run`",
         argv=("run", "--resume", "{dir}/done", "--quiet"), files=_run_then(lambda run: (run / "config.json").unlink())),
    Case("resume with a corrupt only checkpoint", "no intact previous checkpoint", "--overwrite",
         argv=("run", "--resume", "{dir}/done", "--rounds", "2", "--quiet"),
         files=_run_then(_put("checkpoint.pt", b"not a checkpoint"))),
    Case("resume with checkpoint.pt a folder", "no intact previous checkpoint", "--overwrite",
         argv=("run", "--resume", "{dir}/done", "--rounds", "2", "--quiet"),
         files=_run_then(lambda run: ((run / "checkpoint.pt").unlink(), (run / "checkpoint.pt").mkdir()))),
    Case("resume with config.json a folder", "config.json': is a directory", "give a file name",
         argv=("run", "--resume", "{dir}/done", "--quiet"),
         files=_run_then(lambda run: ((run / "config.json").unlink(), (run / "config.json").mkdir()))),
    Case("plot with metrics.jsonl a folder", "is not a run directory (no metrics.jsonl)", "made by `fedsqueeze run`",
         argv=("plot", "{dir}/done", "--out", "{dir}/p.png"),
         files=_run_then(lambda run: ((run / "metrics.jsonl").unlink(), (run / "metrics.jsonl").mkdir()))),
    Case("resume a file", "is not a fedsqueeze run directory", "made by `fedsqueeze run`",
         argv=("run", "--resume", "{dir}/f", "--quiet"), files=_file("f", "x")),
    Case("resume a folder that does not exist", "is not a fedsqueeze run directory", "made by `fedsqueeze run`",
         argv=("run", "--resume", "{dir}/nowhere", "--quiet")),
    # -- plot
    Case("plot a damaged run", "metrics.jsonl is damaged at line 1", "restore the file",
         argv=("plot", "{dir}/done", "--out", "{dir}/p.png"), files=_run_then(_put("metrics.jsonl", "{junk\n"))),
    Case("plot metrics that are not UTF-8", "metrics.jsonl is damaged (not utf-8 text)", "cannot be read",
         argv=("plot", "{dir}/done", "--out", "{dir}/p.png"), files=_run_then(_put("metrics.jsonl", b"\xff\n"))),
    Case("plot a record that is a list", "metrics.jsonl is damaged at line 1", "restore the file",
         argv=("plot", "{dir}/done", "--out", "{dir}/p.png"), files=_run_then(_put("metrics.jsonl", "[1, 2]\n"))),
    Case("plot a run with a damaged config.json", "config.json is damaged", "restore it",
         argv=("plot", "{dir}/done", "--out", "{dir}/p.png"), files=_run_then(_put("config.json", "{}"))),
    Case("plot to a .txt", "must end in .png, .pdf, .svg", "p.txt",
         argv=("plot", "{dir}/done", "--out", "{dir}/p.txt"), files=_run_then()),
    Case("plot into a missing folder", "does not exist", "create it or choose another place",
         argv=("plot", "{dir}/done", "--out", "{dir}/no/p.png"), files=_run_then()),
    Case("plot into the run", "is inside the run", "reports never write into a run",
         argv=("plot", "{dir}/done", "--out", "{dir}/done/p.png"), files=_run_then()),
    Case("plot a folder that is not a run", "is not a run directory (no metrics.jsonl)", "made by `fedsqueeze run`",
         argv=("plot", "{dir}/mine", "--out", "{dir}/p.png"), files=_file("mine/notes.txt", "mine")),
    Case("plot a missing run", "is not a run directory (no metrics.jsonl)", "made by `fedsqueeze run`",
         argv=("plot", "{dir}/nope", "--out", "{dir}/p.png")),
    Case("plot a bad metric", "argument --metric: invalid choice: 'acc'", "fedsqueeze plot --help",
         argv=("plot", "{dir}/done", "--metric", "acc")),
    # -- personal
    Case("personal --csv a folder", "--csv", "is a folder; give a file name",
         argv=("personal", "{dir}/done", "--csv", "{dir}"), files=_run_then()),
    Case("personal --csv inside the run", "is inside the run", "reports never write into a run",
         argv=("personal", "{dir}/done", "--csv", "{dir}/done/c.csv"), files=_run_then()),
    Case("personal --csv into a missing folder", "does not exist", "create it or choose another place",
         argv=("personal", "{dir}/done", "--csv", "{dir}/no/c.csv"), files=_run_then()),
    Case("personal --csv to a .png", "must end in .csv, .txt", "or have no suffix",
         argv=("personal", "{dir}/done", "--csv", "{dir}/c.png"), files=_run_then()),
    Case("personal --csv on a full disk", "no space left on device", "free some disk space",
         argv=("personal", "{dir}/done", "--csv", "/dev/full"), files=_run_then()),
    Case("personal on a missing run", "is not a fedsqueeze run directory", "made by `fedsqueeze run`",
         argv=("personal", "{dir}/nope")),
    Case("personal with a damaged config.json", "config.json is damaged", "restore it",
         argv=("personal", "{dir}/done"), files=_run_then(_put("config.json", "not json"))),
    Case("personal with an edited config.json", "config.json does not match the run's checkpoint", "config.toml",
         argv=("personal", "{dir}/done"), files=_run_then(_edit_config("model", "name", "mlp"))),
    Case("personal with an edited federation", "config.json does not match the run's checkpoint", "config.toml",
         argv=("personal", "{dir}/done"), files=_run_then(_edit_config("data", "num_clients", 3))),
    Case("personal with a corrupt checkpoint", "corrupt", "--resume",
         argv=("personal", "{dir}/done"), files=_run_then(_put("checkpoint.pt", b"\x00" * 64))),
    # -- compare suites
    Case("suite with base_set = 3", "suite key 'base_set' = 3 must be a table", "[base_set]",
         argv=_SUITE, files=_suite('base_set = 3\n[[run]]\nname = "a"\n')),
    Case("suite with run = 3", "suite key 'run' = 3 must be [[run]] tables", "[[run]]",
         argv=_SUITE, files=_suite("run = 3\n")),
    Case("suite run with set = 3", "set must be a table of dotted keys", 'set = {"codec.up"',
         argv=_SUITE, files=_suite('[[run]]\nname = "a"\nset = 3\n')),
    Case("suite with budget_mb = inf", "budget_mb must be a number of megabytes", "> 0",
         argv=_SUITE, files=_suite('[[run]]\nname = "a"\nbudget_mb = inf\n')),
    Case("suite with a missing base", "base config 'nope.toml' not found", "looked at",
         argv=_SUITE, files=_file("s.toml", 'base = "nope.toml"\n[[run]]\nname = "a"\n')),
    Case("suite not UTF-8", "is not utf-8 text", "save it as utf-8", argv=_SUITE, files=_file("s.toml", b"\xff\xfe")),
    Case("suite nested 2,000 deep", _NESTED, "a few levels", argv=_SUITE, files=_suite(f"x = {_deep(2000)}\n")),
    Case("suite run named ../x", "contains '/'", "folders are chosen with --out",
         argv=_SUITE, files=_suite('[[run]]\nname = "../x"\n')),
    Case("suite with network = 3", "suite key 'network' = 3 must be", "profile names",
         argv=_SUITE, files=_suite('network = 3\n[[run]]\nname = "a"\n')),
    Case("suite target above one", "target must be an accuracy in (0, 1]", "target = 0.8",
         argv=_SUITE, files=_suite('target = 2\n[[run]]\nname = "a"\n')),
    Case("suite run that changes the seed", "would change the federation", "change the base instead",
         argv=_SUITE, files=_suite('[[run]]\nname = "a"\nset = {seed = 3}\n')),
    Case("compare --out below a file", "not a directory", "a part of that path is a file",
         argv=("compare", "{dir}/s.toml", "--quiet", "--out", "{dir}/f/out"),
         files=_all(_file("f", "mine"), _suite('[[run]]\nname = "a"\n'))),
    Case("compare --device misspelt", "'engine.device' = 'gpu' is invalid", "'cuda:n'",
         argv=(*_SUITE, "--device", "gpu"), files=_suite('[[run]]\nname = "a"\n')),
    Case("compare --only an unknown run", "has no run 'zz'", "runs: a",
         argv=(*_SUITE, "--only", "zz"), files=_suite('[[run]]\nname = "a"\n')),
    Case("suite run label a table", "label must be a string", 'label = "fedavg',
         argv=_SUITE, files=_suite('[[run]]\nname = "a"\nlabel = {x = 1}\n')),
    Case("compare --seeds a word", "--seeds: 'abc' is not a comma-separated list", "--seeds 0,1,2",
         argv=(*_SUITE, "--seeds", "abc"), files=_suite('[[run]]\nname = "a"\n')),
    Case("compare --seeds repeated", "seeds must be distinct", "--seeds 0,1,2",
         argv=(*_SUITE, "--seeds", "1,1"), files=_suite('[[run]]\nname = "a"\n')),
    Case("compare --seeds beyond 64 bits", "has an entry that is not an integer >= 0 (at most 2**63 - 1)", "--seeds 0,1,2",
         argv=(*_SUITE, "--seeds", str(2**70)), files=_suite('[[run]]\nname = "a"\n')),
    Case("suite seeds = 3", "suite key 'seeds' must be a non-empty list", "seeds = [0, 1, 2]",
         argv=_SUITE, files=_suite('seeds = 3\n[[run]]\nname = "a"\n')),
    Case("compare --only an unknown seed", "seed '7' is not one of the suite's seeds", "entry/seedn",
         argv=(*_SUITE, "--seeds", "0,1", "--only", "a/seed7"), files=_suite('[[run]]\nname = "a"\n')),
    # -- flower
    Case("flower certs --hosts ','", "--hosts ',' names no host", "--hosts 127.0.0.1,localhost",
         argv=("flower", "certs", "{dir}/certs", "--hosts", ",")),
    Case("flower certs with a bad host", "is neither an ip address nor a dns name", "--hosts 127.0.0.1",
         argv=("flower", "certs", "{dir}/certs", "--hosts", "local host!")),
    Case("flower certs with negative keys", "--supernode-keys must be >= 0", "got -1",
         argv=("flower", "certs", "{dir}/certs", "--supernode-keys", "-1")),
    Case("flower certs with a million keys", "--supernode-keys must be at most 1000", "got 1000000",
         argv=("flower", "certs", "{dir}/certs", "--supernode-keys", "1000000")),
    Case("flower certs into a file", "exists and is not a folder", "give a folder for the certificates",
         argv=("flower", "certs", "{dir}/f"), files=_file("f", "mine")),
    Case("flower local with zero nodes", "--nodes must be an integer in [1, 1000]", "got 0",
         argv=("flower", "local", "{dir}/c.toml", "--nodes", "0"), files=_CONFIG),
    Case("flower local with a nan timeout", "--timeout must be a finite number of seconds", "got nan",
         argv=("flower", "local", "{dir}/c.toml", "--timeout", "nan"), files=_CONFIG),
    Case("flower app with a SuperLink address without a port", "--superlink 'no port' must be host:port",
         "--superlink 127.0.0.1:8000", argv=("flower", "app", "{dir}/c.toml", "{dir}/app", "--superlink", "no port"),
         files=_CONFIG),
    Case("flower app with port 70000", "must be host:port with a port in [1, 65535]", "127.0.0.1:8000",
         argv=("flower", "app", "{dir}/c.toml", "{dir}/app", "--superlink", "localhost:70000"), files=_CONFIG),
    # -- bench
    Case("bench codecs --dim -5", "--dim must be a number in [16,", "got -5",
         argv=("bench", "codecs", "--source", "laplace", "--dim", "-5", "--out", "{dir}/o")),
    Case("bench codecs --codecs nosuch", "--codecs: unknown name 'nosuch'", "known: ",
         argv=("bench", "codecs", "--source", "laplace", "--codecs", "nosuch", "--out", "{dir}/o")),
    Case("bench codecs --codecs misspelt", "--codecs: unknown name 'topkk'", "did you mean 'topk'",
         argv=("bench", "codecs", "--source", "laplace", "--codecs", "fp16,topkk", "--out", "{dir}/o")),
    Case("bench codecs --codecs ','", "names nothing", "give comma-separated names",
         argv=("bench", "codecs", "--source", "laplace", "--codecs", ",", "--out", "{dir}/o")),
    Case("bench codecs --repeats 0", "--repeats must be a number in [1, 1,000]", "got 0",
         argv=("bench", "codecs", "--source", "laplace", "--repeats", "0", "--out", "{dir}/o")),
    Case("bench codecs --out below a file", "is a file, not a folder", "choose another --out",
         argv=("bench", "codecs", "--source", "laplace", "--out", "{dir}/f/o"), files=_file("f", "mine")),
    Case("bench fuzz --cases 10**12", "--cases must be at most 1,000,000,000", "got 1000000000000",
         argv=("bench", "fuzz", "--cases", str(10**12))),
    Case("bench fuzz --jobs 0", "--jobs >= 1", "--cases must be >= 0", argv=("bench", "fuzz", "--jobs", "0")),
    Case("bench fuzz --jobs 100000", "--jobs must be at most 256", "got 100000", argv=("bench", "fuzz", "--jobs", "100000")),
    Case("bench fuzz --time-limit nan", "--time-limit must be a number in", "got nan",
         argv=("bench", "fuzz", "--time-limit", "nan")),
    Case("bench kill --points 0", "bench kill needs --points >= 1", "e.g. --points 20",
         argv=("bench", "kill", "--points", "0")),
    Case("bench kill --rounds 10**9", "--rounds must be at most 10,000", "got 1000000000",
         argv=("bench", "kill", "--rounds", str(10**9))),
    Case("bench engine --rounds 0", "--rounds must be a number in [1, 10,000]", "got 0",
         argv=("bench", "engine", "--rounds", "0", "--out", "{dir}/o")),
    Case("bench throughput --rounds -1", "--rounds and --memory-rounds must be >= 1", "e.g. --rounds 5",
         argv=("bench", "throughput", "--rounds", "-1", "--out", "{dir}/o")),
    Case("bench vectorize --clients 0", "--clients must be a number in [1, 100,000]", "got 0",
         argv=("bench", "vectorize", "--clients", "0")),
    Case("bench vectorize --steps a word", "argument --steps: invalid int value: 'ten'", "--help",
         argv=("bench", "vectorize", "--steps", "ten")),
    # -- init
    Case("init over an existing file", "already exists", "choose another path", argv=("init", "{dir}/f.toml"),
         files=_file("f.toml", "mine")),
    Case("init below a file", "file exists", "a file of that name is in the way", argv=("init", "{dir}/f/x.toml"),
         files=_file("f", "mine")),
]

