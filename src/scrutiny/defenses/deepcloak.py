"""DeepCloak: mask the features that adversarial examples move most (Gao et al. 2017)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from scrutiny.attacks.base import Attack
from scrutiny.attacks.ensemble import _member
from scrutiny.data import ArrayDataset
from scrutiny.defenses.base import Defense
from scrutiny.errors import InputError
from scrutiny.models.wrapper import TorchModel, as_model
from scrutiny.params import param
from scrutiny.registry import register
from scrutiny.types import NORMS, ThreatModel
from scrutiny.validation import check_x


class FeatureMask(nn.Module):
    """Multiply dimension 1 of its input by a fixed 0/1 mask (the inserted masking layer)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask.view(1, -1, *([1] * (x.dim() - 2)))


def _last_linear(module: nn.Module) -> str:
    names = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise InputError("DeepCloak's default layer is the input of the last nn.Linear, and the "
                         "model has none; pass layer=")
    return names[-1]


def _check_attack(name: str, attack: Any) -> None:
    if not isinstance(attack, Attack):
        _member(attack)  # fails early with the accepted forms


@contextlib.contextmanager
def _features(layer: nn.Module, before: bool) -> Iterator[dict[str, torch.Tensor]]:
    """Record the input (``before``) or the output of ``layer``; hook removed on exit."""
    store: dict[str, torch.Tensor] = {}
    if before:
        handle = layer.register_forward_pre_hook(lambda _m, inp: store.__setitem__("f", inp[0]))
    else:
        handle = layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("f", out))
    try:
        yield store
    finally:
        handle.remove()


@register("defense", "deepcloak", paper="Gao, Wang, Lin, Xu, Qi. DeepCloak: masking deep neural "
          "network models for robustness against adversarial samples. ICLR 2017 workshop",
          test_params={"fraction": 0.1})
class DeepCloak(Defense):
    """Remove the features that differ most between clean and adversarial inputs.

    :meth:`fit` runs ``attack`` on the given data, records the features at
    ``layer`` for the clean and the adversarial inputs, ranks every feature
    (dimension 1: a unit, or a channel averaged over space) by the mean
    absolute difference ``mean_i |phi_j(x_i) - phi_j(x'_i)|`` and masks the
    top ``fraction`` of them. :meth:`wrap` returns a copy of the model with a
    :class:`FeatureMask` layer (weights 0 or 1) inserted there; the original
    model is not changed.

    Parameters
    ----------
    layer : str, optional
        Layer whose output is masked; default the penultimate features, i.e.
        the input of the last ``nn.Linear`` (as in the paper: the mask sits
        right before the classification layer).
    fraction : float
        Fraction of the features masked, in (0, 1) (the paper reports 1% to 10%).
    attack : str, tuple or Attack
        The attack whose adversarial examples rank the features: a registered
        name, ``(name, params)`` or an Attack instance.
    norm : {"linf", "l2", "l1"}
        Norm of the attack's threat model.
    eps : float
        Radius of the attack's threat model.
    batch_size : int
        Rows per forward while recording features.

    Notes
    -----
    Fitted attributes: ``differences_`` (per-feature mean absolute
    difference), ``masked_`` (indices of the masked features, largest
    difference first), ``layer_`` (the layer used, with ``":input"`` when the
    mask sits at a layer's input). The paper ranks on the adversarial examples
    of one attack and reports accuracy on adversarial examples crafted
    against the unmasked model; an attacker who knows the mask can attack
    the masked model directly (evaluate that too).

    References
    ----------
    .. [1] Gao, Wang, Lin, Xu, Qi. "DeepCloak: masking deep neural network
       models for robustness against adversarial samples". ICLR 2017 workshop.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> model, train = pretrained("digits-cnn", progress=False), load_digits(split="train")
    >>> cloak = DeepCloak(fraction=0.1, eps=0.1).fit(model, train)
    >>> len(cloak.masked_), cloak.layer_
    (6, 'classifier:input')
    >>> masked = cloak.wrap(model)
    """

    layer: str | None = param(None, kind=str)
    fraction: float = param(0.1, between=(0, 1), interval="()")
    attack: Any = param("fgsm", check=_check_attack)
    norm: str = param("linf", choices=NORMS)
    eps: float = param(0.1, positive=True)
    batch_size: int = param(512, integer=True, positive=True)

    def _site(self, model: TorchModel) -> tuple[str, bool]:
        if self.layer is None:
            return _last_linear(model.module), True
        model.layer(self.layer)  # clear error listing the layers
        return self.layer, False

    def _record(self, model: TorchModel, x: torch.Tensor) -> torch.Tensor:
        name, before = self._site(model)
        outs = []
        with model.evaluating(), torch.no_grad(), _features(model.layer(name), before) as st:
            for i in range(0, len(x), self.batch_size):
                model(x[i:i + self.batch_size].to(model.device))
                f = st["f"]
                outs.append((f.flatten(2).mean(2) if f.dim() > 2 else f).cpu())
        return torch.cat(outs)

    def fit(self, model: Any, data: Any = None) -> DeepCloak:
        """Rank the features on ``data`` (ArrayDataset or ``(x, y)``) and its adversarials."""
        model = as_model(model)
        if isinstance(data, ArrayDataset):
            x, y = data.x, data.y
        elif isinstance(data, tuple | list) and len(data) == 2:
            x, y = data
        else:
            raise InputError(f"data must be an ArrayDataset or a pair (x, y), got {type(data).__name__}")
        check_x(x, model.bounds)
        if len(x) == 0:
            raise InputError("DeepCloak ranks features on clean and adversarial inputs; "
                             "data is empty")
        attack = _member(self.attack)
        res = attack(model, x, y, threat=ThreatModel(self.norm, self.eps, model.bounds))
        diff = (self._record(model, x) - self._record(model, res.x_adv)).abs().mean(0)
        k = max(1, round(self.fraction * len(diff)))
        name, before = self._site(model)
        self.differences_: torch.Tensor | None = diff
        self.masked_: torch.Tensor | None = diff.topk(k).indices
        self.layer_: str | None = f"{name}:input" if before else name
        self.attack_result_ = res
        return self

    def mask(self) -> torch.Tensor:
        """The fitted 0/1 mask over the features (1 = kept)."""
        self._check_fitted("masked_")
        m = torch.ones(len(self.differences_))
        m[self.masked_] = 0
        return m

    def wrap(self, model: Any) -> TorchModel:
        """A copy of ``model`` with the masking layer inserted (at ``layer_``)."""
        m = self.mask()
        model = copy.deepcopy(as_model(model))
        name, before = self._site(model)
        parent_name, _, child = name.rpartition(".")
        parent = model.module.get_submodule(parent_name) if parent_name else model.module
        old = getattr(parent, child)
        mask = FeatureMask(m.to(model.device))
        setattr(parent, child, nn.Sequential(mask, old) if before else nn.Sequential(old, mask))
        model.name = f"deepcloak({model.name})"
        return model
