"""What has the model learned? Class prototypes, dataset examples of units beside a random
direction, the training points behind predictions (influence), the most suspicious training
points (self-influence), interpretable surrogates' fidelity and counterfactuals."""

from __future__ import annotations

from typing import Any

import torch

from scrutiny import registry
from scrutiny.audit import figures
from scrutiny.audit.context import AuditContext, Figure, SectionResult
from scrutiny.audit.sections.base import Section, register, run_parts
from scrutiny.data import EMBEDDED, ArrayDataset, load
from scrutiny.errors import InputError
from scrutiny.plot import outcome_title

#: The parts of the section, in the order they run (each one step of the progress bar).
PARTS = ("class_prototype", "dataset_examples", "influence", "surrogates", "counterfactual")
#: Units of the last convolution shown with their dataset examples.
UNITS = 2
#: Training points shown per test prediction (most helpful, most harmful) and as suspicious.
TOP = 4


def training_data(ctx: AuditContext) -> ArrayDataset | None:
    """The training split of the audited data when it is one of the embedded datasets
    (influence, self-influence and surrogates read it); None otherwise."""
    name = ctx.data.name
    if name not in EMBEDDED:
        return None
    try:
        return load(name, split="train")
    except InputError:
        return None


@register
class Learned(Section):
    """What the model has learned, from the methods of kind ``"learned"``.

    - **Class prototypes** (Simonyan et al. 2014): one optimised input per class, with the
      class the model gives it and its probability.
    - **Dataset examples** (Szegedy et al. 2014): the top test images of the :data:`UNITS`
      most active channels of the last convolution, beside the top images of a random
      direction of the same layer (on the same footing: a random direction often looks
      just as "interpretable").
    - **Influence** (Koh and Liang 2017), with the training split of an embedded dataset:
      for a few audited predictions (the misclassified ones first) the most helpful and
      most harmful training points, and the training points with the highest
      self-influence (the most suspicious: mislabelled or atypical).
    - **Surrogates** (Murdoch et al. 2019): a shallow decision tree and a sparse linear
      model fitted to the model's predictions; their fidelity on held-out data.
    - **Counterfactuals** (Wachter et al. 2017): for the first correctly classified samples,
      the smallest change that moves the prediction to the second most likely class.

    Each method takes its parameters from the audit's ``params`` (``-p
    class_prototype.steps=100``); a part that cannot run here (tabular data for the image
    parts, no training split for influence) is left out with a note. ``--skip learned``
    switches the section off.
    """

    name = "learned"
    title = "What has the model learned?"
    nav = "Learned"
    group = "learned"
    display = 90
    endpoint_needs = "the model's layers and gradients"

    def steps(self, ctx: AuditContext) -> int:
        return len(PARTS)

    def run(self, ctx: AuditContext, done: dict[str, SectionResult], bar: Any) -> SectionResult:
        out = SectionResult(self.name)
        train = training_data(ctx)
        if train is None:
            out.notes.append("the training split of this data is not known to the audit: the "
                             "influence part was left out and the surrogates were fitted on the "
                             "test data's rows not attacked")
        out.data = run_parts(self, PARTS, ctx, out, bar, train)
        return out

    # ------------------------------------------------------------------ parts
    def _class_prototype(self, ctx: AuditContext, train: ArrayDataset | None,
                         out: SectionResult) -> dict[str, Any] | None:
        if not ctx.data.is_image:
            return None
        r = ctx.create("learned", "class_prototype")(ctx.model, ctx.data, seed=ctx.seed)
        names = ctx.class_names()
        titles = [outcome_title(int(c), int(p), float(q), names)
                  for c, p, q in zip(r.classes, r.predicted, r.probabilities, strict=True)]
        out.figures.append(Figure(
            "prototypes", "Class prototypes",
            "One input per class optimised to maximise the class's score (Simonyan et al. 2014), "
            "titled class -> the model's prediction (its probability of the class).",
            *figures.image_rows([("prototype", r.images, titles)], "class prototypes")))
        own = (r.predicted == r.classes)
        return {"classes": len(r.classes), "classified_as_own": int(own.sum()),
                "lowest_probability": float(r.probabilities.min()),
                "score": r.meta.get("score", "logit")}

    def _dataset_examples(self, ctx: AuditContext, train: ArrayDataset | None,
                          out: SectionResult) -> dict[str, Any] | None:
        from scrutiny.explain.cam.gradcam import last_conv
        from scrutiny.explain.gradient.layer import layer_activations

        if not ctx.data.is_image:
            return None
        layer = last_conv(ctx.model)
        with torch.no_grad():
            acts = layer_activations(ctx.model, layer, ctx.data.x.to(ctx.model.device))
        means = acts.flatten(2).mean(2).mean(0) if acts.dim() > 2 else acts.mean(0)
        units = torch.argsort(means, descending=True, stable=True)[:UNITS].tolist()
        method = ctx.create("learned", "dataset_examples")
        rows, shown = [], []
        for u in units:
            r = method(ctx.model, ctx.data, layer=layer, unit=u, seed=ctx.seed + u)
            rows.append((f"unit {u}", r.unit_images, [f"{float(s):.2f}" for s in r.unit_scores]))
            rows.append((f"random {u}", r.random_images,
                         [f"{float(s):.2f}" for s in r.random_scores]))
            shown.append({"unit": u, "unit_indices": r.unit_indices.tolist(),
                          "random_indices": r.random_indices.tolist()})
        out.figures.append(Figure(
            "dataset_examples", f"Dataset examples of {layer}",
            f"The test images that most excite the {len(units)} most active channels of {layer} "
            "(rows 'unit'), each beside the top images along a random direction of the same layer "
            "(rows 'random'; Szegedy et al. 2014): if the random direction's images look as "
            "coherent, a single unit is no better a reading of the layer than any direction. "
            "Titles: the projection score.",
            *figures.image_rows(rows, f"top test images, {layer}")))
        return {"layer": layer, "units": shown}

    def _influence(self, ctx: AuditContext, train: ArrayDataset | None,
                   out: SectionResult) -> dict[str, Any] | None:
        if train is None or "learned:influence" not in registry.list_methods():
            return None
        return influence_part(ctx, train, out)

    def _surrogates(self, ctx: AuditContext, train: ArrayDataset | None,
                    out: SectionResult) -> dict[str, Any] | None:
        fit_on = train if train is not None else ctx.data.subset(ctx.rest) \
            if len(ctx.rest) >= 10 else ctx.data
        rows = {}
        for name in ("surrogate_tree", "surrogate_linear"):
            r = ctx.create("learned", name)(ctx.model, fit_on, seed=ctx.seed)
            rows[name] = {"fidelity": r.fidelity, "train_fidelity": r.train_fidelity,
                          "accuracy": r.accuracy, "model_accuracy": r.model_accuracy,
                          "params": ctx.create("learned", name).get_params()}
            if name == "surrogate_tree":
                rows[name]["text"] = getattr(r, "text", "")
        return {"fitted_on": "training split" if train is not None else "test rows not attacked",
                "samples": len(fit_on), "rows": rows}

    def _counterfactual(self, ctx: AuditContext, train: ArrayDataset | None,
                        out: SectionResult) -> dict[str, Any] | None:
        correct = (ctx.pred == ctx.y).nonzero()[:, 0][:ctx.config.n_examples]
        if not len(correct):
            return None
        x = ctx.x[correct]
        logits = ctx.model.logits(x).cpu()
        desired = logits.topk(2, dim=1).indices[:, 1]
        ref = train if train is not None else ctx.data
        r = ctx.create("learned", "counterfactual")(ctx.model, ref, x=x, desired=desired,
                                                    seed=ctx.seed)
        names = ctx.class_names()
        ratio = (r.distance / r.nearest_distance).tolist()
        if ctx.data.is_image:
            pred_cf = ctx.model.predict(r.x_cf).cpu()
            out.figures.append(Figure(
                "counterfactuals", "Counterfactuals",
                "Top: a correctly classified input; middle: the smallest change (Wachter et al. "
                "2017) that makes the model predict its second most likely class; bottom: the "
                "change (red: brighter). Titles: the distance, as a share of the distance to the "
                "nearest training example of that class.",
                *figures.image_rows(
                    [("input", x, [names[int(c)] for c in ctx.pred[correct]]),
                     ("counterfactual", r.x_cf, [f"-> {names[int(p)]}" for p in pred_cf]),
                     ("change", r.x_cf - x, [f"{q:.2f}" for q in ratio])],
                    "counterfactuals", signed={2})))
        return {"samples": len(correct), "success": int(r.success.sum()),
                "desired": desired.tolist(), "distance": r.distance.tolist(),
                "nearest_distance": r.nearest_distance.tolist(),
                "changed": r.changed.tolist(), "ratio_to_nearest": ratio}


