"""Parametrisations of the optimised image: pixels, or decorrelated Fourier space.

The optimiser never sees the image itself but free variables ``z`` from which the image is
made; the image is always inside the model's bounds, ``lo + (hi - lo) * sigmoid(z)``.

- ``"pixel"``: ``z`` has the image's shape.
- ``"fourier"``: ``z`` is the image's 2-D spectrum, each frequency scaled by ``1 / f`` (the
  falloff of natural images' spectra) before the inverse FFT. Gradient steps of equal size
  on every coefficient then move low frequencies more than high ones: the optimisation is
  preconditioned towards natural-looking images (Olah et al. 2017, "Preconditioning and
  parameterization").
- With three channels the channels are also decorrelated: ``z`` holds decorrelated colour
  components, mixed into RGB by the square root of ImageNet's colour correlation matrix
  (the figures Olah et al. publish in Lucid), so that each step moves along the colour axes
  of natural images.

:meth:`ImageParam.from_images` starts the optimisation at given images (the inverse of each
map; images at a bound are moved ``1e-3`` of the range inside it).

References
----------
.. [1] Olah, Mordvintsev, Schubert. "Feature Visualization". Distill 2017.

Examples
--------
>>> start = 0.1 + 0.8 * torch.rand(2, 3, 8, 8)     # inside the bounds
>>> p = ImageParam.from_images(start, bounds=(0.0, 1.0), kind="fourier")
>>> tuple(p.z.shape), bool(torch.allclose(p(), start, atol=1e-5))
((2, 3, 8, 5, 2), True)
"""

from __future__ import annotations

import torch

from scrutiny.errors import InputError

__all__ = ["COLOR_CORRELATION", "PARAMETRIZATIONS", "ImageParam"]

PARAMETRIZATIONS: tuple[str, ...] = ("pixel", "fourier")

#: Square root of ImageNet's colour correlation (Olah et al. 2017, Lucid), columns normalised
#: to a largest norm of 1: decorrelated components -> RGB.
_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]],
                     dtype=torch.float64)
COLOR_CORRELATION: torch.Tensor = _SQRT / _SQRT.norm(dim=0).max()

_EDGE = 1e-3


def _spectrum_scale(h: int, w: int, decay: float = 1.0) -> torch.Tensor:
    """``1 / max(f, 1 / max(h, w))^decay`` on the rfft grid (h, w // 2 + 1), RMS 1."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
    f = (fy ** 2 + fx ** 2).sqrt()
    s = 1.0 / f.clamp(min=1.0 / max(h, w)) ** decay
    return s / s.pow(2).mean().sqrt()


class ImageParam:
    """The free variables ``z`` of a batch of images and the map ``z -> images``.

    Parameters
    ----------
    z : Tensor
        The free variables (a leaf tensor that requires grad): the image's shape for
        ``"pixel"``, ``(N, C, H, W // 2 + 1, 2)`` (real and imaginary parts) for ``"fourier"``.
    shape : tuple of int
        The images' shape ``(N, C, H, W)`` (or ``(N, F)`` for ``"pixel"``).
    bounds : (float, float)
        The range of the images.
    kind : {"pixel", "fourier"}
    decorrelate : bool
        Mix three channels with :data:`COLOR_CORRELATION` (ignored for other channel counts).
    """

    def __init__(self, z: torch.Tensor, shape: tuple[int, ...], bounds: tuple[float, float],
                 kind: str, decorrelate: bool) -> None:
        if kind not in PARAMETRIZATIONS:
            raise InputError(f"parametrization must be one of {', '.join(PARAMETRIZATIONS)}, "
                             f"got {kind!r}")
        if kind == "fourier" and len(shape) != 4:
            raise InputError(f"the Fourier parametrisation needs images (N, C, H, W), got shape "
                             f"{tuple(shape)}")
        self.z, self.shape, self.kind = z, tuple(shape), kind
        self.lo, self.hi = float(bounds[0]), float(bounds[1])
        self.mix = (COLOR_CORRELATION.to(z.device, torch.float32)
                    if decorrelate and len(shape) == 4 and shape[1] == 3 else None)
        self.scale = (_spectrum_scale(shape[2], shape[3]).to(z.device, torch.float32)
                      if kind == "fourier" else None)

    @classmethod
    def random(cls, shape: tuple[int, ...], bounds: tuple[float, float], *, kind: str = "pixel",
               decorrelate: bool = True, std: float = 0.01,
               device: torch.device | str = "cpu") -> ImageParam:
        """Free variables drawn from ``N(0, std^2)`` (torch's RNG, on the CPU)."""
        zshape = tuple(shape) if kind != "fourier" else (*shape[:-1], shape[-1] // 2 + 1, 2)
        z = (torch.randn(zshape) * std).to(device).requires_grad_(True)
        return cls(z, shape, bounds, kind, decorrelate)

    @classmethod
    def from_images(cls, images: torch.Tensor, bounds: tuple[float, float], *,
                    kind: str = "pixel", decorrelate: bool = True) -> ImageParam:
        """The free variables whose images are ``images`` (clipped ``1e-3`` of the range
        inside the bounds)."""
        lo, hi = float(bounds[0]), float(bounds[1])
        u = ((images.detach().float() - lo) / (hi - lo)).clamp(_EDGE, 1 - _EDGE)
        p = cls(torch.zeros(0, device=images.device), tuple(images.shape), bounds, kind,
                decorrelate)
        z = torch.log(u) - torch.log1p(-u)
        if p.mix is not None:
            z = torch.einsum("ij,njhw->nihw", torch.linalg.inv(p.mix), z)
        if p.scale is not None:
            z = torch.view_as_real(torch.fft.rfft2(z, norm="ortho") / p.scale)
        p.z = z.contiguous().requires_grad_(True)
        return p

    def __call__(self) -> torch.Tensor:
        """The images, inside the bounds (with the graph to ``z``)."""
        z = self.z
        if self.scale is not None:
            z = torch.fft.irfft2(torch.view_as_complex(z) * self.scale, s=self.shape[2:],
                                 norm="ortho")
        if self.mix is not None:
            z = torch.einsum("ij,njhw->nihw", self.mix, z)
        return self.lo + (self.hi - self.lo) * torch.sigmoid(z)
