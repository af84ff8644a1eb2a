"""Datasets that need no download: scikit-learn's bundled data and generated images."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from scrutiny.errors import InputError

from .dataset import ArrayDataset, check_split, select_split, split_indices

__all__ = [
    "COLOUR_DIGITS_MEAN",
    "COLOUR_DIGITS_STD",
    "SYNTHETIC_SHAPES",
    "load_breast_cancer",
    "load_colour_digits",
    "load_digits",
    "make_synthetic",
]

#: Class names of :func:`make_synthetic`, in label order.
SYNTHETIC_SHAPES: tuple[str, ...] = ("square", "plus", "ring", "bars")


def load_digits(
    *, size: int = 8, split: str = "train", test_fraction: float = 0.25, seed: int = 0
) -> ArrayDataset:
    """Load scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes).

    Parameters
    ----------
    size : int, optional
        Side of the returned images. ``8`` keeps the native resolution; any
        larger value upsamples with bilinear interpolation
        (``align_corners=False``) and clamps to ``[0, 1]`` (``28`` gives
        MNIST-sized images).
    split : {"train", "test", "all"}, optional
        Which part of the stratified split to return.
    test_fraction : float, optional
        Fraction of the samples in the test part.
    seed : int, optional
        Seed of the split; the same seed always gives the same split.

    Returns
    -------
    ArrayDataset
        ``x`` of shape ``(N, 1, size, size)`` in ``[0, 1]`` (pixels ``0..16``
        divided by 16), ``y`` in ``0..9``, classes ``"0"`` .. ``"9"``, named
        ``"digits"`` (size 8) or ``"digits<size>"``.

    Examples
    --------
    >>> ds = load_digits()
    >>> tuple(ds.x.shape), ds.num_classes, ds.name
    ((1347, 1, 8, 8), 10, 'digits')
    >>> tuple(load_digits(size=28, split="test").x.shape)
    (450, 1, 28, 28)
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise InputError(f"size must be an int >= 8, got {size!r}")
    check_split(split)
    from sklearn.datasets import load_digits as _sk_load_digits  # lazy: slow import

    bunch = _sk_load_digits()
    x = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None]
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    full = ArrayDataset(
        x=x,
        y=y,
        classes=tuple(str(int(c)) for c in bunch.target_names),
        name="digits" if size == 8 else f"digits{int(size)}",
    )
    part = select_split(full, split, test_fraction=test_fraction, seed=seed)
    if size == 8:
        return part
    big = F.interpolate(part.x, size=(int(size), int(size)), mode="bilinear", align_corners=False)
    return ArrayDataset(
        x=big.clamp_(0.0, 1.0).contiguous(), y=part.y, classes=part.classes, name=part.name
    )


def load_breast_cancer(
    *, split: str = "train", test_fraction: float = 0.25, seed: int = 0
) -> ArrayDataset:
    """Load scikit-learn's bundled Wisconsin breast-cancer table (569 rows, 30 features).

    Features are min-max scaled with the minimum and maximum of the *train*
    part of the split (whatever ``split`` is returned), so the test part can
    fall slightly outside ``[0, 1]``; it is clamped back into ``[0, 1]``.

    Parameters
    ----------
    split : {"train", "test", "all"}, optional
        Which part of the stratified split to return.
    test_fraction : float, optional
        Fraction of the rows in the test part.
    seed : int, optional
        Seed of the split (and therefore of the scaling statistics).

    Returns
    -------
    ArrayDataset
        Tabular ``x`` of shape ``(N, 30)`` in ``[0, 1]``, ``y`` in ``{0, 1}``,
        classes ``("malignant", "benign")`` and scikit-learn's feature names.

    Examples
    --------
    >>> ds = load_breast_cancer()
    >>> tuple(ds.x.shape), ds.classes, ds.is_image
    ((426, 30), ('malignant', 'benign'), False)
    >>> ds.feature_names[0]
    'mean radius'
    """
    check_split(split)
    from sklearn.datasets import load_breast_cancer as _sk_load  # lazy: slow import

    bunch = _sk_load()
    data = np.asarray(bunch.data, dtype=np.float64)
    target = np.asarray(bunch.target, dtype=np.int64)
    train, test = split_indices(target, test_fraction=test_fraction, seed=seed)
    lo = data[train].min(axis=0)
    span = data[train].max(axis=0) - lo
    span[span == 0] = 1.0
    scaled = np.clip((data - lo) / span, 0.0, 1.0).astype(np.float32)
    index = {"train": train, "test": test, "all": np.arange(len(target))}[split]
    return ArrayDataset(
        x=torch.from_numpy(np.ascontiguousarray(scaled[index])),
        y=torch.from_numpy(target[index]),
        classes=tuple(str(c) for c in bunch.target_names),
        name="breast_cancer",
        feature_names=tuple(str(f) for f in bunch.feature_names),
    )


