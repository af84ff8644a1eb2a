"""Loaders for the user's own files, and the path side of ``load``."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.io import imsave

from scrutiny.data import (
    CIFAR10_CLASSES,
    DatasetNotFoundError,
    load,
    load_cifar10,
    load_image_folder,
    load_mnist,
    load_npz,
    read_idx,
)

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- npz


def test_npz_nhwc_uint8_roundtrip(tmp_path):
    x = RNG.integers(0, 256, (5, 6, 7, 3), dtype=np.uint8)
    y = np.array([0, 2, 1, 2, 0])
    np.savez(tmp_path / "imgs.npz", x=x, y=y)
    ds = load_npz(tmp_path / "imgs.npz")
    assert tuple(ds.x.shape) == (5, 3, 6, 7) and ds.x.dtype == torch.float32
    assert torch.allclose(ds.x, torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255)
    assert ds.y.tolist() == [0, 2, 1, 2, 0] and ds.y.dtype == torch.int64
    assert ds.classes == ("0", "1", "2") and ds.name == "imgs" and ds.is_image


def test_npz_nchw_float_gray_and_custom_keys(tmp_path):
    x = RNG.random((4, 1, 5, 5)).astype(np.float64)
    np.savez(tmp_path / "a.npz", inputs=x, labels=np.array([1, 0, 1, 1], np.uint8))
    ds = load_npz(tmp_path / "a.npz", x_key="inputs", y_key="labels", classes=["cat", "dog"])
    assert tuple(ds.x.shape) == (4, 1, 5, 5) and ds.classes == ("cat", "dog")
    assert torch.allclose(ds.x, torch.from_numpy(x).float())
    # (N, H, W) gains a channel axis; classes stored in the archive are used
    np.savez(tmp_path / "b.npz", x=x[:, 0], y=np.array([0, 1, 2, 0]),
             classes=np.array(["a", "b", "c"]))
    ds = load_npz(tmp_path / "b.npz")
    assert tuple(ds.x.shape) == (4, 1, 5, 5) and ds.classes == ("a", "b", "c")


def test_npz_tabular_with_feature_names(tmp_path):
    x = RNG.random((6, 3)).astype(np.float32)
    np.savez(tmp_path / "t.npz", x=x, y=np.arange(6) % 2,
             feature_names=np.array(["age", "height", "weight"]))
    ds = load_npz(tmp_path / "t.npz")
    assert not ds.is_image and tuple(ds.input_shape) == (3,)
    assert ds.feature_names == ("age", "height", "weight")
    assert torch.equal(ds.x, torch.from_numpy(x))


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        (
            {"x": np.zeros((3, 2)), "labels": np.zeros(3)},
            r"missing key\(s\) \['y'\]; keys present: \['labels', 'x'\]",
        ),
        ({"x": np.full((3, 2), 2.0), "y": np.zeros(3, int)}, r"must lie in \[0, 1\].*\[2, 2\]"),
        ({"x": np.array([[0.5, np.nan]] * 3), "y": np.zeros(3, int)}, "NaN"),
        ({"x": np.zeros((3, 2)), "y": np.zeros(4, int)}, "x has 3 samples but .* has 4 labels"),
        ({"x": np.zeros((3, 2)), "y": np.array([0.5, 1, 0])}, "integer class labels"),
        ({"x": np.zeros((3, 2)), "y": np.array([0, -1, 0])}, "non-negative"),
        ({"x": np.zeros((3, 2), np.int32) + 7, "y": np.zeros(3, int)}, r"must lie in \[0, 1\]"),
        ({"x": np.zeros((3, 2, 2, 2, 2)), "y": np.zeros(3, int)}, "must be 2-D"),
        ({"x": np.array([["a", "b"]] * 3), "y": np.zeros(3, int)}, "unsupported dtype"),
    ],
)
def test_npz_bad_content(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_npz(tmp_path / "bad.npz")


def test_npz_refuses_pickle_and_non_npz(tmp_path):
    obj = np.empty(3, dtype=object)
    obj[:] = [[1], [2], [3]]
    np.savez(tmp_path / "obj.npz", x=obj, y=np.zeros(3, int))
    with pytest.raises(ValueError, match="cannot be read without unpickling"):
        load_npz(tmp_path / "obj.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="got a single .npy array"):
        load_npz(tmp_path / "single.npy")
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip file")
    with pytest.raises(ValueError, match="not a readable .npz archive"):
        load_npz(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError, match="npz file not found"):
        load_npz(tmp_path / "missing.npz")
    np.savez(tmp_path / "few.npz", x=np.zeros((2, 2)), y=np.array([0, 4]))
    with pytest.raises(ValueError, match="2 class names given but"):
        load_npz(tmp_path / "few.npz", classes=["a", "b"])


# --------------------------------------------------------------------------- image folder


def _write_folder(root: Path, shapes: dict[str, list[tuple[int, ...]]], ext: str = ".png") -> None:
    for cls, items in shapes.items():
        (root / cls).mkdir(parents=True)
        for i, shape in enumerate(items):
            img = RNG.integers(0, 256, shape, dtype=np.uint8)
            imsave(root / cls / f"img{i}{ext}", img, check_contrast=False)


def test_image_folder_rgb_and_gray_mix(tmp_path):
    _write_folder(tmp_path, {"b_dog": [(6, 5, 3), (6, 5)], "a_cat": [(6, 5, 4)]})
    (tmp_path / "a_cat" / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden").mkdir()
    ds = load_image_folder(tmp_path)
    assert ds.classes == ("a_cat", "b_dog") and ds.y.tolist() == [0, 1, 1]
    assert tuple(ds.x.shape) == (3, 3, 6, 5) and ds.x.dtype == torch.float32
    assert 0.0 <= float(ds.x.min()) and float(ds.x.max()) <= 1.0
    # the gray image is replicated over the three channels
    assert torch.equal(ds.x[2, 0], ds.x[2, 1]) and torch.equal(ds.x[2, 1], ds.x[2, 2])
    # exact round trip of a PNG
    from skimage.io import imread

    raw = imread(tmp_path / "b_dog" / "img0.png")
    assert torch.allclose(ds.x[1], torch.from_numpy(raw).permute(2, 0, 1).float() / 255)
    gray = load_image_folder(tmp_path, grayscale=True, size=4)
    assert tuple(gray.x.shape) == (3, 1, 4, 4)


def test_image_folder_jpg_bmp_and_resize(tmp_path):
    _write_folder(tmp_path, {"x": [(10, 12, 3)]}, ext=".jpg")
    (tmp_path / "y").mkdir()
    imsave(tmp_path / "y" / "img0.BMP", RNG.integers(0, 256, (7, 7, 3), dtype=np.uint8))
    ds = load_image_folder(tmp_path, size=8)
    assert ds.classes == ("x", "y") and tuple(ds.x.shape) == (2, 3, 8, 8)
    assert 0.0 <= float(ds.x.min()) and float(ds.x.max()) <= 1.0


def test_image_folder_errors(tmp_path):
    _write_folder(tmp_path / "mixed", {"a": [(6, 6, 3)], "b": [(5, 6, 3)]})
    with pytest.raises(ValueError, match="images differ in shape.*pass size="):
        load_image_folder(tmp_path / "mixed")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        load_image_folder(tmp_path / "empty")
    (tmp_path / "flat").mkdir()
    with pytest.raises(ValueError, match="no class sub-directories"):
        load_image_folder(tmp_path / "flat")
    (tmp_path / "corrupt" / "a").mkdir(parents=True)
    (tmp_path / "corrupt" / "a" / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        load_image_folder(tmp_path / "corrupt")
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(ValueError, match="is not a directory"):
        load_image_folder(tmp_path / "file.png")
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        load_image_folder(tmp_path / "nope")


# --------------------------------------------------------------------------- MNIST


def _idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int32: 0x0C}[arr.dtype.type]
    head = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _write_mnist(root: Path, prefix: str, n: int, *, gz: bool, sep: str = "-") -> tuple:
    root.mkdir(parents=True, exist_ok=True)
    images = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = RNG.integers(0, 10, n, dtype=np.uint8)
    for kind, ndim, arr in (("images", "idx3", images), ("labels", "idx1", labels)):
        name = f"{prefix}-{kind}{sep}{ndim}-ubyte"
        if gz:
            with gzip.open(root / f"{name}.gz", "wb") as fh:
                fh.write(_idx_bytes(arr))
        else:
            (root / name).write_bytes(_idx_bytes(arr))
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_roundtrip(tmp_path, gz):
    images, labels = _write_mnist(tmp_path, "train", 5, gz=gz)
    timages, tlabels = _write_mnist(tmp_path, "t10k", 3, gz=gz)
    ds = load_mnist(tmp_path)
    assert tuple(ds.x.shape) == (5, 1, 28, 28) and ds.x.dtype == torch.float32
    assert torch.allclose(ds.x[:, 0], torch.from_numpy(images).float() / 255)
    assert ds.y.tolist() == labels.tolist() and ds.classes == tuple("0123456789")
    test = load_mnist(tmp_path, split="test")
    assert len(test) == 3 and test.y.tolist() == tlabels.tolist()
    assert torch.equal(load(str(tmp_path), split="test").x, test.x)


def test_mnist_torchvision_layout_and_dot_spelling(tmp_path):
    _, labels = _write_mnist(tmp_path / "MNIST" / "raw", "train", 4, gz=False, sep=".")
    assert load_mnist(tmp_path).y.tolist() == labels.tolist()
    raw = read_idx(tmp_path / "MNIST" / "raw" / "train-labels.idx1-ubyte")
    assert raw.dtype == np.uint8 and raw.tolist() == labels.tolist()


def test_mnist_errors(tmp_path):
    _write_mnist(tmp_path / "m", "train", 4, gz=False)
    with pytest.raises(FileNotFoundError, match="no t10k-images-idx3-ubyte"):
        load_mnist(tmp_path / "m", split="test")
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_mnist(tmp_path / "m", split="all")
    # not IDX: bad magic number
    (tmp_path / "m" / "train-labels-idx1-ubyte").write_bytes(b"\x1f\x8bhello world")
    with pytest.raises(ValueError, match="not an IDX file"):
        load_mnist(tmp_path / "m")
    # header / length disagreement
    good = _idx_bytes(np.zeros(4, np.uint8))
    (tmp_path / "m" / "train-labels-idx1-ubyte").write_bytes(good[:-1])
    with pytest.raises(ValueError, match="header says shape"):
        load_mnist(tmp_path / "m")
    # count mismatch between images and labels
    (tmp_path / "m" / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(ValueError, match="has 4 images but .* has 3 labels"):
        load_mnist(tmp_path / "m")
    # wrong element type
    (tmp_path / "m" / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(4, np.int32)))
    with pytest.raises(ValueError, match="expected 1-D uint8 labels"):
        load_mnist(tmp_path / "m")
    # a .gz that is not gzip
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "train-images-idx3-ubyte.gz").write_bytes(b"plain")
    (tmp_path / "g" / "train-labels-idx1-ubyte.gz").write_bytes(b"plain")
    with pytest.raises(ValueError, match="cannot read file"):
        load_mnist(tmp_path / "g")
    with pytest.raises(FileNotFoundError, match="MNIST directory not found"):
        load_mnist(tmp_path / "absent")


# --------------------------------------------------------------------------- CIFAR-10


def _write_cifar_batch(path: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = RNG.integers(0, 10, n, dtype=np.uint8)
    pixels = RNG.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    records = np.concatenate([labels[:, None], pixels.reshape(n, -1)], axis=1)
    path.write_bytes(records.tobytes())
    return pixels, labels


def test_cifar10_binary(tmp_path):
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    batches = [_write_cifar_batch(d / f"data_batch_{i}.bin", 2) for i in range(1, 6)]
    tpix, tlab = _write_cifar_batch(d / "test_batch.bin", 3)
    for root in (tmp_path, d):  # the parent or the directory itself
        ds = load_cifar10(root)
        assert tuple(ds.x.shape) == (10, 3, 32, 32) and ds.classes == CIFAR10_CLASSES
        pix = np.concatenate([p for p, _ in batches])
        assert torch.allclose(ds.x, torch.from_numpy(pix).float() / 255)
        assert ds.y.tolist() == np.concatenate([lab for _, lab in batches]).tolist()
    test = load_cifar10(tmp_path, split="test")
    assert test.y.tolist() == tlab.tolist() and test.name == "cifar10"
    assert torch.allclose(test.x, torch.from_numpy(tpix).float() / 255)
    assert torch.equal(load(str(tmp_path), split="test").x, test.x)
    (d / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n\n")
    assert load_cifar10(d, split="test").classes == tuple(f"c{i}" for i in range(10))


def test_cifar10_errors(tmp_path):
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    (d / "test_batch.bin").write_bytes(b"\x00" * 3000)
    with pytest.raises(ValueError, match="not a whole number of 3073-byte"):
        load_cifar10(d, split="test")
    with pytest.raises(FileNotFoundError, match="no data_batch_1.bin"):
        load_cifar10(d, split="train")
    (d / "test_batch.bin").write_bytes(bytes([12]) + b"\x00" * 3072)
    with pytest.raises(ValueError, match="labels must be 0..9"):
        load_cifar10(d, split="test")
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_cifar10(d, split="all")
    py = tmp_path / "other" / "cifar-10-batches-py"
    py.mkdir(parents=True)
    (py / "data_batch_1").write_bytes(b"\x80\x04pickle")
    (py / "batches.meta").write_bytes(b"\x80\x04pickle")
    for root in (py, py.parent):
        with pytest.raises(ValueError, match="refuses to unpickle.*binary version"):
            load_cifar10(root)
    with pytest.raises(ValueError, match="refuses to unpickle"):
        load(str(py))
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 binary batches"):
        load_cifar10(tmp_path / "plain")


# --------------------------------------------------------------------------- load() on paths


def test_load_resolves_paths(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 4), np.float32), y=np.array([0, 1, 0]))
    assert tuple(load(str(tmp_path / "d.npz")).x.shape) == (3, 4)
    # Keras-style archive with its own split
    np.savez(tmp_path / "k.npz",
             x_train=np.zeros((5, 6, 6), np.uint8), y_train=np.arange(5) % 2,
             x_test=np.ones((2, 6, 6), np.uint8), y_test=np.array([1, 0]))
    assert len(load(str(tmp_path / "k.npz"))) == 5
    test = load(str(tmp_path / "k.npz"), split="test")
    assert len(test) == 2 and tuple(test.input_shape) == (1, 6, 6)
    assert len(load(str(tmp_path / "k.npz"), split="all")) == 7
    # image folder, plain and with train/ test/ sub-folders
    _write_folder(tmp_path / "imgs", {"a": [(4, 4, 3)], "b": [(4, 4, 3)]})
    assert load(str(tmp_path / "imgs")).classes == ("a", "b")
    _write_folder(tmp_path / "split" / "train", {"a": [(4, 4, 3)] * 3, "b": [(4, 4, 3)]})
    _write_folder(tmp_path / "split" / "test", {"a": [(4, 4, 3)], "b": [(4, 4, 3)]})
    assert len(load(str(tmp_path / "split"))) == 4
    assert len(load(str(tmp_path / "split"), split="test")) == 2
    with pytest.raises(ValueError, match="ask for split='train' or 'test'"):
        load(str(tmp_path / "split"), split="all")


def test_load_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no such dataset or path: .*embedded datasets: "
                       r"digits, digits28, synthetic, breast_cancer, colour_digits\)$") as info:
        load(str(tmp_path / "missing.npz"))
    assert isinstance(info.value, DatasetNotFoundError) and "\n" not in str(info.value)
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="unsupported dataset file 'data.csv'"):
        load(str(tmp_path / "data.csv"))
