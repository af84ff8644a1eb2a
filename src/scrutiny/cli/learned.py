"""What ``scrutiny learned METHOD`` does for each method of kind ``"learned"``.

Each run takes a :class:`LearnedJob` (the method, model, data and the command's options)
and returns a :class:`LearnedOutput` (arrays, a table, a figure, a record) that the
command prints and writes; :data:`RUNS` maps a method's name to its run, and a method
without one gets :func:`run_generic` (its result's arrays and numbers, no figure).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from rich.markup import escape
from rich.table import Table

from scrutiny.errors import InputError

__all__ = ["LEARNED_IMAGE_ONLY", "LEARNED_OPTIONS", "RUNS", "LearnedJob", "LearnedOutput",
           "as_numpy", "run_generic"]


#: Options of ``scrutiny learned`` that only some methods read (another method refuses them).
LEARNED_OPTIONS: dict[str, tuple[str, ...]] = {
    "--layer": ("activation_maximization", "multifaceted", "dataset_examples"),
    "--unit": ("activation_maximization", "multifaceted", "dataset_examples"),
    "--class": ("activation_maximization",),
    "--n": ("influence", "influence_poisoning", "counterfactual"),
    "--desired": ("counterfactual",),
}
#: The methods of kind "learned" that optimise or show images (a table is refused).
LEARNED_IMAGE_ONLY = ("activation_maximization", "class_prototype", "multifaceted",
                      "dataset_examples", "beta_vae")


@dataclass
class LearnedJob:
    """What one ``scrutiny learned`` run works on: the method, the model (None for a method
    without one), the data the options name (test split; training images for beta_vae), the
    options, and the dataset spec whose training split the method reads."""

    method: Any
    model: Any
    data: Any
    seed: int
    layer: str | None
    unit: int | None
    cls: int | None
    n: int | None
    desired: int | None
    train_spec: str
    factors: Any = None  # the FactorDataset of --data factors

    def train(self) -> Any:
        from scrutiny.data import load

        return load(self.train_spec, split="train")

    def names(self) -> tuple[str, ...]:
        return tuple(self.data.classes)


@dataclass
class LearnedOutput:
    """What a ``learned`` run hands back: the arrays (f.npz), the table printed, the figure
    (PNG bytes, f.png; None where there is no picture to draw), text printed after the table
    and a record written as f.json."""

    arrays: dict[str, Any]
    table: Table
    figure: bytes | None = None
    text: str = ""
    record: dict[str, Any] | None = None


def _image_rows(rows: list[tuple[str, torch.Tensor, list[str]]], title: str,
                signed: set[int] | None = None) -> bytes:
    from scrutiny.audit import figures

    return figures.image_rows(rows, title, signed=signed)[0]


def _outcomes(model: Any, x: torch.Tensor, y: torch.Tensor | None, classes: tuple[str, ...]
              ) -> tuple[torch.Tensor, list[str]]:
    """Predicted classes of ``x`` and the titles ``true -> predicted (confidence%)``."""
    from scrutiny.plot import outcome_title

    with torch.no_grad():
        p = model.logits(x).softmax(1).cpu()
    conf, pred = p.max(1)
    titles = [outcome_title(None if y is None else int(y[i]), int(pred[i]), float(conf[i]),
                            classes) for i in range(len(x))]
    return pred, titles


def _unit(job: LearnedJob) -> tuple[str, int]:
    """``--layer`` (default: the last convolution) and ``--unit`` (default: its most active
    channel on the data), checked against the layer's channels."""
    from scrutiny.explain.cam.gradcam import last_conv
    from scrutiny.explain.gradient.layer import layer_activations

    m = job.model
    layer = job.layer
    if layer is None:
        try:
            layer = last_conv(m)
        except InputError as e:
            raise InputError(f"{m.name} has no Conv2d layer: give --layer, one of: "
                             f"{', '.join(m.layer_names())}") from e
    acts = torch.cat([layer_activations(m, layer, xb.to(m.device)).float().cpu()
                      for xb in job.data.x[:1024].split(256)])
    if acts.dim() < 2:
        raise InputError(f"--layer {layer}: it outputs shape {tuple(acts.shape[1:])}, no units")
    means = acts.flatten(2).mean(2).mean(0) if acts.dim() > 2 else acts.mean(0)
    if job.unit is None:
        return layer, int(means.argmax())
    if not 0 <= job.unit < len(means):
        raise InputError(f"--unit {job.unit} is out of range: layer {layer!r} has {len(means)} "
                         f"channels (0 to {len(means) - 1})")
    return layer, job.unit


