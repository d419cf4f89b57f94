"""Debian's fortune cookies as federated next-character prediction with naturally non-IID clients.

The ``fortunes`` packages ship plain-text *category files* (``/usr/share/games/fortunes/<name>``
for English, ``.../<lang>/<name>`` for the language packages ``fortunes-de``, ``fortunes-it``,
``fortunes-es``, ...). A file holds entries separated by lines holding only ``%`` (the format
``strfile`` indexes). Each category file of each language is one natural client — like the
speakers of LEAF's Shakespeare benchmark, clients differ in language, topic, style and size (from
a few hundred characters to 2 MB). ``split_chars`` optionally cuts large categories into several
clients of about that many characters (contiguous runs of whole entries).

Pipeline, every step deterministic (``seed`` is ``data.options.seed``, not the run seed):

1. Read the category files of the chosen ``languages`` (skipping ``.dat`` indexes, symlinks such as
   the ``.u8`` aliases, hidden files, and the offensive ``off/`` directories unless
   ``offensive = true``), UTF-8 (Latin-1 if a file is not valid UTF-8), optionally lower-cased.
2. Vocabulary: every character occurring at least ``min_count`` times in all loaded files, sorted by
   code point; id 0 is ``<unk>`` for the rest. So the vocabulary depends only on the languages,
   ``lowercase`` and ``min_count`` — not on which clients a run keeps.
3. Clients: each category (or piece of one) holds out ``round(test_fraction * entries)`` random whole
   entries for the global test set; the rest is its training text. Holding out entries, not windows,
   keeps test text out of every training window.
4. Sequences: a client's text is its entries each followed by ``"\\n%\\n"`` (the file's own layout);
   windows of ``seq_len`` character ids every ``stride`` characters are the inputs ``x``, the
   character after each window the target ``y``. Clients with fewer than ``min_sequences`` training
   windows are dropped; ``max_clients`` keeps a seeded random subset of the rest (in name order),
   ``max_sequences`` a seeded random subset of each client's windows, ``max_test_sequences`` of the
   pooled test windows.

``x`` holds character ids (uint8 when the vocabulary has at most 256 entries), so the input shape
is ``(seq_len,)`` and ``num_classes`` is the vocabulary size: use a text model (``char_lstm``,
``char_gru``, ``char_lstm_small``). The dataset defines its own clients (``groups``: the client of
each training window), which ``data.partition = "natural"`` uses; ``data.num_clients`` must then
equal their number. The engine's per-client holdout (``data.holdout_fraction``) is drawn from each
client's training windows, as for any dataset.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsqueeze.data.partition import check_int
from fedsqueeze.data.sources import Dataset
from fedsqueeze.errors import DataError
from fedsqueeze.seeding import numpy_rng

SYSTEM_DIR = Path("/usr/share/games/fortunes")
ENGLISH = "en"              # the top-level directory (packages fortunes, fortunes-min)
OFFENSIVE_DIR = "off"       # per-language offensive sections, skipped unless asked for
SEPARATOR = "\n%\n"         # what follows every entry in a client's text, as in the files
UNK = "<unk>"
UNK_CHAR = "\ufffd"         # what decode() writes for the unknown id


def package_for(language: str) -> str:
    """The Debian package(s) that install a language's fortune files."""
    return "fortunes fortunes-min" if language == ENGLISH else f"fortunes-{language}"


# ---- the file format ----------------------------------------------------------------------------
def parse_fortunes(text: str) -> list[str]:
    """The entries of a fortune file: the text between lines holding only ``%``.

    CRLF and CR line ends count as LF; a ``%`` line may carry trailing blanks. Each entry loses its
    leading and trailing empty lines (indentation and inner blank lines stay); blank entries — two
    ``%`` lines in a row, a leading ``%`` — are dropped; a last entry without a closing ``%`` counts.
    """
    entries: list[str] = []
    current: list[str] = []

    def flush() -> None:
        entry = "\n".join(current).strip("\n")
        if entry.strip():
            entries.append(entry)
        current.clear()

    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line.rstrip(" \t") == "%":
            flush()
        else:
            current.append(line)
    flush()
    return entries


