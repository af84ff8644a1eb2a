"""What the audit runs: :class:`AuditConfig` and the default radii per norm."""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from scrutiny import registry
from scrutiny.errors import InputError
from scrutiny.types import NORMS

DEFAULT_EPS: dict[str, tuple[float, ...]] = {
    "linf": (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3),
    "l2": (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0),
    "l1": (0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 12.0),
}


@dataclass(frozen=True)
class InputDefaults:
    """The audit's defaults for one kind of input (:func:`input_defaults`).

    Attributes
    ----------
    kind : str
        ``"small"`` (tables, grey images up to 64x64: digits, MNIST), ``"colour"``
        (colour images up to 64x64: CIFAR-10) or ``"large"`` (a side above 64:
        ImageNet's 224x224x3).
    eps : dict of str to tuple of float
        The robustness curve's radii per norm, in input units (pixels in ``[0, 1]``).
    reference_eps : dict of str to float
        The headline eps per norm; absent: the middle nonzero eps.
    batch_size : int or None
        The cap on the batch of the methods that take a ``batch_size``
        (:attr:`AuditConfig.batch_size`); None keeps each method's own default.
    """

    kind: str
    eps: dict[str, tuple[float, ...]]
    reference_eps: dict[str, float]
    batch_size: int | None


#: The defaults per kind of input. The colour grid holds the usual CIFAR-10 radii
#: (linf 8/255, l2 0.5, l1 12: RobustBench; Croce & Hein 2021 for l1), the large one
#: ImageNet's (linf 4/255; l2 3.0 as in Engstrom et al.'s robustness library).
INPUT_DEFAULTS: dict[str, InputDefaults] = {
    "small": InputDefaults("small", DEFAULT_EPS, {}, None),
    "colour": InputDefaults("colour", {
        "linf": tuple(k / 255 for k in (0, 1, 2, 4, 8, 12, 16)),
        "l2": (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5),
        "l1": (0.0, 1.0, 2.0, 4.0, 8.0, 12.0, 16.0),
    }, {"linf": 8 / 255, "l2": 0.5, "l1": 12.0}, 128),
    "large": InputDefaults("large", {
        "linf": tuple(k / 255 for k in (0, 0.5, 1, 2, 4, 8)),
        "l2": (0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0),
        "l1": (0.0, 5.0, 15.0, 30.0, 60.0, 120.0),
    }, {"linf": 4 / 255, "l2": 3.0, "l1": 60.0}, 16),
}


def input_defaults(input_shape: tuple[int, ...]) -> InputDefaults:
    """The audit's defaults for inputs of ``input_shape`` (one input: ``(C, H, W)`` or ``(F,)``).

    A side above 64 is ``"large"`` (224x224x3), else more than one channel is
    ``"colour"`` (32x32x3), else ``"small"`` (8x8 or 28x28 grey, tables).

    Examples
    --------
    >>> [input_defaults(s).kind for s in [(1, 8, 8), (30,), (3, 32, 32), (3, 224, 224)]]
    ['small', 'small', 'colour', 'large']
    >>> round(input_defaults((3, 32, 32)).reference_eps["linf"] * 255, 6)
    8.0
    """
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise InputError(f"input_shape must be positive sizes, got {input_shape!r}")
    if len(shape) == 3 and max(shape[1:]) > 64:
        return INPUT_DEFAULTS["large"]
    if len(shape) == 3 and shape[0] > 1:
        return INPUT_DEFAULTS["colour"]
    return INPUT_DEFAULTS["small"]


