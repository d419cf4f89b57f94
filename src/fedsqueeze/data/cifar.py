"""CIFAR-10 and CIFAR-100 from the *binary* release files, plus the standard training augmentation.

The files are never downloaded (and the Python "pickle" release is never read): fetch the binary
version once from https://www.cs.toronto.edu/~kriz/cifar.html and unpack it. A record is
``label byte(s) + 3072 pixel bytes``: the 32x32 red plane, then green, then blue, each row-major.

- CIFAR-10 (``cifar-10-binary.tar.gz`` -> ``cifar-10-batches-bin/``): ``data_batch_1.bin`` ...
  ``data_batch_5.bin`` (training) and ``test_batch.bin``; 1 label byte (0..9) per record.
- CIFAR-100 (``cifar-100-binary.tar.gz`` -> ``cifar-100-binary/``): ``train.bin`` and ``test.bin``;
  a coarse label byte (0..19, the superclass) then a fine label byte (0..99) per record.

A file may hold any whole number (>= 1) of records, so subsets and test fixtures load; a partial
record (a truncated file, or extra bytes) or a label out of range is rejected with a one-line
:class:`DataError` that names the file and the fix.

The files are looked for, in order, in the ``data_dir`` argument (``data.dir``, ``--data-dir``; it
must then exist), ``$FEDSQUEEZE_DATA`` and ``$XDG_CACHE_HOME/fedsqueeze`` (default ``~/.cache/...``);
in each, the folder itself and then its subfolder of the archive's name (``cifar-10-batches-bin``
or ``cifar-100-binary``). The first folder holding every file wins.

Normalisation: fixed per-channel constants, the mean and standard deviation of each channel over
the full 50,000-image training set after scaling to [0, 1] (so a client never needs global
statistics, and a subset of the files is normalised exactly as the full set is).

Augmentation (``augment = true``, the default for CIFAR): per training batch, a random 32x32 crop
of the image zero-padded by 4 pixels (zero = a black pixel, i.e. ``-mean/std`` after
normalisation), then a horizontal flip with probability 1/2 — the standard CIFAR recipe. It runs as
tensor ops on the batch's device; its random draws come from a CPU generator seeded from the
client's seed, so a run is reproducible and identical on every device.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsqueeze.data.sources import ENV_VAR, Dataset
from fedsqueeze.errors import DataError

URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
PIXELS = 3 * 32 * 32
# Per-channel (R, G, B) mean and std of the training images scaled to [0, 1].
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


class _Spec:
    def __init__(self, name: str, archive: str, folder: str, train: tuple[str, ...], test: str,
                 label_bytes: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.name, self.archive, self.folder = name, archive, folder
        self.train, self.test, self.label_bytes = train, test, label_bytes
        self.mean, self.std = mean, std

    @property
    def files(self) -> tuple[str, ...]:
        return self.train + (self.test,)

    @property
    def record(self) -> int:
        return self.label_bytes + PIXELS


CIFAR10 = _Spec("CIFAR-10", "cifar-10-binary.tar.gz", "cifar-10-batches-bin",
                tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin", 1,
                CIFAR10_MEAN, CIFAR10_STD)
CIFAR100 = _Spec("CIFAR-100", "cifar-100-binary.tar.gz", "cifar-100-binary", ("train.bin",), "test.bin", 2,
                 CIFAR100_MEAN, CIFAR100_STD)


# ---- augmentation ------------------------------------------------------------------------------
class RandomCropFlip:
    """Random ``HxW`` crop of the image padded by ``padding`` on every side (pad value ``fill``
    per channel), then a horizontal flip with probability 1/2; one draw per image.

    Called as ``augment(x, generator)`` on an ``(N, C, H, W)`` batch: the offsets (``randint(0,
    2*padding + 1)`` for rows, then for columns) and flips (``randint(0, 2)``) are drawn on the CPU
    ``generator``; the cropping is one gather on ``x.device``. A plain class, so it pickles.
    """

    def __init__(self, padding: int = 4, fill: tuple[float, ...] | float = 0.0) -> None:
        self.padding = int(padding)
        self.fill = fill

    def draws(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row offsets, column offsets, flips) for ``n`` images, in the order they are drawn."""
        span = 2 * self.padding + 1
        oy = torch.randint(0, span, (n,), generator=generator)
        ox = torch.randint(0, span, (n,), generator=generator)
        flip = torch.randint(0, 2, (n,), generator=generator).bool()
        return oy, ox, flip

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        p, dev = self.padding, x.device
        oy, ox, flip = (t.to(dev) for t in self.draws(n, generator))
        fill = torch.as_tensor(self.fill, dtype=x.dtype, device=dev).reshape(-1)
        padded = fill.reshape(1, -1, 1, 1).expand(n, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p:p + h, p:p + w] = x
        cols = torch.arange(w, device=dev)
        cols = torch.where(flip[:, None], cols.flip(0), cols) + ox[:, None]     # (n, w)
        rows = torch.arange(h, device=dev) + oy[:, None]                        # (n, h)
        images = torch.arange(n, device=dev)[:, None, None, None]
        channels = torch.arange(c, device=dev)[None, :, None, None]
        return padded[images, channels, rows[:, None, :, None], cols[:, None, None, :]]


