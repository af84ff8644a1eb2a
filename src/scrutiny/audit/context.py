"""What every audit section shares: the context built once, and what a section returns."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch

from scrutiny import registry
from scrutiny.audit.checks import Flag, ModelProbe
from scrutiny.audit.config import AuditConfig
from scrutiny.data import ArrayDataset
from scrutiny.models.wrapper import TorchModel
from scrutiny.types import ThreatModel


@dataclass
class Figure:
    """A report figure: PNG bytes and the numbers it shows."""

    name: str
    title: str
    caption: str
    png: bytes
    data: dict[str, Any]


@dataclass
class SectionResult:
    """What one audit section produced.

    Attributes
    ----------
    name : str
        The section's registered name.
    data : dict
        JSON-ready numbers (written to ``result.json`` under the section's name).
    figures : list of Figure
    notes : list of str
        What the reader must know (skipped methods, fallbacks).
    flags : list of Flag
        Checks whose outcome the report shows.
    tensors : dict of str to Tensor
        Per-sample results later sections read (robust masks, adversarial
        inputs, example indices); saved with the section for resumption.
    seconds : float
    resumed : bool
        Loaded from a finished earlier run instead of computed.
    """

    name: str
    data: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0
    resumed: bool = False


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def model_digest(model: torch.nn.Module) -> str:
    """A hash of the model's parameters and buffers (what its predictions depend on)."""
    state = model.state_dict()
    return _digest(*(state[k] for k in sorted(state))) + type(model).__name__


@dataclass
class AuditContext:
    """Built once per audit and handed to every section.

    Attributes
    ----------
    model : TorchModel
    data : ArrayDataset
        The test data the samples come from.
    config : AuditConfig
        The resolved configuration.
    idx : Tensor
        Indices of the audited samples in ``data`` (a seeded permutation's head).
    x, y : Tensor
        The audited samples.
    pred : Tensor
        The model's clean predictions of ``x`` (for a randomized model, the draw
        every attack's own clean pass sees: the first forward under the seed).
    clean_accuracy : float
    background : Tensor
        Rows not attacked, for explainers that take background data.
    rest : Tensor
        Indices of the rows not attacked (defenses are fitted on them).
    robust_model : TorchModel, optional
        The model compared with (``--robust-model``).
    probe : ModelProbe
        What the audit found before any attack: randomness (EOT draws) and masked
        gradients (BPDA); ``model`` is :func:`~scrutiny.models.adaptive.declare`-d
        accordingly, so every white-box attack adapts to it.
    notes : list of str
        Notes about the audit as a whole (methods skipped for the data).
    """

    model: TorchModel
    data: ArrayDataset
    config: AuditConfig
    idx: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    pred: torch.Tensor
    clean_accuracy: float
    background: torch.Tensor
    rest: torch.Tensor
    robust_model: TorchModel | None = None
    probe: ModelProbe = field(default_factory=ModelProbe)
    notes: list[str] = field(default_factory=list)
    _methods: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)

    @property
    def seed(self) -> int:
        return self.config.seed

    def threat(self, eps: float | None = None) -> ThreatModel:
        """The audit's threat model at ``eps`` (default the reference eps); bounds from the model."""
        eps = self.config.reference_eps if eps is None else eps
        return ThreatModel(self.config.norm, float(eps), self.model.bounds)

    def class_names(self) -> tuple[str, ...]:
        """Names of every class the model can predict: the data's, then the numbers of classes
        the data does not hold (a test split of some of the classes)."""
        names = tuple(self.data.classes)
        k = self.model.num_classes or len(names)
        return names + tuple(str(i) for i in range(len(names), k))

    def create(self, kind: str, name: str):
        """The registered method ``kind:name`` with the audit's parameters for it (one instance).

        On a randomized model (:attr:`probe`) an attack that stops a sample at its first
        success (``early_stop``) runs every step instead, unless the configuration says
        otherwise: a success judged on the EOT average is often undone by the next draw.
        """
        key = (kind, name)
        if key not in self._methods:
            params = dict(self.config.params.get(name, {}))
            cls = registry.get(name, kind).cls
            if self.probe.randomized and "early_stop" in cls.hyperparameters:
                params.setdefault("early_stop", False)
            self._methods[key] = registry.create(f"{kind}:{name}", **params)
        return self._methods[key]

    def attacks(self) -> dict[str, Any]:
        """The curve's attacks, created, and the :meth:`black_box_stage` when there is one."""
        names = list(self.config.attacks)
        bb = self.black_box_stage()
        return {a: self.create("attack", a) for a in names + ([bb] if bb else [])}

    def black_box_stage(self) -> str | None:
        """With masked gradients (:attr:`probe`), the black-box attack (``config.black_box``,
        default square) the curve adds at every eps, on the samples the white-box attacks
        left robust there, so every eps has a number that does not rest on the model's
        gradients; None otherwise (or when it is one of the configured attacks)."""
        bb = self.config.black_box or "square"
        if not self.probe.masked or bb in self.config.attacks \
                or f"attack:{bb}" not in registry.list_methods():
            return None
        if self.x.dim() != 4 and registry.get(bb, "attack").cls.tags.image_only:
            return None
        return bb

    def explainers(self) -> dict[str, Any]:
        """The explainers that fit the data (image-only ones are left out on tables)."""
        out = {e: self.create("explainer", e) for e in self.config.explainers}
        if not self.data.is_image:
            out = {k: v for k, v in out.items() if not v.tags.image_only}
        return out

    def fingerprint(self) -> str:
        """What every section's result depends on: weights, samples, configuration."""
        parts = [model_digest(self.model), _digest(self.x, self.y, self.background),
                 self.config.fingerprint()]
        if self.robust_model is not None:
            parts.append(model_digest(self.robust_model))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()