@dataclass
class AuditConfig:
    """What the audit runs.

    Parameters
    ----------
    attacks, explainers : tuple of str
        Registered names (``"pgd"`` or ``"attack:pgd"``); the attacks draw the
        robustness curve.
    headline_attack : str, optional
        A (strong, slower) attack run once at ``reference_eps`` on the samples
        the curve's attacks left robust; default the AutoAttack-style
        ``worst_case`` ensemble. Its result enters the headline number.
    norm : {"linf", "l2", "l1"}
    eps : tuple of float, optional
        Radii of the robustness curve, in input units; default chosen from the
        input shape when the audit starts (:func:`input_defaults`, :meth:`for_input`;
        before that :data:`DEFAULT_EPS` of the norm).
    reference_eps : float, optional
        The eps of the headline number and the example figures; default the
        input kind's reference (8/255 for 32x32 colour images in linf), else the
        middle of ``eps``.
    n_samples : int
        Test samples attacked.
    n_examples : int
        Samples shown in the example and explanation figures.
    params : dict
        Per-method hyperparameters, ``{"pgd": {"steps": 100}}``.
    seed : int
        Seeds every stochastic step.
    metrics : tuple of str
        Trust measures (``metric:<name>``) computed for every explainer on the
        first ``trust_samples`` samples; shown in the gallery and its table.
        ``pointing_game`` needs data with ground-truth masks (``synthetic``).
    trust_samples : int
        Samples the trust measures use.
    defenses : tuple of str
        Defenses of the game matrix: each attack of ``attacks`` against each
        defense at ``reference_eps`` (adaptive attacks where a defense declares
        non-differentiable or randomized preprocessing; detectors as detection
        rates), fitted on test rows that are not attacked.
    query_attacks : tuple of str
        Black-box attacks run on every sample at ``reference_eps`` through a
        query-only view of the model; the report plots their success rate
        against the number of queries (default budget 1000 per sample unless
        ``params`` say otherwise).
    certifier : str, optional
        Certifier (``ibp``, ``crown``; ``smoothing`` for l2) run on the first
        ``cert_samples`` samples at the smallest nonzero eps and at
        ``reference_eps``; its certified accuracy is compared with the attacks'
        robust accuracy on the same samples (a certificate above it is a bug).
    cert_samples : int
        Samples certified.
    certify_seconds : float
        The certification section's time budget on top of ``certifier``'s run: for
        stronger certifiers (``crown`` < ``alpha_crown`` < ``beta_crown``, those
        registered) on the samples ``certifier`` left uncertified that no attack
        broke; the strongest whose cost, timed on a probe, fits runs
        (:class:`scrutiny.audit.sections.certification.Certification`). Which ones
        run depends on the machine's speed; 0: ``certifier`` alone.
    checks : bool
        Run the gradient-masking checks (:mod:`scrutiny.audit.checks`) at
        ``reference_eps``.
    black_box : str, optional
        Black-box attack of the "black-box beats white-box" check, run on the
        samples every white-box attack left robust (skipped when not registered).
    compare_samples : int
        Samples (the first audited ones) on which the comparison section evaluates
        the ``--robust-model`` (all audited samples when there are fewer); the
        audited model's numbers beside it are read on the same samples.
    explore_samples : int
        Samples (in the example figures' order: correctly classified ones the worst
        case broke first) the report's sample explorer holds: their clean and
        adversarial inputs, predictions, every explainer's maps and certificates.
    sections : tuple of str, optional
        The report sections to run (:data:`scrutiny.audit.sections.SECTIONS`);
        default all. The sections a chosen one needs are run too.
    skip : tuple of str
        Sections not to run (an error if a chosen section needs one of them).
    batch_size : int, optional
        The most samples (or perturbed copies) per forward pass of every method the
        audit creates that takes a ``batch_size`` (explainers, trust metrics,
        certifiers, ...): a method whose own default is larger runs at this one,
        unless ``params`` set it. Default chosen from the input shape
        (:func:`input_defaults`: none for small inputs, 128 for 32x32 colour, 16 for
        224x224).
    """

    attacks: tuple[str, ...] = ("fgsm", "pgd")
    headline_attack: str | None = "worst_case"
    explainers: tuple[str, ...] = ("saliency", "integrated_gradients", "grad_cam")
    norm: str = "linf"
    eps: tuple[float, ...] | None = None
    reference_eps: float | None = None
    n_samples: int = 500
    n_examples: int = 6
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed: int = 0
    metrics: tuple[str, ...] = ("deletion", "insertion", "model_randomization")
    trust_samples: int = 32
    defenses: tuple[str, ...] = ("bit_depth", "median_filter", "feature_squeezing")
    query_attacks: tuple[str, ...] = ("square",)
    certifier: str | None = "crown"
    cert_samples: int = 32
    certify_seconds: float = 15.0
    checks: bool = True
    black_box: str | None = "square"
    compare_samples: int = 100
    explore_samples: int = 24
    sections: tuple[str, ...] | None = None
    skip: tuple[str, ...] = ()
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise InputError(f"unknown norm {self.norm!r}; accepted: {', '.join(NORMS)}")
        # which settings were left to the defaults (:meth:`for_input` chooses them)
        self._defaulted = {k for k in ("eps", "reference_eps", "batch_size")
                           if getattr(self, k) is None}
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not
                                            isinstance(self.batch_size, int)
                                            or self.batch_size < 1):
            raise InputError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        self.eps = tuple(sorted(float(e) for e in (self.eps or DEFAULT_EPS[self.norm])))
        if any(not math.isfinite(e) or e < 0 for e in self.eps):
            raise InputError(f"eps must be finite and >= 0, got {self.eps}")
        if self.reference_eps is None:
            nz = [e for e in self.eps if e > 0] or list(self.eps)
            self.reference_eps = nz[(len(nz) - 1) // 2]
        self.reference_eps = float(self.reference_eps)
        if self.reference_eps not in self.eps:
            self.eps = tuple(sorted((*self.eps, self.reference_eps)))
        if self.n_samples < 1 or self.n_examples < 1:
            raise InputError("n_samples and n_examples must be >= 1")
        self.attacks = tuple(registry.get(a, "attack").name for a in self.attacks)
        if self.headline_attack:
            self.headline_attack = registry.get(self.headline_attack, "attack").name
        self.explainers = tuple(registry.get(e, "explainer").name for e in self.explainers)
        self.metrics = tuple(registry.get(m, "metric").name for m in self.metrics)
        self.defenses = tuple(registry.get(d, "defense").name for d in self.defenses)
        self.query_attacks = tuple(registry.get(a, "attack").name for a in self.query_attacks)
        if self.certifier:
            self.certifier = registry.get(self.certifier, "certifier").name
        if self.cert_samples < 1:
            raise InputError("cert_samples must be >= 1")
        if isinstance(self.certify_seconds, bool) or not (
                isinstance(self.certify_seconds, int | float)
                and math.isfinite(self.certify_seconds) and self.certify_seconds >= 0):
            raise InputError(f"certify_seconds must be a finite number >= 0, got "
                             f"{self.certify_seconds!r}")
        if self.trust_samples < 1:
            raise InputError("trust_samples must be >= 1")
        if self.compare_samples < 1:
            raise InputError(f"compare_samples must be >= 1, got {self.compare_samples}")
        if self.explore_samples < 1:
            raise InputError(f"explore_samples must be >= 1, got {self.explore_samples}")
        known = (set(self.attacks) | set(self.explainers) | set(self.metrics) | set(self.defenses)
                 | set(self.query_attacks)
                 | {self.headline_attack, self.black_box, self.certifier}
                 # the stronger certifiers the certification section may run
                 | {"ibp", "crown", "alpha_crown", "beta_crown"}
                 # the "learned" section runs every method of that kind
                 | {spec.split(":", 1)[1] for spec in registry.list_methods("learned")}
                 # the "backdoor" and "privacy" sections
                 | {"k_arm", "neural_cleanse", "membership_inference", "idlg"})
        for k in self.params:
            if k not in known:
                raise InputError(f"params for {k!r}, which the audit does not run; it runs: "
                                 + ", ".join(sorted(known)))
        if self.sections is not None:  # names are checked by scrutiny.audit.sections.resolve
            self.sections = tuple(self.sections)
        self.skip = tuple(self.skip)

    def for_input(self, input_shape: tuple[int, ...]) -> AuditConfig:
        """This configuration with the settings left to their defaults (``eps``,
        ``reference_eps``, ``batch_size``) chosen for inputs of ``input_shape``
        (:func:`input_defaults`); the audit calls it on its data. Settings given
        stay; a configuration with none left to the defaults is returned as is.

        Examples
        --------
        >>> cfg = AuditConfig().for_input((3, 32, 32))
        >>> round(cfg.reference_eps * 255, 6), round(max(cfg.eps) * 255, 6), cfg.batch_size
        (8.0, 16.0, 128)
        >>> AuditConfig(eps=(0.0, 0.1)).for_input((3, 32, 32)).eps  # given: kept
        (0.0, 0.1)
        """
        if not self._defaulted:
            return self
        d = input_defaults(input_shape)
        chosen: dict[str, Any] = {"eps": self.eps, "reference_eps": self.reference_eps,
                                  "batch_size": self.batch_size}
        if "eps" in self._defaulted:
            chosen["eps"] = d.eps[self.norm]
            if "reference_eps" in self._defaulted:
                chosen["reference_eps"] = d.reference_eps.get(self.norm)
        elif "reference_eps" in self._defaulted:
            chosen["reference_eps"] = None  # the middle of the eps given
        if "batch_size" in self._defaulted:
            chosen["batch_size"] = d.batch_size
        out = replace(self, **chosen)
        out._defaulted = set()
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "the configuration",
                  extra: tuple[str, ...] = ()) -> tuple[AuditConfig, dict[str, Any]]:
        """The configuration ``values`` give (a TOML file's tables), and the ``extra`` keys.

        Lists become tuples, ``""`` (TOML has no null) is None for ``headline_attack``,
        ``certifier`` and ``black_box``; a key that is neither a field nor in ``extra``,
        or a value of the wrong type, is an :class:`~scrutiny.errors.InputError` naming it
        and ``source``. Returns the configuration and the ``extra`` values given.
        """
        values = config_values(values, source, extra)
        rest = {k: values.pop(k) for k in list(values) if k in extra}
        return cls(**values), rest

    @classmethod
    def from_toml(cls, path: str | Path, extra: tuple[str, ...] = ()
                  ) -> tuple[AuditConfig, dict[str, Any]]:
        """The configuration a TOML file holds (:meth:`from_dict` of its tables).

        Examples
        --------
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = Path(d) / "audit.toml"
        ...     _ = path.write_text('eps = [0, 0.1]\\nn_samples = 64\\n[params.pgd]\\nsteps = 10\\n')
        ...     cfg, _ = AuditConfig.from_toml(path)
        ...     again, _ = AuditConfig.from_dict(tomllib.loads(cfg.to_toml()))
        >>> cfg.eps, cfg.reference_eps, cfg.params, again == cfg
        ((0.0, 0.1), 0.1, {'pgd': {'steps': 10}}, True)
        """
        return cls.from_dict(read_toml(path), f"config file {path}", extra)

    def to_toml(self, extra: dict[str, Any] | None = None) -> str:
        """The resolved configuration as a TOML file :meth:`from_toml` reads back: every
        field (``eps`` and ``reference_eps`` as resolved), ``extra`` keys first (the CLI's
        model and data), ``params`` as one ``[params.<method>]`` table per method.
        None values are left out (the field's default None, or ``""`` where None is
        not the default); parameters whose value is None cannot be written (TOML has
        no null): :func:`toml_unwritable` lists them."""
        lines = ["# scrutiny audit configuration: scrutiny audit --config THIS_FILE",
                 "# (command-line options override what this file sets)"]
        for k, v in (extra or {}).items():
            if v is not None:
                lines.append(f"{k} = {_toml(v)}")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "params":
                continue
            if v is None:
                if f.default is not None:  # a None that is not the default: "" means none
                    lines.append(f'{f.name} = ""')
                continue
            lines.append(f"{f.name} = {_toml(v)}")
        for method, ps in sorted(self.params.items()):
            lines += ["", f"[params.{_toml_key(method)}]"]
            lines += [f"{_toml_key(k)} = {_toml(v)}" for k, v in ps.items() if v is not None]
        return "\n".join(lines) + "\n"

    def fingerprint(self) -> str:
        """The configuration as canonical JSON (part of every section's cache key); which
        sections run does not change a section's numbers, so it is left out."""
        fields = {k: v for k, v in asdict(self).items() if k not in ("sections", "skip")}
        return json.dumps(fields, sort_keys=True, default=str)