def read_text(path: Path) -> str:
    """A fortune file's text: UTF-8, or Latin-1 for the few old files that are not UTF-8."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check its permissions") from e
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


@dataclass(frozen=True)
class Category:
    """One category file: ``name`` is ``<language>/<file>`` (a ``.fortunes`` suffix dropped)."""

    name: str
    language: str
    entries: tuple[str, ...]


def _category_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and not p.is_symlink() and not p.name.startswith(".")
                  and not p.name.endswith(".dat"))


def installed_languages(root: Path) -> list[str]:
    """Languages present under ``root``: ``en`` if it holds category files, then its subdirectories."""
    if not root.is_dir():
        return []
    langs = [ENGLISH] if _category_files(root) else []
    return langs + sorted(p.name for p in root.iterdir()
                          if p.is_dir() and p.name != OFFENSIVE_DIR and not p.name.startswith("."))


def find_categories(root: Path, languages: list[str], *, offensive: bool = False) -> list[tuple[str, str, Path]]:
    """(name, language, path) of every category file of ``languages`` under ``root``, sorted by name."""
    found: list[tuple[str, str, Path]] = []
    for lang in languages:
        directory = root if lang == ENGLISH else root / lang
        files = _category_files(directory) if directory.is_dir() else []
        if not files:
            where = "no such directory" if not directory.is_dir() else "no category files"
            have = installed_languages(root)
            raise DataError(
                f"no {lang!r} fortune files in {directory} ({where}); install them with "
                f"`sudo apt-get install {package_for(lang)}` (`apt-cache search fortunes` lists the languages "
                "Debian packages), or point data.dir at a directory of fortune files"
                + (f" (installed languages: {', '.join(have)})" if have else ""))
        if offensive and (directory / OFFENSIVE_DIR).is_dir():
            files += _category_files(directory / OFFENSIVE_DIR)
        for path in files:
            stem = path.name.removesuffix(".fortunes")
            sub = "off/" if path.parent.name == OFFENSIVE_DIR and path.parent != root else ""
            found.append((f"{lang}/{sub}{stem}", lang, path))
    return sorted(found)


def load_categories(root: Path, languages: list[str], *, offensive: bool = False,
                    lowercase: bool = False) -> list[Category]:
    cats = []
    for name, lang, path in find_categories(root, languages, offensive=offensive):
        text = read_text(path)
        cats.append(Category(name, lang, tuple(parse_fortunes(text.lower() if lowercase else text))))
    return cats


# ---- vocabulary ---------------------------------------------------------------------------------
def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


@dataclass(frozen=True)
class Vocabulary:
    """Character ids: 0 = ``<unk>``, then ``chars`` in code-point order (id i + 1 = ``chars[i]``)."""

    chars: tuple[str, ...]
    _points: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        points = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        if any(len(c) != 1 for c in self.chars) or np.any(np.diff(points.astype(np.int64)) <= 0):
            raise DataError("a vocabulary needs distinct single characters in code-point order")
        object.__setattr__(self, "_points", points)

    @classmethod
    def build(cls, texts: list[str], min_count: int = 1) -> "Vocabulary":
        """Every character occurring at least ``min_count`` times in ``texts``."""
        counts: Counter[int] = Counter()
        for text in texts:
            points, n = np.unique(_code_points(text), return_counts=True)
            counts.update(dict(zip(points.tolist(), n.tolist())))
        return cls(tuple(chr(p) for p in sorted(p for p, n in counts.items() if n >= min_count)))

    def __len__(self) -> int:
        return len(self.chars) + 1

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8) if len(self) <= 256 else np.dtype(np.int32)

    def tokens(self) -> list[str]:
        """The token of every id: ``<unk>`` then the characters."""
        return [UNK, *self.chars]

    def encode(self, text: str) -> np.ndarray:
        """Character ids of ``text`` (characters outside the vocabulary become 0)."""
        points = _code_points(text)
        idx = np.searchsorted(self._points, points)
        known = idx < len(self._points)
        known[known] = self._points[idx[known]] == points[known]
        return np.where(known, idx + 1, 0).astype(self.dtype)

    def decode(self, ids: np.ndarray | torch.Tensor | list[int]) -> str:
        """Text of ``ids`` (0 becomes U+FFFD)."""
        table = [UNK_CHAR, *self.chars]
        arr = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64).ravel()
        if arr.size and (arr.min() < 0 or arr.max() >= len(table)):
            raise DataError(f"character id {int(arr.max() if arr.max() >= len(table) else arr.min())} is outside "
                            f"0..{len(table) - 1}; these ids come from a different vocabulary")
        return "".join(table[i] for i in arr.tolist())


# ---- clients and sequences ----------------------------------------------------------------------
@dataclass(frozen=True)
class Client:
    name: str
    train: tuple[str, ...]
    test: tuple[str, ...]


def split_entries(entries: tuple[str, ...], split_chars: int) -> list[tuple[str, ...]]:
    """Contiguous runs of whole entries of about ``split_chars`` characters each.

    The text is cut into ceil(total / split_chars) equal spans (one if ``split_chars`` is 0) and each
    entry joins the span its middle character falls in; spans no entry falls in are dropped (an entry
    longer than a span), so there can be fewer runs, but none is empty.
    """
    sizes = np.array([len(e) for e in entries], dtype=np.int64)
    total = int(sizes.sum())
    pieces = 1 if split_chars <= 0 or total == 0 else math.ceil(total / split_chars)
    if pieces == 1:
        return [entries] if entries else []
    middles = np.cumsum(sizes) - sizes / 2
    span = np.minimum((middles * pieces / total).astype(np.int64), pieces - 1)
    _, piece = np.unique(span, return_inverse=True)  # renumber the non-empty spans 0, 1, 2, ...
    return [tuple(e for e, p in zip(entries, piece) if p == j) for j in range(int(piece.max()) + 1)]


def make_clients(categories: list[Category], *, split_chars: int, test_fraction: float, seed: int) -> list[Client]:
    """Clients (categories, or pieces of them), each holding out a seeded random share of its entries."""
    clients = []
    for cat in categories:
        pieces = split_entries(cat.entries, split_chars)
        for j, entries in enumerate(pieces):
            name = cat.name if len(pieces) == 1 else f"{cat.name}#{j + 1}"
            n_test = int(math.floor(test_fraction * len(entries) + 0.5)) if len(entries) > 1 else 0
            held = set(numpy_rng(seed, "fortunes", "test", name).permutation(len(entries))[:n_test].tolist())
            clients.append(Client(name, tuple(e for i, e in enumerate(entries) if i not in held),
                                  tuple(e for i, e in enumerate(entries) if i in held)))
    return clients


def client_text(entries: tuple[str, ...]) -> str:
    return "".join(e + SEPARATOR for e in entries)


def windows(ids: np.ndarray, seq_len: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``ids[s : s + seq_len]`` and targets ``ids[s + seq_len]`` for s = 0, stride, 2·stride, ..."""
    n = (len(ids) - seq_len - 1) // stride + 1 if len(ids) > seq_len else 0
    starts = np.arange(n, dtype=np.int64) * stride
    if n == 0:
        return np.zeros((0, seq_len), ids.dtype), np.zeros(0, ids.dtype)
    x = np.lib.stride_tricks.sliding_window_view(ids, seq_len)[starts]
    return np.ascontiguousarray(x), ids[starts + seq_len]


