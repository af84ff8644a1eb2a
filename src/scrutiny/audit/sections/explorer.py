"""The report's per-sample explorer: inputs, predictions, maps and certificate of one sample."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from scrutiny.audit.context import AuditContext, Figure, SectionResult
from scrutiny.audit.sections.base import Section, register
from scrutiny.audit.sections.robustness import robust_at
from scrutiny.base import seeded
from scrutiny.errors import InputError
from scrutiny.plot import image_array

#: Probabilities shown per input: the union of the clean and the adversarial top ``TOP_K``.
TOP_K = 5
#: Decimals of the pixels (inputs in [0, 1] and their difference) in the page's data.
DECIMALS = 4


def example_order(pred: torch.Tensor, pred_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The audited samples in the example figures' order: correctly classified samples the
    worst case broke first, each group in audit order (the examples section's rule).

    Examples
    --------
    >>> example_order(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 5, 2, 5]),
    ...               torch.tensor([0, 1, 0, 3])).tolist()
    [1, 3, 0, 2]
    """
    broken = (pred.cpu() == y.cpu()) & (pred_adv.cpu() != y.cpu())
    return torch.argsort(broken.int(), descending=True, stable=True)


def rounded(t: torch.Tensor, decimals: int = DECIMALS) -> list:
    """``t`` as nested lists of floats rounded to ``decimals`` (short JSON numbers).

    Examples
    --------
    >>> rounded(torch.tensor([[0.123456, 1 / 3]]))
    [[0.1235, 0.3333]]
    """
    return t.detach().cpu().double().round(decimals=decimals).tolist()


def map_decimals(m: torch.Tensor) -> int:
    """Decimals that keep 4 significant digits of the largest magnitude of the map ``m``
    (at least :data:`DECIMALS`): gradients of small scale do not round to zero.

    Examples
    --------
    >>> map_decimals(torch.tensor([0.5, -0.2])), map_decimals(torch.tensor([2e-5, 0.0]))
    (4, 8)
    """
    top = float(m.abs().max()) if m.numel() else 0.0
    if not math.isfinite(top) or top == 0:
        return DECIMALS
    return max(DECIMALS, 3 - math.floor(math.log10(top)))


