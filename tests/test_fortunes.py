"""The fortunes text source: the file format, directory walking, vocabulary, client assignment,
the natural partition, the character models (with FedKD/FedPer/SPATL), an end-to-end run that
learns, and the real installed Debian packages."""
from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

import fedsqueeze
from fedsqueeze.data import fortunes
from fedsqueeze.data.fortunes import (SEPARATOR, SYSTEM_DIR, Vocabulary, find_categories, load_fortunes,
                                      make_clients, most_frequent_baseline, parse_fortunes, split_entries, windows)
from fedsqueeze.data.partition import make_partition, natural
from fedsqueeze.errors import ConfigError, DataError
from fedsqueeze.models.zoo import build_model

REPO = Path(__file__).resolve().parents[1]


# ---- a fake fortune tree ------------------------------------------------------------------------
LEXICONS = {
    "animals": ["cat", "dog", "horse", "zebra", "mouse"],
    "food": ["bread", "cheese", "apple", "soup", "onion"],
    "de/tiere": ["katze", "hund", "pferd", "maus"],
    "de/essen": ["brot", "suppe", "apfel", "wurst"],
}


def sentences(words: list[str], n: int, seed: int) -> list[str]:
    """``n`` entries of 3-7 words from ``words``: easy to predict inside a word, not across words."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, rng.integers(3, 8))) + "." for _ in range(n)]


def write_tree(root: Path, entries: int = 60) -> Path:
    """English files at the top, German in de/, plus what must be skipped: .dat indexes, .u8
    symlinks, hidden files and the offensive off/ directory."""
    for i, (name, words) in enumerate(LEXICONS.items()):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(e + "\n%\n" for e in sentences(words, entries, i)))
        (root / f"{name}.dat").write_bytes(b"\x00\x00\x00\x02 binary strfile index")
        (root / f"{name}.u8").symlink_to(path.name)
    (root / ".hidden").write_text("not a category\n%\n")
    (root / "off").mkdir()
    (root / "off" / "rude").write_text("rude words\n%\n")
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "fortunes")


# ---- the file format ----------------------------------------------------------------------------
def test_parse_entries_between_percent_lines():
    text = "first line\n  indented second\n%\nsecond entry\n\nwith a blank line inside\n%\nlast, no closing percent"
    assert parse_fortunes(text) == ["first line\n  indented second", "second entry\n\nwith a blank line inside",
                                    "last, no closing percent"]


@pytest.mark.parametrize("text, entries", [
    ("a\r\n%\r\nb\r\n%\r\n", ["a", "b"]),                       # CRLF line ends
    ("a\r%\rb", ["a", "b"]),                                    # old Mac CR line ends
    ("%\na\n%\n%\n\n\n%\nb\n%\n", ["a", "b"]),                  # leading %, empty and blank-only entries
    ("\n\na\n\n%\n", ["a"]),                                    # surrounding empty lines dropped
    ("a\n% \t\nb\n", ["a", "b"]),                               # trailing blanks on the % line
    ("100% sure\n%%\n %\nc\n", ["100% sure\n%%\n %\nc"]),       # only a line that IS % separates
    ("", []),
    ("%\n%\n", []),
])
def test_parse_edge_cases(text, entries):
    assert parse_fortunes(text) == entries


def test_non_utf8_files_read_as_latin1(tmp_path):
    (tmp_path / "old").write_bytes("Gr\xfc\xdfe\n%\n".encode("latin-1"))
    assert load_fortunes_categories(tmp_path) == {"en/old": ("Grüße",)}


def load_fortunes_categories(root: Path, languages=("en",), **kw) -> dict[str, tuple[str, ...]]:
    return {c.name: c.entries for c in fortunes.load_categories(root, list(languages), **kw)}


def test_walk_skips_indexes_symlinks_hidden_and_offensive(tree):
    assert [(n, lang, p.name) for n, lang, p in find_categories(tree, ["en", "de"])] == [
        ("de/essen", "de", "essen"), ("de/tiere", "de", "tiere"),
        ("en/animals", "en", "animals"), ("en/food", "en", "food")]
    names = [n for n, _, _ in find_categories(tree, ["en"], offensive=True)]
    assert names == ["en/animals", "en/food", "en/off/rude"]
    assert fortunes.installed_languages(tree) == ["en", "de"]
    everything = load_fortunes(data_dir=tree, languages="all", seq_len=8)
    assert everything.client_names == ["de/essen", "de/tiere", "en/animals", "en/food"]


def test_missing_files_name_the_package(tmp_path):
    with pytest.raises(DataError, match=r"apt-get install fortunes fortunes-min"):
        load_fortunes(data_dir=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no 'en' fortune files .*no category files.*"
                                        r"apt-get install fortunes fortunes-min"):
        load_fortunes(data_dir=tmp_path / "empty")
    write_tree(tmp_path / "t")
    with pytest.raises(DataError, match=r"apt-get install fortunes-it.*installed languages: en, de"):
        load_fortunes(data_dir=tmp_path / "t", languages=["en", "it"])


@pytest.mark.parametrize("opts, match", [
    ({"languages": []}, "languages must be a list"),
    ({"languages": ["en", "en"]}, "lists a language twice"),
    ({"seq_len": 0}, "seq_len must be at least 1"),
    ({"test_fraction": 0.0}, r"test_fraction must be a number in \(0, 1\)"),
    ({"lowercase": "yes"}, "lowercase must be true or false"),
    ({"seq_len": 5000}, "no client .* has 10 windows of 5001 characters; lower data.options.seq_len"),
])
def test_bad_options(tree, opts, match):
    with pytest.raises(DataError, match=match):
        load_fortunes(data_dir=tree, **opts)


# ---- vocabulary ---------------------------------------------------------------------------------
def test_vocabulary_sorted_with_unknown_and_round_trip():
    vocab = Vocabulary.build(["hello world", "hé!", "zzz"], min_count=1)
    assert vocab.chars == tuple(sorted(set("hello worldhé!zzz")))
    assert len(vocab) == len(vocab.chars) + 1 and vocab.tokens()[0] == "<unk>"
    text = "hello héz world!"
    ids = vocab.encode(text)
    assert ids.dtype == np.uint8 and ids.min() >= 1
    assert vocab.decode(ids) == text
    assert vocab.decode(torch.from_numpy(ids)) == text
    assert vocab.encode(" ").tolist() == [1]                         # ' ' is the lowest code point
    assert vocab.decode(vocab.encode("hi€")) == "h\ufffd\ufffd"      # unknown chars -> id 0 -> U+FFFD
    assert len(vocab) == 12
    with pytest.raises(DataError, match=r"character id 12 is outside 0..11"):
        vocab.decode([3, 12])


def test_vocabulary_min_count_and_lowercase(tree):
    rare = Vocabulary.build(["aaab"], min_count=2)
    assert rare.chars == ("a",) and rare.encode("ab").tolist() == [1, 0]
    ds = load_fortunes(data_dir=tree, languages=["en", "de"], lowercase=True, seq_len=8, min_count=20)
    letters = set("".join(w for ws in LEXICONS.values() for w in ws))
    assert set(ds.vocab.chars) == letters | set(" .\n%")
    assert ds.num_classes == len(ds.vocab) == len(letters) + 5


# ---- clients and windows ------------------------------------------------------------------------
def test_windows_exact():
    ids = np.arange(10, dtype=np.uint8)
    x, y = windows(ids, 3, 2)
    assert x.tolist() == [[0, 1, 2], [2, 3, 4], [4, 5, 6], [6, 7, 8]] and y.tolist() == [3, 5, 7, 9]
    x, y = windows(ids, 9, 9)
    assert x.tolist() == [list(range(9))] and y.tolist() == [9]
    assert windows(ids, 10, 1)[0].shape == (0, 10)


def test_split_entries_contiguous_and_nonempty():
    entries = tuple("x" * n for n in (10, 10, 10, 10, 10, 10))
    assert [len(p) for p in split_entries(entries, 20)] == [2, 2, 2]
    assert split_entries(entries, 0) == [entries]
    huge = ("a", "b", "c" * 100, "d", "e")                           # 3 spans; the big entry swallows one
    pieces = split_entries(huge, 40)
    assert sum(pieces, ()) == huge and all(pieces)


def test_clients_hold_out_whole_entries_deterministically(tree):
    cats = fortunes.load_categories(tree, ["en", "de"])
    a = make_clients(cats, split_chars=1000, test_fraction=0.25, seed=0)
    assert a == make_clients(cats, split_chars=1000, test_fraction=0.25, seed=0)
    pieces = {cat.name: -(-sum(map(len, cat.entries)) // 1000) for cat in cats}  # ceil(chars / 1000)
    assert all(k >= 2 for k in pieces.values())
    assert [c.name for c in a] == [f"{n}#{j + 1}" for n, k in pieces.items() for j in range(k)]
    for cat in cats:
        mine = [c for c in a if c.name.split("#")[0] == cat.name]
        assert sorted(e for c in mine for e in c.train + c.test) == sorted(cat.entries)
        for c in mine:
            assert len(c.test) == int(np.floor(0.25 * (len(c.train) + len(c.test)) + 0.5))
    b = make_clients(cats, split_chars=1000, test_fraction=0.25, seed=1)
    assert [c.test for c in a] != [c.test for c in b]


def test_dataset_groups_are_deterministic_and_match_client_texts(tree):
    ds = load_fortunes(data_dir=tree, languages=["en", "de"], seq_len=8, stride=5, min_count=1)
    again = load_fortunes(data_dir=tree, languages=["en", "de"], seq_len=8, stride=5, min_count=1)
    assert ds.client_names == ["de/essen", "de/tiere", "en/animals", "en/food"]
    assert np.array_equal(ds.groups, again.groups) and torch.equal(ds.x_train, again.x_train)
    assert torch.equal(ds.x_test, again.x_test)
    assert ds.input_shape == (8,) and ds.x_train.dtype == torch.uint8 and ds.y_train.dtype == torch.int64
    # client c's windows are exactly the windows of its training text, in order
    cats = fortunes.load_categories(tree, ["en", "de"])
    clients = make_clients(cats, split_chars=0, test_fraction=0.1, seed=0)
    for c, client in enumerate(clients):
        x, y = windows(ds.vocab.encode("".join(e + SEPARATOR for e in client.train)), 8, 5)
        assert torch.equal(ds.x_train[torch.from_numpy(ds.groups == c)], torch.from_numpy(x))
        assert np.array_equal(ds.y_train[torch.from_numpy(ds.groups == c)].numpy(), y)
    # German windows hold only German words
    german = set("".join(LEXICONS["de/tiere"] + LEXICONS["de/essen"]))
    text = ds.vocab.decode(ds.x_train[torch.from_numpy(ds.groups == 1)])
    assert set(text) - german <= set(" .\n%")


def test_caps_pick_seeded_subsets(tree):
    full = load_fortunes(data_dir=tree, languages=["en", "de"], seq_len=8, min_count=1)
    capped = load_fortunes(data_dir=tree, languages=["en", "de"], seq_len=8, min_count=1,
                           max_clients=2, max_sequences=30, max_test_sequences=25)
    assert len(capped.client_names) == 2 and set(capped.client_names) < set(full.client_names)
    assert np.bincount(capped.groups).tolist() == [30, 30] and len(capped.y_test) == 25
    other = load_fortunes(data_dir=tree, languages=["en", "de"], seq_len=8, min_count=1,
                          max_clients=2, max_sequences=30, max_test_sequences=25, seed=5)
    assert not torch.equal(capped.x_train, other.x_train)


# ---- the natural partition ----------------------------------------------------------------------
def test_natural_partition_uses_the_dataset_groups():
    groups = np.array([1, 0, 1, 2, 2, 2])
    parts = natural(np.zeros(6, np.int64), 3, seed=0, groups=groups)
    assert [p.tolist() for p in parts] == [[1], [0, 2], [3, 4, 5]]
    part = make_partition("natural", np.zeros(6, np.int64), 3, seed=0, holdout_fraction=0.4, groups=groups)
    assert [sorted(t.tolist() + h.tolist()) for t, h in zip(part.train, part.holdout)] == [[1], [0, 2], [3, 4, 5]]
    assert [len(h) for h in part.holdout] == [0, 0, 1]


def test_natural_partition_errors_name_the_fix():
    with pytest.raises(DataError, match=r"data.num_clients = 5, but the dataset defines 3 natural clients; "
                                        r"set data.num_clients = 3"):
        natural(np.zeros(4, np.int64), 5, seed=0, groups=np.array([0, 1, 2, 2]))
    with pytest.raises(DataError, match=r"needs a dataset that defines its own clients .* use data.partition = 'iid'"):
        natural(np.zeros(4, np.int64), 2, seed=0)


def test_wrong_num_clients_in_a_run(tree, tmp_path):
    cfg = _config(tree, num_clients=7)
    with pytest.raises(DataError, match="set data.num_clients = 4"):
        fedsqueeze.run(cfg, run_dir=tmp_path / "run", plot=False)


# ---- models -------------------------------------------------------------------------------------
# embedding V·E + gates·H·(E + H) + two gate biases + head H·V + V, with V = 40
@pytest.mark.parametrize("name, hidden, params", [
    ("char_lstm", 128, 40 * 16 + 4 * 128 * (16 + 128) + 2 * 4 * 128 + 128 * 40 + 40),    # 80,552
    ("char_gru", 128, 40 * 16 + 3 * 128 * (16 + 128) + 2 * 3 * 128 + 128 * 40 + 40),     # 61,864
    ("char_lstm_small", 64, 40 * 8 + 4 * 64 * (8 + 64) + 2 * 4 * 64 + 64 * 40 + 40)])    # 21,864
def test_char_models_shapes_and_hooks(name, hidden, params):
    torch.manual_seed(0)
    model = build_model(name, (12,), 40)
    x = torch.randint(0, 40, (5, 12), dtype=torch.uint8)
    assert model(x).shape == (5, 40)
    assert model.features(x).shape == (5, hidden)
    assert torch.allclose(model.head(model.features(x)), model(x))
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.channel_groups() == []
    assert {k.split(".")[0] for k in model.state_dict()} == {"encoder", "head"}


def test_char_model_rejects_images_and_bad_sizes():
    with pytest.raises(ConfigError, match=r"'char_lstm' reads sequences of character ids .* 'fortunes'"):
        build_model("char_lstm", (1, 28, 28), 10)
    with pytest.raises(ConfigError, match=r"'char_gru': option hidden = 0 must be an integer >= 1"):
        build_model("char_gru", (12,), 10, hidden=0)


# ---- end to end ---------------------------------------------------------------------------------
def _config(tree: Path, **data) -> dict:
    return {
        "name": "t-fortunes", "seed": 0, "rounds": 6,
        "data": {"source": "fortunes", "dir": str(tree), "num_clients": 4, "partition": "natural",
                 "options": {"languages": ["en", "de"], "seq_len": 10, "stride": 3, "min_count": 1}, **data},
        "model": {"name": "char_lstm_small"},
        "train": {"clients_per_round": 4, "local_steps": 15, "batch_size": 32, "optimizer": "adam", "lr": 0.02},
        "algorithm": {"name": "fedavg"},
        "eval": {"every": 0, "personal_every": 0},
        "engine": {"checkpoint_every": 0},
    }


MARGIN = 0.40  # next-character accuracy must beat always-the-most-frequent-character by this much


def test_fedavg_learns_above_the_most_frequent_character(tree, tmp_path):
    cfg = _config(tree)
    ds = load_fortunes(data_dir=tree, **cfg["data"]["options"])
    top, baseline = most_frequent_baseline(ds)
    assert ds.vocab.tokens()[top] == " " and 0.1 < baseline < 0.3
    res = fedsqueeze.run(cfg, run_dir=tmp_path / "run", dataset=ds, plot=False)
    assert res.history[-1]["global_acc"] >= baseline + MARGIN


REAL_MARGIN = 0.07  # the same on real English fortunes, 8 short rounds (measured: 0.277 vs 0.157)


def test_fedavg_learns_on_a_real_subset(tmp_path):
    opts = {"languages": ["en"], "max_clients": 4, "seq_len": 16, "max_sequences": 500, "max_test_sequences": 2000}
    ds = load_fortunes(**opts)
    top, baseline = most_frequent_baseline(ds)
    assert ds.vocab.tokens()[top] == " " and len(ds.client_names) == 4
    cfg = {"name": "t-fortunes-real", "rounds": 8,
           "data": {"source": "fortunes", "num_clients": 4, "partition": "natural", "options": opts},
           "model": {"name": "char_lstm_small"},
           "train": {"clients_per_round": 4, "local_steps": 20, "batch_size": 32, "optimizer": "adam", "lr": 0.02},
           "eval": {"every": 0, "personal_every": 0}, "engine": {"checkpoint_every": 0}}
    res = fedsqueeze.run(cfg, run_dir=tmp_path / "run", dataset=ds, plot=False)
    assert res.history[-1]["global_acc"] >= baseline + REAL_MARGIN


@pytest.mark.parametrize("algorithm", [
    {"name": "fedkd", "teacher": "char_lstm", "teacher_options": {"hidden": 32}},
    {"name": "fedper"},
    {"name": "spatl", "num_clients": 4},
])
def test_split_algorithms_run_on_char_models(tree, tmp_path, algorithm):
    cfg = _config(tree)
    cfg.update(rounds=2, algorithm=algorithm)
    cfg["eval"] = {"every": 1, "personal_every": 2}
    cfg["train"]["local_steps"] = 3
    res = fedsqueeze.run(cfg, run_dir=tmp_path / "run", plot=False)
    last = res.history[-1]
    assert last["personal_acc"] is not None and 0.0 <= last["personal_acc"] <= 1.0
    assert res.ledger.total("up") > 0


# ---- the real Debian packages -------------------------------------------------------------------
def test_installed_packages_and_the_preset():
    """The packages scripts/setup.sh installs are there, and configs/fortunes-fedavg.toml's
    data.num_clients is the number of clients its options define."""
    names = {n for n, _, _ in find_categories(SYSTEM_DIR, ["en", "de", "es", "it"])}
    assert {"en/fortunes", "en/literature", "en/riddles"} <= names                  # fortunes-min
    assert {"en/computers", "en/science", "en/zippy"} <= names                      # fortunes
    assert {"de/zitate", "es/refranes", "it/italia"} <= names                      # fortunes-de/-es/-it
    assert not any("/off/" in n for n in names)
    preset = tomllib.loads((REPO / "configs" / "fortunes-fedavg.toml").read_text())
    ds = load_fortunes(**preset["data"]["options"])
    assert len(ds.client_names) == preset["data"]["num_clients"]
    assert ds.num_classes == 120 and ds.x_train.shape[1] == 80
    top, baseline = most_frequent_baseline(ds)
    assert ds.vocab.tokens()[top] == " " and 0.13 < baseline < 0.17
