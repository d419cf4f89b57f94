"""Dataset sources: IDX parsing and its failure modes, Fashion-MNIST lookup, digits, synthetic."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsqueeze.data import sources
from fedsqueeze.data.sources import (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, Dataset, load_digits,
                                     load_fashion_mnist, load_synthetic, read_idx)
from fedsqueeze.errors import DataError


# ---- helpers ------------------------------------------------------------------------------------
def idx_bytes(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + payload


def write(path: Path, data: bytes, compress: bool) -> Path:
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def write_fake_fashion(directory: Path, n_train: int = 12, n_test: int = 6, compress: bool = True) -> Path:
    """Four tiny but valid IDX files; n_train identifies which directory was loaded."""
    directory.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if compress else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        pixels = (np.arange(n * 28 * 28) % 256).astype(np.uint8).tobytes()
        labels = (np.arange(n) % 10).astype(np.uint8).tobytes()
        images = idx_bytes(IDX_IMAGES_MAGIC, (n, 28, 28), pixels)
        write(directory / f"{prefix}-images-idx3-ubyte{ext}", images, compress)
        label_file = idx_bytes(IDX_LABELS_MAGIC, (n,), labels)
        write(directory / f"{prefix}-labels-idx1-ubyte{ext}", label_file, compress)
    return directory


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No real data visible: system dir, env var and cache all point into tmp_path."""
    monkeypatch.setattr(sources, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.delenv("FEDSQUEEZE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


# ---- IDX parsing --------------------------------------------------------------------------------
@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_roundtrip(tmp_path: Path, compress: bool) -> None:
    payload = np.arange(2 * 3 * 4, dtype=np.uint8)
    path = write(tmp_path / "x.idx", idx_bytes(IDX_IMAGES_MAGIC, (2, 3, 4), payload.tobytes()), compress)
    np.testing.assert_array_equal(read_idx(path, IDX_IMAGES_MAGIC), payload.reshape(2, 3, 4))


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("case, match", [
    ("truncated", "truncated"),
    ("too_long", "too long"),
    ("wrong_magic", "magic number 0x00000803"),
    ("header_only", "truncated inside the IDX header"),
    ("empty", "truncated"),
])
def test_read_idx_rejects_corruption(tmp_path: Path, compress: bool, case: str, match: str) -> None:
    good = idx_bytes(IDX_LABELS_MAGIC, (5,), bytes(5))
    data = {
        "truncated": good[:-2],
        "too_long": good + b"\x00",
        "wrong_magic": idx_bytes(IDX_IMAGES_MAGIC, (5, 1, 1), bytes(5)),
        "header_only": good[:6],
        "empty": b"",
    }[case]
    path = write(tmp_path / "labels.idx", data, compress)
    with pytest.raises(DataError, match=match) as info:
        read_idx(path, IDX_LABELS_MAGIC)
    assert str(path) in str(info.value)  # the message names the file


def test_bad_gzip(tmp_path: Path) -> None:
    good = gzip.compress(idx_bytes(IDX_LABELS_MAGIC, (500,), bytes(range(250)) * 2))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="corrupt gzip"):
        read_idx(cut, IDX_LABELS_MAGIC)
    garbled = tmp_path / "garbled.gz"
    garbled.write_bytes(good[:10] + bytes(b ^ 0xFF for b in good[10:]))
    with pytest.raises(DataError, match="corrupt gzip"):
        read_idx(garbled, IDX_LABELS_MAGIC)
    not_gzip = tmp_path / "plain.gz"
    not_gzip.write_bytes(b"hello, not gzip")
    with pytest.raises(DataError, match="not gzip-compressed"):
        read_idx(not_gzip, IDX_LABELS_MAGIC)


def test_image_label_count_mismatch(isolated: Path) -> None:
    d = write_fake_fashion(isolated / "data")
    write(d / "train-labels-idx1-ubyte.gz", idx_bytes(IDX_LABELS_MAGIC, (11,), bytes(11)), True)
    with pytest.raises(DataError, match="12 images but .* 11 labels"):
        load_fashion_mnist(d)


def test_label_out_of_range(isolated: Path) -> None:
    d = write_fake_fashion(isolated / "data")
    bad = idx_bytes(IDX_LABELS_MAGIC, (6,), bytes([0, 1, 2, 3, 4, 10]))
    write(d / "t10k-labels-idx1-ubyte.gz", bad, True)
    with pytest.raises(DataError, match="label 10 outside 0..9"):
        load_fashion_mnist(d)


# ---- Fashion-MNIST lookup -----------------------------------------------------------------------
def test_lookup_order(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fake_fashion(sources.SYSTEM_DIR, n_train=10)
    write_fake_fashion(isolated / "cache" / "fedsqueeze" / "fashion-mnist", n_train=11)
    assert len(load_fashion_mnist().y_train) == 10  # system dir before the cache
    env_dir = write_fake_fashion(isolated / "env", n_train=20)
    monkeypatch.setenv("FEDSQUEEZE_DATA", str(env_dir))
    assert len(load_fashion_mnist().y_train) == 20  # $FEDSQUEEZE_DATA before the system dir
    arg_dir = write_fake_fashion(isolated / "arg", n_train=30, compress=False)
    assert len(load_fashion_mnist(str(arg_dir)).y_train) == 30  # the argument before everything
    with pytest.raises(DataError, match="data.dir '.*nowhere' does not exist or is not a folder; fix the path"):
        load_fashion_mnist(isolated / "nowhere")  # a data dir that was asked for must exist


def test_cache_dir_is_last_resort(isolated: Path) -> None:
    write_fake_fashion(isolated / "cache" / "fedsqueeze" / "fashion-mnist", n_train=11)
    ds = load_fashion_mnist(seed=3, unrelated="ignored")
    assert (len(ds.y_train), len(ds.y_test), ds.input_shape) == (11, 6, (1, 28, 28))


def test_missing_data_message(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    partial = isolated / "partial"
    partial.mkdir()
    (partial / "train-images-idx3-ubyte.gz").write_bytes(b"")
    monkeypatch.setenv("FEDSQUEEZE_DATA", str(isolated / "env-missing"))
    with pytest.raises(DataError) as info:
        load_fashion_mnist(partial)
    msg = str(info.value)
    for place in (partial, isolated / "env-missing", sources.SYSTEM_DIR,
                  isolated / "cache" / "fedsqueeze" / "fashion-mnist"):
        assert str(place) in msg
    assert "missing train-labels-idx1-ubyte" in msg  # the partial directory says what is missing
    assert "sudo apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg
    positions = [msg.index(str(p)) for p in (partial, isolated / "env-missing", sources.SYSTEM_DIR)]
    assert positions == sorted(positions)  # listed in search order


def test_data_dir_type_checked(isolated: Path) -> None:
    with pytest.raises(DataError, match="data_dir must be a path"):
        load_fashion_mnist(data_dir=42)  # type: ignore[arg-type]


def test_fake_fashion_values(isolated: Path) -> None:
    ds = load_fashion_mnist(write_fake_fashion(isolated / "d"))
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    first = ds.x_train[0, 0, 0, :3] * sources.FASHION_STD + sources.FASHION_MEAN
    torch.testing.assert_close(first, torch.tensor([0.0, 1.0, 2.0]) / 255)


@pytest.fixture(scope="module")
def fashion() -> Dataset:
    try:
        return load_fashion_mnist()
    except DataError as e:
        pytest.skip(f"real Fashion-MNIST not installed: {e}")


def test_real_fashion_mnist(fashion: Dataset) -> None:
    assert fashion.name == "fashion_mnist" and fashion.num_classes == 10
    assert fashion.input_shape == (1, 28, 28)
    assert fashion.x_train.shape == (60000, 1, 28, 28) and fashion.x_test.shape == (10000, 1, 28, 28)
    assert fashion.y_train.dtype == torch.int64 and fashion.x_train.dtype == torch.float32
    assert torch.bincount(fashion.y_train).tolist() == [6000] * 10
    assert torch.bincount(fashion.y_test).tolist() == [1000] * 10
    assert abs(fashion.x_train.mean().item()) < 0.01 and abs(fashion.x_train.std().item() - 1) < 0.01


# ---- digits and synthetic -----------------------------------------------------------------------
def test_digits() -> None:
    a, b = load_digits(), load_digits(num_clients=5)
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert len(a.y_train) + len(a.y_test) == 1797
    # Stratified: each class contributes round(20%) of its samples to the test set.
    full = torch.bincount(torch.cat([a.y_train, a.y_test]))
    assert torch.bincount(a.y_test).tolist() == [round(0.2 * c) for c in full.tolist()]
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert abs(a.x_train.mean().item()) < 0.05 and abs(a.x_train.std().item() - 1) < 0.05


def test_synthetic_shapes_and_determinism() -> None:
    a = load_synthetic(num_samples=500, num_features=7, num_classes=3, seed=4, model="mlp")
    b = load_synthetic(num_samples=500, num_features=7, num_classes=3, seed=4)
    c = load_synthetic(num_samples=500, num_features=7, num_classes=3, seed=5)
    assert a.input_shape == (7,) and a.num_classes == 3
    assert len(a.y_train) + len(a.y_test) == 500
    assert torch.bincount(a.y_test).tolist() == [33, 33, 33]  # round(20%) of 167, 167, 166
    assert a.x_train.dtype == torch.float32 and a.y_train.dtype == torch.int64
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_train, c.x_train)


def test_synthetic_is_learnable() -> None:
    ds = load_synthetic(seed=1)
    # Nearest class mean (from training data) must beat chance (20%) by far.
    means = torch.stack([ds.x_train[ds.y_train == k].mean(0) for k in range(ds.num_classes)])
    pred = torch.cdist(ds.x_test, means).argmin(1)
    assert (pred == ds.y_test).float().mean().item() > 0.7


@pytest.mark.parametrize("kwargs, match", [
    ({"num_classes": 1}, "num_classes must be at least 2"),
    ({"num_samples": "100"}, "num_samples must be an integer"),
    ({"num_samples": 5, "num_classes": 3}, "num_samples must be at least 6"),
    ({"num_features": 0}, "num_features must be at least 1"),
    ({"seed": True}, "seed must be an integer"),
    ({"num_features": 2.5}, "num_features must be an integer"),
])
def test_synthetic_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(DataError, match=match):
        load_synthetic(**kwargs)
