"""Adversarial examples at the reference eps."""

from __future__ import annotations

from typing import Any

import torch

from scrutiny.audit import figures
from scrutiny.audit.context import AuditContext, Figure, SectionResult
from scrutiny.audit.sections.base import Section, register
from scrutiny.audit.sections.robustness import adversarial_at_reference
from scrutiny.base import seeded


@register
class Examples(Section):
    """The samples shown in the example and explanation figures and their adversarial versions.

    Correctly classified samples the worst case broke come first. Tensors:
    ``ex`` (indices into the audited samples), ``x_adv`` and ``pred_adv`` at the
    reference eps (all samples).
    """

    name = "examples"
    title = "Adversarial examples"
    needs = ("robustness",)
    uses = ("headline",)
    display = 25

    def steps(self, ctx: AuditContext) -> int:
        return 0

    def run(self, ctx: AuditContext, done: dict[str, SectionResult], bar: Any) -> SectionResult:
        cfg, x, y, pred = ctx.config, ctx.x, ctx.y, ctx.pred
        x_adv = adversarial_at_reference(done)
        with seeded(ctx.seed, ctx.model.device):  # a randomized model: the audit's draw
            logits_adv = ctx.model.logits(x_adv).cpu() if len(x_adv) else None
        pred_adv = logits_adv.argmax(1) if logits_adv is not None \
            else torch.zeros(0, dtype=torch.long)
        pred = pred.cpu()
        order = torch.argsort(((pred == y.cpu()) & (pred_adv != y.cpu())).int(), descending=True,
                              stable=True)
        ex = order[:cfg.n_examples]
        out = SectionResult(self.name, tensors={"ex": ex, "x_adv": x_adv, "pred_adv": pred_adv})
        out.data = {"indices": ex.tolist()}
        if ctx.data.is_image and len(ex):
            # the shown predictions' softmax probabilities, clean and adversarial in one batch
            with seeded(ctx.seed, ctx.model.device):
                probs = ctx.model.logits(torch.cat([x[ex], x_adv[ex]])).softmax(1).cpu()
            conf = probs.gather(1, torch.cat([pred[ex], pred_adv[ex]])[:, None])[:, 0]
            out.figures.append(Figure(
                "adversarial_examples", f"Adversarial examples at eps={cfg.reference_eps:g}",
                "Top: the clean input; middle: the worst-case adversarial input, each titled "
                "true -> predicted class (softmax confidence of the prediction), red where the "
                "prediction is wrong; bottom: the perturbation (red: brighter, blue: darker; "
                "one symmetric scale for the row).",
                *figures.adversarial_examples(x[ex], x_adv[ex], y[ex], pred[ex], pred_adv[ex],
                                              ctx.class_names(),
                                              f"{cfg.norm} eps={cfg.reference_eps:g}",
                                              conf_clean=conf[:len(ex)],
                                              conf_adv=conf[len(ex):])))
        return out
