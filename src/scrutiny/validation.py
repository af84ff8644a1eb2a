"""Argument checks shared by every public entry point."""

from __future__ import annotations

import torch

from scrutiny.errors import InputError, ModelOutputError

#: The input range of a model that declares none (a plain ``nn.Module``): [0, 1].
DEFAULT_BOUNDS: tuple[float, float] = (0.0, 1.0)


def check_bounds(bounds: object) -> tuple[float, float]:
    """``(low, high)`` as floats with ``low < high``."""
    try:
        lo, hi = (float(b) for b in bounds)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InputError(f"bounds must be (low, high) with low < high, got {bounds!r}") from None
    if not lo < hi:
        raise InputError(f"bounds must be (low, high) with low < high, got {bounds!r}")
    return lo, hi


def check_x(x: object, bounds: tuple[float, float] | None = None, *, image: bool = False) -> torch.Tensor:
    """A float tensor batch ``(N, ...)``, finite, inside ``bounds``."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(f"x must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 2:
        raise InputError(f"x must be a batch (N, ...), got shape {tuple(x.shape)}")
    if image and x.dim() != 4:
        raise InputError(f"this method needs images (N, C, H, W), got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise InputError("x contains NaN or infinite values")
    if bounds is not None and len(x):
        lo, hi = bounds
        xmin, xmax = float(x.min()), float(x.max())
        if xmin < lo - 1e-6 or xmax > hi + 1e-6:
            raise InputError(f"x has values in [{xmin:.4g}, {xmax:.4g}], outside the model's "
                             f"bounds [{lo:g}, {hi:g}]")
    return x


def check_labels(y: object, n: int, num_classes: int, what: str = "y") -> torch.Tensor:
    """Integer labels ``(n,)`` in ``[0, num_classes)``."""
    if isinstance(y, int):
        y = torch.full((n,), y, dtype=torch.long)
    if not isinstance(y, torch.Tensor):
        raise InputError(f"{what} must be a torch.Tensor of class indices, got {type(y).__name__}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise InputError(f"{what} must hold integer class indices, got {y.dtype}")
    if y.shape != (n,):
        raise InputError(f"{what} must have shape ({n},), got {tuple(y.shape)}")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise InputError(f"{what} has values in [{int(y.min())}, {int(y.max())}]; the model has "
                         f"{num_classes} classes (0..{num_classes - 1})")
    return y.long()


def check_outputs(logits: object, n: int) -> torch.Tensor:
    """The model's outputs on ``n`` inputs: a finite ``(n, K)`` tensor.

    Raises
    ------
    ModelOutputError
        The model returned something else, or NaN or infinite values (which
        would otherwise be read as predictions and give a meaningless accuracy).
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or len(logits) != n:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ModelOutputError(f"the model must return logits of shape ({n}, K) for {n} inputs, "
                               f"got {shape}")
    bad = ~torch.isfinite(logits).all(dim=1)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise ModelOutputError(f"the model returned NaN or infinite outputs for {int(bad.sum())} "
                               f"of {n} inputs (first: sample {first}); check its weights, its "
                               "normalisation and the input range")
    return logits


def check_positive(name: str, value: float, *, allow_zero: bool = False, integer: bool = False) -> None:
    """Hyperparameter checks with a message naming the parameter."""
    if integer and (not isinstance(value, int) or isinstance(value, bool)):
        raise InputError(f"{name} must be an integer, got {value!r}")
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        raise InputError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
