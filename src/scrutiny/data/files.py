"""Loaders for the user's own data on disk, plus the :func:`load` resolver.

Nothing here touches the network and nothing is unpickled: ``.npz`` files are
read with ``allow_pickle=False``, MNIST and CIFAR-10 are parsed from their
binary formats with numpy.
"""

from __future__ import annotations

import gzip
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from scrutiny.errors import InputError

from .dataset import ArrayDataset, DatasetNotFoundError, check_split
from .embedded import load_breast_cancer, load_colour_digits, load_digits, make_synthetic

__all__ = [
    "CIFAR10_CLASSES",
    "EMBEDDED",
    "IMAGE_EXTENSIONS",
    "load",
    "load_cifar10",
    "load_image_folder",
    "load_mnist",
    "load_npz",
]

PathLike = str | os.PathLike[str]

#: Names :func:`load` resolves to built-in datasets (no file needed).
EMBEDDED: tuple[str, ...] = ("digits", "digits28", "synthetic", "breast_cancer", "colour_digits")

#: File extensions :func:`load_image_folder` reads (case-insensitive).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")

#: Default CIFAR-10 class names (used when ``batches.meta.txt`` is absent).
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


# --------------------------------------------------------------------------- helpers


def _to_unit_float(x: np.ndarray, what: str) -> np.ndarray:
    """Convert an array to float32 in [0, 1]: uint8 is divided by 255, floats are checked."""
    if x.dtype == np.uint8:
        return (x.astype(np.float32) / 255.0).astype(np.float32)
    if x.dtype == np.bool_:
        return x.astype(np.float32)
    if np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating):
        xf = x.astype(np.float32)
        if not np.isfinite(xf).all():
            raise InputError(f"{what} contains NaN or infinite values")
        if xf.size:
            lo, hi = float(xf.min()), float(xf.max())
            if lo < -1e-6 or hi > 1.0 + 1e-6:
                raise InputError(
                    f"{what} values must lie in [0, 1] (or be uint8 0..255), got range "
                    f"[{lo:g}, {hi:g}]; rescale the data first"
                )
        return np.clip(xf, 0.0, 1.0)
    raise InputError(f"{what} has unsupported dtype {x.dtype}; use uint8 or float in [0, 1]")


def _to_nchw(x: np.ndarray, what: str) -> np.ndarray:
    """Bring inputs to (N, F) or (N, C, H, W)."""
    if x.ndim == 2:
        return x
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        # Channels-first when axis 1 looks like channels; otherwise channels-last
        # when the last axis does.
        if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
            return np.transpose(x, (0, 3, 1, 2))
        return x
    raise InputError(
        f"{what} must be 2-D (N, F), 3-D (N, H, W) or 4-D (NCHW/NHWC), "
        f"got shape {x.shape}"
    )


