"""Datasets as in-memory tensors: Fashion-MNIST (IDX files), scikit-learn's digits, and a synthetic task.

Every loader returns a :class:`Dataset` with float32 inputs normalised by fixed per-dataset
constants (so a client never needs global statistics) and int64 labels. Loaders accept and ignore
unknown keyword arguments, because the engine passes one common set of options to whichever
dataset the config names; options a loader does use are validated and raise :class:`DataError`.

Fashion-MNIST is never downloaded. It is looked for, in order, in the ``data_dir`` argument (which
must then exist), ``$FEDSQUEEZE_DATA``, ``/usr/share/datasets/fashion-mnist`` (Debian package
``dataset-fashion-mnist``) and ``$XDG_CACHE_HOME/fedsqueeze/fashion-mnist`` (default
``~/.cache/...``); the first directory holding all four IDX files wins, each gzipped or not.
"""
from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fedsqueeze.data.partition import check_int
from fedsqueeze.errors import DataError
from fedsqueeze.seeding import numpy_rng

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "FEDSQUEEZE_DATA"
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Pixel mean/std of the Fashion-MNIST training set after scaling to [0, 1].
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530
# Same for sklearn's digits after scaling its 0..16 intensities to [0, 1].
DIGITS_MEAN, DIGITS_STD = 0.3053, 0.3760

IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_GZIP_MAGIC = b"\x1f\x8b"
_REINSTALL = ("replace it with a good copy (or `sudo apt-get install --reinstall "
              "dataset-fashion-mnist` if it came from that package)")


@dataclass
class Dataset:
    """A train/test pair of tensors. Images are (N, C, H, W); tabular data is (N, F)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    # Optional training augmentation, ``augment(x_batch, generator) -> x_batch`` (e.g. CIFAR's crop+flip);
    # ``ClientContext.batches`` applies it to every training batch. None: batches go as they are.
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = field(default=None, kw_only=True)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. ``(1, 28, 28)``."""
        return tuple(self.x_train.shape[1:])