@register
class Explorer(Section):
    """Every explored sample in one page: pick a sample, see its inputs, predictions,
    maps and certificate (drawn by the report's inlined Plotly).

    The samples are the first ``explore_samples`` in the example figures' order
    (:func:`example_order`). Per sample: its position in the audit and index in the
    data, the true class, the clean and the adversarial prediction (the worst case at
    the reference eps) with the softmax probabilities of the union of their top
    :data:`TOP_K` classes (one batch under the audit's seed), whether it is robust at
    the reference eps, the perturbation's norm, the clean and adversarial images and
    their difference summed over channels, and its certificate at each certified radius
    when certification ran on it. Maps: for each explainer and each of the sample's
    classes (true, clean prediction, adversarial prediction; each once), the pixel map
    of the clean and of the adversarial input for that class, one batched call per
    explainer and input with a per-sample target, seeded as the explanations section.

    The payload is the figure ``explorer``'s data (``figures.json``; the page reads it
    from ``<script id="data-explorer">``); ``data`` holds a summary only.
    """

    name = "explorer"
    title = "Sample explorer"
    group = "why"
    needs = ("examples",)
    uses = ("explanations", "certification", "headline")
    display = 85
    interactive = True

    def steps(self, ctx: AuditContext) -> int:
        return len(ctx.explainers())

    def skip_reason(self, ctx: AuditContext) -> str | None:
        return None if ctx.data.is_image else "the explorer shows images"

    def run(self, ctx: AuditContext, done: dict[str, SectionResult], bar: Any) -> SectionResult:
        ts = time.perf_counter()
        cfg, names = ctx.config, ctx.class_names()
        ex_res = done["examples"]
        x_adv_all, pred_adv_all = ex_res.tensors["x_adv"], ex_res.tensors["pred_adv"]
        pred_all, y_all = ctx.pred.cpu(), ctx.y.cpu()
        pos = example_order(pred_all, pred_adv_all, y_all)[:cfg.explore_samples]
        x, x_adv = ctx.x[pos].cpu(), x_adv_all[pos].cpu().to(ctx.x.dtype)
        y, pred, pred_adv = y_all[pos], pred_all[pos], pred_adv_all[pos].cpu()
        robust = robust_at(ctx, done, cfg.reference_eps).cpu()[pos]
        n = len(pos)

        with torch.no_grad(), seeded(ctx.seed, ctx.model.device):  # one batch, the audit's draw
            probs = ctx.model.logits(torch.cat([x, x_adv])).softmax(1).double().cpu()
        p_clean, p_adv = probs[:n], probs[n:]
        k = min(TOP_K, probs.shape[1])
        delta = x_adv.double() - x.double()
        order = {"linf": math.inf, "l2": 2.0, "l1": 1.0}[cfg.norm]
        norms = torch.linalg.vector_norm(delta.flatten(1), ord=order, dim=1)

        # each sample's classes: true, clean prediction, adversarial prediction (each once)
        classes: list[list[int]] = []
        for i in range(n):
            seen: list[int] = []
            for c in (int(y[i]), int(pred[i]), int(pred_adv[i])):
                if c not in seen:
                    seen.append(c)
            classes.append(seen)
        rows = torch.tensor([i for i in range(n) for _ in classes[i]], dtype=torch.long)
        targets = torch.tensor([c for cs in classes for c in cs], dtype=torch.long)

        maps: dict[str, dict[str, torch.Tensor]] = {}
        notes: list[str] = []
        for name, explainer in ctx.explainers().items():
            bar.step(f"explorer: {name}")
            data_kw = {"background": ctx.background} if "background" in explainer.call_data else {}
            try:
                maps[name] = {
                    kind: explainer(ctx.model, inputs[rows], targets, seed=ctx.seed,
                                    **data_kw).pixel_map().detach().cpu()
                    for kind, inputs in (("clean", x), ("adversarial", x_adv))}
            except InputError as e:  # e.g. Grad-CAM on a model without convolutions
                notes.append(f"{name} was left out of the explorer: {e}")
            bar.advance()

        cert = done.get("certification")
        certified = cert.tensors.get("certified") if cert is not None else None
        radii = [r["eps"] for r in cert.data.get("rows", [])] if cert is not None else []
        samples = []
        start = 0
        for i in range(n):
            cs = classes[i]
            span = slice(start, start + len(cs))
            start += len(cs)
            p = int(pos[i])
            top = sorted(set(p_clean[i].topk(k).indices.tolist())
                         | set(p_adv[i].topk(k).indices.tolist()),
                         key=lambda c, i=i: (-float(p_clean[i, c]), -float(p_adv[i, c]), c))
            roles = {c: [r for r, v in (("true", y[i]), ("predicted", pred[i]),
                                        ("adversarial", pred_adv[i])) if int(v) == c] for c in cs}
            status = ("robust" if bool(robust[i]) else
                      "broken" if int(pred[i]) == int(y[i]) else "misclassified")
            sample_maps = {}
            for name, m in maps.items():
                sample_maps[name] = {}
                for kind, t in m.items():
                    mine = t[span]
                    sample_maps[name][kind] = rounded(mine, map_decimals(mine))
            samples.append({
                "k": i, "position": p, "index": int(ctx.idx[p]),
                "true": int(y[i]), "pred": int(pred[i]), "adv": int(pred_adv[i]),
                "robust": bool(robust[i]), "status": status,
                "perturbation_norm": round(float(norms[i]), 6),
                "option": f"#{i} {names[int(y[i])]} -> {names[int(pred_adv[i])]} ({status})",
                "top": {"classes": top, "clean": rounded(p_clean[i, top]),
                        "adversarial": rounded(p_adv[i, top])},
                "clean": rounded(torch.from_numpy(image_array(x[i]))),
                "adversarial_image": rounded(torch.from_numpy(image_array(x_adv[i]))),
                "difference": rounded(delta[i].sum(0)),
                "classes": [{"class": c, "roles": roles[c]} for c in cs],
                "maps": sample_maps,
                "certificate": _certificate(p, cert, certified, radii, cfg.certifier),
            })
        payload = {"norm": cfg.norm, "eps": cfg.reference_eps, "class_names": list(names),
                   "rgb": x.shape[1] == 3, "explainers": list(maps), "samples": samples}
        out = SectionResult(self.name, notes=notes)
        out.figures.append(Figure(
            "explorer", "Sample explorer",
            f"One sample at a time: its clean input, the worst-case adversarial input at "
            f"{cfg.norm} eps={cfg.reference_eps:g} and their difference (red: brighter, blue: "
            "darker), the softmax probabilities of both, and each explainer's map of the chosen "
            "class for the chosen input (red: evidence for, blue: against).",
            png=b"", data=payload))
        out.data = {"samples": n, "classes": int(len(targets)), "explainers": list(maps),
                    "seconds": time.perf_counter() - ts}
        return out


def _certificate(p: int, cert: SectionResult | None, certified: torch.Tensor | None,
                 radii: list[float], certifier: str | None) -> dict[str, Any]:
    """A sample's certificate: certified or not at each certified radius, or why none."""
    if cert is None or certified is None:
        return {"radii": [], "certified": [], "text": "certification did not run"}
    if p >= certified.shape[1]:
        return {"radii": [], "certified": [],
                "text": f"not certified: sample beyond the first {certified.shape[1]}"}
    got = [bool(v) for v in certified[:, p].tolist()]
    text = "; ".join(f"eps {e:g}: {'certified' if c else 'not certified'}"
                     for e, c in zip(radii, got, strict=True))
    return {"radii": radii, "certified": got, "text": f"{certifier}: {text}"}
