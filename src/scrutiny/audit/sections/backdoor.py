"""Does the model carry a backdoor? Neural Cleanse's trigger reverse-engineering and anomaly
index per label, on the audited data."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from scrutiny.audit import figures
from scrutiny.audit.checks import Flag
from scrutiny.audit.context import AuditContext, Figure, SectionResult
from scrutiny.audit.sections.base import Section, register

#: Clean test inputs shown with a flagged label's reversed trigger stamped.
STAMPED = 6


@register
class Backdoor(Section):
    """A backdoor scan of the audited model (Neural Cleanse, Wang et al. 2019).

    For every label, the smallest trigger (a mask and a pattern) that sends the audited
    clean inputs to that label is reverse-engineered; a label whose trigger is far smaller
    than the others' (an anomaly index, by the median absolute deviation of the masks' L1
    norms, above a threshold on the small side: 3.9 for 10 labels, which a model without a
    backdoor passes 5% of the time; the paper's 2 is passed 33% of the time) is flagged as
    a backdoor's likely target. The section
    reports the index and the reversed trigger of every label, the flagged labels (in
    ``result.json`` under ``backdoor.flagged``, a list a script can read) and raises the
    verdict's flag "backdoor suspected" when there is one. Its cost is the scan's (about
    10 s on the digits CNN); ``--skip backdoor`` switches it off, ``-p
    neural_cleanse.epochs=...`` sets the scan's parameters (``-p
    neural_cleanse.anomaly_threshold=2`` for the paper's rule). Image data only. On small
    inputs the scan has little power: natural shortcuts are almost as small as a planted
    3x3 trigger on the 8x8 digits (docs/poisoning.md), so the section also names the label
    with the smallest trigger and how much smaller it is than the median.
    """

    name = "backdoor"
    title = "Does it carry a backdoor?"
    nav = "Backdoor"
    group = "tampered"
    display = 100

    def skip_reason(self, ctx: AuditContext) -> str | None:
        if not ctx.data.is_image:
            return "the backdoor scan reverse-engineers image triggers; the data is a table"
        return None

    def run(self, ctx: AuditContext, done: dict[str, SectionResult], bar: Any) -> SectionResult:
        out = SectionResult(self.name)
        bar.step("neural cleanse")
        scan = ctx.create("backdoor_scan", "neural_cleanse")
        r = scan(ctx.model, ctx.data, seed=ctx.seed)
        bar.advance()
        names = ctx.class_names()
        flagged = [int(k) for k in r.flagged]
        labels = [int(k) for k in r.labels]
        d = r.to_dict()
        d.update(flagged_names=[names[k] for k in flagged], label_names=[names[k] for k in labels],
                 samples=min(len(ctx.data), scan.n_inputs), params=scan.get_params())
        out.data = d
        ai, norms = d["anomaly_index"], d["norms"]
        median = float(np.median(norms))
        stamps = torch.stack([t.mask * t.pattern for t in r.triggers])
        masks = torch.stack([t.mask.expand_as(t.pattern) for t in r.triggers])
        rows = [("mask x pattern", stamps, [f"{names[k]}: {n:.1f}" for k, n in zip(labels, norms,
                                                                                     strict=True)]),
                ("mask", masks, [f"AI {a:.1f}" + (" !" if k in flagged else "")
                                 for k, a in zip(labels, ai, strict=True)])]
        if flagged:
            x = ctx.x[:STAMPED].cpu()
            trig = r.triggers[labels.index(flagged[0])]
            pred = ctx.model.predict(trig.apply(x).to(ctx.model.device)).cpu()
            rows.append((f"stamped ({names[flagged[0]]})", trig.apply(x),
                         [names[int(p)] for p in pred]))
        out.figures.append(Figure(
            "reversed_triggers", "Reversed triggers",
            "Per label, the smallest trigger found that sends the audited inputs to it (Neural "
            "Cleanse): what is stamped (mask x pattern; title: label and the mask's L1 norm) and "
            "the mask (title: anomaly index; '!' flagged)."
            + (" Last row: audited inputs with the flagged label's trigger stamped, titled by "
               "the model's prediction." if flagged else ""),
            *figures.image_rows(rows, "reversed triggers")))
        limit = r.anomaly_threshold
        if flagged:
            at = {k: labels.index(k) for k in flagged}
            msg = (f"label(s) {', '.join(names[k] for k in flagged)} reached by a trigger far "
                   f"smaller than the other labels' (anomaly index "
                   f"{', '.join(f'{ai[i]:.1f}' for i in at.values())} > {limit:.1f}; mask L1 "
                   f"{', '.join(f'{norms[i]:.1f}' for i in at.values())}, median {median:.1f})")
        else:
            i = int(np.argmin(norms))
            msg = (f"no label's trigger stands out as small: the smallest, label "
                   f"{names[labels[i]]}'s (mask L1 {norms[i]:.1f}, {norms[i] / median:.2f} of "
                   f"the median {median:.1f}), has anomaly index {ai[i] or 0.0:.1f} <= "
                   f"{limit:.1f}")
        out.flags.append(Flag("backdoor suspected", bool(flagged), msg,
                              {"flagged": flagged, "anomaly_index": ai}))
        return out
