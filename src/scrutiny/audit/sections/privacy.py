"""What does the model give away about its training data? Membership inference by loss
threshold on the training and test splits, and gradient leakage of one training input."""

from __future__ import annotations

from typing import Any

from scrutiny import registry
from scrutiny.audit import figures
from scrutiny.audit.context import AuditContext, Figure, SectionResult
from scrutiny.audit.sections.base import Section, register, run_parts
from scrutiny.audit.sections.learned import training_data

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
    """

    name = "privacy"
    title = "What does it give away about its training data?"
    nav = "Privacy"
    group = "tampered"
    display = 105

    def skip_reason(self, ctx: AuditContext) -> str | None:
        if training_data(ctx) is None:
            return "the training split of this data is not known to the audit"
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
        r = method(ctx.model, train, nonmembers=ctx.data, seed=ctx.seed)
        return {**r.to_dict(), "members": len(train), "nonmembers": len(ctx.data),
                "params": method.get_params()}

    def _idlg(self, ctx: AuditContext, train: Any, out: SectionResult) -> dict[str, Any]:
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
