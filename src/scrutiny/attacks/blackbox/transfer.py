"""Zero-query and transfer attacks: random noise, difference of class means, surrogate transfer.

The first two never query the model; the transfer attack queries it only to
label the data its surrogate learns from (and once per sample to check the
transferred examples).
"""

from __future__ import annotations

from typing import Any

import torch

from scrutiny import registry
from scrutiny.attacks.base import Attack, BlackBox
from scrutiny.attacks.lp import steepest_direction
from scrutiny.errors import InputError
from scrutiny.params import param
from scrutiny.registry import register
from scrutiny.types import Tags, ThreatModel, lp_norm

DISTRIBUTIONS = ("uniform", "gaussian")


def _mapping(name: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise InputError(f"{name} must be a dict of constructor arguments or None, got {value!r}")


def _v(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))


def _reference(data: Any, x: torch.Tensor, y: torch.Tensor, what: str
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x_ref, y_ref)`` from an ArrayDataset, a tuple ``(x, y)`` or a bare tensor ``x``."""
    if data is None:
        return x, y
    if hasattr(data, "x") and hasattr(data, "y"):
        xr, yr = data.x, data.y
    elif isinstance(data, tuple) and len(data) == 2:
        xr, yr = data
    elif isinstance(data, torch.Tensor):
        xr, yr = data, None
    else:
        raise InputError(f"{what} must be an ArrayDataset, a tuple (x, y) or a tensor x, got "
                         f"{type(data).__name__}")
    if not isinstance(xr, torch.Tensor) or xr.shape[1:] != x.shape[1:] or not len(xr):
        raise InputError(f"{what} inputs must be a non-empty tensor of inputs shaped like x "
                         f"{tuple(x.shape[1:])}, got {tuple(getattr(xr, 'shape', ()))}")
    if yr is not None and (not isinstance(yr, torch.Tensor) or yr.shape != (len(xr),)):
        raise InputError(f"{what} labels must be a tensor of shape ({len(xr)},)")
    return xr.detach().to(x), None if yr is None else yr.detach().long().to(x.device)


@register("attack", "noise", paper="Course slides: zero-query attacks (random noise baseline)")
class NoiseAttack(Attack):
    """Random noise of the largest allowed size: the zero-query baseline.

    Never queries the model. ``uniform`` under linf draws every coordinate
    from ``U(-eps, eps)``; otherwise the noise (uniform in ``[-1, 1]`` or
    standard Gaussian per coordinate) is rescaled to norm ``eps`` in the
    threat model's norm, i.e. placed on the sphere of the ball (the strongest
    random perturbation allowed). The base clips to the input bounds.

    Parameters
    ----------
    distribution : {"uniform", "gaussian"}
        Distribution of each coordinate before rescaling.

    References
    ----------
    .. [1] Course slides, black-box attacks: zero-query attacks. See also
       Papernot et al. "Practical black-box attacks against machine
       learning". AsiaCCS 2017 (random noise as the baseline of transfer).

    Examples
    --------
    >>> from scrutiny.models import QueryModel, pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> res = NoiseAttack()(QueryModel(model, output="label"), data.x[:100], data.y[:100],
    ...                     threat=ThreatModel("linf", 0.1))
    >>> int(res.queries.sum()), res.robust_accuracy() > 0.8
    (0, True)
    """

    tags = Tags(white_box=False, output="label", norms=("linf", "l2", "l1"), stochastic=True)

    distribution: str = param("uniform", choices=DISTRIBUTIONS)

    def _run(self, box: BlackBox, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             target: torch.Tensor | None) -> torch.Tensor:
        eps = threat.eps
        if self.distribution == "uniform":
            noise = torch.rand_like(x) * 2 - 1
            if threat.norm == "linf":
                return x + eps * noise
        else:
            noise = torch.randn_like(x)
        m = threat.mask_for(x)
        if m is not None:
            noise = noise * m
        return x + eps * noise / _v(lp_norm(noise, threat.norm).clamp_min(1e-12), noise)


@register("attack", "class_means", paper="Course slides: zero-query attacks (difference of "
          "class means)")
class ClassMeans(Attack):
    """Step along the difference of class means: a zero-query attack from data statistics.

    With the class means ``mu_c`` of reference data (``data=`` at call
    time: an ArrayDataset or ``(x, y)``; default: the attacked batch and its
    labels), the perturbation is ``eps`` times the steepest direction of
    ``mu_c - mu_y`` in the threat model's norm (its sign for linf, the unit
    vector for l2): towards the mean of class ``c``, away from that of the
    true class ``y``. Untargeted, ``c`` is the class whose mean is nearest
    (l2) to the input among the other classes; targeted, ``c`` is the target.
    Never queries the model. A sample whose class ``c`` has no example in the
    data is left unchanged (counted in ``meta["unattacked"]``); when its own
    class has none, the step goes from ``x`` towards ``mu_c``.

    References
    ----------
    .. [1] Course slides, black-box attacks: zero-query attacks (difference
       of means).

    Examples
    --------
    >>> from scrutiny.models import QueryModel, pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model = pretrained("digits-cnn", progress=False)
    >>> train, test = load_digits(), load_digits(split="test")
    >>> res = ClassMeans()(QueryModel(model, output="label"), test.x[:100], test.y[:100],
    ...                    threat=ThreatModel("linf", 0.2), data=train)
    >>> int(res.queries.sum()), res.robust_accuracy() < res.clean_accuracy()
    (0, True)
    """

    tags = Tags(white_box=False, output="label", norms=("linf", "l2", "l1"), targeted=True)
    #: ``data=`` reference inputs with labels (ArrayDataset or ``(x, y)``) for the class means.
    call_data = ("data",)

    def _run(self, box: BlackBox, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             target: torch.Tensor | None, data: Any = None) -> tuple[torch.Tensor, dict]:
        xr, yr = _reference(data, x, y, "data")
        if yr is None:
            raise InputError("class_means needs labelled data: an ArrayDataset or a tuple (x, y)")
        k = int(max(int(yr.max()), int(y.max()), int(target.max()) if target is not None else 0)) + 1
        flat = xr.flatten(1)
        counts = torch.bincount(yr, minlength=k).to(flat)
        sums = torch.zeros(k, flat.shape[1], device=flat.device, dtype=flat.dtype)
        sums.index_add_(0, yr, flat)
        present = counts > 0
        means = sums / counts.clamp_min(1)[:, None]
        if target is None:
            d = torch.cdist(x.flatten(1), means)
            d[:, ~present] = float("inf")
            d.scatter_(1, y[:, None], float("inf"))
            c = d.argmin(dim=1)
            can = torch.isfinite(d.gather(1, c[:, None])[:, 0])
        else:
            c = target
            can = present[c]
        # away from the own class's mean, or from x itself when the data lack that class
        own = torch.where(present[y][:, None], means[y], x.flatten(1))
        direction = ((means[c] - own) * can[:, None]).view_as(x)
        m = threat.mask_for(x)
        if m is not None:
            direction = direction * m
        step = steepest_direction(direction, threat.norm)
        step = step * _v(can.to(x.dtype), x)  # no mean of the class to move to: unchanged
        return x + threat.eps * step, {"towards_class": c.cpu(), "unattacked": int((~can).sum())}


@register("attack", "transfer", paper="Papernot, McDaniel, Goodfellow, Jha, Celik, Swami. "
          "Practical black-box attacks against machine learning. AsiaCCS 2017",
          test_params={"epochs": 1, "surrogate": "mlp", "attack_params": {"steps": 2}})
class Transfer(Attack):
    """Transfer attack: train a surrogate on the target's answers, attack it white-box.

    1. Label the seed data (``data=`` inputs at call time, labels ignored;
       default: the attacked batch) by querying the target (counted).
    2. Optionally, Papernot et al.'s Jacobian-based dataset augmentation:
       for each of ``augmentation_rounds`` rounds, add
       ``clip(x + lambda * sign(d F_{O(x)}(x) / dx))`` for every point of the
       set (``F`` the surrogate, ``O(x)`` the target's label), label the new
       points by querying the target and retrain the surrogate on the union.
    3. Run the registered white-box attack ``attack`` (``attack_params`` its
       constructor arguments) on the surrogate, within the threat model.
    4. Query the target once per sample at the transferred points and report
       the transfer success in ``meta`` (the base also verifies it, uncounted).

    Parameters
    ----------
    attack : str
        Name of a registered white-box attack (``"pgd"``, ``"fgsm"``, ``"apgd"``, ...).
    attack_params : dict, optional
        Its constructor arguments.
    surrogate : {"auto", "cnn", "mlp"}
        Architecture of :func:`scrutiny.models.build`; ``auto``: cnn for images.
    epochs : int
        Training epochs of the surrogate (after each augmentation round too).
    lr : float
        Adam learning rate of the surrogate.
    augmentation_rounds : int
        Rounds of Jacobian-based dataset augmentation (0: none; the paper uses 6).
    augmentation_step : float
        The paper's ``lambda`` (0.1).

    References
    ----------
    .. [1] Papernot, McDaniel, Goodfellow, Jha, Celik, Swami. "Practical
       black-box attacks against machine learning". AsiaCCS 2017.

    Examples
    --------
    >>> from scrutiny.models import QueryModel, pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model = pretrained("digits-cnn", progress=False)
    >>> train, test = load_digits(), load_digits(split="test")
    >>> target = QueryModel(model, output="label")
    >>> x, y, tm = test.x[:64], test.y[:64], ThreatModel("linf", 0.2)
    >>> res = Transfer(surrogate="mlp")(target, x, y, threat=tm, data=train.x[:300])
    >>> noise = NoiseAttack()(target, x, y, threat=tm)  # random noise of the same size
    >>> res.meta["labelling_queries"], res.robust_accuracy() < noise.robust_accuracy() - 0.1
    (300, True)
    >>> # measured: robust accuracy 0.58 against transferred examples, 0.92 against noise
    """

    tags = Tags(white_box=False, output="label", norms=("linf", "l2", "l1"), targeted=True,
                stochastic=True)
    #: ``data=`` the attacker's seed inputs (tensor, ``(x, y)`` or ArrayDataset; labels ignored).
    call_data = ("data",)

    attack: str = param("pgd", kind=str)
    attack_params: dict[str, Any] | None = param(None, kind=dict, check=_mapping)
    surrogate: str = param("auto", choices=("auto", "cnn", "mlp"))
    epochs: int = param(20, integer=True, positive=True)
    lr: float = param(3e-3, positive=True)
    augmentation_rounds: int = param(0, integer=True, nonneg=True)
    augmentation_step: float = param(0.1, positive=True)

    def _post_init(self) -> None:
        info = registry.get(self.attack, "attack")
        if not info.cls.tags.white_box:
            raise InputError(f"attack must be a white-box attack to run on the surrogate; "
                             f"{info.spec} is black-box")
        registry.create(info.spec, **(self.attack_params or {}))  # rejects unknown parameters now

    def _train(self, x: torch.Tensor, labels: torch.Tensor, k: int, seed: int,
               bounds: tuple[float, float]):
        from scrutiny.base import seeded
        from scrutiny.data import ArrayDataset
        from scrutiny.models.training import train
        from scrutiny.models.wrapper import TorchModel
        from scrutiny.models.zoo import build

        arch = self.surrogate
        if arch == "auto":
            arch = "cnn" if x.dim() == 4 else "mlp"
        with seeded(seed):
            net = build(arch, tuple(x.shape[1:]), k).to(x.device)
        data = ArrayDataset(x=x.float().cpu(), y=labels.long().cpu(),
                            classes=tuple(str(i) for i in range(k)), name="transfer")
        train(net, data, epochs=self.epochs, lr=self.lr, seed=seed, progress=False)
        return TorchModel(net, num_classes=k, name=f"surrogate-{arch}", bounds=bounds)

    def _run(self, box: BlackBox, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             target: torch.Tensor | None, data: Any = None) -> tuple[torch.Tensor, dict]:
        xs, _ = _reference(data, x, y, "data")
        lo, hi = threat.bounds
        xs = xs.clamp(lo, hi)
        # seed labels are charged to the attacked samples in turn (there is no "owner")
        def charge(n: int) -> torch.Tensor:
            return torch.arange(n, device=x.device) % len(x)

        labels = box.labels(xs, charge(len(xs))).long()
        used = len(xs)
        k = box.model.num_classes or int(max(int(labels.max()), int(y.max()))) + 1
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        surrogate = self._train(xs, labels, k, seed, threat.bounds)
        for r in range(self.augmentation_rounds):
            xg = xs.detach().clone().requires_grad_(True)
            with surrogate.evaluating():
                out = surrogate(xg).gather(1, labels[:, None].to(xg.device)).sum()
            (jac,) = torch.autograd.grad(out, xg)
            new = (xs + self.augmentation_step * jac.sign()).clamp(lo, hi)
            new_labels = box.labels(new, charge(len(new))).long()
            used += len(new)
            xs, labels = torch.cat([xs, new]), torch.cat([labels, new_labels])
            surrogate = self._train(xs, labels, k, seed + r + 1, threat.bounds)
        agreement = float((surrogate.predict(xs) == labels.to(xs.device)).float().mean())
        wb = registry.create(f"attack:{self.attack}", **(self.attack_params or {}))
        kw = {"target": target} if target is not None else {}
        res = wb(surrogate, x, y, threat=threat, seed=seed, **kw)
        x_adv = threat.project(x, res.x_adv.to(x))
        check = box.labels(x_adv)  # the attacker's one look per sample at the target
        ok = check == target if target is not None else check != y
        return x_adv, {"labelling_queries": used, "surrogate_agreement": agreement,
                       "surrogate_success": res.success_rate(),
                       "transfer_success": float(ok.float().mean()),
                       "training_set_size": len(xs)}
