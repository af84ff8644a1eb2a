"""Interval bound propagation (Gowal et al. 2018)."""

from __future__ import annotations

import torch

from scrutiny.certify.base import BoundCertifier
from scrutiny.certify.propagation import Interval, Network, ibp_node, ibp_stop
from scrutiny.registry import register


@register("certifier", "ibp", paper="Gowal, Dvijotham, Stanforth, Bunel, Qin, Uesato, Arandjelovic, "
          "Mann, Kohli. On the effectiveness of interval bound propagation for training verifiably "
          "robust models. arXiv:1810.12715 2018", test_params={"batch_size": 4})
class IBP(BoundCertifier):
    """Interval bound propagation: certified bounds by interval arithmetic.

    The input set (the eps-ball intersected with the input bounds) is
    enclosed in a box, which each layer maps to a box: an affine layer
    ``W x + b`` in centre-radius form, ``c' = W c + b``, ``r' = |W| r``;
    monotone layers (ReLU, max pooling) map the two corners. As in the
    paper, the margins ``z_y - z_j`` are bounded by folding the
    specification matrix ``C`` into the last affine layers (``C W``), which
    is tighter than subtracting logit bounds. A sample is certified when
    every margin's lower bound is > 0.

    Parameters
    ----------
    batch_size : int
        Samples bounded at once.
    radius_steps : int
        Bisection rounds of :meth:`certified_radius`.

    Notes
    -----
    The paper defines IBP for linf balls. For ``norm="l2"`` the ball is
    replaced by its bounding box (sound but loose), except for a network
    without ReLU or pooling, where the dual norm is used. The model's
    normalisation is the first layer, so ``eps`` is in the input's units.

    References
    ----------
    .. [1] Gowal et al. "On the effectiveness of interval bound propagation
       for training verifiably robust models". arXiv:1810.12715, 2018.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> res = IBP().certify(model, data.x[:32], data.y[:32], ThreatModel("linf", 0.001))
    >>> res.certified_accuracy() > 0.5
    True
    >>> b = IBP().bounds(model, data.x[:2], 0.001)
    >>> bool((b.logits_lower <= model.logits(data.x[:2])).all())
    True
    """

    def _lower(self, net: Network, spec: torch.Tensor, box: Interval, norm: str, x0: torch.Tensor,
               eps: torch.Tensor, margins: bool = False) -> torch.Tensor:
        stop = ibp_stop(net)  # only the bounds where the specification is concretised
        return net.spec_lower(spec, len(net.ops), stop, {}, ibp_node(net, box, stop), norm, x0,
                              eps)
