"""What ``scrutiny poison``, ``scrutiny scan`` and ``scrutiny privacy`` do for each method of
the kinds ``"poisoning"``, ``"backdoor_scan"`` and ``"privacy"``: how the method is called
from the command's options, the figure drawn from its result and the record written.

Each command writes a folder: ``result.json`` (the method, its settings, the seed, the
numbers of the result's ``to_dict()``), ``figure.png`` where there is a picture, and for
``poison`` the victim's weights (``victim.safetensors``, loadable by ``--model`` of every
command) and the poisoned training set (``poisoned.npz``: ``x``, ``y``, ``classes`` and the
indices of the poison points, ``poisoned``; loadable by ``--data``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.markup import escape
from rich.table import Table

from scrutiny.errors import InputError

__all__ = ["CALLS", "FIGURES", "PATCH_TRIGGER", "PRETRAINED_VICTIM", "Job", "call_training",
           "figure_of", "numbers_table", "poison_defaults", "write_record"]

#: Poisoning attacks whose victim starts from the trained zoo model (feature collision
#: fine-tunes its last layer; DBA attacks a federated model that has converged, as in the
#: paper); the others train the zoo architecture from scratch on the poisoned data.
PRETRAINED_VICTIM = ("feature_collision", "dba")

#: Poisoning attacks with a BadNets patch trigger, sized to the image by ``scrutiny poison``.
PATCH_TRIGGER = ("badnets", "backdoor_embedding")


def poison_defaults(name: str, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """The parameters ``scrutiny poison`` gives the attack ``name`` on inputs of
    ``input_shape`` unless ``-p`` sets them.

    A patch trigger's side is a seventh of the image's, at least 2 pixels: Neural Cleanse's
    4x4 patch on 28x28 MNIST (Wang et al. 2019), 2x2 on the 8x8 digits. The library's
    default 3x3 covers 14% of an 8x8 digit, as much as the smallest trigger a clean model
    already has for some label (docs/poisoning.md): a model scan cannot tell such a
    backdoor from the data's own shortcuts, and a backdoor is meant to be a small trigger.

    Examples
    --------
    >>> poison_defaults("badnets", (1, 8, 8)), poison_defaults("badnets", (1, 28, 28))
    ({'size': 2}, {'size': 4})
    >>> poison_defaults("dba", (1, 8, 8))
    {}
    """
    if name in PATCH_TRIGGER and len(input_shape) == 3:
        return {"size": max(2, round(min(input_shape[1:]) / 7))}
    return {}


@dataclass
class Job:
    """What one run works on: the method, the model (None for a method without one), the
    training and test data, the seed and the command's extra options."""

    method: Any
    model: Any
    train: Any
    test: Any
    seed: int
    options: dict[str, Any] = field(default_factory=dict)

    def names(self) -> tuple[str, ...]:
        return tuple(self.test.classes if self.test is not None else self.train.classes)


def _image_rows(rows: list[tuple[str, torch.Tensor, list[str]]], title: str,
                signed: set[int] | None = None) -> bytes:
    from scrutiny.audit import figures

    return figures.image_rows(rows, title, signed=signed)[0]


# ------------------------------------------------------------------ the calls
def call_training(job: Job) -> Any:
    """A poisoning attack that trains its victim: on the training split, measured on the test
    split."""
    return job.method(job.model, job.train, test=job.test, seed=job.seed)


def _call_scan(job: Job) -> Any:
    return job.method(job.model, job.train, seed=job.seed)


def _call_collision(job: Job) -> Any:
    """Feature collision against the test sample ``--target`` (default 0)."""
    return job.method(job.model, job.train, test=job.test, target=job.options.get("target", 0),
                      seed=job.seed)


def _call_svm(job: Job) -> Any:
    """SVM poisoning: the attacker's validation set is the first half of the test split, the
    second half measures the test error."""
    half = len(job.test) // 2
    return job.method(None, job.train, validation=job.test.subset(range(half)),
                      test=job.test.subset(range(half, len(job.test))), seed=job.seed)


def _call_privacy(job: Job) -> Any:
    """Gradient leakage of the client batch ``--index .. --index + --batch - 1`` of the training
    split; membership inference of the training split against the test split."""
    if job.method.name == "membership_inference":
        return job.method(job.model, job.train, nonmembers=job.test, seed=job.seed)
    i, b = job.options["index"], job.options["batch"]
    return job.method(job.model, job.train.subset(range(i, i + b)), seed=job.seed)


#: How each method is called from a Job (a method not listed: ``method(model, train, seed=)``).
CALLS: dict[str, Callable[[Job], Any]] = {
    "badnets": call_training,
    "backdoor_embedding": call_training,
    "dba": call_training,
    "feature_collision": _call_collision,
    "svm_poisoning": _call_svm,
    "dlg": _call_privacy,
    "idlg": _call_privacy,
    "membership_inference": _call_privacy,
}


# ------------------------------------------------------------------ the figures
def _figure_backdoor(job: Job, r: Any) -> bytes | None:
    """Clean test inputs of other labels, the same with the trigger, the victim's predictions."""
    if r.trigger is None or r.model is None or not job.test.is_image:
        return None
    from scrutiny.models import as_model

    keep = torch.ones(len(job.test), dtype=torch.bool) if r.target is None \
        else job.test.y != r.target
    x = job.test.x[keep][:8]
    names = job.names()
    vm = as_model(r.model)
    clean = vm.predict(x).cpu()
    stamped = r.trigger.apply(x)
    pred = vm.predict(stamped).cpu()
    return _image_rows([("clean", x, [names[int(p)] for p in clean]),
                        ("triggered", stamped, [names[int(p)] for p in pred])],
                       f"{job.method.name}: the victim's predictions")


