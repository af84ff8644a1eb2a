"""What does the model give away about its training data? Membership inference by loss
threshold on the training and test splits, and gradient leakage of one training input."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from scrutiny import registry
from scrutiny.audit import figures
from scrutiny.audit.context import AuditContext, Figure, SectionResult
from scrutiny.audit.sections.base import Section, register, run_parts
from scrutiny.audit.sections.learned import training_data
from scrutiny.errors import InputError
from scrutiny.models.query import QueryModel

#: The parts of the section, in the order they run (each one step of the progress bar).
PARTS = ("membership_inference", "idlg")
#: iDLG's settings in the audit unless its params say otherwise: 30 L-BFGS iterations (a
#: few seconds on the digits CNN; the method's default 300 take 1-2 minutes there and rebuild
#: a trained model's input no better).
IDLG = {"iterations": 30}


@register
class Privacy(Section):
    """Privacy: what the model and its gradients give away about its training data.

    - **Membership inference** (Yeom et al. 2018): a training point is guessed a member when
      its loss is below the model's average training loss; the membership advantage (true
      positive rate on the training split minus false positive rate on the test split) is
      0 for a model that leaks nothing and grows with overfitting.
    - **Gradient leakage** (iDLG, Zhao et al. 2020, after Zhu et al. 2019): from the
      gradient a federated-learning client would share for one training input, its label
      is read off the last layer and the input is reconstructed by gradient matching; the
      reconstruction's MSE says how much one shared gradient gives away.

    Needs the training split of an embedded dataset (the audited data's); left out
    otherwise. ``--skip privacy`` switches it off; ``-p membership_inference.x=...`` and
    ``-p idlg.iterations=...`` (default here :data:`IDLG`) set the methods' parameters. On a
    trained model a reconstruction rarely succeeds (the gradient of a well-fitted input
    nearly vanishes); the label is recovered exactly.

    On an endpoint (a model only queried) membership inference runs on its answers (a
    loss from its logits or probabilities; every member and nonmember one query, within
    its budget) and iDLG, which needs gradients, is left out with a note; an endpoint
    answering only labels gives no loss, so the section is skipped.
    """

    name = "privacy"
    title = "What does it give away about its training data?"
    nav = "Privacy"
    group = "tampered"
    display = 105
    black_box = True  # membership inference needs only the outputs

    def skip_reason(self, ctx: AuditContext) -> str | None:
        if training_data(ctx) is None:
            return "the training split of this data is not known to the audit"
        if ctx.endpoint and ctx.model.output == "label":
            return "needs scores (a loss): the endpoint answers only labels"
        return None

    def steps(self, ctx: AuditContext) -> int:
        return len(PARTS)

    def run(self, ctx: AuditContext, done: dict[str, SectionResult], bar: Any) -> SectionResult:
        out = SectionResult(self.name)
        train = training_data(ctx)
        out.data = run_parts(self, PARTS, ctx, out, bar, train)
        return out

    def _membership_inference(self, ctx: AuditContext, train: Any, out: SectionResult
                              ) -> dict[str, Any]:
        method = ctx.create("privacy", "membership_inference")
        model: Any = ctx.model
        if ctx.endpoint:  # its answers, each a query, as the scores the loss is read from
            need, left = len(train) + len(ctx.data), ctx.model.remaining
            if left is not None and need > left:
                raise InputError(f"it needs {need} queries (one per member and nonmember), "
                                 f"the endpoint's budget has {left} left")
            model = _Answers(ctx.model)
        r = method(model, train, nonmembers=ctx.data, seed=ctx.seed)
        return {**r.to_dict(), "members": len(train), "nonmembers": len(ctx.data),
                "params": method.get_params()}

    def _idlg(self, ctx: AuditContext, train: Any, out: SectionResult) -> dict[str, Any] | None:
        if ctx.endpoint:
            out.notes.append("gradient leakage (iDLG) was left out: it needs the gradient of "
                             "the loss, and the model is an endpoint that only answers queries")
            return None
        method = registry.create("privacy:idlg", **{**IDLG, **ctx.config.params.get("idlg", {})})
        one = train.subset([0])
        r = method(ctx.model, one, seed=ctx.seed)
        # how far the other training inputs are from it: the scale an MSE is read against
        others = train.x[1:][train.y[1:] != one.y[0]]
        baseline = float(((others - one.x) ** 2).flatten(1).mean(1).median())
        names = ctx.class_names()
        if ctx.data.is_image:
            recovered = [names[int(c)] for c in r.labels]
            out.figures.append(Figure(
                "gradient_leakage", "A training input rebuilt from its gradient",
                "Left: a training input; right: what iDLG rebuilt from the gradient of the loss "
                "on it alone (what a federated-learning client shares), titled by the label "
                "recovered from the last layer's gradient.",
                *figures.image_rows([("training input", one.x, [names[int(one.y[0])]]),
                                     ("rebuilt", r.x.cpu(), recovered)], "gradient leakage")))
        return {**r.to_dict(), "index": 0, "params": method.get_params(),
                "other_inputs_mse": baseline}


class _Answers(nn.Module):
    """An endpoint's answers as the scores of a module: logits as they are, probabilities as
    their logarithm (what the cross-entropy reads: ``log_softmax(log p) = log p``). Each
    input is a query (:meth:`QueryModel.predict`: counted, within the budget)."""

    def __init__(self, endpoint: QueryModel) -> None:
        super().__init__()
        self.endpoint = endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.endpoint.predict(x).float()
        return out if self.endpoint.output == "logits" else out.clamp_min(1e-30).log()
