"""Adversarial patch (Brown et al.): a universal, robust patch pasted anywhere in the image."""

from __future__ import annotations

import math

import torch

from scrutiny.attacks.base import Attack
from scrutiny.attacks.physical.common import LOSSES, universal_objective
from scrutiny.attacks.physical.transforms import check_scale, warp
from scrutiny.base import seeded
from scrutiny.errors import InputError
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.progress import progress_bar
from scrutiny.registry import register
from scrutiny.types import Tags, ThreatModel
from scrutiny.validation import check_x

SHAPES: tuple[str, ...] = ("square", "circle")


def patch_mask(shape: str, size: float, height: int, width: int) -> torch.Tensor:
    """The patch's support ``(1, H, W)``, centred: a square or a disc of area ``size * H * W``.

    Anti-aliased: each pixel holds the fraction of its area the shape covers
    (exact for the square, 8 x 8 supersampling for the disc), so the mask sums
    to ``size * H * W`` whenever the shape fits in the image.
    """
    area = size * height * width
    if shape == "square":
        half = math.sqrt(area) / 2

        def cover(k: int) -> torch.Tensor:
            c = torch.arange(k, dtype=torch.float64) + 0.5 - k / 2
            return ((c + 0.5).clamp(max=half) - (c - 0.5).clamp(min=-half)).clamp(0, 1)

        m = cover(height)[:, None] * cover(width)[None, :]
    else:
        sub = (torch.arange(8, dtype=torch.float64) + 0.5) / 8 - 0.5
        ys = (torch.arange(height, dtype=torch.float64) + 0.5 - height / 2)[:, None] + sub[None, :]
        xs = (torch.arange(width, dtype=torch.float64) + 0.5 - width / 2)[:, None] + sub[None, :]
        inside = ys[:, None, :, None] ** 2 + xs[None, :, None, :] ** 2 <= area / math.pi
        m = inside.double().mean(dim=(2, 3))
    return m.float()[None]


@register("attack", "patch", paper="Brown, Mane, Roy, Abadi, Gilmer. Adversarial patch. "
          "arXiv:1712.09665 (NIPS 2017 workshop)", test_params={"steps": 3, "n_samples": 2})