def _figure_collision(job: Job, r: Any) -> bytes | None:
    """The target, the first bases (watermarked) and their poisons, with labels."""
    if not job.test.is_image or r.poisons is None:
        return None
    names = job.names()
    k = min(6, len(r.poisons))
    base = job.train.x[r.base_indices[:k]]
    return _image_rows(
        [("target", r.target_x.reshape(1, *job.test.x.shape[1:]),
          [f"{names[r.target_label]} -> {names[r.prediction_after]}"]),
         ("base", base, [names[int(c)] for c in job.train.y[r.base_indices[:k]]]),
         ("poison", r.poisons[:k], [names[int(c)] for c in r.poison_labels[:k]])],
        "feature collision: target (true -> after fine-tuning), bases, poisons (their labels)")


def _figure_svm(job: Job, r: Any) -> bytes | None:
    """Validation error and hinge loss against the attack's iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), layout="constrained")
    steps = range(len(r.validation_error))
    ax.plot(steps, [100 * e for e in r.validation_error], label="validation error (%)")
    ax2 = ax.twinx()
    ax2.plot(steps, r.hinge_loss, color="tab:red", label="hinge loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation error (%)")
    ax2.set_ylabel("mean hinge loss", color="tab:red")
    ax.set_title("SVM poisoning (Biggio et al. 2012)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _figure_scan(job: Job, r: Any) -> bytes | None:
    """Neural Cleanse (and K-Arm, its first stage): every label's reversed trigger (mask x
    pattern) and mask; a training-set scan: the most suspicious training points."""
    names = job.names()
    if hasattr(r, "triggers"):
        if not r.triggers:
            return None
        flagged = set(r.flagged)
        return _image_rows(
            [("mask x pattern", torch.stack([t.mask * t.pattern for t in r.triggers]),
              [f"{names[k]}: {float(n):.1f}" for k, n in zip(r.labels, r.norms, strict=True)]),
             ("mask", torch.stack([t.mask.expand_as(t.pattern) for t in r.triggers]),
              [f"AI {float(a):.1f}" + (" !" if k in flagged else "")
               for k, a in zip(r.labels, r.anomaly_index, strict=True)])],
            "reversed triggers (title: label: mask L1; anomaly index, ! flagged)")
    if not len(r.suspicious) or not job.train.is_image:
        return None
    idx = r.suspicious[:12]
    return _image_rows([("flagged", job.train.x[idx], [names[int(c)] for c in job.train.y[idx]])],
                       f"{job.method.name}: flagged training points (their labels)")


def _figure_leakage(job: Job, r: Any) -> bytes | None:
    if job.method.name == "membership_inference" or not job.train.is_image:
        return None
    names = job.names()
    i, b = job.options["index"], job.options["batch"]
    real = job.train.subset(range(i, i + b))
    mse = [f"MSE {float(m):.3f}" for m in r.mse] if r.mse is not None else [""] * b
    return _image_rows([("training input", real.x, [names[int(c)] for c in real.y]),
                        ("rebuilt", r.x.cpu(), [f"{names[int(c)]}, {m}" for c, m in
                                                zip(r.labels, mse, strict=False)])],
                       f"{job.method.name}: inputs rebuilt from the shared gradient")


#: The figure of each method's result (a method not listed gets none).
FIGURES: dict[str, Callable[[Job, Any], bytes | None]] = {
    "badnets": _figure_backdoor,
    "backdoor_embedding": _figure_backdoor,
    "dba": _figure_backdoor,
    "feature_collision": _figure_collision,
    "svm_poisoning": _figure_svm,
    "neural_cleanse": _figure_scan,
    "k_arm": _figure_scan,
    "activation_clustering": _figure_scan,
    "spectral_signatures": _figure_scan,
    "dlg": _figure_leakage,
    "idlg": _figure_leakage,
}


def figure_of(job: Job, result: Any) -> bytes | None:
    fn = FIGURES.get(job.method.name)
    return fn(job, result) if fn is not None else None


# ------------------------------------------------------------------ output
def numbers_table(numbers: dict[str, Any], title: str) -> Table:
    """The scalar numbers of a record as a two-column table (lists shown when short)."""
    table = Table("result", "value", title=title)
    for k, v in numbers.items():
        if isinstance(v, bool) or v is None or isinstance(v, int | str):
            table.add_row(k, escape(str(v)))
        elif isinstance(v, float):
            table.add_row(k, f"{v:.4f}")
        elif isinstance(v, list | tuple) and len(v) <= 12 and all(
                isinstance(a, int | float | str) for a in v):
            table.add_row(k, escape(", ".join(f"{a:.3g}" if isinstance(a, float) else str(a)
                                              for a in v)))
    return table


def write_record(folder: Path, record: dict[str, Any]) -> Path:
    """``folder/result.json`` (numbers only: tensors become lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, torch.Tensor | np.ndarray):
            return v.tolist()
        raise TypeError(f"not JSON: {type(v).__name__}")

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "result.json"
    path.write_text(json.dumps(record, indent=1, default=plain) + "\n", encoding="utf-8")
    return path


def check_out_folder(folder: Path) -> Path:
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--out must be a folder, {folder} is a file")
    return folder
