"""Datasets for scrutiny: embedded (no download) and the user's own files.

Every loader returns an :class:`ArrayDataset` whose ``x`` is ``float32`` in
``[0, 1]`` (images ``NCHW``, tables ``(N, F)``) and whose ``y`` is ``int64``.
"""

from .dataset import (
    SPLITS,
    ArrayDataset,
    DatasetNotFoundError,
    check_split,
    select_split,
    split,
    split_indices,
)
from .embedded import (
    COLOUR_DIGITS_MEAN,
    COLOUR_DIGITS_STD,
    SYNTHETIC_SHAPES,
    load_breast_cancer,
    load_colour_digits,
    load_digits,
    make_synthetic,
)
from .factors import FACTOR_SHAPES, FactorDataset, make_factors
from .files import (
    CIFAR10_CLASSES,
    EMBEDDED,
    IMAGE_EXTENSIONS,
    load,
    load_cifar10,
    load_image_folder,
    load_mnist,
    load_npz,
    read_idx,
)

__all__ = [
    "CIFAR10_CLASSES",
    "COLOUR_DIGITS_MEAN",
    "COLOUR_DIGITS_STD",
    "EMBEDDED",
    "FACTOR_SHAPES",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "SYNTHETIC_SHAPES",
    "ArrayDataset",
    "DatasetNotFoundError",
    "FactorDataset",
    "check_split",
    "load",
    "load_breast_cancer",
    "load_cifar10",
    "load_colour_digits",
    "load_digits",
    "load_image_folder",
    "load_mnist",
    "load_npz",
    "make_factors",
    "make_synthetic",
    "read_idx",
    "select_split",
    "split",
    "split_indices",
]