def _values(v: torch.Tensor) -> list[str]:
    return [f"{float(a):.2f}" for a in v]


def _learned_activation_maximization(job: LearnedJob) -> LearnedOutput:
    from scrutiny.explain.features import channel, class_logit

    m, ds = job.model, job.data
    if job.cls is not None:
        if job.layer is not None or job.unit is not None:
            raise InputError("give --class (a class's logit) or --layer/--unit (a channel), "
                             "not both")
        if not 0 <= job.cls < ds.num_classes:
            raise InputError(f"--class {job.cls} is out of range: the model has "
                             f"{ds.num_classes} classes (0 to {ds.num_classes - 1})")
        objective = class_logit(job.cls)
    else:
        objective = channel(*_unit(job))
    r = job.method(m, ds, objective=objective, seed=job.seed)
    top = torch.topk(r.data_values, min(len(r.images), len(ds), 8))
    _, pred_titles = _outcomes(m, r.images, None, job.names())
    table = Table("", "objective", title=f"{job.method.name}: {objective!r} on {m.name} / {ds.name}")
    table.add_row("optimised input (best)", f"{float(r.values.max()):.4f}")
    table.add_row("best dataset example", f"{float(r.data_values.max()):.4f}")
    table.add_row("dataset mean", f"{float(r.data_values.mean()):.4f}")
    fig = _image_rows([("optimised", r.images, [f"{float(v):.2f} {t}" for v, t in
                                                 zip(r.values, pred_titles, strict=True)]),
                       ("top examples", ds.x[top.indices], _values(top.values))],
                      f"activation maximisation: {objective!r}")
    return LearnedOutput(
        {"images": r.images, "values": r.values, "trace": r.trace,
         "data_values": r.data_values, "top_indices": top.indices}, table, fig,
        record={"objective": repr(objective)})


def _learned_class_prototype(job: LearnedJob) -> LearnedOutput:
    m, ds = job.model, job.data
    r = job.method(m, ds, seed=job.seed)
    names = job.names()
    pred, titles = _outcomes(m, r.images, r.classes, names)
    table = Table("class", "prediction", "probability of its class", "score",
                  title=f"{job.method.name} on {m.name} / {ds.name}")
    for c, p, q, v in zip(r.classes, pred, r.probabilities, r.values, strict=True):
        table.add_row(names[int(c)], names[int(p)], f"{100 * float(q):.1f}%", f"{float(v):.2f}")
    own = int((pred == r.classes).sum())
    return LearnedOutput(
        {"images": r.images, "classes": r.classes, "predicted": pred, "values": r.values,
         "probabilities": r.probabilities, "trace": r.trace}, table,
        _image_rows([("prototype", r.images, titles)],
                    "class prototypes: class -> prediction (confidence)"),
        text=f"classified as their class: {own} of {len(r.classes)}")


def _learned_multifaceted(job: LearnedJob) -> LearnedOutput:
    from scrutiny.explain.features import channel

    layer, unit = _unit(job)
    objective = channel(layer, unit)
    r = job.method(job.model, job.data, objective=objective, seed=job.seed)
    sizes = torch.bincount(r.labels, minlength=len(r.images))
    table = Table("facet", "top examples", "start (cluster mean)", "facet",
                  title=f"{job.method.name}: {objective!r} on {job.model.name} / {job.data.name}")
    for j in range(len(r.images)):
        table.add_row(str(j), str(int(sizes[j])), f"{float(r.start_values[j]):.3f}",
                      f"{float(r.values[j]):.3f}")
    fig = _image_rows([("start (cluster mean)", r.starts, [f"n={int(s)}" for s in sizes]),
                       ("facet", r.images, _values(r.values))],
                      f"facets of {objective!r}")
    return LearnedOutput(
        {"images": r.images, "starts": r.starts, "values": r.values,
         "start_values": r.start_values, "top_indices": r.top_indices, "labels": r.labels,
         "trace": r.trace}, table, fig, record={"objective": repr(objective)})


