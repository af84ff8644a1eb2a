"""The box-constrained L-BFGS attack of Szegedy et al. (ICLR 2014)."""

from __future__ import annotations

import torch

from scrutiny.attacks.base import Attack
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.registry import register
from scrutiny.types import Tags, ThreatModel


def lbfgs_loss(logits: torch.Tensor, label: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Per-sample ``loss_f``: cross-entropy to the target, or ``-log(1 - p_y)`` untargeted.

    The untargeted form is the cross-entropy of the event "not ``y``"; unlike
    ``-CE(y)`` it is bounded below, so the minimiser exists.
    """
    if targeted:
        return torch.nn.functional.cross_entropy(logits, label, reduction="none")
    others = logits.scatter(1, label[:, None], float("-inf"))
    return torch.logsumexp(logits, dim=1) - torch.logsumexp(others, dim=1)


def lbfgs_minimize(model: TorchModel, x: torch.Tensor, label: torch.Tensor, const: torch.Tensor,
                   *, targeted: bool, bounds: tuple[float, float],
                   mask: torch.Tensor | None = None, steps: int = 100) -> torch.Tensor:
    """Box-constrained L-BFGS: ``argmin_{x' in box} ||x' - x||_2^2 + c * loss_f(x', label)``.

    Every sample has its own ``c`` (``const``, shape ``(N,)``). The samples'
    objectives are independent, so their sum is minimised over the
    concatenated variable by one ``scipy.optimize.minimize(method="L-BFGS-B")``
    call with per-coordinate bounds (pixels outside ``mask`` are fixed by
    bounds ``[x_i, x_i]``) and the exact joint gradient from autograd.
    Starts from ``x``; returns ``x'`` in ``x``'s dtype.
    """
    from scipy.optimize import minimize  # scipy is a dependency; import only when used

    lo, hi = bounds
    shape, dtype = x.shape, x.dtype
    x64 = x.detach().double().cpu().numpy().ravel()
    lower = torch.full(shape, lo, dtype=torch.float64)
    upper = torch.full(shape, hi, dtype=torch.float64)
    if mask is not None:
        fixed = (mask.cpu() == 0).expand(shape)
        xc = x.detach().double().cpu()
        lower, upper = torch.where(fixed, xc, lower), torch.where(fixed, xc, upper)
    box = list(zip(lower.numpy().ravel(), upper.numpy().ravel(), strict=True))
    c = const.to(device=x.device, dtype=dtype)

    def fun(v):
        xa = torch.from_numpy(v).view(shape).to(device=x.device, dtype=dtype).requires_grad_(True)
        obj = ((xa - x).reshape(len(x), -1).pow(2).sum(dim=1)
               + c * lbfgs_loss(model(xa), label, targeted)).sum()
        (g,) = torch.autograd.grad(obj, xa)
        return float(obj.detach()), g.detach().double().cpu().numpy().ravel()

    res = minimize(fun, x64, jac=True, method="L-BFGS-B", bounds=box,
                   options={"maxiter": steps})
    return torch.from_numpy(res.x).view(shape).to(device=x.device, dtype=dtype)


@register("attack", "lbfgs", paper="Szegedy, Zaremba, Sutskever, Bruna, Erhan, Goodfellow, "
          "Fergus. Intriguing properties of neural networks. ICLR 2014",
          test_params={"search_steps": 2, "steps": 5})
class LBFGS(Attack):
    """Box-constrained L-BFGS attack: the first adversarial-example attack.

    Szegedy et al. approximate the smallest ``r`` with ``f(x + r) = l`` and
    ``x + r`` in the box by minimising ``c |r|_2^2 + loss_f(x + r, l)`` with
    box-constrained L-BFGS, with a line search for the right ``c``. Here
    the same problem is divided by ``c`` (``c`` now weighs the loss):

    ``min_{x + r in [lo, hi]} ||r||_2^2 + c * loss_f(x + r, l)``,

    which makes the paper's "minimum ``c > 0`` for which the minimiser
    satisfies ``f(x + r) = l``" literal (in the paper's weighting, where ``c``
    multiplies ``|r|``, it is the largest such ``c``). The search is per
    sample: ``c`` starts at ``initial_const`` and is doubled while the
    minimiser fails and halved while it succeeds, until a bracket
    ``[c_fail, c_ok = 2 c_fail]`` is found, then bisected geometrically; in
    all ``search_steps`` minimisations. The minimiser at the smallest successful
    ``c`` is returned (the clean input if none succeeded), and ``meta``
    holds ``const`` (that ``c``) and ``const_failed`` (the largest failing
    ``c`` seen; NaN where unknown).

    ``loss_f`` is the cross-entropy to ``l``: targeted, ``l`` is the target
    (the paper's form); untargeted (our extension), ``-log(1 - p_y)``, the
    cross-entropy of "any class but ``y``". All samples are optimised by one
    L-BFGS-B call per search step (see :func:`lbfgs_minimize`).

    A minimum-norm attack: use ``ThreatModel("l2", float("inf"))``; with a
    finite eps the result is projected onto the eps-ball, so success means
    success within eps.

    Parameters
    ----------
    initial_const : float
        First ``c``.
    search_steps : int
        Number of L-BFGS-B minimisations (values of ``c``) per sample.
    steps : int
        L-BFGS-B iterations per minimisation.

    References
    ----------
    .. [1] Szegedy, Zaremba, Sutskever, Bruna, Erhan, Goodfellow, Fergus.
       "Intriguing properties of neural networks". ICLR 2014.
    .. [2] Byrd, Lu, Nocedal, Zhu. "A limited memory algorithm for bound
       constrained optimization". SIAM J. Sci. Comput., 1995 (L-BFGS-B).

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> x, y = data.x[:8], data.y[:8]
    >>> attack = LBFGS(initial_const=1.0, search_steps=3, steps=20)  # a short search
    >>> res = attack(model, x, y, target=(y + 1) % 10, threat=ThreatModel("l2", float("inf")))
    >>> res.success_rate()
    1.0
    """

    tags = Tags(norms=("l2",), targeted=True, minimum_norm=True)

    initial_const: float = param(0.01, positive=True)
    search_steps: int = param(12, integer=True, positive=True)
    steps: int = param(100, integer=True, positive=True)

    def _run(self, model: TorchModel, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             target: torch.Tensor | None):
        targeted = target is not None
        label = target if targeted else y
        mask = threat.mask_for(x)
        n = len(x)
        c = torch.full((n,), float(self.initial_const), dtype=torch.float64)
        c_ok = torch.full((n,), float("inf"), dtype=torch.float64)
        c_fail = torch.zeros(n, dtype=torch.float64)
        best = x.clone()
        for _ in range(self.search_steps):
            xa = lbfgs_minimize(model, x, label, c, targeted=targeted, bounds=threat.bounds,
                                mask=mask, steps=self.steps)
            with torch.no_grad():
                pred = model(xa).argmax(dim=1)
            ok = (pred == label if targeted else pred != label).cpu()
            improve = ok & (c < c_ok)
            best[improve.to(x.device)] = xa[improve.to(x.device)]
            c_ok = torch.where(improve, c, c_ok)
            c_fail = torch.where(~ok, torch.maximum(c_fail, c), c_fail)
            c = torch.where(torch.isinf(c_ok), c * 2,
                            torch.where(c_fail == 0, c / 2, (c_fail * c_ok).sqrt()))
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        return best, {"const": torch.where(torch.isinf(c_ok), nan, c_ok),
                      "const_failed": torch.where(c_fail == 0, nan, c_fail)}