def _to_labels(y: np.ndarray, n: int, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise InputError(f"{what} must be 1-D integer labels, got shape {y.shape}")
    if y.shape[0] != n:
        raise InputError(f"x has {n} samples but {what} has {y.shape[0]} labels")
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all() or not np.all(y == np.round(y)):
            raise InputError(f"{what} must hold integer class labels")
    elif not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise InputError(f"{what} must hold integer class labels, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise InputError(f"{what} must be non-negative, got minimum {int(y.min())}")
    return y


def _class_names(classes: Sequence[str] | None, y: np.ndarray, what: str) -> tuple[str, ...]:
    k = int(y.max()) + 1 if y.size else 1
    if classes is None:
        return tuple(str(i) for i in range(k))
    if isinstance(classes, str):
        raise InputError("classes must be a sequence of names, not a single str")
    names = tuple(str(c) for c in classes)
    if len(names) < k:
        raise InputError(f"{len(names)} class names given but {what} has labels up to {k - 1}")
    return names


def _dataset(
    x: np.ndarray,
    y: np.ndarray,
    classes: tuple[str, ...],
    name: str,
    feature_names: tuple[str, ...] | None = None,
) -> ArrayDataset:
    return ArrayDataset(
        x=torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        y=torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
        classes=classes,
        name=name,
        feature_names=feature_names,
    )


def _existing(path: PathLike, kind: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetNotFoundError(f"{kind} not found: {str(p)!r}")
    return p


# --------------------------------------------------------------------------- npz


def load_npz(
    path: PathLike,
    *,
    x_key: str = "x",
    y_key: str = "y",
    classes: Sequence[str] | None = None,
) -> ArrayDataset:
    """Load inputs and labels from a numpy ``.npz`` archive (never unpickles).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file.
    x_key, y_key : str, optional
        Names of the input and label arrays inside the archive.
    classes : sequence of str, optional
        Class names. If omitted, a string array stored under ``"classes"`` in
        the archive is used, else ``"0"``, ``"1"``, ... up to the largest label.

    Returns
    -------
    ArrayDataset
        Named after the file stem. ``x`` is converted as follows: ``uint8``
        is divided by 255, other numbers must already lie in ``[0, 1]``;
        ``(N, F)`` stays tabular (feature names are read from a
        ``"feature_names"`` string array when present); ``(N, H, W)`` becomes
        ``(N, 1, H, W)``; 4-D arrays are taken as NCHW unless axis 1 is not
        1 or 3 while the last axis is, in which case they are NHWC and
        transposed to NCHW.

    Raises
    ------
    DatasetNotFoundError
        Subclass of ``FileNotFoundError``; raised if ``path`` does not exist.
    scrutiny.errors.InputError
        Subclass of ``ValueError``; raised if the file is not a readable ``.npz``, a key
        is missing (the message lists the keys present), an array needs pickle, values
        are NaN or outside ``[0, 1]``, labels are not non-negative integers, or the
        lengths of ``x`` and ``y`` differ.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "toy.npz")
    >>> np.savez(path, x=np.zeros((4, 8, 8, 3), np.uint8), y=np.array([0, 1, 1, 0]))
    >>> ds = load_npz(path)
    >>> tuple(ds.x.shape), ds.classes, ds.name
    ((4, 3, 8, 8), ('0', '1'), 'toy')
    """
    p = _existing(path, "npz file")
    with _open_npz(p) as archive:
        keys = list(archive.files)
        missing = [k for k in (x_key, y_key) if k not in keys]
        if missing:
            raise InputError(
                f"{p.name}: missing key(s) {missing}; keys present: {sorted(keys)}"
            )
        x = _npz_array(archive, x_key, p)
        y = _npz_array(archive, y_key, p)
        if classes is None and "classes" in keys:
            classes = [str(c) for c in np.asarray(_npz_array(archive, "classes", p)).ravel()]
        feature_names = None
        if "feature_names" in keys:
            feature_names = tuple(
                str(f) for f in np.asarray(_npz_array(archive, "feature_names", p)).ravel()
            )
    return _from_arrays(x, y, classes=classes, name=p.stem, feature_names=feature_names,
                        where=f"{p.name}[{x_key!r}]", ywhere=f"{p.name}[{y_key!r}]")


def _open_npz(p: Path) -> np.lib.npyio.NpzFile:
    try:
        archive = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"{p.name}: not a readable .npz archive ({err})") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(f"{p.name}: expected an .npz archive (np.savez), got a single .npy array")
    return archive


def _npz_array(archive: np.lib.npyio.NpzFile, key: str, p: Path) -> np.ndarray:
    try:
        return np.asarray(archive[key])
    except ValueError as err:  # object arrays need pickle
        raise InputError(
            f"{p.name}[{key!r}] cannot be read without unpickling ({err}); store "
            "plain numeric / string arrays instead"
        ) from err


def _from_arrays(
    x: np.ndarray,
    y: np.ndarray,
    *,
    classes: Sequence[str] | None,
    name: str,
    feature_names: tuple[str, ...] | None,
    where: str,
    ywhere: str,
) -> ArrayDataset:
    x = _to_nchw(np.asarray(x), where)
    labels = _to_labels(y, x.shape[0], ywhere)
    xf = _to_unit_float(x, where)
    names = _class_names(classes, labels, ywhere)
    if feature_names is not None and (xf.ndim != 2 or len(feature_names) != xf.shape[1]):
        feature_names = None
    return _dataset(xf, labels, names, name, feature_names)


# --------------------------------------------------------------------------- image folder


def load_image_folder(
    path: PathLike, *, size: int | None = None, grayscale: bool = False
) -> ArrayDataset:
    """Load ``root/<class_name>/<image>`` files as an image dataset.

    Class names are the sorted sub-directory names (hidden ones skipped; every
    sub-directory is a class, even an empty one, so that train and test
    folders with the same classes get the same labels). Files ending in
    ``.png``, ``.jpg``, ``.jpeg`` or ``.bmp`` (any case) are read in sorted
    order with :func:`skimage.io.imread`; other files are ignored.

    Parameters
    ----------
    path : str or os.PathLike
        The root directory.
    size : int, optional
        Resize every image to ``size x size`` with
        :func:`skimage.transform.resize` (``anti_aliasing=True``). If omitted,
        all images must already share one shape.
    grayscale : bool, optional
        Convert to one luminance channel (``rgb2gray``) instead of RGB.

    Returns
    -------
    ArrayDataset
        ``x`` of shape ``(N, 3, H, W)`` (or ``(N, 1, H, W)`` with
        ``grayscale=True``) in ``[0, 1]``, named after the directory.
        Alpha channels are dropped.

    Raises
    ------
    DatasetNotFoundError
        Subclass of ``FileNotFoundError``; raised if ``path`` does not exist.
    scrutiny.errors.InputError
        Subclass of ``ValueError``; raised if ``path`` is not a directory, holds no
        class sub-directories or no images, an image cannot be read, or (without
        ``size``) shapes differ.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> from skimage.io import imsave
    >>> root = tempfile.mkdtemp()
    >>> for cls in ("cat", "dog"):
    ...     os.mkdir(os.path.join(root, cls))
    ...     imsave(os.path.join(root, cls, "a.png"), np.zeros((6, 6, 3), np.uint8),
    ...            check_contrast=False)
    >>> ds = load_image_folder(root, size=4)
    >>> tuple(ds.x.shape), ds.classes
    ((2, 3, 4, 4), ('cat', 'dog'))
    """
    from skimage import io as skio
    from skimage.color import gray2rgb, rgb2gray
    from skimage.transform import resize
    from skimage.util import img_as_float32

    root = _existing(path, "image folder")
    if not root.is_dir():
        raise InputError(f"{str(root)!r} is not a directory of class sub-directories")
    if size is not None and (isinstance(size, bool) or int(size) != size or size < 1):
        raise InputError(f"size must be a positive int, got {size!r}")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise InputError(
            f"{str(root)!r} has no class sub-directories; expected root/<class_name>/<image>"
        )
    files: list[tuple[Path, int]] = []
    for label, d in enumerate(class_dirs):
        files += [
            (f, label)
            for f in sorted(d.iterdir())
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
        ]
    if not files:
        raise InputError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {str(root)!r}"
        )

    images: list[np.ndarray] = []
    for f, _ in files:
        try:
            with warnings.catch_warnings():
                # imageio warns about deprecated plugins while probing a bad file
                warnings.simplefilter("ignore", DeprecationWarning)
                img = np.asarray(skio.imread(f))
        except Exception as err:  # any decoder failure
            raise InputError(f"cannot read image {str(f)!r}: {err}") from err
        if img.ndim == 3 and img.shape[-1] == 4:
            img = img[..., :3]
        elif img.ndim == 3 and img.shape[-1] == 2:
            img = img[..., 0]
        elif img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] != 3):
            raise InputError(f"unsupported image shape {img.shape} in {str(f)!r}")
        img = img_as_float32(img)
        if grayscale:
            img = rgb2gray(img) if img.ndim == 3 else img
        elif img.ndim == 2:
            img = gray2rgb(img)
        if size is not None:
            img = resize(img, (int(size), int(size)), anti_aliasing=True)
        images.append(np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0))

    first = images[0].shape
    for (f, _), img in zip(files, images, strict=True):
        if img.shape != first:
            raise InputError(
                f"images differ in shape: {str(files[0][0])!r} is {first[:2]} but "
                f"{str(f)!r} is {img.shape[:2]}; pass size= to resize them"
            )
    x = np.stack(images)
    x = x[:, None] if x.ndim == 3 else np.transpose(x, (0, 3, 1, 2))
    y = np.array([label for _, label in files], dtype=np.int64)
    return _dataset(x, y, tuple(d.name for d in class_dirs), root.resolve().name)