def _learned_dataset_examples(job: LearnedJob) -> LearnedOutput:
    layer, unit = _unit(job)
    r = job.method(job.model, job.data, layer=layer, unit=unit, seed=job.seed)
    names, y = job.names(), job.data.y
    table = Table("direction", "top score", "labels of the top examples", "most common label",
                  title=f"{job.method.name}: {layer} unit {unit} on {job.model.name} / "
                  f"{job.data.name}")
    for what, idx, scores in (("unit", r.unit_indices, r.unit_scores),
                              ("random", r.random_indices, r.random_scores)):
        labels = y[idx]
        top = torch.bincount(labels).argmax()
        table.add_row(what, f"{float(scores[0]):.3f}", " ".join(names[int(v)] for v in labels),
                      f"{names[int(top)]} ({int((labels == top).sum())} of {len(labels)})")
    fig = _image_rows([(f"unit {unit}", r.unit_images, _values(r.unit_scores)),
                       ("random direction", r.random_images, _values(r.random_scores))],
                      f"top examples of {layer}: unit {unit} and a random direction")
    return LearnedOutput(
        {"unit_indices": r.unit_indices, "unit_scores": r.unit_scores,
         "unit_images": r.unit_images, "random_indices": r.random_indices,
         "random_scores": r.random_scores, "random_images": r.random_images,
         "direction": r.direction}, table, fig, record={"layer": layer, "unit": unit})


def _learned_influence(job: LearnedJob) -> LearnedOutput:
    from scrutiny.audit import figures

    train, names = job.train(), job.names()
    n = job.n or 4
    x, y = job.data.x[:n], job.data.y[:n]
    meth = job.method.on_last_layer(job.model)
    r = meth(job.model, train, x_test=x, y_test=y, seed=job.seed)
    pred, titles = _outcomes(job.model, x, y, names)
    k = min(4, r.helpful.shape[1])
    table = Table("test", "true -> predicted", "most helpful (label)", "most harmful (label)",
                  "helpful with its label",
                  title=f"{meth.name} on {job.model.name}: {len(train)} training points")
    for i in range(len(x)):
        help_i, harm_i = r.helpful[i], r.harmful[i]
        same = int((train.y[help_i] == y[i]).sum())
        table.add_row(str(i), titles[i],
                      " ".join(f"{int(j)}({names[int(train.y[j])]})" for j in help_i[:k]),
                      " ".join(f"{int(j)}({names[int(train.y[j])]})" for j in harm_i[:k]),
                      f"{same} of {len(help_i)}")
    fig = _image_rows(figures.influence_rows(x, titles, train.x, train.y, r.helpful, r.harmful,
                                             names, k),
                      "influence: each test input, its most helpful and most harmful "
                      "training points") if job.data.is_image else None
    return LearnedOutput(
        {"x_test": x, "y_test": y, "pred": pred, "up_loss": r.up_loss, "helpful": r.helpful,
         "harmful": r.harmful}, table, fig,
        record={"layers": list(meth.layers), "n_train": len(train)})


def _learned_influence_poisoning(job: LearnedJob) -> LearnedOutput:
    train, names = job.train(), job.names()
    n = job.n or 1
    x, y = job.data.x[:n], job.data.y[:n]
    meth = job.method.on_last_layer(job.model)
    r = meth(job.model, train, x_test=x, y_test=y, seed=job.seed)
    before, after = train.x[r.indices], r.poisoned.x[r.indices]
    table = Table("", "value", title=f"{meth.name} on {job.model.name}: {n} target(s), "
                  f"{len(train)} training points")
    table.add_row("training points changed", " ".join(
        f"{int(j)}({names[int(train.y[j])]})" for j in r.indices))
    table.add_row("largest change (linf)",
                  f"{float((after - before).abs().amax()):.4f}" if len(before) else "0")
    table.add_row("predicted rise of the targets' mean loss", f"{r.predicted_increase:.4g}")
    fig = _image_rows([("original", before, [f"{int(j)}: {names[int(train.y[j])]}"
                                             for j in r.indices]),
                       ("poisoned", after, ["" for _ in r.indices]),
                       ("change", after - before, ["" for _ in r.indices])],
                      "influence poisoning: the training points changed", signed={2}) \
        if job.data.is_image and len(before) else None
    return LearnedOutput(
        {"indices": r.indices, "x_original": before, "x_poisoned": after, "x_test": x,
         "y_test": y, "predicted_increase": np.float64(r.predicted_increase)}, table, fig,
        record={"layers": list(meth.layers), "predicted_increase": r.predicted_increase})


