"""Feature adversaries (Sabour et al. ICLR 2016): match a guide image's internal representation."""

from __future__ import annotations

import torch
from torch import nn

from scrutiny.attacks.base import Attack
from scrutiny.base import grad_wrt
from scrutiny.errors import InputError
from scrutiny.models.hooks import capture
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.registry import register
from scrutiny.types import Tags, ThreatModel
from scrutiny.validation import check_x


def default_feature_layer(model: TorchModel) -> str:
    """The layer feature adversaries match by default.

    The last convolution (``nn.Conv1d/2d/3d``) of the model if it has one,
    else the penultimate leaf module (the representation the last layer
    reads, e.g. the hidden ReLU of an MLP).
    """
    leaves = [(n, m) for n, m in model.module.named_modules() if n and not list(m.children())]
    convs = [n for n, m in leaves if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)]
    if convs:
        return convs[-1]
    if len(leaves) < 2:
        raise InputError(f"{model.name} has no inner layer to match; pass layer= "
                         f"(layers: {', '.join(model.layer_names()) or 'none'})")
    return leaves[-2][0]


def default_guides(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """For each sample, the next sample of the batch (cyclically) with a different label.

    If every label of the batch is the same, the next sample (cyclically).

    Examples
    --------
    >>> default_guides(torch.arange(4.0)[:, None], torch.tensor([0, 0, 1, 2]))[:, 0]
    tensor([2., 2., 3., 0.])
    """
    n = len(x)
    if n < 2:
        raise InputError("feature adversaries need a guide image: pass guide= (N or 1 images "
                         "like x), or a batch of at least 2 samples to draw guides from")
    shift = torch.arange(1, n, device=y.device)  # candidates i+1, i+2, ... (cyclic)
    cand = (torch.arange(n, device=y.device)[:, None] + shift[None, :]) % n
    differs = y[cand] != y[:, None]
    first = torch.where(differs.any(dim=1), differs.float().argmax(dim=1),
                        torch.zeros(n, dtype=torch.long, device=y.device))
    return x[cand[torch.arange(n, device=y.device), first]]


def _layer_name(name: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise InputError(f"{name} must be a layer name (str) or None, got {value!r}")


@register("attack", "feature_adversary", paper="Sabour, Cao, Faghri, Fleet. Adversarial "
          "manipulation of deep representations. ICLR 2016", test_params={"steps": 5})
class FeatureAdversary(Attack):
    """Feature adversaries: an image that looks like the source but is represented like the guide.

    Sabour et al. solve, for a source image ``x`` and a guide image ``g``,

    ``min_{x'} ||phi_k(x') - phi_k(g)||_2^2  s.t.  ||x' - x||_inf <= eps``

    where ``phi_k`` is the representation at layer ``k``, with the box-
    constrained L-BFGS-B optimiser: the constraint is the per-pixel box
    ``[max(lo, x - eps), min(hi, x + eps)]`` (the linf ball intersected with
    the input bounds), which L-BFGS-B handles exactly. The samples'
    objectives are independent; their sum is minimised over the concatenated
    variable by one ``scipy.optimize.minimize(method="L-BFGS-B")`` call with
    the exact gradient from autograd, starting at ``x``.

    The guide images are call-time data: ``attack(model, x, y,
    threat=ThreatModel("linf", eps), guide=g)`` with ``g`` of ``x``'s shape (or
    one image, used for every sample). Without ``guide``, each sample's guide
    is the next sample of the batch (cyclically) with a different label
    (:func:`default_guides`). ``success`` is the base class's untargeted
    one (the prediction differs from ``y``); the attack's own goal, the
    representation distance, is in ``meta``: ``feature_distance``
    ``||phi(x') - phi(g)||``, ``source_distance`` ``||phi(x) - phi(g)||`` and
    ``relative_distance`` (their ratio), per sample.

    Parameters
    ----------
    layer : str, optional
        Name of the layer whose output is matched (``model.layer_names()``
        lists them); default :func:`default_feature_layer`, the last
        convolution (else the penultimate layer).
    steps : int
        L-BFGS-B iterations.

    Notes
    -----
    The paper tunes ``eps`` per experiment (10/255 on ImageNet) and stops
    L-BFGS-B at convergence; here ``steps`` caps the iterations.

    References
    ----------
    .. [1] Sabour, Cao, Faghri, Fleet. "Adversarial manipulation of deep
       representations". ICLR 2016.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> x, y, g = data.x[:16], data.y[:16], data.x[16:32]
    >>> res = FeatureAdversary(steps=50)(model, x, y, threat=ThreatModel("linf", 0.3), guide=g)
    >>> bool(res.meta["relative_distance"].median() < 0.5)
    True
    """

    tags = Tags(norms=("linf",))
    call_data = ("guide",)

    layer: str | None = param(None, check=_layer_name)
    steps: int = param(100, integer=True, positive=True)

    def _run(self, model: TorchModel, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             target: torch.Tensor | None, guide: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict]:
        from scipy.optimize import minimize  # scipy is a dependency; import only when used

        name = self.layer if self.layer is not None else default_feature_layer(model)
        layer = model.layer(name)
        if guide is None:
            g = default_guides(x, y)
        else:
            check_x(guide, threat.bounds)
            if guide.shape[1:] != x.shape[1:] or len(guide) not in (1, len(x)):
                raise InputError(f"guide must have shape ({len(x)}, ...) or (1, ...) like x "
                                 f"{tuple(x.shape)}, got {tuple(guide.shape)}")
            g = guide.detach().to(device=x.device, dtype=x.dtype).expand_as(x)

        with capture(layer) as store:
            def features(xs: torch.Tensor) -> torch.Tensor:
                model(xs)
                out = store.get("out")
                if not isinstance(out, torch.Tensor):
                    raise InputError(f"layer {name!r} does not output a tensor")
                return out.reshape(len(xs), -1)

            with torch.no_grad():
                phi_g = features(g)
                phi_x = features(x)
            lo, hi = threat.bounds
            lower = (x - threat.eps).clamp_min(lo).double().cpu().numpy().ravel()
            upper = (x + threat.eps).clamp_max(hi).double().cpu().numpy().ravel()
            shape, dtype = x.shape, x.dtype

            def fun(v):
                xa = torch.from_numpy(v.copy()).view(shape).to(device=x.device, dtype=dtype)
                xa.requires_grad_(True)
                obj = (features(xa) - phi_g).pow(2).sum(dim=1)
                grad = grad_wrt(obj, xa)
                return float(obj.detach().sum()), grad.detach().double().cpu().numpy().ravel()

            res = minimize(fun, x.detach().double().cpu().numpy().ravel(), jac=True,
                           method="L-BFGS-B", bounds=list(zip(lower, upper, strict=True)),
                           options={"maxiter": self.steps})
            x_adv = torch.from_numpy(res.x.copy()).view(shape).to(device=x.device, dtype=dtype)
            with torch.no_grad():
                phi_a = features(x_adv)
        dist = (phi_a - phi_g).norm(dim=1)
        src = (phi_x - phi_g).norm(dim=1)
        meta = {"layer": name, "feature_distance": dist.cpu(), "source_distance": src.cpu(),
                "relative_distance": (dist / src.clamp_min(1e-12)).cpu()}
        return x_adv, meta