def _subset(n: int, cap: int, *keys: int | str) -> np.ndarray:
    """All of 0..n-1, or a seeded random ``cap`` of them in ascending order."""
    if cap <= 0 or n <= cap:
        return np.arange(n)
    return np.sort(numpy_rng(*keys).choice(n, cap, replace=False))


@dataclass
class TextDataset(Dataset):
    """A :class:`Dataset` of character windows that defines its own clients.

    ``groups[i]`` is the client of training window i (for ``partition = "natural"``),
    ``client_names[c]`` names client c, ``vocab`` turns ids back into text.
    """

    vocab: Vocabulary
    groups: np.ndarray
    client_names: list[str]


# ---- option checks ------------------------------------------------------------------------------
def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise DataError(f"data.options.{name} must be true or false, got {value!r}")
    return value


def _check_languages(value: Any, root: Path) -> list[str]:
    if value == "all":
        langs = installed_languages(root)
        if not langs:
            raise DataError(f"no fortune files in {root}; install them with "
                            f"`sudo apt-get install {package_for(ENGLISH)}` (and e.g. fortunes-de, fortunes-it, "
                            "fortunes-es), or point data.dir at them")
        return langs
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value):
        raise DataError(f"data.options.languages must be a list of language names such as [\"en\", \"de\"] or \"all\", "
                        f"got {value!r}")
    if len(set(value)) != len(value):
        raise DataError(f"data.options.languages lists a language twice: {value!r}; list each once")
    return list(value)