#: Fields whose None is written ``""`` in a TOML file.
_NONE_AS_EMPTY = ("headline_attack", "certifier", "black_box")
_TUPLES = ("attacks", "explainers", "eps", "metrics", "defenses", "query_attacks", "sections",
           "skip")


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file's tables; a missing file or bad TOML is an :class:`InputError` naming it."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as e:
        raise InputError(f"config file {path} cannot be read: {e.strerror or e}") from e
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"config file {path} is not valid TOML: {e}") from e


def config_values(values: dict[str, Any], source: str = "the configuration",
                  extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """``values`` checked against :class:`AuditConfig`'s fields (and ``extra`` keys) and
    converted to their types: lists as tuples, ``""`` as None where None means none."""
    types = {f.name: f for f in fields(AuditConfig)}
    unknown = [k for k in values if k not in types and k not in extra]
    if unknown:
        raise InputError(f"{source}: unknown key {', '.join(map(repr, unknown))}; accepted: "
                         + ", ".join([*types, *extra]))
    out: dict[str, Any] = {}
    for k, v in values.items():
        if k in extra:
            out[k] = v
            continue
        if k in _NONE_AS_EMPTY and v == "":
            v = None
        elif k in _TUPLES:
            if isinstance(v, str):  # "fgsm,pgd" as on the command line
                v = [s.strip() for s in v.split(",") if s.strip()]
            want = (int, float) if k == "eps" else str
            if not isinstance(v, list | tuple) or any(
                    isinstance(e, bool) or not isinstance(e, want) for e in v):
                raise InputError(f"{source}: {k} must be a list of "
                                 f"{'numbers' if k == 'eps' else 'names'}, got {v!r}")
            v = tuple(v)
        elif k == "params":
            if not isinstance(v, dict) or any(not isinstance(p, dict) for p in v.values()):
                raise InputError(f"{source}: params must be one table per method "
                                 f"([params.pgd] steps = 100), got {v!r}")
            v = {m: dict(p) for m, p in v.items()}
        else:
            default = types[k].default
            want = type(default) if default is not None else {
                "reference_eps": float, "batch_size": int}.get(k, str)
            ok = (isinstance(v, (int, float) if want is float else want)
                  and (want is bool or not isinstance(v, bool)))
            if v is not None and not ok:
                raise InputError(f"{source}: {k} must be {want.__name__}, got {v!r}")
        out[k] = v
    return out


def toml_unwritable(params: dict[str, dict[str, Any]]) -> list[str]:
    """``method.name`` of every parameter :meth:`AuditConfig.to_toml` cannot write (None)."""
    return [f"{m}.{k}" for m, ps in params.items() for k, v in ps.items() if v is None]


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _toml(v: Any) -> str:
    """One TOML value: strings, booleans, numbers, arrays and inline tables."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        if isinstance(v, float) and not math.isfinite(v):
            return "inf" if v > 0 else ("-inf" if v < 0 else "nan")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml(e) for e in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(str(k))} = {_toml(e)}" for k, e in v.items()
                               if e is not None) + "}"
    raise InputError(f"{v!r} ({type(v).__name__}) cannot be written to a TOML file")
