"""Small layers that make a model's structure visible to explainers."""

from __future__ import annotations

import torch
from torch import nn


class Add(nn.Module):
    """Sum of its inputs as a module: ``Add()(a, b, ...) = a + b + ...``.

    A residual connection written as ``out = self.add(x, self.block(x))``
    instead of ``x + self.block(x)`` lets Layer-wise Relevance Propagation
    (:class:`scrutiny.explain.lrp.LRP`) see the sum and split the relevance
    of the output between the summands in proportion to their contributions;
    a plain ``+`` would copy it to both (autograd's rule for a sum).

    Examples
    --------
    >>> import torch
    >>> Add()(torch.ones(2), torch.full((2,), 2.0))
    tensor([3., 3.])
    """

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if not inputs:
            raise TypeError("Add needs at least one input")
        out = inputs[0]
        for t in inputs[1:]:
            out = out + t
        return out