def load_fortunes(data_dir: str | os.PathLike[str] | None = None, languages: Any = (ENGLISH,), seq_len: int = 80,
                  stride: int = 0, split_chars: int = 0, min_sequences: int = 10, max_clients: int = 0,
                  max_sequences: int = 0, test_fraction: float = 0.1, max_test_sequences: int = 0,
                  min_count: int = 20, lowercase: bool = False, offensive: bool = False, seed: int = 0,
                  **unused: Any) -> TextDataset:
    """Debian fortune cookies: next-character prediction, one client per category file (and language).

    ``stride`` 0 means ``seq_len`` (non-overlapping windows); 0 for ``split_chars``, ``max_clients``,
    ``max_sequences`` and ``max_test_sequences`` means no limit. See the module docstring.
    """
    root = Path(data_dir).expanduser() if data_dir else SYSTEM_DIR
    seq_len = check_int("data.options.seq_len", seq_len, 1)
    stride = check_int("data.options.stride", stride, 0) or seq_len
    split_chars = check_int("data.options.split_chars", split_chars, 0)
    min_sequences = check_int("data.options.min_sequences", min_sequences, 1)
    max_clients = check_int("data.options.max_clients", max_clients, 0)
    max_sequences = check_int("data.options.max_sequences", max_sequences, 0)
    max_test_sequences = check_int("data.options.max_test_sequences", max_test_sequences, 0)
    min_count = check_int("data.options.min_count", min_count, 1)
    seed = check_int("data.options.seed", seed, 0)
    lowercase, offensive = _check_bool("lowercase", lowercase), _check_bool("offensive", offensive)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise DataError(f"data.options.test_fraction must be a number in (0, 1), got {test_fraction!r} "
                        "(the share of each client's entries held out for the global test set; 0.1 is typical)")
    langs = _check_languages(languages, root)

    categories = load_categories(root, langs, offensive=offensive, lowercase=lowercase)
    vocab = Vocabulary.build([client_text(c.entries) for c in categories], min_count)  # the texts as encoded
    clients = make_clients(categories, split_chars=split_chars, test_fraction=float(test_fraction), seed=seed)

    data = []  # (name, train x, train y, test x, test y) of every client big enough
    for c in clients:
        xtr, ytr = windows(vocab.encode(client_text(c.train)), seq_len, stride)
        if len(ytr) < min_sequences:
            continue
        keep = _subset(len(ytr), max_sequences, seed, "fortunes", "sequences", c.name)
        xte, yte = windows(vocab.encode(client_text(c.test)), seq_len, stride)
        data.append((c.name, xtr[keep], ytr[keep], xte, yte))
    if not data:
        raise DataError(f"no client of languages {langs} has {min_sequences} windows of {seq_len + 1} characters; "
                        "lower data.options.seq_len or data.options.min_sequences")
    chosen = _subset(len(data), max_clients, seed, "fortunes", "clients")
    data = [data[i] for i in chosen]

    x_test = np.concatenate([d[3] for d in data])
    y_test = np.concatenate([d[4] for d in data])
    if len(y_test) == 0:
        raise DataError(f"the held-out entries hold no window of {seq_len + 1} characters, so there is no test set; "
                        "raise data.options.test_fraction or lower data.options.seq_len")
    test_keep = _subset(len(y_test), max_test_sequences, seed, "fortunes", "test-sequences")
    sizes = [len(d[2]) for d in data]
    return TextDataset(
        name="fortunes",
        x_train=torch.from_numpy(np.concatenate([d[1] for d in data])),
        y_train=torch.from_numpy(np.concatenate([d[2] for d in data]).astype(np.int64)),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test[test_keep])),
        y_test=torch.from_numpy(y_test[test_keep].astype(np.int64)),
        num_classes=len(vocab),
        vocab=vocab,
        groups=np.repeat(np.arange(len(data), dtype=np.int64), sizes),
        client_names=[d[0] for d in data],
    )


def most_frequent_baseline(dataset: Dataset) -> tuple[int, float]:
    """(the most frequent training target, the test accuracy of always predicting it)."""
    top = int(torch.bincount(dataset.y_train, minlength=dataset.num_classes).argmax())
    return top, float((dataset.y_test == top).float().mean())