def _learned_counterfactual(job: LearnedJob) -> LearnedOutput:
    from scrutiny.explain.surrogate.global_surrogate import feature_names

    train, names, m = job.train(), job.names(), job.model
    n = job.n or 8
    x, y = job.data.x[:n], job.data.y[:n]
    if job.desired is not None and not 0 <= job.desired < job.data.num_classes:
        raise InputError(f"--desired {job.desired} is out of range: the model has "
                         f"{job.data.num_classes} classes (0 to {job.data.num_classes - 1})")
    with torch.no_grad():
        logits = m.logits(x).cpu()
    desired = (logits.topk(2, dim=1).indices[:, 1] if job.desired is None
               else torch.full((len(x),), job.desired, dtype=torch.long))
    r = job.method(m, train, x=x, desired=desired, seed=job.seed)
    pred, titles = _outcomes(m, x, y, names)
    x_cf = r.x_cf.cpu()
    pred_cf, titles_cf = _outcomes(m, x_cf, None, names)
    dist, near = r.distance.cpu(), r.nearest_distance.cpu()
    table = Table("sample", "true -> predicted", "desired", "found", "distance",
                  "nearest training example", "features changed",
                  title=f"{job.method.name} on {m.name} / {job.data.name}")
    for i in range(len(x)):
        table.add_row(str(i), titles[i], names[int(desired[i])],
                      "yes" if bool(r.success[i]) else "no", f"{float(dist[i]):.3f}",
                      f"{float(near[i]):.3f}", str(int(r.changed[i])))
    ok = r.success.cpu()
    ratio = (dist[ok] / near[ok]).median() if bool(ok.any()) else float("nan")
    text = (f"counterfactuals found: {int(ok.sum())} of {len(x)}; median distance / nearest "
            f"training example of the desired class: {float(ratio):.3f}")
    if job.data.is_image:
        fig = _image_rows([("input", x, titles), ("counterfactual", x_cf, titles_cf),
                           ("change", x_cf - x, [f"d={float(d):.2f}" for d in dist])],
                          "counterfactuals: input, the closest input of the desired class, "
                          "the change", signed={2})
    else:
        from scrutiny.audit import figures

        fig = figures.feature_bars({"mean |change|": x_cf - x}, feature_names(job.data),
                                   "counterfactuals: the features changed")[0]
    return LearnedOutput(
        {"x": x, "y": y, "pred": pred, "desired": desired, "x_cf": x_cf, "pred_cf": pred_cf,
         "success": ok, "distance": dist, "nearest_distance": near,
         "changed": r.changed.cpu()}, table, fig, text=text)


