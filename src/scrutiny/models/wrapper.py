"""TorchModel: any nn.Module with its input bounds and preprocessing inside."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from scrutiny.errors import InputError, NotDifferentiableError
from scrutiny.models.memory import chunked
from scrutiny.validation import DEFAULT_BOUNDS, check_bounds

#: ids of the TorchModels inside an ``evaluating()`` block (for its re-entrancy); an id
#: leaves the set when its block ends, so a copy of the model is never taken for nested.
_EVALUATING: set[int] = set()


class TorchModel(nn.Module):
    """A white-box classifier: maps inputs in their natural range to logits.

    Normalisation (``(x - mean) / std``) happens inside, so attacks and
    explainers see inputs in ``bounds`` and ``eps`` is in input units.

    Parameters
    ----------
    module : nn.Module
        The classifier; returns logits ``(N, K)``.
    bounds : (float, float)
        Range of valid inputs. The model owns them: a
        :class:`~scrutiny.types.ThreatModel` without bounds takes these, and
        every method checks its inputs against them.
    mean, std : sequence of float, optional
        Per-channel normalisation applied before ``module``.
    num_classes : int, optional
        Checked against the output when given; inferred on first call.
    name : str, optional
        Shown in reports.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> m = TorchModel(nn.Linear(4, 3), mean=[0.5], std=[0.25])
    >>> m(torch.zeros(2, 4)).shape
    torch.Size([2, 3])
    """

    def __init__(self, module: nn.Module, *, bounds: tuple[float, float] = DEFAULT_BOUNDS,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 num_classes: int | None = None, name: str | None = None) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise NotDifferentiableError(
                f"TorchModel needs a torch.nn.Module, got {type(module).__name__}; "
                "wrap a black box in QueryModel instead")
        if isinstance(module, TorchModel):
            raise InputError("module is already a TorchModel")
        self.module = module
        self.bounds = check_bounds(bounds)
        self.num_classes = num_classes
        self.name = name or type(module).__name__
        if (mean is None) != (std is None):
            raise InputError("give both mean and std, or neither")
        if mean is not None:
            m = torch.as_tensor(mean, dtype=torch.float32)
            s = torch.as_tensor(std, dtype=torch.float32)
            if torch.any(s <= 0):
                raise InputError("std must be > 0")
            self.register_buffer("mean", m, persistent=False)
            self.register_buffer("std", s, persistent=False)
        else:
            self.mean = self.std = None

    @property
    def device(self) -> torch.device:
        """Device of the parameters (CPU for a parameter-free module)."""
        for t in self.module.parameters():
            return t.device
        for t in self.module.buffers():
            return t.device
        return torch.device("cpu")

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            return x
        shape = (1, -1) + (1,) * (x.dim() - 2) if self.mean.numel() > 1 else (1,)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(self._norm(x))
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(f"the model must return logits of shape (N, K), got {got}")
        if self.num_classes is None:
            self.num_classes = out.shape[1]
        elif out.shape[1] != self.num_classes:
            raise InputError(f"model returned {out.shape[1]} classes, expected {self.num_classes}")
        return out

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[TorchModel]:
        """Eval mode, parameters frozen (input gradients only); all restored on exit.

        Re-entrant: inside an ``evaluating()`` of the same model a nested call
        changes and restores nothing (the outermost call set the state and
        restores it on exit), so a query path that nests it stays cheap. Code
        that switches modules to training mode inside it (MC dropout) keeps
        them so through nested calls.
        """
        key = id(self)
        if key in _EVALUATING:  # nested: the outermost call owns the state
            yield self
            return
        modes = [(m, m.training) for m in self.modules()]
        grads = [p for p in self.parameters() if p.requires_grad]
        try:
            if any(t for m, t in modes if m is not self):
                self.eval()
            elif self.training:  # only the wrapper's own flag (an eval-mode module): no walk
                self.training = False
            for p in grads:
                p.requires_grad_(False)
            _EVALUATING.add(key)
            yield self
        finally:
            _EVALUATING.discard(key)
            for m, t in modes:
                if m.training != t:
                    m.training = t
            for p in grads:
                p.requires_grad_(True)

    @torch.no_grad()
    def logits(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Logits of ``x`` in eval mode on the model's device, computed in chunks of
        ``batch_size`` (halved where a chunk runs out of memory:
        :func:`scrutiny.models.memory.chunked`)."""
        dev = self.device
        if not len(x):
            return torch.empty(0, self.num_classes or 0, device=dev)
        with self.evaluating():
            return chunked(lambda rows: self(rows.to(dev)), x, batch_size, what="TorchModel.logits")

    def predict(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """Predicted labels (N,)."""
        return self.logits(x, batch_size).argmax(dim=1)

    def layer_names(self) -> list[str]:
        """Names of the wrapped module's sub-layers (for ``layer=`` arguments)."""
        return [n for n, _ in self.module.named_modules() if n]

    def layer(self, name: str) -> nn.Module:
        """The sub-layer called ``name``; a clear error lists the valid names."""
        mods = dict(self.module.named_modules())
        if not name or name not in mods:
            raise InputError(f"no layer {name!r} in {self.name}; layers: "
                             + ", ".join(self.layer_names()))
        return mods[name]


def as_model(model: nn.Module | TorchModel, bounds: tuple[float, float] | None = None) -> TorchModel:
    """Wrap a plain ``nn.Module`` with ``bounds`` (default [0, 1]); pass a TorchModel through.

    A TorchModel keeps its own bounds (it owns them); ``bounds`` declares those
    of a plain module, which has none.
    """
    if isinstance(model, TorchModel):
        return model
    if isinstance(model, nn.Module):
        return TorchModel(model, bounds=DEFAULT_BOUNDS if bounds is None else bounds)
    raise NotDifferentiableError(
        f"a white-box method needs a torch.nn.Module or TorchModel, got {type(model).__name__}; "
        "use a black-box method for models you can only query")
