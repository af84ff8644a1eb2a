"""The in-memory dataset container shared by every loader, and split helpers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scrutiny.errors import InputError, ScrutinyError

__all__ = [
    "SPLITS",
    "ArrayDataset",
    "DatasetNotFoundError",
    "check_split",
    "select_split",
    "split",
    "split_indices",
]


class DatasetNotFoundError(ScrutinyError, FileNotFoundError):
    """A dataset name or path does not exist (a :class:`FileNotFoundError`)."""

#: Accepted values of the ``split`` argument of the embedded loaders.
SPLITS: tuple[str, ...] = ("train", "test", "all")


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A labelled dataset held entirely in memory as tensors.

    Parameters
    ----------
    x : torch.Tensor
        Inputs, ``float32``. Images are ``(N, C, H, W)`` with values in
        ``[0, 1]``; tables are ``(N, F)`` with features scaled to ``[0, 1]``.
        The ``[0, 1]`` range is a convention every loader of
        :mod:`scrutiny.data` follows; it is not re-checked here.
    y : torch.Tensor
        ``int64`` labels of shape ``(N,)`` with values in ``[0, len(classes))``.
    classes : tuple of str
        Class names; ``classes[k]`` names label ``k``.
    name : str
        Short name of the dataset (used in reports).
    masks : torch.Tensor or None, optional
        ``bool`` tensor of shape ``(N, 1, H, W)`` marking, for each image, the
        region that causes its class (only the synthetic dataset has one).
    feature_names : tuple of str or None, optional
        Column names of a tabular dataset, one per feature.

    Raises
    ------
    scrutiny.errors.InputError
        (a ``ValueError``) if dtypes, shapes, label range, or finiteness are
        wrong.

    Notes
    -----
    Equality is identity (``eq=False``): comparing tensors field by field has
    no single truth value.

    Examples
    --------
    >>> import torch
    >>> ds = ArrayDataset(
    ...     x=torch.zeros(4, 1, 2, 2), y=torch.tensor([0, 1, 0, 1]),
    ...     classes=("a", "b"), name="toy")
    >>> len(ds), ds.num_classes, tuple(ds.input_shape), ds.is_image
    (4, 2, (1, 2, 2), True)
    >>> ds.subset([1, 3]).y.tolist()
    [1, 1]
    """

    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[str, ...]
    name: str
    masks: torch.Tensor | None = None
    feature_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        x, y, masks = self.x, self.y, self.masks
        if not isinstance(x, torch.Tensor):
            raise InputError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not isinstance(y, torch.Tensor):
            raise InputError(f"y must be a torch.Tensor, got {type(y).__name__}")
        if x.dtype != torch.float32:
            raise InputError(f"x must have dtype float32, got {x.dtype}")
        if x.ndim < 2:
            raise InputError(
                f"x must be (N, F) or (N, C, H, W), got shape {tuple(x.shape)}"
            )
        if y.dtype != torch.int64:
            raise InputError(f"y must have dtype int64, got {y.dtype}")
        if y.ndim != 1:
            raise InputError(f"y must be 1-D, got shape {tuple(y.shape)}")
        n = x.shape[0]
        if y.shape[0] != n:
            raise InputError(f"x has {n} samples but y has {y.shape[0]}")

        classes = _str_tuple(self.classes, "classes")
        if not classes:
            raise InputError("classes must name at least one class")
        object.__setattr__(self, "classes", classes)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
            raise InputError(
                f"labels must lie in [0, {len(classes)}) for {len(classes)} "
                f"classes, got range [{int(y.min())}, {int(y.max())}]"
            )
        if x.numel() and not bool(torch.isfinite(x).all()):
            raise InputError("x contains NaN or infinite values")
        if not isinstance(self.name, str):
            raise InputError(f"name must be a str, got {type(self.name).__name__}")

        if masks is not None:
            if not isinstance(masks, torch.Tensor) or masks.dtype != torch.bool:
                raise InputError("masks must be a bool torch.Tensor")
            if x.ndim != 4:
                raise InputError("masks are only allowed for image data (N, C, H, W)")
            expected = (n, 1, x.shape[2], x.shape[3])
            if tuple(masks.shape) != expected:
                raise InputError(
                    f"masks must have shape {expected}, got {tuple(masks.shape)}"
                )

        if self.feature_names is not None:
            names = _str_tuple(self.feature_names, "feature_names")
            if x.ndim != 2:
                raise InputError("feature_names are only allowed for tabular data (N, F)")
            if len(names) != x.shape[1]:
                raise InputError(
                    f"{len(names)} feature_names for {x.shape[1]} features"
                )
            object.__setattr__(self, "feature_names", names)

    @property
    def num_classes(self) -> int:
        """Number of classes, ``len(classes)``."""
        return len(self.classes)

    @property
    def input_shape(self) -> torch.Size:
        """Shape of one input, ``x.shape[1:]``."""
        return self.x.shape[1:]

    @property
    def is_image(self) -> bool:
        """Whether the inputs are images, i.e. ``x`` is ``(N, C, H, W)``."""
        return self.x.ndim == 4

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x[i], y[i])`` so the dataset works with a ``DataLoader``."""
        return self.x[i], self.y[i]

    def subset(self, index: Any) -> ArrayDataset:
        """Select samples, keeping ``x``, ``y`` and ``masks`` aligned.

        Parameters
        ----------
        index : slice, sequence of int, bool mask, numpy array or tensor
            Which samples to keep (anything that indexes the first axis).

        Returns
        -------
        ArrayDataset
            A new dataset with the same classes, name and feature names.

        Examples
        --------
        >>> import torch
        >>> ds = ArrayDataset(torch.rand(5, 3), torch.arange(5) % 2, ("a", "b"), "t")
        >>> len(ds.subset(slice(0, 2))), len(ds.subset(ds.y == 1))
        (2, 2)
        """
        if not isinstance(index, slice):
            if not isinstance(index, torch.Tensor):
                index = np.asarray(index)
            index = torch.as_tensor(index)
            if index.dtype != torch.bool:
                index = index.long().reshape(-1)
        return ArrayDataset(
            x=self.x[index],
            y=self.y[index],
            classes=self.classes,
            name=self.name,
            masks=None if self.masks is None else self.masks[index],
            feature_names=self.feature_names,
        )


def _str_tuple(values: Sequence[str] | str, what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise InputError(f"{what} must be a sequence of str, not a single str")
    out = tuple(values)
    if not all(isinstance(v, str) for v in out):
        raise InputError(f"{what} must contain only str")
    return out


def split_indices(
    y: np.ndarray | torch.Tensor, *, test_fraction: float = 0.25, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic, stratified train/test partition of sample indices.

    Parameters
    ----------
    y : array-like of int, shape (N,)
        Labels used for stratification.
    test_fraction : float, optional
        Fraction of the samples put in the test part, in ``(0, 1)``.
    seed : int, optional
        ``random_state`` of :func:`sklearn.model_selection.train_test_split`.

    Returns
    -------
    train, test : numpy.ndarray
        Sorted, disjoint ``int64`` index arrays covering ``range(N)``.

    Notes
    -----
    The split is stratified by ``y`` whenever that is possible (every class
    has at least two samples and each part can hold one sample per class);
    otherwise it falls back to a plain shuffled split.

    Examples
    --------
    >>> train, test = split_indices([0, 0, 1, 1, 0, 1, 0, 1], test_fraction=0.5)
    >>> len(train), len(test), sorted(set(train) | set(test)) == list(range(8))
    (4, 4, True)
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise InputError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.model_selection import train_test_split  # lazy: slow import

    labels = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y).reshape(-1)
    n = labels.shape[0]
    n_test = int(np.ceil(test_fraction * n))
    if n < 2 or n_test < 1 or n_test >= n:
        raise InputError(
            f"cannot split {n} samples with test_fraction={test_fraction}"
        )
    _, counts = np.unique(labels, return_counts=True)
    k = counts.size
    stratify = labels if counts.min() >= 2 and k <= n_test and k <= n - n_test else None
    train, test = train_test_split(
        np.arange(n), test_size=test_fraction, random_state=seed, stratify=stratify
    )
    return np.sort(train).astype(np.int64), np.sort(test).astype(np.int64)


def split(
    dataset: ArrayDataset, *, test_fraction: float = 0.25, seed: int = 0
) -> tuple[ArrayDataset, ArrayDataset]:
    """Split a dataset into stratified, disjoint train and test parts.

    Parameters
    ----------
    dataset : ArrayDataset
        The dataset to split.
    test_fraction : float, optional
        Fraction of the samples in the test part, in ``(0, 1)``.
    seed : int, optional
        Seed of the shuffle; the same seed always gives the same split.

    Returns
    -------
    train, test : ArrayDataset
        The two parts (sample order preserved inside each part).

    Examples
    --------
    >>> import torch
    >>> ds = ArrayDataset(torch.rand(8, 2), torch.arange(8) % 2, ("a", "b"), "t")
    >>> train, test = split(ds, test_fraction=0.25, seed=1)
    >>> len(train), len(test), test.y.bincount().tolist()
    (6, 2, [1, 1])
    """
    train, test = split_indices(dataset.y, test_fraction=test_fraction, seed=seed)
    return dataset.subset(train), dataset.subset(test)


def select_split(
    dataset: ArrayDataset, which: str, *, test_fraction: float = 0.25, seed: int = 0
) -> ArrayDataset:
    """Return the ``"train"`` or ``"test"`` part of a dataset, or ``"all"`` of it.

    Parameters
    ----------
    dataset : ArrayDataset
        The full dataset.
    which : {"train", "test", "all"}
        Which part to return.
    test_fraction, seed
        As in :func:`split`.

    Returns
    -------
    ArrayDataset
        The selected part (``dataset`` itself for ``"all"``).

    Examples
    --------
    >>> import torch
    >>> ds = ArrayDataset(torch.rand(8, 2), torch.arange(8) % 2, ("a", "b"), "t")
    >>> len(select_split(ds, "test", test_fraction=0.5)), len(select_split(ds, "all"))
    (4, 8)
    """
    check_split(which)
    if which == "all":
        if not 0.0 < float(test_fraction) < 1.0:
            raise InputError(f"test_fraction must be in (0, 1), got {test_fraction}")
        return dataset
    train, test = split(dataset, test_fraction=test_fraction, seed=seed)
    return train if which == "train" else test


def check_split(which: str) -> None:
    """Raise :class:`~scrutiny.errors.InputError` unless ``which`` is in :data:`SPLITS`."""
    if which not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {which!r}")
