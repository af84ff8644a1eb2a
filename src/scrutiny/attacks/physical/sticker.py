"""Robust Physical Perturbations (RP2): one masked perturbation (a sticker) for many images."""

from __future__ import annotations

import torch

from scrutiny.attacks.base import Attack
from scrutiny.attacks.physical.common import (
    LOSSES,
    apply_perturbation,
    ball_projector,
    universal_objective,
)
from scrutiny.attacks.physical.transforms import check_scale, random_transform
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.progress import progress_bar
from scrutiny.registry import register
from scrutiny.types import Tags, ThreatModel


@register("attack", "sticker", paper="Eykholt, Evtimov, Fernandes, Li, Rahmati, Xiao, Prakash, "
          "Kohno, Song. Robust physical-world attacks on deep learning visual classification. "
          "CVPR 2018", test_params={"steps": 3, "n_samples": 2})
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
    n_samples : int
        Random transformations per image and step (one forward pass of
        ``n_samples * N`` rows, chunked by ``batch_size``).
    lam : float
        Weight of the l2 penalty on ``M delta`` (0: the eps-ball alone bounds it).
    mask_keep : float, optional
        Fraction of mask pixels kept by the l1 refinement stage; None skips it.
    lam_l1 : float
        Weight of the l1 penalty in the refinement stage.
    loss : {"ce", "margin"}
        ``J``: (log-)probability objective or the logit margin.
    rotation : float
        Maximum rotation in degrees of the transformations
        (:func:`~scrutiny.attacks.physical.transforms.random_transform`).
    scale : (float, float)
        Range of the scale factor.
    translate : float
        Maximum shift per axis, as a fraction of the image side.
    brightness : float
        Maximum additive brightness change, as a fraction of the input range.
    batch_size : int
        Most transformed rows per forward pass (gradients are accumulated).

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

    per_sample = False  # one perturbation for the whole batch
    tags = Tags(norms=("linf", "l2", "l1"), targeted=True, stochastic=True, image_only=True)

    steps: int = param(200, integer=True, positive=True)
    lr: float = param(0.1, positive=True)
    n_samples: int = param(8, integer=True, positive=True)
    lam: float = param(0.0, nonneg=True)
    mask_keep: float | None = param(None, between=(0, 1), interval="(]")
    lam_l1: float = param(0.01, nonneg=True)
    loss: str = param("ce", choices=LOSSES)
    rotation: float = param(10.0, between=(0, 180))
    scale: tuple = param((0.9, 1.1), kind=tuple, check=check_scale)
    translate: float = param(0.05, between=(0, 1))
    brightness: float = param(0.1, nonneg=True)
    batch_size: int = param(1024, integer=True, positive=True)

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
        n, chunk = len(x), max(1, self.batch_size // self.n_samples)
        ones = [1] * (x.dim() - 1)
        for _ in range(self.steps):
            opt.zero_grad(set_to_none=True)
            if lam:
                md = mask * delta
                (lam * (md.abs().sum() if penalty == "l1" else md.norm())).backward()
            for i in range(0, n, chunk):  # gradient of the mean over images and transforms
                xs = x[i:i + chunk]
                rows = (xs + mask * delta).clamp(*threat.bounds).repeat(self.n_samples, *ones)
                logits = model(random_transform(rows, **tf))
                t = None if target is None else target[i:i + chunk].repeat(self.n_samples)
                obj = universal_objective(logits, y[i:i + chunk].repeat(self.n_samples), t,
                                          self.loss)
                (-obj.sum() / (n * self.n_samples)).backward()
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
        with progress_bar(stages * self.steps, "sticker") as bar:
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