def _shape_templates(s: int) -> np.ndarray:
    """Boolean ``(4, s, s)`` stencils of the class-causing shapes."""
    r, c = np.mgrid[0:s, 0:s].astype(np.float64)
    centre = (s - 1) / 2.0
    stroke = max(1, round(s / 4))
    lo = (s - stroke) // 2
    square = np.ones((s, s), dtype=bool)
    plus = ((r >= lo) & (r < lo + stroke)) | ((c >= lo) & (c < lo + stroke))
    dist = np.hypot(r - centre, c - centre)
    ring = (dist <= s / 2.0) & (dist >= s / 2.0 - max(1.0, s / 6.0) - 0.25)
    bars = (r < stroke) | (r >= s - stroke)
    return np.stack([square, plus, ring, bars])


def make_synthetic(
    *,
    n: int = 2000,
    size: int = 32,
    num_classes: int = 4,
    split: str = "train",
    test_fraction: float = 0.25,
    seed: int = 0,
    noise: float = 0.1,
) -> ArrayDataset:
    """Generate grayscale images whose class is decided by one object's shape.

    Every image has three ingredients, composited with a pixel-wise maximum:

    * background: uniform noise in ``[0, noise]``;
    * one or two *distractor* blobs: truncated Gaussian spots (peak
      ``U(0.3, 0.8)``, sigma ``U(0.8, 1.4) * size / 32``, cut at three sigma)
      whose number, size, brightness and position are drawn the same way for
      every class, so they carry no class information. They never touch the
      class object (they stay at least one pixel clear of its square);
    * one *class object*: a hard-edged stencil of side ``s = max(5,
      round(size / 4))`` (8 pixels for ``size=32``) at a uniformly random
      position fully inside the image, with brightness ``U(0.6, 1.0)``.
      Its shape is the class: 0 ``"square"`` (filled), 1 ``"plus"``,
      2 ``"ring"`` (circle outline), 3 ``"bars"`` (a pair of horizontal bars).

    ``masks`` is the object's whole ``s x s`` bounding square, i.e. every
    pixel the stencil could light, including the dark pixels inside the ring
    or between the bars (the *absence* of light there is evidence too). The
    same square size for every class means erasing the mask removes all
    class information from the image.

    Parameters
    ----------
    n : int, optional
        Number of images generated before splitting (train and test are
        disjoint parts of these ``n``; labels are balanced).
    size : int, optional
        Image side, at least 16.
    num_classes : int, optional
        Number of classes, 2 to 4 (the first ``num_classes`` shapes above).
    split : {"train", "test", "all"}, optional
        Which part of the stratified split to return.
    test_fraction : float, optional
        Fraction of the images in the test part.
    seed : int, optional
        Seed of :func:`numpy.random.default_rng`; generation and split are
        deterministic given it.
    noise : float, optional
        Amplitude of the background noise, in ``[0, 0.5]``.

    Returns
    -------
    ArrayDataset
        ``x`` of shape ``(N, 1, size, size)`` in ``[0, 1]``, ``masks`` of the
        same shape (``bool``), classes ``SYNTHETIC_SHAPES[:num_classes]``,
        named ``"synthetic"``.

    Examples
    --------
    >>> ds = make_synthetic(n=200, split="all")
    >>> tuple(ds.x.shape), tuple(ds.masks.shape), ds.classes
    ((200, 1, 32, 32), (200, 1, 32, 32), ('square', 'plus', 'ring', 'bars'))
    >>> int(ds.masks[0].sum())  # the 8 x 8 square of the class object
    64
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise InputError(f"n must be an int >= 2, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
        raise InputError(f"size must be an int >= 16, got {size!r}")
    if num_classes not in (2, 3, 4):
        raise InputError(f"num_classes must be 2, 3 or 4, got {num_classes!r}")
    if not 0.0 <= float(noise) <= 0.5:
        raise InputError(f"noise must be in [0, 0.5], got {noise!r}")
    check_split(split)
    n, size = int(n), int(size)

    rng = np.random.default_rng(seed)
    s = max(5, round(size / 4))
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    top = rng.integers(0, size - s + 1, n)
    left = rng.integers(0, size - s + 1, n)
    amplitude = rng.uniform(0.6, 1.0, n)
    image = float(noise) * rng.random((n, size, size))

    # Distractors: drawn independently of the label; centres re-drawn until the
    # blob (cut at 3 sigma) stays clear of the object square grown by 1 pixel.
    k = 2
    sigma = rng.uniform(0.8, 1.4, (n, k)) * (size / 32.0)
    radius = 3.0 * sigma
    peak = rng.uniform(0.3, 0.8, (n, k))
    peak[:, 1] *= rng.integers(1, 3, n) == 2
    cy = np.empty((n, k))
    cx = np.empty((n, k))
    todo = np.ones((n, k), dtype=bool)
    box_lo_r = (top - 1.0)[:, None]
    box_hi_r = (top + s + 0.0)[:, None]
    box_lo_c = (left - 1.0)[:, None]
    box_hi_c = (left + s + 0.0)[:, None]
    for _ in range(1000):
        m = int(todo.sum())
        if m == 0:
            break
        cy[todo] = rng.uniform(0.0, size - 1.0, m)
        cx[todo] = rng.uniform(0.0, size - 1.0, m)
        dy = np.maximum(np.maximum(box_lo_r - cy, cy - box_hi_r), 0.0)
        dx = np.maximum(np.maximum(box_lo_c - cx, cx - box_hi_c), 0.0)
        todo = np.hypot(dy, dx) <= radius
    else:  # pragma: no cover - cannot happen for size >= 16
        raise RuntimeError("could not place distractors clear of the object")
    grid = np.arange(size, dtype=np.float64)
    d2 = (grid[None, None, :, None] - cy[:, :, None, None]) ** 2 + (
        grid[None, None, None, :] - cx[:, :, None, None]
    ) ** 2
    blobs = peak[:, :, None, None] * np.exp(-d2 / (2.0 * sigma[:, :, None, None] ** 2))
    blobs[d2 > radius[:, :, None, None] ** 2] = 0.0
    np.maximum(image, blobs.max(axis=1), out=image)

    # Class object and its mask (the whole s x s square).
    stencil = _shape_templates(s)[labels]
    rows = top[:, None, None] + np.arange(s)[None, :, None]
    cols = left[:, None, None] + np.arange(s)[None, None, :]
    idx = np.arange(n)[:, None, None]
    image[idx, rows, cols] = np.maximum(
        image[idx, rows, cols], stencil * amplitude[:, None, None]
    )
    mask = np.zeros((n, size, size), dtype=bool)
    mask[idx, rows, cols] = True

    full = ArrayDataset(
        x=torch.from_numpy(np.clip(image, 0.0, 1.0).astype(np.float32)[:, None]),
        y=torch.from_numpy(labels),
        classes=SYNTHETIC_SHAPES[:num_classes],
        name="synthetic",
        masks=torch.from_numpy(mask[:, None]),
    )
    return select_split(full, split, test_fraction=test_fraction, seed=seed)


#: Per-channel (R, G, B) mean and standard deviation of the train split of
#: :func:`load_colour_digits` (default arguments): the normalisation a model of
#: that data declares (``TorchModel(..., mean=..., std=...)``), so its inputs and
#: every eps stay in pixel units in ``[0, 1]``.
COLOUR_DIGITS_MEAN: tuple[float, float, float] = (0.3568, 0.3523, 0.3525)
COLOUR_DIGITS_STD: tuple[float, float, float] = (0.2038, 0.2034, 0.2030)


def load_colour_digits(
    *, size: int = 32, split: str = "train", test_fraction: float = 0.25, seed: int = 0,
    noise: float = 0.04,
) -> ArrayDataset:
    """CIFAR-sized colour images of the bundled digits: a coloured digit on a coloured ground.

    Each of the 1797 digits of :func:`load_digits` is upsampled (bilinear) to
    ``7 * size / 8`` pixels and placed at a uniformly random offset in a
    ``size x size`` canvas. The canvas is a vertical gradient between two random
    colours (each channel ``U(0, 0.45)``), the digit's strokes are painted with a
    third random colour (each channel ``U(0.55, 1)``) with the stroke intensity
    as opacity, and Gaussian noise of standard deviation ``noise`` is added
    before clamping to ``[0, 1]``. Colours and positions are drawn independently
    of the label, so only the digit's shape tells the class, and the three
    channels differ in every image.

    Parameters
    ----------
    size : int, optional
        Side of the images, at least 16 (32 gives CIFAR-10's shape).
    split : {"train", "test", "all"}, optional
        Which part of the stratified split to return (the split of
        :func:`load_digits` with the same ``seed``).
    test_fraction : float, optional
        Fraction of the images in the test part.
    seed : int, optional
        Seed of the colours, positions, noise and split.
    noise : float, optional
        Standard deviation of the pixel noise, in ``[0, 0.2]``.

    Returns
    -------
    ArrayDataset
        ``x`` of shape ``(N, 3, size, size)`` in ``[0, 1]``, ``y`` in ``0..9``,
        classes ``"0"`` .. ``"9"``, named ``"colour_digits"``. Its per-channel
        statistics are :data:`COLOUR_DIGITS_MEAN` and :data:`COLOUR_DIGITS_STD`.

    Examples
    --------
    >>> ds = load_colour_digits(split="test")
    >>> tuple(ds.x.shape), ds.num_classes, ds.name
    ((450, 3, 32, 32), 10, 'colour_digits')
    >>> bool((ds.x[:, 0] != ds.x[:, 1]).any())  # colour, not grey
    True
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16:
        raise InputError(f"size must be an int >= 16, got {size!r}")
    if not 0.0 <= float(noise) <= 0.2:
        raise InputError(f"noise must be in [0, 0.2], got {noise!r}")
    check_split(split)
    size = int(size)
    inner = max(8, round(size * 7 / 8))
    digits = load_digits(size=inner, split="all")
    n = len(digits)
    rng = np.random.default_rng(seed)
    top = rng.integers(0, size - inner + 1, n)
    left = rng.integers(0, size - inner + 1, n)
    ground = rng.uniform(0.0, 0.45, (n, 2, 3))  # colours at the top and bottom rows
    ink = rng.uniform(0.55, 1.0, (n, 3))
    pixel_noise = rng.normal(0.0, float(noise), (n, 3, size, size))
    ramp = np.linspace(0.0, 1.0, size)[None, None, :, None]
    canvas = (ground[:, 0, :, None, None] * (1 - ramp) + ground[:, 1, :, None, None] * ramp)
    canvas = np.broadcast_to(canvas, (n, 3, size, size)).copy()
    alpha = np.zeros((n, 1, size, size))
    strokes = digits.x[:, 0].numpy().astype(np.float64)
    for i in range(n):
        alpha[i, 0, top[i]:top[i] + inner, left[i]:left[i] + inner] = strokes[i]
    image = canvas * (1 - alpha) + ink[:, :, None, None] * alpha + pixel_noise
    full = ArrayDataset(
        x=torch.from_numpy(np.clip(image, 0.0, 1.0).astype(np.float32)),
        y=digits.y,
        classes=digits.classes,
        name="colour_digits",
    )
    return select_split(full, split, test_fraction=test_fraction, seed=seed)