# --------------------------------------------------------------------------- MNIST (IDX)

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: PathLike) -> np.ndarray:
    """Read one IDX file (as used by MNIST), optionally gzip-compressed.

    Parameters
    ----------
    path : str or os.PathLike
        The file; a ``.gz`` suffix means gzip.

    Returns
    -------
    numpy.ndarray
        The array, with the shape and dtype stated in its header.

    Raises
    ------
    scrutiny.errors.InputError
        Subclass of ``ValueError``; raised if the magic number, dtype code or data
        length is wrong.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
    >>> header = bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big")
    >>> _ = open(path, "wb").write(header + bytes([7, 0, 2]))
    >>> read_idx(path).tolist()
    [7, 0, 2]
    """
    p = Path(path)
    try:
        if p.suffix == ".gz":
            with gzip.open(p, "rb") as fh:
                raw = fh.read()
        else:
            raw = p.read_bytes()
    except (OSError, EOFError) as err:  # includes gzip.BadGzipFile
        raise InputError(f"{p.name}: cannot read file ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise InputError(
            f"{p.name}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'}; "
            "expected 0x0000 then a type code and a dimension count)"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise InputError(f"{p.name}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - start != expected:
        raise InputError(
            f"{p.name}: IDX header says shape {shape} ({expected} bytes) but the file "
            f"holds {len(raw) - start} data bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=start).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


_MNIST_PREFIX = {"train": "train", "test": "t10k"}


def _find_mnist_file(root: Path, prefix: str, kind: str) -> Path | None:
    """Find ``<prefix>-<kind>`` allowing '-'/'.' before idx and a .gz suffix."""
    ndim = "idx3" if kind == "images" else "idx1"
    for d in (root, root / "raw", root / "MNIST" / "raw"):
        for sep in ("-", "."):
            for suffix in ("", ".gz"):
                f = d / f"{prefix}-{kind}{sep}{ndim}-ubyte{suffix}"
                if f.is_file():
                    return f
    return None


def _is_mnist_dir(root: Path) -> bool:
    return any(
        _find_mnist_file(root, prefix, "images") is not None
        for prefix in _MNIST_PREFIX.values()
    )


def load_mnist(root: PathLike, *, split: str = "train") -> ArrayDataset:
    """Load MNIST-format IDX files already on disk (MNIST, Fashion-MNIST, ...).

    Looks in ``root``, ``root/raw`` and ``root/MNIST/raw`` for
    ``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte`` (or ``t10k-...``
    for the test split), each optionally gzip-compressed (``.gz``); the
    ``train-images.idx3-ubyte`` spelling is accepted too.

    Parameters
    ----------
    root : str or os.PathLike
        Directory holding the IDX files.
    split : {"train", "test"}, optional
        ``"train"`` reads ``train-*`` files, ``"test"`` reads ``t10k-*``.

    Returns
    -------
    ArrayDataset
        ``x`` of shape ``(N, 1, 28, 28)`` (or whatever the header says) in
        ``[0, 1]``, classes ``"0"`` .. ``"9"``, named after the directory.

    Raises
    ------
    DatasetNotFoundError
        Subclass of ``FileNotFoundError``; raised if ``root`` or the needed files are
        missing.
    scrutiny.errors.InputError
        Subclass of ``ValueError``; raised if a file is not IDX, images are not 3-D
        ``uint8``, labels are not 1-D ``uint8``, or their counts differ.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> root = tempfile.mkdtemp()
    >>> def idx(name, arr):
    ...     head = bytes([0, 0, 8, arr.ndim]) + b"".join(
    ...         d.to_bytes(4, "big") for d in arr.shape)
    ...     _ = open(os.path.join(root, name), "wb").write(head + arr.tobytes())
    >>> idx("train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    >>> idx("train-labels-idx1-ubyte", np.array([3, 1], np.uint8))
    >>> ds = load_mnist(root)
    >>> tuple(ds.x.shape), ds.y.tolist()
    ((2, 1, 28, 28), [3, 1])
    """
    if split not in _MNIST_PREFIX:
        raise InputError(f"split must be 'train' or 'test' for MNIST, got {split!r}")
    r = _existing(root, "MNIST directory")
    if not r.is_dir():
        raise InputError(f"{str(r)!r} is not a directory")
    prefix = _MNIST_PREFIX[split]
    img_file = _find_mnist_file(r, prefix, "images")
    lbl_file = _find_mnist_file(r, prefix, "labels")
    if img_file is None or lbl_file is None:
        raise DatasetNotFoundError(
            f"no {prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz] "
            f"in {str(r)!r}"
        )
    images, labels = read_idx(img_file), read_idx(lbl_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise InputError(
            f"{img_file.name}: expected 3-D uint8 images, got {images.ndim}-D {images.dtype}"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise InputError(
            f"{lbl_file.name}: expected 1-D uint8 labels, got {labels.ndim}-D {labels.dtype}"
        )
    if images.shape[0] != labels.shape[0]:
        raise InputError(
            f"{img_file.name} has {images.shape[0]} images but {lbl_file.name} has "
            f"{labels.shape[0]} labels"
        )
    y = labels.astype(np.int64)
    k = max(10, int(y.max()) + 1 if y.size else 10)
    x = images[:, None].astype(np.float32) / 255.0
    name = r.resolve().name if r.resolve().name not in ("raw", "") else "mnist"
    return _dataset(x, y, tuple(str(i) for i in range(k)), name)


# --------------------------------------------------------------------------- CIFAR-10 (binary)

_CIFAR_RECORD = 1 + 3 * 32 * 32
_CIFAR_PY_FILES = ("data_batch_1", "test_batch", "batches.meta")


def _cifar_dir(root: Path) -> Path | None:
    """The directory holding CIFAR-10 binary batches; raise for the pickle version."""
    for d in (root, root / "cifar-10-batches-bin"):
        if any((d / f).is_file() for f in ("data_batch_1.bin", "test_batch.bin")):
            return d
    for d in (root, root / "cifar-10-batches-py"):
        if (d.name == "cifar-10-batches-py" and d.is_dir()) or any(
            (d / f).is_file() for f in _CIFAR_PY_FILES
        ):
            raise InputError(
                f"{str(d)!r} is the Python (pickle) version of CIFAR-10; scrutiny refuses "
                "to unpickle files because unpickling can run arbitrary code. Use the "
                "binary version (cifar-10-batches-bin, from cifar-10-binary.tar.gz) or "
                "convert the data to an .npz file."
            )
    return None


def load_cifar10(root: PathLike, *, split: str = "train") -> ArrayDataset:
    """Load the *binary* version of CIFAR-10 from disk (never unpickles).

    ``root`` is either the ``cifar-10-batches-bin`` directory or its parent.
    Each record of ``data_batch_{1..5}.bin`` / ``test_batch.bin`` is one label
    byte followed by 3072 pixel bytes (red, green, blue planes of 32x32).

    Parameters
    ----------
    root : str or os.PathLike
        ``cifar-10-batches-bin`` or the directory containing it.
    split : {"train", "test"}, optional
        ``"train"`` concatenates the ``data_batch_*.bin`` files present
        (normally 1 to 5), ``"test"`` reads ``test_batch.bin``.

    Returns
    -------
    ArrayDataset
        ``x`` of shape ``(N, 3, 32, 32)`` in ``[0, 1]``; class names from
        ``batches.meta.txt`` when present, else :data:`CIFAR10_CLASSES`.

    Raises
    ------
    DatasetNotFoundError
        Subclass of ``FileNotFoundError``; raised if no binary batches for ``split`` are
        found.
    scrutiny.errors.InputError
        Subclass of ``ValueError``; raised if ``root`` is the Python (pickle) version, a
        file's size is not a whole number of 3073-byte records, or a label is not below
        10.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> root = tempfile.mkdtemp()
    >>> record = np.concatenate([[4], np.zeros(3072)]).astype(np.uint8)
    >>> _ = open(os.path.join(root, "test_batch.bin"), "wb").write(record.tobytes())
    >>> ds = load_cifar10(root, split="test")
    >>> tuple(ds.x.shape), ds.classes[int(ds.y[0])]
    ((1, 3, 32, 32), 'deer')
    """
    if split not in ("train", "test"):
        raise InputError(f"split must be 'train' or 'test' for CIFAR-10, got {split!r}")
    r = _existing(root, "CIFAR-10 directory")
    if not r.is_dir():
        raise InputError(f"{str(r)!r} is not a directory")
    d = _cifar_dir(r)
    if d is None:
        raise DatasetNotFoundError(
            f"no CIFAR-10 binary batches (data_batch_1.bin ... test_batch.bin) in "
            f"{str(r)!r} or {str(r / 'cifar-10-batches-bin')!r}"
        )
    names = (
        [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    )
    files = [d / f for f in names if (d / f).is_file()]
    if not files:
        raise DatasetNotFoundError(f"no {' / '.join(names)} in {str(d)!r}")
    chunks = []
    for f in files:
        raw = np.fromfile(f, dtype=np.uint8)
        if raw.size == 0 or raw.size % _CIFAR_RECORD:
            raise InputError(
                f"{f.name}: {raw.size} bytes is not a whole number of {_CIFAR_RECORD}-byte "
                "CIFAR-10 records (1 label byte + 3072 pixel bytes)"
            )
        chunks.append(raw.reshape(-1, _CIFAR_RECORD))
    records = np.concatenate(chunks)
    y = records[:, 0].astype(np.int64)
    if y.max() >= 10:
        raise InputError(f"CIFAR-10 labels must be 0..9, found {int(y.max())}")
    x = records[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    classes = CIFAR10_CLASSES
    meta = d / "batches.meta.txt"
    if meta.is_file():
        listed = tuple(s.strip() for s in meta.read_text().splitlines() if s.strip())
        if len(listed) >= 10:
            classes = listed[:10]
    return _dataset(x, y, classes, "cifar10")


# --------------------------------------------------------------------------- resolver


def _load_npz_split(p: Path, split: str) -> ArrayDataset:
    """An ``.npz`` with ``x``/``y``, or with ``x_train``/``y_train``/``x_test``/``y_test``."""
    with _open_npz(p) as archive:
        keys = set(archive.files)
    if {"x", "y"} <= keys or not {"x_train", "y_train", "x_test", "y_test"} & keys:
        return load_npz(p)
    if split == "all":
        parts = [_load_npz_split(p, s) for s in ("train", "test")]
        return ArrayDataset(
            x=torch.cat([q.x for q in parts]),
            y=torch.cat([q.y for q in parts]),
            classes=max((q.classes for q in parts), key=len),
            name=p.stem,
            feature_names=parts[0].feature_names,
        )
    return load_npz(p, x_key=f"x_{split}", y_key=f"y_{split}")


def _embedded_hint() -> str:
    return f"embedded datasets: {', '.join(EMBEDDED)}"


def load(spec: str, *, split: str = "train", seed: int = 0) -> ArrayDataset:
    """Resolve a dataset name or path, as the command line does.

    Parameters
    ----------
    spec : str
        One of :data:`EMBEDDED` (``"digits"`` 8x8, ``"digits28"``,
        ``"synthetic"``, ``"breast_cancer"``, ``"colour_digits"`` 32x32x3), or a path:

        * ``*.npz``: :func:`load_npz` with keys ``x``/``y``; an archive with
          ``x_train``/``y_train``/``x_test``/``y_test`` instead (e.g. Keras'
          ``mnist.npz``) gives the part named by ``split``;
        * a directory with MNIST IDX files: :func:`load_mnist`;
        * a directory with CIFAR-10 binary batches (or their parent):
          :func:`load_cifar10`;
        * a directory with ``train/`` and ``test/`` sub-directories: the one
          named by ``split``, as an image folder;
        * any other directory: :func:`load_image_folder`.

        Embedded names win over same-named paths; write ``./digits`` to mean
        a directory.
    split : {"train", "test", "all"}, optional
        Part to return. User data without its own split is returned whole
        (``split`` is then ignored); MNIST / CIFAR-10 / ``train``+``test``
        folders do not support ``"all"``.
    seed : int, optional
        Seed of the embedded datasets' split (and of synthetic generation).

    Returns
    -------
    ArrayDataset
        The dataset; for paths, ``name`` is the directory or file stem.

    Raises
    ------
    DatasetNotFoundError
        Subclass of ``FileNotFoundError``; raised if ``spec`` is neither an embedded
        name nor an existing path.
    scrutiny.errors.InputError
        Subclass of ``ValueError``; raised if the path is of an unsupported kind or its
        content is invalid.

    Examples
    --------
    >>> load("digits28", split="test").input_shape
    torch.Size([1, 28, 28])
    >>> load("synthetic", seed=1).num_classes
    4
    """
    check_split(split)
    if spec == "digits":
        return load_digits(size=8, split=split, seed=seed)
    if spec == "digits28":
        return load_digits(size=28, split=split, seed=seed)
    if spec == "synthetic":
        return make_synthetic(split=split, seed=seed)
    if spec == "breast_cancer":
        return load_breast_cancer(split=split, seed=seed)
    if spec == "colour_digits":
        return load_colour_digits(split=split, seed=seed)

    p = Path(spec).expanduser()
    if not p.exists():
        raise DatasetNotFoundError(
            f"no such dataset or path: {spec!r} ({_embedded_hint()})"
        )
    if p.is_file():
        if p.suffix.lower() == ".npz":
            return _load_npz_split(p, split)
        raise InputError(
            f"unsupported dataset file {p.name!r}: expected an .npz archive or a "
            f"directory ({_embedded_hint()})"
        )
    if _is_mnist_dir(p):
        return load_mnist(p, split=split)
    if _cifar_dir(p) is not None:
        return load_cifar10(p, split=split)
    if (p / "train").is_dir() and (p / "test").is_dir():
        if split == "all":
            raise InputError(
                f"{str(p)!r} has train/ and test/ folders; ask for split='train' or 'test'"
            )
        return load_image_folder(p / split)
    return load_image_folder(p)