def _learned_surrogate(job: LearnedJob) -> LearnedOutput:
    train = job.train()
    r = job.method(job.model, train, seed=job.seed)
    table = Table("", "value", title=f"{job.method.name} of {job.model.name}, fitted on "
                  f"{len(r.train_index)} training points of {train.name}")
    metrics = {"fidelity": r.fidelity, "train_fidelity": r.train_fidelity,
               "accuracy": r.accuracy, "model_accuracy": r.model_accuracy}
    for k, v in (("fidelity (held out)", r.fidelity), ("fidelity (fitted part)",
                 r.train_fidelity), ("surrogate accuracy", r.accuracy),
                 ("model accuracy", r.model_accuracy)):
        table.add_row(k, f"{100 * v:.1f}%")
    table.add_row("held-out rows", str(len(r.test_index)))
    arrays = {"predictions": r.predictions, "train_index": r.train_index,
              "test_index": r.test_index}
    record: dict[str, Any] = {**metrics, "feature_names": list(r.feature_names)}
    if hasattr(r, "text"):
        arrays["importances"] = r.importances
        text = r.text.rstrip()
        record["text"] = r.text
    else:
        arrays.update(coef=r.coef, intercept=r.intercept)
        record["nonzero"] = [list(t) for t in r.nonzero]
        shown = r.nonzero[:20]
        text = f"{len(r.nonzero)} non-zero coefficients" + (
            f" (the {len(shown)} largest; all in the .json)" if len(r.nonzero) > 20 else "") + \
            "".join(f"\n  {c}  {f}  {w:+.4f}" for c, f, w in shown)
    return LearnedOutput(arrays, table, None, text=text, record=record)


def _learned_beta_vae(job: LearnedJob) -> LearnedOutput:
    ds = job.data
    r = job.method(None, ds, seed=job.seed)
    table = Table("latent", "KL (nats)", title=f"{job.method.name} on {ds.name} ({len(ds)} "
                  "images)")
    for j, v in enumerate(r.kl):
        table.add_row(f"z{j}", f"{float(v):.3f}")
    arrays: dict[str, Any] = {"kl": r.kl, "loss": np.asarray(r.history.loss)}
    text = f"active latents (KL > 0.05): {len(r.active())} of {len(r.kl)}"
    record: dict[str, Any] = {"kl": r.kl.tolist()}
    if job.factors is not None:
        fd = job.factors
        mig = r.mig(ds.x, fd.factors, factor_names=fd.factor_names)
        text += f"\nMIG {mig.score:.3f}; per factor (gap, latent): " + ", ".join(
            f"{f} {float(g):.3f} z{j}" for f, g, j in zip(mig.factor_names, mig.gaps,
                                                          mig.latent_of, strict=True))
        arrays.update(mig=np.float64(mig.score), mig_gaps=mig.gaps,
                      mutual_information=mig.mutual_information)
        record["mig"] = mig.score
    values = torch.linspace(-3, 3, 7)
    order = r.kl.argsort(descending=True)
    strips = torch.cat([r.traverse(ds.x[:1], j, values) for j in range(len(r.kl))])
    arrays.update(traversals=strips, traversal_values=values)
    fig = _image_rows([(f"z{int(j)} (KL {float(r.kl[j]):.2f})", strips[int(j)],
                        [f"{float(v):+g}" for v in values]) for j in order],
                      "latent traversals of the first image (latents by KL, largest first)")
    return LearnedOutput(arrays, table, fig, text=text, record=record)


def run_generic(job: LearnedJob) -> LearnedOutput:
    """A method the command has no figure for: called on the data, its arrays and numbers
    saved as they are."""
    import dataclasses

    model = job.model if job.method.needs_model else None
    try:
        r = job.method(model, job.data, seed=job.seed)
    except TypeError as e:
        raise InputError(f"{job.method.name} needs call arguments this command does not give "
                         f"({e}); call it from Python") from e
    table = Table("field", "value", title=f"{job.method.name} on {job.data.name}")
    arrays = {}
    for f in dataclasses.fields(r):
        v = getattr(r, f.name)
        if isinstance(v, torch.Tensor | np.ndarray):
            arrays[f.name] = v
        elif isinstance(v, int | float | str | bool):
            table.add_row(f.name, escape(str(v)))
    return LearnedOutput(arrays, table)


RUNS: dict[str, Callable[[LearnedJob], LearnedOutput]] = {
    "activation_maximization": _learned_activation_maximization,
    "class_prototype": _learned_class_prototype,
    "multifaceted": _learned_multifaceted,
    "dataset_examples": _learned_dataset_examples,
    "influence": _learned_influence,
    "influence_poisoning": _learned_influence_poisoning,
    "counterfactual": _learned_counterfactual,
    "surrogate_tree": _learned_surrogate,
    "surrogate_linear": _learned_surrogate,
    "beta_vae": _learned_beta_vae,
}


def as_numpy(v: Any) -> np.ndarray:
    return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
