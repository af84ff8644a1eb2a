"""What every audit section shares: the context built once, and what a section returns."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch

from scrutiny import registry
from scrutiny.audit.checks import Flag, ModelProbe, probe_model
from scrutiny.audit.config import AuditConfig
from scrutiny.base import seeded
from scrutiny.data import ArrayDataset
from scrutiny.errors import InputError
from scrutiny.models.adaptive import declare
from scrutiny.models.query import QueryModel
from scrutiny.models.wrapper import TorchModel, as_model
from scrutiny.types import ThreatModel
from scrutiny.validation import check_outputs


@dataclass
class Figure:
    """A report figure: PNG bytes and the numbers it shows.

    ``plotly``, when set, is the same figure as a Plotly figure (``{"data": [...],
    "layout": {...}}``, JSON-ready): the report draws it interactively (hover values,
    series toggles, zoom) and keeps the PNG for readers without JavaScript.
    """

    name: str
    title: str
    caption: str
    png: bytes
    data: dict[str, Any]
    plotly: dict[str, Any] | None = None


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


def model_digest(model: torch.nn.Module | QueryModel) -> str:
    """A hash of the model's parameters and buffers (what its predictions depend on); for a
    model only queried (an endpoint), of what names it: its class, name (URL) and output."""
    if isinstance(model, QueryModel):
        return hashlib.sha256("|".join((type(model).__name__, str(model.name), model.output))
                              .encode()).hexdigest()
    state = model.state_dict()
    return _digest(*(state[k] for k in sorted(state))) + type(model).__name__


@dataclass
class AuditContext:
    """Built once per audit and handed to every section.

    Attributes
    ----------
    model : TorchModel or QueryModel
        A QueryModel (an :class:`~scrutiny.models.HttpModel` endpoint) is only
        queried (:attr:`endpoint`): the sections that need gradients or weights
        are skipped.
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
    draw : bool
        Whether sections draw their figures; False in a shard of a sharded audit
        (:mod:`scrutiny.audit.shards`), whose merged result draws the audit's.
    """

    model: TorchModel | QueryModel
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
    draw: bool = True
    _methods: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def endpoint(self) -> bool:
        """Whether the model is only queried (a QueryModel: an endpoint), without gradients."""
        return isinstance(self.model, QueryModel)

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
            cap, own = self.config.batch_size, cls.hyperparameters.get("batch_size")
            if cap is not None and own is not None and (
                    own.default is None or (isinstance(own.default, int) and own.default > cap)):
                params.setdefault("batch_size", cap)  # the input size's cap on a method's batch
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
        """The explainers that fit the data (image-only ones are left out on tables) and the
        model (only the black-box ones on an :attr:`endpoint`)."""
        out = {e: self.create("explainer", e) for e in self.config.explainers}
        if not self.data.is_image:
            out = {k: v for k, v in out.items() if not v.tags.image_only}
        if self.endpoint:
            out = {k: v for k, v in out.items() if not v.tags.white_box}
        return out

    def fingerprint(self) -> str:
        """What every section's result depends on: weights, samples, configuration."""
        parts = [model_digest(self.model), _digest(self.x, self.y, self.background),
                 self.config.fingerprint()]
        if self.robust_model is not None:
            parts.append(model_digest(self.robust_model))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()


def build_context(model, data: ArrayDataset, config: AuditConfig, robust_model=None
                  ) -> AuditContext:
    """The context every section reads: the samples, clean predictions, background rows.

    A :class:`QueryModel` (an endpoint) is only queried: no probe of its gradients, the
    clean predictions are the evaluator's look (:meth:`QueryModel._evaluate`)."""
    endpoint = isinstance(model, QueryModel)
    if not endpoint:
        model = as_model(model)
    if not isinstance(data, ArrayDataset):
        raise InputError(f"data must be an ArrayDataset, got {type(data).__name__}")
    config = config.for_input(tuple(data.input_shape))  # defaults (eps, batch) of the inputs
    g = torch.Generator().manual_seed(config.seed)
    perm = torch.randperm(len(data), generator=g)
    idx = perm[:config.n_samples]
    x, y = data.x[idx], data.y[idx]
    # rows not attacked serve as background data for explainers that take it (LIME, SHAP)
    rest = perm[config.n_samples:]
    background = data.x[rest[:100]] if len(rest) else data.x[perm[:100]]
    k_model = model.num_classes
    if k_model is not None and len(y) and int(y.max()) >= k_model:
        # a subset of the classes (a test split holding classes 0-2 of ten) is valid data
        raise InputError(f"the data has labels up to {int(y.max())}, the model only "
                         f"{k_model} outputs")
    if endpoint:  # no gradients to probe; the clean look is the evaluator's, not a query
        probe = ModelProbe()
        pred = model._evaluate(x)[1].cpu()
    else:
        probe = probe_model(model, x, y, seed=config.seed)
        if probe.randomized or probe.masked:  # every white-box attack adapts: EOT, BPDA
            model = declare(model, non_differentiable=probe.masked, randomized=probe.randomized,
                            eot_samples=probe.eot_samples if probe.randomized else None)
        # the first forward under the seed: the same draw of a randomized model as each
        # attack's own clean pass, so the eps-0 column equals the clean accuracy
        dev = model.device
        with model.evaluating(), seeded(config.seed, dev), torch.no_grad():
            pred = check_outputs(model(x.to(dev)), len(x)).argmax(1).cpu()
    ctx = AuditContext(model=model, data=data, config=config, idx=idx, x=x, y=y, pred=pred,
                       clean_accuracy=float((pred == y).float().mean()), background=background,
                       rest=rest, robust_model=as_model(robust_model) if robust_model is not None
                       else None, probe=probe)
    if probe.randomized:
        accs = torch.tensor(probe.draw_accuracy)
        ctx.notes.append(
            f"The model is randomized (two passes of the same inputs differ): clean accuracy "
            f"{ctx.clean_accuracy:.1%} is this seed's draw; over {len(accs)} draws it is "
            f"{float(accs.mean()):.1%} on average (spread {float(accs.std()):.1%}). Attacks "
            f"average their gradients over {probe.eot_samples} draws (EOT).")
    if probe.masked:
        ctx.notes.append(
            f"The model's input gradients are masked ({probe.zero_gradient_share:.0%} of the "
            "samples have a zero or non-finite gradient): every white-box attack ran with BPDA "
            "(straight-through rounding ops) and a black-box attack was added at every eps.")
    if not data.is_image:
        for name in config.explainers:
            if registry.get(name, "explainer").cls.tags.image_only:
                ctx.notes.append(f"{name} needs images and was skipped on tabular data")
    if endpoint:
        ctx.notes.append(
            f"The model is an endpoint ({model.name}) answering {model.output} to queries: the "
            "audit ran what needs only queries (black-box attacks, perturbation explainers) "
            "and skipped what needs gradients or weights. A resumed audit assumes the model "
            "behind the endpoint did not change.")
        white = [e for e in config.explainers
                 if registry.get(e, "explainer").cls.tags.white_box]
        if white:
            ctx.notes.append(f"explainers {', '.join(white)} need gradients: the model is an "
                             "endpoint (they were skipped)")
    return ctx
