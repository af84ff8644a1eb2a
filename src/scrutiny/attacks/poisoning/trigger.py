"""Backdoor triggers: a mask that says where a trigger is stamped and a pattern that says what.

Stamping is ``x' = (1 - m) * x + m * p`` (Wang et al. 2019's formulation, which also
describes the triggers Neural Cleanse reverse-engineers); BadNets' patch triggers
(Gu et al. 2017) are masks of 0/1 values with a fixed pattern inside.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scrutiny.errors import InputError

__all__ = ["POSITIONS", "Trigger"]

#: Named trigger positions (``offset`` pixels from the named corner, or centred).
POSITIONS: tuple[str, ...] = ("bottom_right", "bottom_left", "top_right", "top_left", "center")
#: Named trigger patterns of :meth:`Trigger.patch`.
PATTERNS: tuple[str, ...] = ("checkerboard", "square")


@dataclass(frozen=True, eq=False)
class Trigger:
    """A trigger: ``mask`` ``(1, H, W)`` (or ``(C, H, W)``) in ``[0, 1]`` and ``pattern``
    ``(C, H, W)`` in the input range; :meth:`apply` stamps it on a batch.

    Examples
    --------
    >>> t = Trigger.patch((1, 8, 8), size=3, position="bottom_right")
    >>> t.area, t.apply(torch.zeros(2, 1, 8, 8))[0, 0, -2, -2].item()
    (9, 1.0)
    """

    mask: torch.Tensor
    pattern: torch.Tensor

    def __post_init__(self) -> None:
        m, p = self.mask, self.pattern
        if p.dim() != 3 or m.dim() != 3 or m.shape[1:] != p.shape[1:] or m.shape[0] not in (1, p.shape[0]):
            raise InputError(f"a trigger needs mask (1 or C, H, W) and pattern (C, H, W) of the same "
                             f"H, W; got {tuple(m.shape)} and {tuple(p.shape)}")
        if not (bool(torch.isfinite(m).all()) and bool(torch.isfinite(p).all())):
            raise InputError("the trigger's mask and pattern must be finite")
        if float(m.min()) < 0 or float(m.max()) > 1:
            raise InputError("the trigger's mask must lie in [0, 1]")

    @classmethod
    def patch(cls, shape: tuple[int, ...], *, size: int = 3, position: str = "bottom_right",
              pattern: str = "checkerboard", value: float = 1.0, low: float = 0.0,
              offset: int = 1) -> Trigger:
        """A square patch of ``size`` pixels at ``position`` (``offset`` pixels from the
        corner) for inputs of ``shape`` ``(C, H, W)``: ``"square"`` is filled with
        ``value``; ``"checkerboard"`` alternates ``value`` and ``low`` starting with
        ``value`` at the patch's bottom-right pixel (BadNets' pattern is of this kind)."""
        if len(shape) != 3:
            raise InputError(f"a patch trigger needs image inputs (C, H, W), got shape {tuple(shape)}")
        c, h, w = (int(s) for s in shape)
        if size < 1 or size + offset > min(h, w) or offset < 0:
            raise InputError(f"a patch of size {size} at offset {offset} does not fit a {h}x{w} image")
        if position not in POSITIONS:
            raise InputError(f"unknown trigger position {position!r}; accepted: {', '.join(POSITIONS)}")
        if pattern not in PATTERNS:
            raise InputError(f"unknown trigger pattern {pattern!r}; accepted: {', '.join(PATTERNS)}")
        top = {"bottom_right": h - offset - size, "bottom_left": h - offset - size,
               "top_right": offset, "top_left": offset, "center": (h - size) // 2}[position]
        left = {"bottom_right": w - offset - size, "bottom_left": offset, "top_right": w - offset - size,
                "top_left": offset, "center": (w - size) // 2}[position]
        mask = torch.zeros(1, h, w)
        mask[:, top:top + size, left:left + size] = 1.0
        pat = torch.full((c, h, w), float(low))
        if pattern == "square":
            pat[:, top:top + size, left:left + size] = float(value)
        else:
            ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
            on = ((size - 1 - ii) + (size - 1 - jj)) % 2 == 0
            pat[:, top:top + size, left:left + size] = torch.where(on, float(value), float(low))
        return cls(mask=mask, pattern=pat)

    @property
    def shape(self) -> tuple[int, ...]:
        """The input shape ``(C, H, W)`` the trigger is for."""
        return tuple(self.pattern.shape)

    @property
    def area(self) -> int:
        """Number of pixels the mask touches (its support)."""
        return int((self.mask.amax(0) > 0).sum())

    def l1(self) -> float:
        """The mask's L1 norm (Neural Cleanse's trigger size)."""
        return float(self.mask.abs().sum())

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(N, C, H, W)`` with the trigger stamped (a new tensor, same dtype and device)."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.shape:
            raise InputError(f"the trigger is for inputs of shape {self.shape}, got a batch of "
                             f"{tuple(x.shape)}")
        m = self.mask.to(x.device, x.dtype)
        return (1 - m) * x + m * self.pattern.to(x.device, x.dtype)

    def overlap(self, other: Trigger, threshold: float = 0.5) -> float:
        """Intersection over union of the two masks' supports (pixels where the channel-max
        of the mask exceeds ``threshold``): how well a reversed trigger finds a true one."""
        a = self.mask.amax(0) > threshold
        b = other.mask.to(self.mask.device).amax(0) > threshold
        union = int((a | b).sum())
        return float(int((a & b).sum()) / union) if union else 0.0
