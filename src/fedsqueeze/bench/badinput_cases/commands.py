"""The other commands' arguments: ``compare`` suites, ``flower``, ``bench`` and ``init``."""
from __future__ import annotations

from fedsqueeze.bench.badinput import Case
from fedsqueeze.bench.badinput_cases.writers import CONFIG, NESTED, SUITE, all_of, deep, file, suite

ONE_RUN = '[[run]]\nname = "a"\n'  # a suite of one run, "a"
CERTS = ("flower", "certs", "{dir}/certs")
CODECS = ("bench", "codecs", "--source", "laplace")


def _compare(name: str, problem: str, fix: str, text: str = ONE_RUN, *args: str) -> Case:
    """``fedsqueeze compare`` of the suite ``text`` (on the base config b.toml), with ``args`` after it."""
    return Case(name, problem, fix, argv=(*SUITE, *args), files=suite(text))


CASES: list[Case] = [
    # -- compare suites
    _compare("suite with base_set = 3", "suite key 'base_set' = 3 must be a table", "[base_set]",
             "base_set = 3\n" + ONE_RUN),
    _compare("suite with run = 3", "suite key 'run' = 3 must be [[run]] tables", "[[run]]", "run = 3\n"),
    _compare("suite run with set = 3", "set must be a table of dotted keys", 'set = {"codec.up"',
             ONE_RUN + "set = 3\n"),
    _compare("suite with budget_mb = inf", "budget_mb must be a number of megabytes", "> 0",
             ONE_RUN + "budget_mb = inf\n"),
    Case("suite with a missing base", "base config 'nope.toml' not found", "looked at",
         argv=SUITE, files=file("s.toml", 'base = "nope.toml"\n' + ONE_RUN)),
    Case("suite not UTF-8", "is not utf-8 text", "save it as utf-8", argv=SUITE, files=file("s.toml", b"\xff\xfe")),
    _compare("suite nested 2,000 deep", NESTED, "a few levels", f"x = {deep(2000)}\n"),
    _compare("suite run named ../x", "contains '/'", "folders are chosen with --out", '[[run]]\nname = "../x"\n'),
    _compare("suite with network = 3", "suite key 'network' = 3 must be", "profile names", "network = 3\n" + ONE_RUN),
    _compare("suite target above one", "target must be an accuracy in (0, 1]", "target = 0.8",
             "target = 2\n" + ONE_RUN),
    _compare("suite run that changes the seed", "would change the federation", "change the base instead",
             ONE_RUN + "set = {seed = 3}\n"),
    Case("compare --out below a file", "not a directory", "a part of that path is a file",
         argv=("compare", "{dir}/s.toml", "--quiet", "--out", "{dir}/f/out"),
         files=all_of(file("f", "mine"), suite(ONE_RUN))),
    _compare("compare --device misspelt", "'engine.device' = 'gpu' is invalid", "'cuda:n'", ONE_RUN, "--device", "gpu"),
    _compare("compare --only an unknown run", "has no run 'zz'", "runs: a", ONE_RUN, "--only", "zz"),
    _compare("suite run label a table", "label must be a string", 'label = "fedavg', ONE_RUN + "label = {x = 1}\n"),
    _compare("compare --seeds a word", "--seeds: 'abc' is not a comma-separated list", "--seeds 0,1,2",
             ONE_RUN, "--seeds", "abc"),
    _compare("compare --seeds repeated", "seeds must be distinct", "--seeds 0,1,2", ONE_RUN, "--seeds", "1,1"),
    _compare("compare --seeds beyond 64 bits", "has an entry that is not an integer >= 0 (at most 2**63 - 1)",
             "--seeds 0,1,2", ONE_RUN, "--seeds", str(2**70)),
    _compare("suite seeds = 3", "suite key 'seeds' must be a non-empty list", "seeds = [0, 1, 2]",
             "seeds = 3\n" + ONE_RUN),
    _compare("compare --only an unknown seed", "seed '7' is not one of the suite's seeds", "entry/seedn",
             ONE_RUN, "--seeds", "0,1", "--only", "a/seed7"),
    # -- flower
    Case("flower certs --hosts ','", "--hosts ',' names no host", "--hosts 127.0.0.1,localhost",
         argv=(*CERTS, "--hosts", ",")),
    Case("flower certs with a bad host", "is neither an ip address nor a dns name", "--hosts 127.0.0.1",
         argv=(*CERTS, "--hosts", "local host!")),
    Case("flower certs with negative keys", "--supernode-keys must be >= 0", "got -1",
         argv=(*CERTS, "--supernode-keys", "-1")),
    Case("flower certs with a million keys", "--supernode-keys must be at most 1000", "got 1000000",
         argv=(*CERTS, "--supernode-keys", "1000000")),
    Case("flower certs into a file", "exists and is not a folder", "give a folder for the certificates",
         argv=("flower", "certs", "{dir}/f"), files=file("f", "mine")),
    Case("flower local with zero nodes", "--nodes must be an integer in [1, 1000]", "got 0",
         argv=("flower", "local", "{dir}/c.toml", "--nodes", "0"), files=CONFIG),
    Case("flower local with a nan timeout", "--timeout must be a finite number of seconds", "got nan",
         argv=("flower", "local", "{dir}/c.toml", "--timeout", "nan"), files=CONFIG),
    Case("flower app with a SuperLink address without a port", "--superlink 'no port' must be host:port",
         "--superlink 127.0.0.1:8000", argv=("flower", "app", "{dir}/c.toml", "{dir}/app", "--superlink", "no port"),
         files=CONFIG),
    Case("flower app with port 70000", "must be host:port with a port in [1, 65535]", "127.0.0.1:8000",
         argv=("flower", "app", "{dir}/c.toml", "{dir}/app", "--superlink", "localhost:70000"), files=CONFIG),
    # -- bench
    Case("bench codecs --dim -5", "--dim must be a number in [16,", "got -5",
         argv=(*CODECS, "--dim", "-5", "--out", "{dir}/o")),
    Case("bench codecs --codecs nosuch", "--codecs: unknown name 'nosuch'", "known: ",
         argv=(*CODECS, "--codecs", "nosuch", "--out", "{dir}/o")),
    Case("bench codecs --codecs misspelt", "--codecs: unknown name 'topkk'", "did you mean 'topk'",
         argv=(*CODECS, "--codecs", "fp16,topkk", "--out", "{dir}/o")),
    Case("bench codecs --codecs ','", "names nothing", "give comma-separated names",
         argv=(*CODECS, "--codecs", ",", "--out", "{dir}/o")),
    Case("bench codecs --repeats 0", "--repeats must be a number in [1, 1,000]", "got 0",
         argv=(*CODECS, "--repeats", "0", "--out", "{dir}/o")),
    Case("bench codecs --out below a file", "is a file, not a folder", "choose another --out",
         argv=(*CODECS, "--out", "{dir}/f/o"), files=file("f", "mine")),
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
         files=file("f.toml", "mine")),
    Case("init below a file", "file exists", "a file of that name is in the way", argv=("init", "{dir}/f/x.toml"),
         files=file("f", "mine")),
]