# ---- Fashion-MNIST -----------------------------------------------------------------------------
def candidate_dirs(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The directories searched for Fashion-MNIST, in priority order."""
    dirs: list[Path] = []
    if data_dir is not None:
        dirs.append(Path(data_dir).expanduser())
    if os.environ.get(ENV_VAR):
        dirs.append(Path(os.environ[ENV_VAR]).expanduser())
    dirs.append(SYSTEM_DIR)
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    dirs.append(Path(cache).expanduser() / "fedsqueeze" / "fashion-mnist")
    return dirs


def _find_files(directory: Path) -> tuple[dict[str, Path], list[str]]:
    """Map each IDX role to its file in ``directory``; also return the base names not found."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for role, base in FASHION_FILES.items():
        # Uncompressed first: it loads faster, and someone who unpacked the files meant it.
        for candidate in (directory / base, directory / f"{base}.gz"):
            if candidate.is_file():
                found[role] = candidate
                break
        else:
            missing.append(base)
    return found, missing


def locate_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Find the four Fashion-MNIST IDX files, or raise a DataError that says where we looked."""
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise DataError(f"data_dir must be a path (str), not {type(data_dir).__name__}; "
                        "pass the directory holding the Fashion-MNIST IDX files")
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise DataError(f"data.dir {str(data_dir)!r} does not exist or is not a folder; fix the path (--data-dir), "
                        f"or leave it empty to search ${ENV_VAR}, {SYSTEM_DIR} and the cache folder")
    searched = []
    for directory in candidate_dirs(data_dir):
        found, missing = _find_files(directory)
        if not missing:
            return found
        if not directory.is_dir():
            searched.append(f"{directory} (no such directory)")
        elif found:
            searched.append(f"{directory} (incomplete: missing {', '.join(m + '[.gz]' for m in missing)})")
        else:
            searched.append(f"{directory} (no IDX files)")
    names = ", ".join(f"{b}[.gz]" for b in FASHION_FILES.values())
    raise DataError(
        "Fashion-MNIST not found; searched, in order: " + "; ".join(searched)
        + ". Fix: `sudo apt-get install dataset-fashion-mnist`, or put the four IDX files ("
        + names + f") in one of those directories, or point to them with --data-dir / ${ENV_VAR}.")


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check its permissions") from e
    if raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt gzip data ({e}); {_REINSTALL}") from e
    if path.suffix == ".gz":
        raise DataError(f"{path}: named .gz but is not gzip-compressed; {_REINSTALL}")
    return raw


def read_idx(path: str | os.PathLike[str], expected_magic: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file into a read-only uint8 array, checking it thoroughly."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: truncated ({len(data)} bytes, not even an IDX header); {_REINSTALL}")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise DataError(f"{path}: IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
                        f"(wrong or swapped file?); {_REINSTALL}")
    ndim = expected_magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated inside the IDX header; {_REINSTALL}")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "too long"
        raise DataError(f"{path}: {problem}: {len(data)} bytes, but its header {dims} implies "
                        f"{expected}; {_REINSTALL}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _load_split(images_path: Path, labels_path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                        f"{len(labels)} labels; the files do not belong together: {_REINSTALL}")
    if labels.size and int(labels.max()) >= num_classes:
        raise DataError(f"{labels_path}: label {int(labels.max())} outside 0..{num_classes - 1}; "
                        + _REINSTALL)
    return images, labels


def _normalise_images(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    # In-place ops on one float buffer keep peak memory at ~1x the float array.
    x = torch.from_numpy(images.astype(np.float32)).unsqueeze(1)
    return x.div_(255.0).sub_(mean).div_(std)


def load_fashion_mnist(data_dir: str | os.PathLike[str] | None = None, **unused: Any) -> Dataset:
    """Fashion-MNIST (Xiao et al., 2017): 60,000/10,000 grey 28x28 images of 10 clothing classes."""
    files = locate_fashion_mnist(data_dir)
    xtr, ytr = _load_split(files["train_images"], files["train_labels"], 10)
    xte, yte = _load_split(files["test_images"], files["test_labels"], 10)
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(f"train images are {xtr.shape[1:]} but test images are {xte.shape[1:]}: "
                        f"the files in {files['train_images'].parent} come from different datasets; "
                        + _REINSTALL)
    return Dataset(
        name="fashion_mnist",
        x_train=_normalise_images(xtr, FASHION_MEAN, FASHION_STD),
        y_train=torch.from_numpy(ytr.astype(np.int64)),
        x_test=_normalise_images(xte, FASHION_MEAN, FASHION_STD),
        y_test=torch.from_numpy(yte.astype(np.int64)),
        num_classes=10,
    )


# ---- small built-in sources ---------------------------------------------------------------------
def stratified_split(labels: np.ndarray, test_fraction: float,
                     *keys: int | str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train/test index arrays holding ``round(test_fraction * n_c)`` of each class in test.

    Written here rather than taken from scikit-learn so the split cannot change with its version.
    """
    rng = numpy_rng(*keys)
    shuffled = rng.permutation(len(labels))
    # Stable sort of a shuffled order: grouped by class, random within each class.
    order = shuffled[np.argsort(labels[shuffled], kind="stable")]
    _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    rank = np.arange(len(order)) - np.repeat(starts, counts)
    in_test = rank < np.repeat(np.round(test_fraction * counts).astype(np.int64), counts)
    return np.sort(order[~in_test]), np.sort(order[in_test])


def load_digits(**unused: Any) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), split 80/20 by class."""
    try:
        from sklearn.datasets import load_digits as sk_digits  # bundled with sklearn: no download
    except ImportError:
        raise DataError("the digits source needs scikit-learn, which is not installed: "
                        "pip install 'fedsqueeze[digits]'") from None

    bunch = sk_digits()
    x = bunch.data.astype(np.float32).reshape(-1, 1, 8, 8)
    x = (x / 16.0 - DIGITS_MEAN) / DIGITS_STD
    y = bunch.target.astype(np.int64)
    train, test = stratified_split(y, 0.2, "digits", "split")
    return Dataset("digits", torch.from_numpy(x[train]), torch.from_numpy(y[train]),
                   torch.from_numpy(x[test]), torch.from_numpy(y[test]), num_classes=10)


SYNTHETIC_VALUES_MAX = 100_000_000  # samples x features of a generated dataset (0.8 GB as float64)


def load_synthetic(num_samples: int = 2000, num_features: int = 20, num_classes: int = 5,
                   seed: int = 0, **unused: Any) -> Dataset:
    """Gaussian classes with random means: ``num_samples`` in total, split 80/20 by class.

    Class means are drawn from N(0, 0.5^2 I), so two means sit ~0.7*sqrt(F) apart against unit
    noise: learnable by a linear model, yet not trivially separable in few dimensions.
    """
    num_samples = check_int("num_samples", num_samples, 2 * check_int("num_classes", num_classes, 2, 100_000),
                            10_000_000)
    num_features = check_int("num_features", num_features, 1, 1_000_000)
    if num_samples * num_features > SYNTHETIC_VALUES_MAX:
        raise DataError(f"synthetic data of {num_samples:,} samples x {num_features:,} features is more than "
                        f"{SYNTHETIC_VALUES_MAX:,} values; lower data.options num_samples or num_features")
    seed = check_int("seed", seed, 0, 2**63 - 1)
    rng = numpy_rng(seed, "synthetic")
    means = rng.normal(0.0, 0.5, size=(num_classes, num_features))
    y = rng.permutation(np.arange(num_samples) % num_classes)
    x = means[y] + rng.normal(size=(num_samples, num_features))
    train, test = stratified_split(y, 0.2, seed, "synthetic", "split")
    # Standardise with train statistics: the "dataset constants" of a generated dataset.
    mu, sd = x[train].mean(axis=0), x[train].std(axis=0) + 1e-8
    x = ((x - mu) / sd).astype(np.float32)
    y = y.astype(np.int64)
    return Dataset("synthetic", torch.from_numpy(x[train]), torch.from_numpy(y[train]),
                   torch.from_numpy(x[test]), torch.from_numpy(y[test]), num_classes=num_classes)