# ---- files -------------------------------------------------------------------------------------
def candidate_dirs(spec: _Spec, data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The folders searched for a CIFAR release, in priority order."""
    bases: list[Path] = []
    if data_dir is not None:
        bases.append(Path(data_dir).expanduser())
    if os.environ.get(ENV_VAR):
        bases.append(Path(os.environ[ENV_VAR]).expanduser())
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    bases.append(Path(cache).expanduser() / "fedsqueeze")
    return [d for b in bases for d in (b, b / spec.folder)]


def _fix(spec: _Spec) -> str:
    return (f"download the binary version ({spec.archive}) from {URL}, unpack it "
            f"(`tar xzf {spec.archive}`) and point --data-dir / data.dir at the {spec.folder} folder")


def locate(spec: _Spec, data_dir: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Find every file of a CIFAR release, or raise a DataError that says where we looked."""
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise DataError(f"data_dir must be a path (str), not {type(data_dir).__name__}; "
                        f"pass the folder holding the {spec.name} binary files")
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise DataError(f"data.dir {str(data_dir)!r} does not exist or is not a folder; fix the path (--data-dir), "
                        f"or leave it empty to search ${ENV_VAR} and the cache folder")
    searched = []
    for directory in candidate_dirs(spec, data_dir):
        found = {f: directory / f for f in spec.files if (directory / f).is_file()}
        if len(found) == len(spec.files):
            return found
        if not directory.is_dir():
            searched.append(f"{directory} (no such directory)")
        elif found:
            missing = [f for f in spec.files if f not in found]
            searched.append(f"{directory} (incomplete: missing {', '.join(missing)})")
        else:
            searched.append(f"{directory} (no {spec.name} files)")
    raise DataError(f"{spec.name} not found: need {', '.join(spec.files)}; searched, in order: "
                    + "; ".join(searched) + ". Fix: " + _fix(spec))


def read_records(path: str | os.PathLike[str], label_bytes: int,
                 label_limits: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Parse one CIFAR binary file into uint8 images ``(N, 3, 32, 32)`` and labels ``(N, label_bytes)``.

    ``label_limits[i]`` is the number of classes of label byte i; a larger label is rejected, as is
    a file that is empty or not a whole number of records.
    """
    path = Path(path)
    record = label_bytes + PIXELS
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check its permissions") from e
    if raw[:2] == b"\x1f\x8b":
        raise DataError(f"{path}: gzip-compressed; the binary release's files are plain: unpack the .tar.gz "
                        "with `tar xzf` and use the files inside")
    whole, extra = divmod(len(raw), record)
    if whole == 0 or extra:
        what = "empty" if not raw else (f"{len(raw)} bytes is not a whole number of {record}-byte records "
                                        f"({whole} records + {extra} bytes: truncated, or extra bytes)")
        raise DataError(f"{path}: {what}; replace it with a good copy (re-download the binary version from {URL})")
    table = np.frombuffer(raw, np.uint8).reshape(whole, record)
    labels = table[:, :label_bytes]
    for i, limit in enumerate(label_limits):
        bad = np.flatnonzero(labels[:, i] >= limit)
        if bad.size:
            r = int(bad[0])
            kind = "CIFAR-100" if label_bytes == 2 else "CIFAR-10"
            raise DataError(f"{path}: record {r} has label {int(labels[r, i])} outside 0..{limit - 1} "
                            f"(corrupt, or not a {kind} file); replace it with a good copy from {URL}")
    return table[:, label_bytes:].reshape(whole, 3, 32, 32), labels


def _normalise(images: np.ndarray, spec: _Spec) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32)).div_(255.0)
    mean = torch.tensor(spec.mean).reshape(1, 3, 1, 1)
    std = torch.tensor(spec.std).reshape(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise DataError(f"data.options.{name} must be true or false, got {value!r}")
    return value


def _augmenter(spec: _Spec, augment: Any) -> RandomCropFlip | None:
    if not _check_bool("augment", augment):
        return None
    return RandomCropFlip(4, tuple(-m / s for m, s in zip(spec.mean, spec.std)))


def _load(spec: _Spec, data_dir: Any, column: int, limits: tuple[int, ...], num_classes: int, name: str,
          augment: Any) -> Dataset:
    aug = _augmenter(spec, augment)
    files = locate(spec, data_dir)
    parts = [read_records(files[f], spec.label_bytes, limits) for f in spec.train]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1][:, column] for p in parts])
    xte, lte = read_records(files[spec.test], spec.label_bytes, limits)
    return Dataset(name=name, x_train=_normalise(xtr, spec), y_train=torch.from_numpy(ytr.astype(np.int64)),
                   x_test=_normalise(xte, spec), y_test=torch.from_numpy(lte[:, column].astype(np.int64)),
                   num_classes=num_classes, augment=aug)


def load_cifar10(data_dir: str | os.PathLike[str] | None = None, augment: bool = True, **unused: Any) -> Dataset:
    """CIFAR-10 (Krizhevsky, 2009): 50,000/10,000 colour 32x32 images of 10 classes (binary release)."""
    return _load(CIFAR10, data_dir, 0, (10,), 10, "cifar10", augment)


def load_cifar100(data_dir: str | os.PathLike[str] | None = None, augment: bool = True, labels: str = "fine",
                  **unused: Any) -> Dataset:
    """CIFAR-100 (Krizhevsky, 2009): 50,000/10,000 colour 32x32 images; 100 fine or 20 coarse classes."""
    if labels not in ("fine", "coarse"):
        raise DataError(f"data.options.labels must be \"fine\" (100 classes) or \"coarse\" (20 superclasses), "
                        f"got {labels!r}")
    column, classes = (1, 100) if labels == "fine" else (0, 20)
    return _load(CIFAR100, data_dir, column, (20, 100), classes, "cifar100", augment)
