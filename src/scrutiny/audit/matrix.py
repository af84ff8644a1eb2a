"""The game-based matrix: every attack against every defense.

Rows are defenses (plus the undefended model), columns attacks; a cell is the
robust accuracy of the defended model under the attack at one threat model.
Attacks run on the defended model itself, so a defense that declares
non-differentiable or randomized preprocessing is attacked adaptively (BPDA,
EOT: the Attack base switches to :func:`scrutiny.defenses.adaptive` on its
own). A detector (a :class:`~scrutiny.defenses.Detector`) is a row of detection rates
instead: the share of each attack's successful adversarial inputs it flags,
with its false-positive rate on the clean inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from scrutiny import registry
from scrutiny.data import ArrayDataset
from scrutiny.defenses.base import Detector
from scrutiny.errors import InputError
from scrutiny.models.wrapper import TorchModel, as_model
from scrutiny.types import ThreatModel


@dataclass
class GameMatrix:
    """Robust accuracy of each defense (row) under each attack (column).

    Attributes
    ----------
    attacks, defenses : list of str
        Column and row names; the first row is ``"none"`` (the undefended model).
    clean : dict of str to float
        Clean accuracy of each row's model (for a detector: of the model it guards).
    cells : dict of str to dict of str to float
        ``cells[defense][attack]``: robust accuracy, or for a detector the detection rate.
    detectors : dict of str to float
        False-positive rate of each detector row on the clean inputs.
    threat : ThreatModel
    skipped : dict of str to str
        Defenses that do not apply to these inputs (e.g. image filters on a
        table), with the reason; they have no row.
    """

    attacks: list[str]
    defenses: list[str]
    clean: dict[str, float]
    cells: dict[str, dict[str, float]]
    detectors: dict[str, float] = field(default_factory=dict)
    threat: ThreatModel | None = None
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"attacks": self.attacks, "defenses": self.defenses, "clean": self.clean,
                "cells": self.cells, "detectors": self.detectors, "skipped": self.skipped,
                "norm": None if self.threat is None else self.threat.norm,
                "eps": None if self.threat is None else self.threat.eps}


def game_matrix(model, x: torch.Tensor, y: torch.Tensor, *, attacks: tuple[str, ...],
                defenses: tuple[str, ...], threat: ThreatModel,
                fit_data: ArrayDataset | tuple[torch.Tensor, torch.Tensor] | None = None,
                params: dict[str, dict[str, Any]] | None = None, seed: int = 0,
                progress=None) -> GameMatrix:
    """Run every attack against every defense at ``threat``.

    Parameters
    ----------
    model : nn.Module or TorchModel
        The undefended classifier.
    x, y : Tensor
        Evaluation inputs and labels.
    attacks, defenses : tuple of str
        Registered names (``"pgd"``, ``"bit_depth"``).
    threat : ThreatModel
    fit_data : ArrayDataset or (x, y), optional
        Data defenses are fitted on (detector calibration, DeepCloak, adversarial
        training); default ``(x, y)``.
    params : dict, optional
        Hyperparameters per method name.
    progress : callable, optional
        Called with a label after each cell (the audit's progress bar).

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> d = load_digits(split="test")
    >>> gm = game_matrix(pretrained("digits-cnn", progress=False), d.x[:32], d.y[:32],
    ...                  attacks=("fgsm",), defenses=("bit_depth",),
    ...                  threat=ThreatModel("linf", 0.1))
    >>> gm.defenses, list(gm.cells["bit_depth"])
    (['none', 'bit_depth'], ['fgsm'])
    """
    params = params or {}
    base: TorchModel = as_model(model, threat.bounds)
    fit_data = fit_data if fit_data is not None else (x, y)
    atk = {a: registry.create(f"attack:{registry.get(a, 'attack').name}", **params.get(a, {}))
           for a in attacks}
    rows: dict[str, Any] = {"none": None}
    for d in defenses:
        name = registry.get(d, "defense").name
        rows[name] = registry.create(f"defense:{name}", **params.get(name, {}))
    clean: dict[str, float] = {}
    cells: dict[str, dict[str, float]] = {}
    detectors: dict[str, float] = {}
    undefended: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name, defense in list(rows.items()):
        is_detector = isinstance(defense, Detector)
        try:
            if is_detector:  # calibrated on clean inputs only
                defense.fit(base, fit_data[0] if isinstance(fit_data, tuple) else fit_data)
            elif defense is not None:
                defense.fit(base, fit_data)
            m = base if defense is None or is_detector else defense.wrap(base)
            with torch.no_grad(), m.evaluating():
                clean[name] = float((m.predict(x) == y).float().mean())
        except InputError as e:  # e.g. an image filter on tabular data
            if defense is None:
                raise
            skipped[name] = str(e)
            del rows[name]
            continue
        if is_detector:
            detectors[name] = float(defense.detect(x).float().mean())
        cells[name] = {}
        for a, attack in atk.items():
            if is_detector:  # the detector sees the undefended model's adversarial inputs
                res = undefended[a]
                hit = res.success & res.clean_correct
                flagged = defense.detect(res.x_adv)
                cells[name][a] = float(flagged[hit].float().mean()) if hit.any() else float("nan")
            else:
                res = attack(m, x, y, threat=threat, seed=seed)
                cells[name][a] = res.robust_accuracy()
                if defense is None:
                    undefended[a] = res
            if progress is not None:
                progress(f"{name} x {a}")
    return GameMatrix(attacks=list(atk), defenses=list(rows), clean=clean, cells=cells,
                      detectors=detectors, threat=threat, skipped=skipped)