def influence_part(ctx: AuditContext, train: ArrayDataset, out: SectionResult
                   ) -> dict[str, Any] | None:
    """Influence (Koh and Liang 2017) of the training points on a few audited predictions,
    the misclassified ones first, and the training points of highest self-influence.

    Theta is the last linear layer's parameters (the paper's choice for networks) unless
    the audit's ``params`` name ``influence.layers``; the damping is the method's.
    """
    params = {**ctx.config.params.get("influence", {}), "top_k": TOP}
    method = registry.create("learned:influence", **params).on_last_layer(ctx.model)
    wrong = (ctx.pred != ctx.y).nonzero()[:, 0].tolist()
    right = (ctx.pred == ctx.y).nonzero()[:, 0].tolist()
    k = ctx.config.n_examples
    picked = (wrong[:max(k // 2, k - len(right))] + right)[:k]
    idx = torch.tensor(picked, dtype=torch.long)
    r = method(ctx.model, train, x_test=ctx.x[idx], y_test=ctx.y[idx], self_influence=True,
               seed=ctx.seed)
    names = ctx.class_names()
    n = len(train)
    if ctx.data.is_image:
        rows = figures.influence_rows(
            ctx.x[idx], [f"#{i}: {names[int(ctx.y[i])]} -> {names[int(ctx.pred[i])]}"
                         for i in picked], train.x, train.y, r.helpful, r.harmful, names, TOP)
        out.figures.append(Figure(
            "influence", "Training points behind predictions",
            f"Each row: an audited test sample (misclassified ones first; title: true -> "
            f"predicted), then the {TOP} training images whose removal would raise its loss most "
            f"(helps) and the {TOP} whose removal would lower it most (hurts), by influence "
            "functions on the last layer (Koh and Liang 2017); titles: the training labels.",
            *figures.image_rows(rows, "influence on test predictions")))
        top = torch.argsort(r.self_influence, stable=True)[:2 * TOP]  # most negative first
        out.figures.append(Figure(
            "self_influence", "Most suspicious training points",
            f"The {len(top)} training images of highest self-influence: the points the model "
            "leans on most to fit themselves, where mislabelled and atypical examples gather. "
            "Titles: their labels -> the model's prediction.",
            *figures.image_rows([("self-influence", train.x[top],
                                  [f"{names[int(train.y[t])]} -> "
                                   f"{names[int(p)]}" for t, p in
                                   zip(top, ctx.model.predict(train.x[top]).cpu(), strict=True)])],
                                "highest self-influence")))
    else:
        top = torch.argsort(r.self_influence, stable=True)[:2 * TOP]
    return {"test_samples": picked, "misclassified": [i in wrong for i in picked],
            "helpful": r.helpful.tolist(), "harmful": r.harmful.tolist(),
            "suspicious": top.tolist(), "layers": list(method.layers), "n_train": n,
            "caption": "Influence: I_up,loss (Koh and Liang 2017) with theta the parameters of "
                       f"{', '.join(method.layers)}; removing a training point changes a test "
                       f"loss by about -I/n (n = {n})."}
