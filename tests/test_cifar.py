"""CIFAR-10/100 binary readers, the crop+flip augmentation, VGG-11 and the CIFAR-10 presets.

Every test writes small files in the exact binary format to ``tmp_path``: no download, no real data.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedsqueeze.algorithms.context import ClientContext, ClientData
from fedsqueeze.cli import main
from fedsqueeze.config import TrainConfig
from fedsqueeze.data import cifar
from fedsqueeze.data.cifar import CIFAR10_MEAN, CIFAR10_STD, RandomCropFlip, load_cifar10, load_cifar100
from fedsqueeze.data.sources import load_synthetic
from fedsqueeze.errors import DataError
from fedsqueeze.models.zoo import build_model, count_parameters

CIFAR10_TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]


def records(n: int, seed: int, label_bytes: int = 1, limits=(10,)) -> tuple[bytes, np.ndarray, np.ndarray]:
    """``n`` random records: (file bytes, labels (n, label_bytes), images (n, 3, 32, 32) uint8)."""
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.integers(0, lim, n) for lim in limits], axis=1).astype(np.uint8)
    images = rng.integers(0, 256, (n, 3, 32, 32)).astype(np.uint8)
    raw = np.concatenate([labels, images.reshape(n, -1)], axis=1).tobytes()
    return raw, labels, images


def write_cifar10(folder: Path, n: int = 20) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in enumerate(CIFAR10_TRAIN + ["test_batch.bin"]):
        raw, labels, images = records(n, i)
        (folder / name).write_bytes(raw)
        out[name] = (labels, images)
    return out


def write_cifar100(folder: Path, n: int = 30) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in enumerate(["train.bin", "test.bin"]):
        raw, labels, images = records(n, 10 + i, 2, (20, 100))
        (folder / name).write_bytes(raw)
        out[name] = (labels, images)
    return out


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No $FEDSQUEEZE_DATA, and an empty cache folder: only what a test writes is found."""
    monkeypatch.delenv("FEDSQUEEZE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def expected_pixels(images: np.ndarray, mean, std) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32)) / 255.0
    return (x - torch.tensor(mean).reshape(1, 3, 1, 1)) / torch.tensor(std).reshape(1, 3, 1, 1)


# ---- readers -----------------------------------------------------------------------------------
def test_cifar10_roundtrip_exact(isolated: Path) -> None:
    files = write_cifar10(isolated / "c10", n=20)
    d = load_cifar10(str(isolated / "c10"))
    assert d.name == "cifar10" and d.num_classes == 10 and d.input_shape == (3, 32, 32)
    assert d.x_train.shape == (100, 3, 32, 32) and d.x_test.shape == (20, 3, 32, 32)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    labels = np.concatenate([files[f][0][:, 0] for f in CIFAR10_TRAIN])
    images = np.concatenate([files[f][1] for f in CIFAR10_TRAIN])
    assert torch.equal(d.y_train, torch.from_numpy(labels.astype(np.int64)))
    assert torch.equal(d.y_test, torch.from_numpy(files["test_batch.bin"][0][:, 0].astype(np.int64)))
    torch.testing.assert_close(d.x_train, expected_pixels(images, CIFAR10_MEAN, CIFAR10_STD), rtol=0, atol=1e-6)
    torch.testing.assert_close(d.x_test, expected_pixels(files["test_batch.bin"][1], CIFAR10_MEAN, CIFAR10_STD),
                               rtol=0, atol=1e-6)


def test_channel_order_is_red_green_blue_planes(isolated: Path) -> None:
    """Record = label, 1024 red bytes, 1024 green, 1024 blue; each plane row-major."""
    folder = isolated / "c10"
    write_cifar10(folder, n=2)
    rec = bytearray(1 + 3072)
    rec[0] = 7
    rec[1 + 0] = 255                      # red (0, 0)
    rec[1 + 1024 + 32 * 1 + 2] = 255      # green, row 1, column 2
    rec[1 + 2048 + 32 * 31 + 31] = 255    # blue (31, 31)
    (folder / "data_batch_1.bin").write_bytes(bytes(rec))
    d = load_cifar10(str(folder), augment=False)
    raw = d.x_train[0] * torch.tensor(CIFAR10_STD).reshape(3, 1, 1) + torch.tensor(CIFAR10_MEAN).reshape(3, 1, 1)
    on = (raw * 255).round().nonzero().tolist()
    assert on == [[0, 0, 0], [1, 1, 2], [2, 31, 31]] and int(d.y_train[0]) == 7
    assert d.augment is None


def test_cifar100_fine_and_coarse(isolated: Path) -> None:
    files = write_cifar100(isolated / "c100", n=30)
    fine = load_cifar100(str(isolated / "c100"))
    coarse = load_cifar100(str(isolated / "c100"), labels="coarse")
    assert fine.num_classes == 100 and coarse.num_classes == 20 and fine.name == "cifar100"
    tr, te = files["train.bin"], files["test.bin"]
    assert torch.equal(fine.y_train, torch.from_numpy(tr[0][:, 1].astype(np.int64)))
    assert torch.equal(coarse.y_train, torch.from_numpy(tr[0][:, 0].astype(np.int64)))
    assert torch.equal(fine.y_test, torch.from_numpy(te[0][:, 1].astype(np.int64)))
    assert torch.equal(coarse.y_test, torch.from_numpy(te[0][:, 0].astype(np.int64)))
    torch.testing.assert_close(fine.x_train, expected_pixels(tr[1], cifar.CIFAR100_MEAN, cifar.CIFAR100_STD),
                               rtol=0, atol=1e-6)
    assert torch.equal(fine.x_train, coarse.x_train)
    with pytest.raises(DataError, match="data.options.labels"):
        load_cifar100(str(isolated / "c100"), labels="super")


def test_archive_subfolder_and_search_order(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar10(isolated / "env" / "cifar-10-batches-bin", n=3)
    monkeypatch.setenv("FEDSQUEEZE_DATA", str(isolated / "env"))
    assert load_cifar10().x_train.shape[0] == 15
    write_cifar10(isolated / "given", n=4)  # data_dir comes first
    assert load_cifar10(str(isolated / "given")).x_train.shape[0] == 20


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("case", ["truncated", "extra", "label10", "empty"])
def test_corrupt_files_rejected(isolated: Path, case: str) -> None:
    folder = isolated / "c10"
    write_cifar10(folder, n=5)
    path = folder / "data_batch_3.bin"
    raw = bytearray(path.read_bytes())
    if case == "truncated":
        raw = raw[:-100]
    elif case == "extra":
        raw += b"\0"
    elif case == "label10":
        raw[2 * 3073] = 10
    else:
        raw = bytearray()
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as e:
        load_cifar10(str(folder))
    msg = _one_line(e)
    assert str(path) in msg and cifar.URL in msg
    expect = {"truncated": "not a whole number of 3073-byte records (4 records + 2973 bytes",
              "extra": "5 records + 1 bytes", "label10": "record 2 has label 10 outside 0..9",
              "empty": "empty"}[case]
    assert expect in msg


def test_cifar100_label_out_of_range(isolated: Path) -> None:
    folder = isolated / "c100"
    write_cifar100(folder, n=4)
    raw = bytearray((folder / "test.bin").read_bytes())
    raw[3074 + 0] = 20  # record 1's coarse label
    (folder / "test.bin").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="record 1 has label 20 outside 0..19"):
        load_cifar100(str(folder))


def test_missing_files_listed_with_the_fix(isolated: Path) -> None:
    folder = isolated / "c10"
    write_cifar10(folder, n=2)
    (folder / "test_batch.bin").unlink()
    with pytest.raises(DataError) as e:
        load_cifar10(str(folder))
    msg = _one_line(e)
    assert f"{folder} (incomplete: missing test_batch.bin)" in msg
    assert "cifar-10-binary.tar.gz" in msg and cifar.URL in msg and "binary version" in msg
    with pytest.raises(DataError, match="does not exist"):
        load_cifar10(str(isolated / "nowhere"))
    with pytest.raises(DataError, match="data.options.augment must be true or false"):
        load_cifar10(str(folder), augment="yes")


def test_cli_corrupt_file_is_one_error_line_exit_2(isolated: Path, capsys) -> None:
    folder = isolated / "c10"
    write_cifar10(folder, n=5)
    (folder / "test_batch.bin").write_bytes((folder / "test_batch.bin").read_bytes()[:-1])
    code = main(["run", "configs/cifar10-fedavg.toml", "--data-dir", str(folder), "--out", str(isolated / "run"),
                 "--quiet"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "test_batch.bin: " in errors[0] and "Traceback" not in errors[0]


# ---- augmentation ------------------------------------------------------------------------------
def test_crop_flip_matches_hand_computation() -> None:
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3) + 1  # image 0: 1..9, image 1: 10..18
    aug = RandomCropFlip(padding=1, fill=0.0)
    g = torch.Generator().manual_seed(0)
    oy, ox, flip = aug.draws(2, torch.Generator().manual_seed(0))
    out = aug(x, g)
    # Hand computation: zero-pad to 5x5, take rows oy..oy+2 and columns ox..ox+2, then mirror columns if flip.
    for i in range(2):
        padded = [[0.0] * 5 for _ in range(5)]
        for r in range(3):
            for c in range(3):
                padded[r + 1][c + 1] = float(x[i, 0, r, c])
        crop = [[padded[int(oy[i]) + r][int(ox[i]) + c] for c in range(3)] for r in range(3)]
        if flip[i]:
            crop = [row[::-1] for row in crop]
        assert out[i, 0].tolist() == crop
    # The draws for seed 0 are pinned, so a change in the drawing order shows up here.
    # Seed 0 draws offsets (2, 2) and (0, 0) and flips both; by hand, from the padded images:
    assert (oy.tolist(), ox.tolist(), flip.tolist()) == ([2, 0], [2, 0], [True, True])
    assert out.tolist() == [[[[0, 6, 5], [0, 9, 8], [0, 0, 0]]], [[[0, 0, 0], [11, 10, 0], [14, 13, 0]]]]


def test_crop_flip_fill_per_channel_and_device_of_input() -> None:
    x = torch.zeros(64, 3, 4, 4)
    out = RandomCropFlip(padding=2, fill=(1.0, 2.0, 3.0))(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.device == x.device
    for ch, v in enumerate((1.0, 2.0, 3.0)):
        assert set(out[:, ch].unique().tolist()) <= {0.0, v}
    assert (out[:, 0] == 1.0).any()  # some crop reached into the padding


def test_batches_apply_dataset_augmentation_reproducibly() -> None:
    x = torch.randn(12, 3, 8, 8)
    y = torch.arange(12)
    aug = RandomCropFlip(4, 0.0)

    def run(augment):
        ctx = ClientContext(0, 1, 0, ClientData(x, y, lambda: (x[:0], y[:0]), augment),
                            TrainConfig(batch_size=5), lambda s: None, run_seed=3)
        return list(ctx.batches())

    plain, a1, a2 = run(None), run(aug), run(aug)
    assert all(torch.equal(p[0], x[p[1]]) for p in plain)  # no augment: batches unchanged
    assert all(torch.equal(u[0], v[0]) and torch.equal(u[1], p[1]) for u, v, p in zip(a1, a2, plain))
    assert not all(torch.equal(u[0], p[0]) for u, p in zip(a1, plain))


def test_augment_defaults(isolated: Path) -> None:
    write_cifar10(isolated / "c10", n=2)
    aug = load_cifar10(str(isolated / "c10")).augment
    assert isinstance(aug, RandomCropFlip) and aug.padding == 4
    assert aug.fill == pytest.approx(tuple(-m / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD)))
    assert load_synthetic().augment is None  # other datasets are untouched


# ---- VGG-11 ------------------------------------------------------------------------------------
def test_vgg11_parameter_count() -> None:
    convs = [(3, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512), (512, 512), (512, 512)]
    weights = sum(i * o * 9 for i, o in convs)
    bn = sum(2 * o for _, o in convs)
    head = 512 * 10 + 10
    assert weights + bn + head == 9_228_362
    assert count_parameters(build_model("vgg11", (3, 32, 32), 10)) == 9_228_362
    conv_bias = sum(o for _, o in convs)
    assert count_parameters(build_model("vgg11", (3, 32, 32), 10, batch_norm=False)) == weights + conv_bias + head
    small = build_model("vgg11", (3, 32, 32), 100, width=4)
    assert small(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    assert small.features(torch.zeros(2, 3, 32, 32)).shape == (2, 32)


def test_vgg11_listed(capsys) -> None:
    assert main(["list"]) == 0
    err = capsys.readouterr().err
    assert "vgg11" in err and "cifar10" in err and "cifar100" in err


# ---- presets -----------------------------------------------------------------------------------
# Tiny: 4 clients, one round of one epoch on 100 generated images, a width-4 ResNet-20 (a few seconds).
TINY = ["--set", "rounds=1", "--set", "data.num_clients=4", "--set", "train.local_epochs=1",
        "--set", "train.batch_size=16", "--set", "eval.every=1", "--set", "eval.personal_every=1"]


@pytest.mark.parametrize("preset, extra", [
    ("cifar10-fedavg", ["--set", "model.options.width=4"]),
    # The uniform selector: the greedy search's ~600 pruned evaluations would dominate a 1-round test.
    ("cifar10-spatl", ["--set", "model.options.width=4", "--set", "algorithm.num_clients=4",
                       "--set", 'algorithm.selector="uniform"']),
    ("cifar10-fedkd", ["--set", "algorithm.teacher_options.width=4"]),
])
def test_cifar10_preset_runs_on_generated_files(isolated: Path, preset: str, extra: list[str]) -> None:
    folder = isolated / "c10"
    write_cifar10(folder, n=20)
    out = isolated / "run"
    code = main(["run", f"configs/{preset}.toml", "--data-dir", str(folder), "--out", str(out), "--quiet",
                 *TINY, *extra])
    assert code == 0
    assert (out / "metrics.jsonl").is_file()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_crop_flip_on_cuda_matches_cpu() -> None:
    """The batch is augmented where it lives, with the same draws (CPU generator) as on the CPU."""
    x = torch.randn(33, 3, 32, 32)
    aug = RandomCropFlip(4, tuple(-m / s for m, s in zip(CIFAR10_MEAN, CIFAR10_STD)))
    cpu = aug(x, torch.Generator().manual_seed(5))
    gpu = aug(x.cuda(), torch.Generator().manual_seed(5))
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)
