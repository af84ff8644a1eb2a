"""Embedded datasets, the ArrayDataset container and the split helpers."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from scrutiny.data import (
    EMBEDDED,
    SYNTHETIC_SHAPES,
    ArrayDataset,
    DatasetNotFoundError,
    load,
    load_breast_cancer,
    load_digits,
    make_synthetic,
    select_split,
    split,
    split_indices,
)
from scrutiny.data.embedded import _shape_templates
from scrutiny.errors import InputError


def _rows(x: torch.Tensor) -> Counter:
    return Counter(r.tobytes() for r in x.reshape(len(x), -1).numpy())


def _assert_unit_float(ds: ArrayDataset) -> None:
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert float(ds.x.min()) >= 0.0 and float(ds.x.max()) <= 1.0
    assert int(ds.y.min()) >= 0 and int(ds.y.max()) < ds.num_classes
    assert len(ds) == len(ds.y) == ds.x.shape[0]


# --------------------------------------------------------------------------- ArrayDataset


def _toy(n: int = 6) -> ArrayDataset:
    return ArrayDataset(
        x=torch.rand(n, 1, 4, 4),
        y=torch.arange(n) % 3,
        classes=("a", "b", "c"),
        name="toy",
        masks=torch.rand(n, 1, 4, 4) > 0.5,
    )


def test_array_dataset_properties_and_subset():
    ds = _toy()
    assert ds.num_classes == 3 and ds.is_image and tuple(ds.input_shape) == (1, 4, 4)
    sub = ds.subset(torch.tensor([4, 1]))
    assert torch.equal(sub.x, ds.x[[4, 1]]) and torch.equal(sub.y, ds.y[[4, 1]])
    assert torch.equal(sub.masks, ds.masks[[4, 1]])
    assert sub.classes == ds.classes and sub.name == "toy"
    assert len(ds.subset(ds.y == 0)) == 2 and len(ds.subset(slice(1, 3))) == 2
    assert len(ds.subset(np.array([0, 5]))) == 2 and len(ds.subset([2])) == 1
    x0, y0 = ds[0]
    assert x0.shape == (1, 4, 4) and int(y0) == 0
    tab = ArrayDataset(torch.rand(3, 2), torch.tensor([0, 1, 0]), ["n", "p"], "t",
                       feature_names=["f1", "f2"])
    assert not tab.is_image and tab.classes == ("n", "p") and tab.feature_names == ("f1", "f2")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"y": torch.arange(5) % 3}, "6 samples but y has 5"),
        ({"y": torch.tensor([0, 1, 2, 3, 0, 1])}, r"labels must lie in \[0, 3\)"),
        ({"y": torch.tensor([0, 1, 2, -1, 0, 1])}, r"labels must lie in \[0, 3\)"),
        ({"y": (torch.arange(6) % 3).int()}, "y must have dtype int64"),
        ({"x": torch.rand(6, 1, 4, 4).double()}, "x must have dtype float32"),
        ({"x": torch.full((6, 1, 4, 4), float("nan"))}, "NaN or infinite"),
        ({"x": torch.rand(6)}, "x must be"),
        ({"masks": torch.ones(6, 1, 4, 5, dtype=torch.bool)}, r"masks must have shape \(6, 1"),
        ({"masks": torch.ones(6, 1, 4, 4)}, "masks must be a bool"),
        ({"classes": ()}, "at least one class"),
        ({"classes": "abc"}, "not a single str"),
        ({"feature_names": ("f",)}, "only allowed for tabular"),
    ],
)
def test_array_dataset_validation(kwargs, match):
    base = {
        "x": torch.rand(6, 1, 4, 4),
        "y": torch.arange(6) % 3,
        "classes": ("a", "b", "c"),
        "name": "toy",
    }
    with pytest.raises(ValueError, match=match):
        ArrayDataset(**{**base, **kwargs})


def test_array_dataset_is_frozen():
    ds = _toy()
    with pytest.raises(AttributeError):
        ds.name = "other"  # type: ignore[misc]


def test_split_helpers():
    y = np.repeat(np.arange(4), 25)
    train, test = split_indices(y, test_fraction=0.2, seed=3)
    assert len(test) == 20 and len(train) == 80
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(100))
    assert np.bincount(y[test]).tolist() == [5, 5, 5, 5]
    again = split_indices(y, test_fraction=0.2, seed=3)
    assert np.array_equal(again[1], test)
    assert not np.array_equal(split_indices(y, test_fraction=0.2, seed=4)[1], test)
    # classes too small to stratify fall back to a plain split
    train, test = split_indices([0, 0, 0, 1], test_fraction=0.5)
    assert len(train) == len(test) == 2
    ds = _toy(12)
    a, b = split(ds, test_fraction=0.25)
    assert len(a) == 9 and len(b) == 3 and a.masks is not None
    assert select_split(ds, "all") is ds
    with pytest.raises(ValueError, match="test_fraction must be in"):
        split_indices(y, test_fraction=1.0)
    with pytest.raises(ValueError, match="split must be one of"):
        select_split(ds, "validation")


# --------------------------------------------------------------------------- digits


def test_digits_shapes_and_ranges():
    train, test, full = (load_digits(split=s) for s in ("train", "test", "all"))
    for ds in (train, test, full):
        _assert_unit_float(ds)
        assert tuple(ds.input_shape) == (1, 8, 8) and ds.name == "digits"
        assert ds.classes == tuple(str(i) for i in range(10)) and ds.masks is None
    assert len(full) == 1797 and len(train) + len(test) == 1797 and len(test) == 450
    assert float(full.x.max()) == 1.0  # 16 / 16
    # train and test partition the whole set, stratified by class
    assert _rows(train.x) + _rows(test.x) == _rows(full.x)
    frac = test.y.bincount(minlength=10).double() / full.y.bincount(minlength=10).double()
    assert torch.all((frac - 0.25).abs() < 0.02)


def test_digits_determinism_and_seed():
    a, b = load_digits(split="test", seed=0), load_digits(split="test", seed=0)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    c = load_digits(split="test", seed=1)
    assert len(c) == len(a) and not torch.equal(a.x, c.x)


@pytest.mark.parametrize("size", [28, 11])
def test_digits_upsampled(size):
    ds = load_digits(size=size, split="test")
    _assert_unit_float(ds)
    assert tuple(ds.input_shape) == (1, size, size) and ds.name == f"digits{size}"
    small = load_digits(split="test")
    assert torch.equal(ds.y, small.y)
    assert abs(float(ds.x.mean()) - float(small.x.mean())) < 0.03


def test_digits_bad_arguments():
    with pytest.raises(ValueError, match="size must be an int >= 8"):
        load_digits(size=4)
    with pytest.raises(ValueError, match="split must be one of"):
        load_digits(split="val")


# --------------------------------------------------------------------------- breast cancer


def test_breast_cancer():
    train, test, full = (load_breast_cancer(split=s) for s in ("train", "test", "all"))
    for ds in (train, test, full):
        _assert_unit_float(ds)
        assert not ds.is_image and tuple(ds.input_shape) == (30,)
        assert ds.classes == ("malignant", "benign") and ds.feature_names[0] == "mean radius"
        assert len(ds.feature_names) == 30 and ds.name == "breast_cancer"
    assert len(train) + len(test) == len(full) == 569
    # scaled with the train part's statistics: train spans exactly [0, 1]
    assert torch.allclose(train.x.min(0).values, torch.zeros(30))
    assert torch.allclose(train.x.max(0).values, torch.ones(30))
    assert _rows(train.x) + _rows(test.x) == _rows(full.x)
    other = load_breast_cancer(split="test", seed=5)
    assert not torch.equal(other.y, test.y) or not torch.equal(other.x, test.x)


# --------------------------------------------------------------------------- synthetic


@pytest.fixture(scope="module")
def synth_all() -> ArrayDataset:
    return make_synthetic(n=1200, split="all", seed=0)


def test_synthetic_shapes_and_masks(synth_all):
    ds = synth_all
    _assert_unit_float(ds)
    assert tuple(ds.x.shape) == (1200, 1, 32, 32) and ds.classes == SYNTHETIC_SHAPES
    assert ds.masks.dtype == torch.bool and ds.masks.shape == ds.x.shape
    assert ds.y.bincount().tolist() == [300] * 4  # balanced
    # each mask is one full 8x8 square inside the image (not clipped at a border)
    m = ds.masks[:, 0]
    assert torch.all(m.sum((1, 2)) == 64)
    rows, cols = m.any(2), m.any(1)
    assert torch.all(rows.sum(1) == 8) and torch.all(cols.sum(1) == 8)
    # the class object is bright inside its mask
    inside = (ds.x[:, 0] * m).amax((1, 2))
    assert float(inside.min()) >= 0.6


def _crops(ds: ArrayDataset, s: int = 8) -> np.ndarray:
    """The s x s square under each mask."""
    m = ds.masks[:, 0].numpy()
    x = ds.x[:, 0].numpy()
    corners = zip(m.any(2).argmax(1), m.any(1).argmax(1), strict=True)
    return np.stack([x[i, r : r + s, c : c + s] for i, (r, c) in enumerate(corners)])


def test_synthetic_mask_covers_the_evidence(synth_all):
    # Under each mask lies exactly the stencil of the image's class (object
    # pixels >= 0.6, background <= noise = 0.1, distractors never enter the mask).
    crops = _crops(synth_all) > 0.35
    stencils = _shape_templates(8)
    assert np.array_equal(crops, stencils[synth_all.y.numpy()])
    assert len({t.tobytes() for t in stencils}) == 4  # four distinct shapes


def test_synthetic_outside_mask_carries_no_class_information(synth_all):
    # Erase the class object (fill its mask with a constant background); what is
    # left (noise + distractors) must not predict the class.
    x = synth_all.x.clone()
    x[synth_all.masks] = 0.05
    flat = torch.nn.functional.avg_pool2d(x, 2).reshape(len(x), -1).numpy()
    y = synth_all.y.numpy()
    train, test = split_indices(y, test_fraction=0.5, seed=0)
    clf = LogisticRegression(max_iter=300).fit(flat[train], y[train])
    assert clf.score(flat[test], y[test]) < 0.4  # chance is 0.25
    # per-class statistics of the erased images agree
    means = np.array([flat[y == k].mean() for k in range(4)])
    assert np.ptp(means) < 0.01


@pytest.fixture
def one_thread():
    # A tiny model trains faster on one thread, and is not slowed down by
    # other processes competing for the cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _adam_fit(net: torch.nn.Module, ds: ArrayDataset, *, epochs: int, lr: float = 1e-2) -> None:
    """Minimal Adam loop (the first use of ``torch.optim`` costs ~2 s of imports)."""
    params = list(net.parameters())
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    t = 0
    for _ in range(epochs):
        perm = torch.randperm(len(ds))
        for i in range(0, len(ds), 50):
            b = perm[i : i + 50]
            loss = torch.nn.functional.cross_entropy(net(ds.x[b]), ds.y[b])
            grads = torch.autograd.grad(loss, params)
            t += 1
            with torch.no_grad():
                for p, mi, vi, g in zip(params, m, v, grads, strict=True):
                    mi.mul_(0.9).add_(g, alpha=0.1)
                    vi.mul_(0.999).addcmul_(g, g, value=0.001)
                    step = (mi / (1 - 0.9**t)) / ((vi / (1 - 0.999**t)).sqrt() + 1e-8)
                    p.sub_(lr * step)


@pytest.mark.usefixtures("one_thread")
def test_synthetic_learnable_by_tiny_cnn():
    torch.manual_seed(0)
    train = make_synthetic(n=1000, split="train", seed=1)
    test = make_synthetic(n=1000, split="test", seed=1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4),
    )  # fmt: skip
    _adam_fit(net, train, epochs=3)
    with torch.no_grad():
        acc = (net(test.x).argmax(1) == test.y).float().mean().item()
    assert acc > 0.9


def test_synthetic_determinism_and_disjoint_split():
    a = make_synthetic(n=400, split="train", seed=7)
    b = make_synthetic(n=400, split="train", seed=7)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.masks, b.masks)
    test = make_synthetic(n=400, split="test", seed=7)
    assert len(a) == 300 and len(test) == 100
    assert not set(_rows(a.x)) & set(_rows(test.x))
    assert test.y.bincount().tolist() == [25] * 4
    c = make_synthetic(n=400, split="train", seed=8)
    assert not torch.equal(a.x, c.x)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_synthetic_fewer_classes_and_sizes(num_classes):
    ds = make_synthetic(n=60, size=20, num_classes=num_classes, split="all", noise=0.0)
    assert ds.classes == SYNTHETIC_SHAPES[:num_classes]
    assert tuple(ds.x.shape) == (60, 1, 20, 20)
    assert torch.all(ds.masks.sum((1, 2, 3)) == 25)  # s = max(5, round(20 / 4))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 5}, "num_classes must be 2, 3 or 4"),
        ({"num_classes": 1}, "num_classes must be 2, 3 or 4"),
        ({"size": 8}, "size must be an int >= 16"),
        ({"n": 1}, "n must be an int >= 2"),
        ({"noise": -0.1}, r"noise must be in \[0, 0.5\]"),
        ({"split": "val"}, "split must be one of"),
        ({"test_fraction": 0.0}, "test_fraction must be in"),
    ],
)
def test_synthetic_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic(**kwargs)


def test_synthetic_is_fast():
    start = time.perf_counter()
    make_synthetic(n=2000, split="all")
    assert time.perf_counter() - start < 1.5


# --------------------------------------------------------------------------- resolver


def test_load_embedded_names():
    assert EMBEDDED == ("digits", "digits28", "synthetic", "breast_cancer", "colour_digits")
    assert tuple(load("digits").input_shape) == (1, 8, 8)
    assert tuple(load("digits28", split="test").input_shape) == (1, 28, 28)
    assert load("breast_cancer", split="all").feature_names is not None
    syn = load("synthetic", seed=2)
    assert syn.masks is not None and len(syn) == 1500
    assert torch.equal(load("digits", seed=3).y, load_digits(seed=3).y)


def test_load_unknown_name():
    with pytest.raises(FileNotFoundError, match="embedded datasets: digits, digits28") as info:
        load("no-such-dataset")
    assert isinstance(info.value, DatasetNotFoundError)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="split must be one of"):
        load("digits", split="validation")
