"""Robust Physical Perturbations (RP2): one masked perturbation (a sticker) for many images."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from scrutiny.attacks.base import Attack
from scrutiny.attacks.physical.common import (
    apply_perturbation,
    ball_projector,
    check_loss,
    universal_objective,
)
from scrutiny.attacks.physical.transforms import check_transform_params, random_transform
from scrutiny.errors import InputError
from scrutiny.models.wrapper import TorchModel
from scrutiny.progress import progress_bar
from scrutiny.registry import register
from scrutiny.types import Tags, ThreatModel
from scrutiny.validation import check_positive


@register("attack", "sticker", paper="Eykholt, Evtimov, Fernandes, Li, Rahmati, Xiao, Prakash, "
          "Kohno, Song. Robust physical-world attacks on deep learning visual classification. "
          "CVPR 2018", test_params={"steps": 3, "samples": 2})
class Sticker(Attack):
    """RP2: one perturbation ``delta``, confined to a mask ``M``, that fools many images.

    Solves Eykholt et al.'s objective for a sticker or poster on an object,

    ``min_delta  lam ||M delta||_2 - mean_{x in X, t ~ T} J(f(t(x + M delta)))``

    over the inputs ``X`` given at call time (the paper's images of the
    object under varying physical conditions, ``X^V``) and random
    transformations ``t`` (rotation, scale, shift, brightness: the synthetic
    variations of RP2, i.e. Expectation over Transformation), with Adam (as in
    the paper). ``J`` is the loss the attack maximises: targeted (the paper's
    setting), the log-probability of the target; untargeted, the
    cross-entropy of the true label. ``M`` is the threat model's mask
    (``ThreatModel(..., mask=M)``; the whole image when it has none) and
    ``M delta`` is kept inside the threat's eps-ball after every step, so
    ``x_adv = clip(x + M delta)`` and pixels outside the mask are unchanged
    exactly. ``meta["perturbation"]`` is ``M delta``, to apply to new images
    with :meth:`apply`; ``meta["mask"]`` the mask used.

    With ``mask_keep`` set, RP2's two-stage mask refinement runs first: the
    objective is optimised with an l1 penalty ``lam_l1 ||M delta||_1`` (which
    makes ``delta`` sparse where the model is sensitive), the mask is reduced
    to the ``mask_keep`` fraction of its pixels with the largest ``|delta|``
    (summed over channels), and the attack is run again from zero on that mask.

    Not modelled (digital setting): the non-printability score and the
    perceptual constraints on colours of printed stickers, and the
    perspective alignment of the sticker to the object in each photograph (the
    random affine transforms act on the whole image instead).

    Parameters
    ----------
    steps : int
        Adam iterations (per stage).
    lr : float
        Adam learning rate, in input units.
    samples : int
        Random transformations per image and step (one forward pass of
        ``samples * N`` rows, chunked by ``batch_size``).
    lam : float
        Weight of the l2 penalty on ``M delta`` (0: the eps-ball alone bounds it).
    mask_keep : float, optional
        Fraction of mask pixels kept by the l1 refinement stage; None skips it.
    lam_l1 : float
        Weight of the l1 penalty in the refinement stage.
    loss : {"ce", "margin"}
        ``J``: (log-)probability objective or the logit margin.
    rotation, scale, translate, brightness
        The transformation distribution
        (:func:`~scrutiny.attacks.physical.transforms.random_transform`).
    batch_size : int
        Most transformed rows per forward pass (gradients are accumulated).
    progress : bool
        Show a progress bar over the steps.

    References
    ----------
    .. [1] Eykholt, Evtimov, Fernandes, Li, Rahmati, Xiao, Prakash, Kohno,
       Song. "Robust physical-world attacks on deep learning visual
       classification". CVPR 2018.

    Examples
    --------
    >>> import torch
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> mask = torch.zeros(1, 8, 8)
    >>> mask[:, :, :3] = 1                      # a sticker on the left three columns
    >>> tm = ThreatModel("linf", 1.0, mask=mask)
    >>> x, y = data.x[:32], data.y[:32]
    >>> res = Sticker(steps=20)(model, x, y, threat=tm)  # one sticker for all 32 images
    >>> bool((res.x_adv - x)[..., 3:].abs().max() == 0)  # the rest of the image is untouched
    True
    >>> res.robust_accuracy() < 0.6 < res.clean_accuracy()  # measured: 0.41, 0.97
    True
    """

    tags = Tags(norms=("linf", "l2", "l1"), targeted=True, stochastic=True, image_only=True)

    def __init__(self, *, steps: int = 200, lr: float = 0.1, samples: int = 8, lam: float = 0.0,
                 mask_keep: float | None = None, lam_l1: float = 0.01, loss: str = "ce",
                 rotation: float = 10.0, scale: Sequence[float] = (0.9, 1.1),
                 translate: float = 0.05, brightness: float = 0.1, batch_size: int = 1024,
                 progress: bool = False) -> None:
        check_positive("steps", steps, integer=True)
        check_positive("lr", lr)
        check_positive("samples", samples, integer=True)
        check_positive("lam", lam, allow_zero=True)
        check_positive("lam_l1", lam_l1, allow_zero=True)
        check_positive("batch_size", batch_size, integer=True)
        if mask_keep is not None and not (isinstance(mask_keep, int | float) and 0 < mask_keep <= 1):
            raise InputError(f"mask_keep must be a fraction in (0, 1] or None, got {mask_keep!r}")
        check_loss(loss)
        check_transform_params(rotation, scale, translate, brightness)
        self.steps = steps
        self.lr = lr
        self.samples = samples
        self.lam = lam
        self.mask_keep = mask_keep
        self.lam_l1 = lam_l1
        self.loss = loss
        self.rotation = rotation
        self.scale = scale
        self.translate = translate
        self.brightness = brightness
        self.batch_size = batch_size
        self.progress = progress

    @staticmethod
    def apply(x: torch.Tensor, perturbation: torch.Tensor,
              bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
        """Put the learned sticker (``meta["perturbation"]``, already masked) on new images."""
        return apply_perturbation(x, perturbation, bounds)

    def _optimise(self, model: TorchModel, x: torch.Tensor, y: torch.Tensor,
                  target: torch.Tensor | None, threat: ThreatModel, mask: torch.Tensor,
                  penalty: str, lam: float, bar) -> torch.Tensor:
        """One stage: Adam on ``delta``, ``M delta`` projected onto the ball; returns ``M delta``."""
        project = ball_projector(ThreatModel(threat.norm, threat.eps, threat.bounds, mask))
        tf = {"rotation": self.rotation, "scale": tuple(self.scale), "translate": self.translate,
              "brightness": self.brightness, "bounds": threat.bounds}
        delta = torch.zeros_like(x[:1]).requires_grad_(True)
        opt = torch.optim.Adam([delta], lr=self.lr)
        n, chunk = len(x), max(1, self.batch_size // self.samples)
        ones = [1] * (x.dim() - 1)
        for _ in range(self.steps):
            opt.zero_grad(set_to_none=True)
            if lam:
                md = mask * delta
                (lam * (md.abs().sum() if penalty == "l1" else md.norm())).backward()
            for i in range(0, n, chunk):  # gradient of the mean over images and transforms
                xs = x[i:i + chunk]
                rows = (xs + mask * delta).clamp(*threat.bounds).repeat(self.samples, *ones)
                logits = model(random_transform(rows, **tf))
                t = None if target is None else target[i:i + chunk].repeat(self.samples)
                obj = universal_objective(logits, y[i:i + chunk].repeat(self.samples), t, self.loss)
                (-obj.sum() / (n * self.samples)).backward()
            opt.step()
            with torch.no_grad():
                delta.copy_(project(mask * delta))
            bar.advance()
        return (mask * delta).detach()

    def _run(self, model: TorchModel, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             target: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        mask = threat.mask_for(x)
        mask = torch.ones_like(x[0]) if mask is None else mask.clone()
        stages = 2 if self.mask_keep is not None else 1
        with progress_bar(stages * self.steps, "sticker", enabled=self.progress) as bar:
            if self.mask_keep is not None:  # RP2's l1 stage: where is the model sensitive?
                sparse = self._optimise(model, x, y, target, threat, mask, "l1", self.lam_l1, bar)
                score = sparse.abs().sum(dim=0).flatten() + mask[0].flatten() * 1e-12
                score = score.masked_fill(mask.amax(dim=0).flatten() == 0, -1.0)
                k = max(1, round(self.mask_keep * int((mask.amax(dim=0) > 0).sum())))
                keep = torch.zeros_like(score)
                keep[score.topk(k).indices] = 1
                mask = mask * keep.view(1, *x.shape[2:])
            md = self._optimise(model, x, y, target, threat, mask, "l2", self.lam, bar)
        return x + md[0], {"perturbation": md[0], "mask": mask}