class AdversarialPatch(Attack):
    """A universal patch that, pasted anywhere on any image, makes the model output the target.

    Brown et al. train the patch ``p`` to maximise the expected
    log-probability of the target class ``E_{x ~ X, t ~ T, l ~ L} log Pr(target
    | A(p, x, l, t))`` over the images ``X`` given at call time, random
    locations ``l`` and transformations ``t`` (rotation and scale), where the
    patch application ``A`` pastes the transformed patch at ``l`` (EOT over
    placements). Here each step draws ``n_samples`` placements per image
    (uniform location keeping the patch centre inside the image so the
    unrotated patch fits, rotation ``U(-rotation, rotation)`` degrees, scale
    ``U(scale)`` of the base size), pastes with a bilinear warp of the patch and
    its mask (one forward pass of ``n_samples * N`` rows), and takes an Adam step
    on the patch, clipped to the input bounds. Untargeted (no ``target=``),
    the cross-entropy of the true label is maximised instead.

    The patch is a ``shape`` ("square" or "circle") covering ``size`` of the
    image area at scale 1. ``x_adv`` is each input with the learned patch
    pasted at one random placement (``meta["placements"]``, forward affine
    maps ``(N, 2, 3)``); ``meta["patch"]`` is the patch canvas ``(C, H, W)``
    (centred, zero outside ``meta["patch_mask"]``). Paste it on new images
    with :meth:`apply`.

    Threat model: only ``"linf"``. ``ThreatModel("linf", float("inf"))`` is
    the paper's setting, a patch unbounded in value inside its area (only the
    input bounds apply). With a finite eps the pasted image is projected onto
    the linf ball around the clean image (inside the loop and by the base
    class), i.e. a patch whose contrast against the covered pixels is at most
    eps. A threat mask is refused: the patch decides where pixels change.

    Parameters
    ----------
    size : float
        Fraction of the image area the patch covers at scale 1.
    shape : {"square", "circle"}
        Shape of the patch.
    steps : int
        Adam iterations.
    lr : float
        Adam learning rate, in input units.
    n_samples : int
        Placements per image and step.
    rotation : float
        Maximum rotation of the patch in degrees.
    scale : (float, float)
        Range of the patch scale relative to ``size``.
    loss : {"ce", "margin"}
        Log-probability of the target (the paper's) or the logit margin.
    batch_size : int
        Most patched rows per forward pass (gradients are accumulated).

    References
    ----------
    .. [1] Brown, Mane, Roy, Abadi, Gilmer. "Adversarial patch".
       arXiv:1712.09665, 2017.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model = pretrained("digits-cnn", progress=False)
    >>> train, test = load_digits(split="train"), load_digits(split="test")
    >>> attack = AdversarialPatch(size=0.4, steps=20, n_samples=2)
    >>> res = attack(model, train.x[:32], train.y[:32], threat=ThreatModel("linf", float("inf")),
    ...              target=3)
    >>> pasted = attack.apply(test.x, res.meta["patch"], seed=1)  # on unseen test images
    >>> bool((model.predict(pasted) == 3).float().mean() > 0.5)  # measured: 0.63
    True
    """

    per_sample = False  # one perturbation for the whole batch
    tags = Tags(norms=("linf",), targeted=True, stochastic=True, image_only=True)

    size: float = param(0.1, between=(0, 1), interval="(]")
    shape: str = param("square", choices=SHAPES)
    steps: int = param(200, integer=True, positive=True)
    lr: float = param(0.1, positive=True)
    n_samples: int = param(8, integer=True, positive=True)
    rotation: float = param(22.5, between=(0, 180))
    scale: tuple = param((0.8, 1.2), kind=tuple, check=check_scale)
    loss: str = param("ce", choices=LOSSES)
    batch_size: int = param(1024, integer=True, positive=True)

    def mask(self, height: int, width: int) -> torch.Tensor:
        """The centred patch support ``(1, H, W)`` for images of this size."""
        return patch_mask(self.shape, self.size, height, width)

    def sample_placements(self, n: int, height: int, width: int,
                          device: torch.device | None = None,
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``n`` random placements: forward affine maps ``(n, 2, 3)`` of the centred patch."""
        u = torch.rand(n, 4, device=device, dtype=dtype)
        ang = (2 * u[:, 0] - 1) * math.radians(self.rotation)
        lo, hi = (float(s) for s in self.scale)
        s = lo + (hi - lo) * u[:, 1]
        m = self.mask(height, width)[0] > 0
        rows, cols = int(m.any(dim=1).sum()), int(m.any(dim=0).sum())
        # half extent of the scaled patch in normalised coordinates; the centre keeps it inside
        ry, rx = (rows / height * s).clamp(max=1.0), (cols / width * s).clamp(max=1.0)
        ty, tx = (2 * u[:, 2] - 1) * (1 - ry), (2 * u[:, 3] - 1) * (1 - rx)
        cos, sin = torch.cos(ang) * s, torch.sin(ang) * s
        return torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)

    @staticmethod
    def paste(x: torch.Tensor, patch: torch.Tensor, mask: torch.Tensor,
              placements: torch.Tensor) -> torch.Tensor:
        """``(1 - m) x + m p`` with the patch and its mask moved by ``placements`` (differentiable)."""
        n = len(x)
        canvas = torch.cat([patch.expand(n, *patch.shape), mask.to(x).expand(n, 1, *mask.shape[1:])], 1)
        moved = warp(canvas, placements.to(x))
        p, m = moved[:, :-1], moved[:, -1:]
        return (1 - m) * x + m * p

    def apply(self, x: torch.Tensor, patch: torch.Tensor, *, placements: torch.Tensor | None = None,
              seed: int | None = 0, bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
        """Paste ``patch`` (``meta["patch"]``) on new images at random (or given) placements.

        Parameters
        ----------
        x : Tensor
            Images ``(N, C, H, W)`` of the size the patch was trained on.
        patch : Tensor
            The patch canvas ``(C, H, W)``.
        placements : Tensor, optional
            Forward affine maps ``(N, 2, 3)``; default fresh random ones drawn
            with ``seed`` from this attack's placement distribution.
        """
        check_x(x, bounds, image=True)
        if not isinstance(patch, torch.Tensor) or patch.shape != x.shape[1:]:
            got = tuple(patch.shape) if isinstance(patch, torch.Tensor) else patch
            raise InputError(f"patch must be a tensor of one image's shape {tuple(x.shape[1:])}, "
                             f"got {got!r}")
        h, w = x.shape[2:]
        if placements is None:
            with seeded(seed, x.device):
                placements = self.sample_placements(len(x), h, w, x.device, x.dtype)
        elif placements.shape != (len(x), 2, 3):
            raise InputError(f"placements must have shape ({len(x)}, 2, 3), got "
                             f"{tuple(placements.shape)}")
        with torch.no_grad():
            out = self.paste(x, patch.to(x), self.mask(h, w), placements)
        return out.clamp(*bounds)

    def _run(self, model: TorchModel, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             target: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        if threat.mask is not None:
            raise InputError("AdversarialPatch places the patch itself; use a ThreatModel without "
                             "a mask (or attack:sticker for a fixed region)")
        lo, hi = threat.bounds
        n, (h, w) = len(x), x.shape[2:]
        mask = self.mask(h, w).to(x)
        patch = (lo + (hi - lo) * torch.rand_like(x[0])).requires_grad_(True)
        opt = torch.optim.Adam([patch], lr=self.lr)
        chunk = max(1, self.batch_size // self.n_samples)
        ones = [1] * (x.dim() - 1)

        def pasted(xs: torch.Tensor, p: torch.Tensor, k: int) -> torch.Tensor:
            rows = xs.repeat(k, *ones)
            out = self.paste(rows, p * mask, mask, self.sample_placements(len(rows), h, w, x.device, x.dtype))
            return threat.project(rows, out) if threat.eps < float("inf") else out.clamp(lo, hi)

        with progress_bar(self.steps, "patch") as bar:
            for _ in range(self.steps):
                opt.zero_grad(set_to_none=True)
                for i in range(0, n, chunk):  # mean over images and placements
                    logits = model(pasted(x[i:i + chunk], patch, self.n_samples))
                    t = None if target is None else target[i:i + chunk].repeat(self.n_samples)
                    obj = universal_objective(logits, y[i:i + chunk].repeat(self.n_samples), t,
                                              self.loss)
                    (-obj.sum() / (n * self.n_samples)).backward()
                opt.step()
                with torch.no_grad():
                    patch.clamp_(lo, hi)
                bar.advance()
        patch = (patch.detach() * mask)
        placements = self.sample_placements(n, h, w, x.device, x.dtype)
        with torch.no_grad():
            x_adv = self.paste(x, patch, mask, placements)
        return x_adv, {"patch": patch, "patch_mask": mask, "placements": placements}
