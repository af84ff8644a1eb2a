"""Figures of the audit report (matplotlib, Agg backend). Each returns PNG bytes
and the data it plots, so the report can embed the picture and save the numbers."""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

# the drawing shared with the API
from scrutiny.plot import draw_map, image_array, outcome_title  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def robustness_curve(curves: dict[str, list[tuple[float, float]]], norm: str,
                     title: str = "Robust accuracy", *, xlabel: str | None = None,
                     ylabel: str = "robust accuracy", logx: bool = False
                     ) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    """Robust accuracy against eps, one line per attack (or any such curve: the
    success rate against queries with ``xlabel="queries", logx=True``): the PNG, its
    data and the same chart for the interactive report
    (:func:`scrutiny.audit.interactive.line_chart`)."""
    from scrutiny.audit.interactive import line_chart

    fig, ax = plt.subplots(figsize=(5.2, 3.6), layout="constrained")
    for name, pts in curves.items():
        e, a = zip(*pts, strict=True)
        ax.plot(e, a, marker="o", label=name)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel or f"eps ({norm})")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    # below the axes, never over the curves; long labels (the compared models) one per row
    wide = max((len(k) for k in curves), default=0) > 24
    fig.set_figheight(3.6 + 0.2 * (len(curves) if wide else -(-len(curves) // 3)))
    fig.legend(loc="outside lower center", ncols=1 if wide else min(3, len(curves)), fontsize=8,
               frameon=False)
    ax.set_title(title)
    data = {"norm": norm, "curves": {k: [{"eps": e, "robust_accuracy": a} for e, a in v]
                                     for k, v in curves.items()}}
    spec = line_chart(curves, xlabel=xlabel or f"eps ({norm})", ylabel=ylabel, title=title,
                      logx=logx)
    return _png(fig), data, spec


def adversarial_examples(x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                         pred_clean: torch.Tensor, pred_adv: torch.Tensor,
                         classes: tuple[str, ...], title: str, *,
                         conf_clean: torch.Tensor | None = None,
                         conf_adv: torch.Tensor | None = None) -> tuple[bytes, dict[str, Any]]:
    """Rows: clean image, adversarial image, perturbation (symmetric scale, one colour bar).

    The clean and adversarial images are titled ``true -> predicted (confidence%)``
    (:func:`scrutiny.plot.outcome_title`; ``conf_*`` the softmax probability of the
    predicted class), in red where the prediction is wrong.
    """
    n = len(x)
    fig, axes = plt.subplots(3, n, figsize=(1.45 * n + 0.6, 4.4), squeeze=False,
                             layout="constrained")
    delta = (x_adv - x).detach().cpu()
    scale = float(delta.abs().max()) or 1.0
    rows = ((x, pred_clean, conf_clean), (x_adv, pred_adv, conf_adv))
    mappable = None
    for i in range(n):
        yi = int(y[i])
        for r, (imgs, pred, conf) in enumerate(rows):
            p = int(pred[i])
            axes[r, i].imshow(image_array(imgs[i]), cmap="gray", vmin=0, vmax=1)
            axes[r, i].set_title(outcome_title(yi, p, None if conf is None else float(conf[i]),
                                               classes), fontsize=7,
                                 color="black" if p == yi else "red")
        mappable = draw_map(axes[2, i], delta[i].sum(0), lim=scale, colorbar=False)
        for r in range(3):
            axes[r, i].set_xticks([])
            axes[r, i].set_yticks([])
            for spine in axes[r, i].spines.values():
                spine.set_visible(False)
    for r, label in enumerate(("clean", "adversarial", "perturbation")):
        axes[r, 0].set_ylabel(label, fontsize=8)
    bar = fig.colorbar(mappable, ax=list(axes[2]), shrink=0.8, pad=0.02)
    bar.ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    data = {"y": y.tolist(), "pred_clean": pred_clean.tolist(), "pred_adv": pred_adv.tolist(),
            "linf": delta.reshape(n, -1).abs().amax(1).tolist()}
    if conf_clean is not None and conf_adv is not None:
        data.update(confidence_clean=[round(float(c), 5) for c in conf_clean],
                    confidence_adv=[round(float(c), 5) for c in conf_adv])
    return _png(fig), data


def explanation_grid(x: torch.Tensor, maps: dict[str, torch.Tensor], title: str,
                     row_labels: list[str] | None = None, *,
                     column_notes: dict[str, str] | None = None,
                     overlay: bool = False) -> tuple[bytes, dict[str, Any]]:
    """Rows: samples; columns: the input, then one heatmap per method.

    ``column_notes`` adds text under a method's title (the gallery's trust
    scores); ``overlay`` draws each heatmap over the grey-scale input.
    """
    n, names = len(x), list(maps)
    notes = column_notes or {}
    head = 0.4 + 0.16 * max((v.count("\n") + 1 for v in notes.values()), default=0)
    fig, axes = plt.subplots(n, 1 + len(names), figsize=(1.5 * (1 + len(names)), 1.45 * n + head),
                             squeeze=False, layout="constrained")
    for i in range(n):
        axes[i, 0].imshow(image_array(x[i]), cmap="gray", vmin=0, vmax=1)
        if row_labels:
            axes[i, 0].set_ylabel(row_labels[i], fontsize=7)
        for j, name in enumerate(names):
            draw_map(axes[i, j + 1], maps[name][i], background=x[i] if overlay else None)
            if i == 0:
                axes[i, j + 1].set_title(name + ("\n" + notes[name] if name in notes else ""),
                                         fontsize=7)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("input", fontsize=8)
    fig.suptitle(title, fontsize=9)
    data = {name: m.detach().cpu().float().numpy().round(5).tolist() for name, m in maps.items()}
    return _png(fig), data


def feature_bars(values: dict[str, torch.Tensor], feature_names: tuple[str, ...], title: str,
                 top: int = 10) -> tuple[bytes, dict[str, Any]]:
    """Tabular attributions: mean |attribution| per feature, top features per method."""
    fig, axes = plt.subplots(1, len(values), figsize=(4.2 * len(values), 3.2), squeeze=False,
                             layout="constrained")
    data = {}
    for ax, (name, v) in zip(axes[0], values.items(), strict=True):
        imp = v.detach().abs().mean(0).cpu().numpy()
        order = np.argsort(imp)[::-1][:top]
        ax.barh([feature_names[k] for k in order][::-1], imp[order][::-1])
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
        data[name] = {feature_names[k]: float(imp[k]) for k in order}
    fig.suptitle(title, fontsize=9)
    return _png(fig), data


def image_rows(rows: list[tuple[str, torch.Tensor, list[str]]], title: str, *,
               signed: set[int] | None = None) -> tuple[bytes, dict[str, Any]]:
    """Rows of images, each ``(label, images (k, C, H, W), titles)``: the label on the
    left, a title over each image. Rows whose index is in ``signed`` are drawn as maps
    (symmetric scale, colour bar: a difference), the others as images in the bounds."""
    signed = signed or set()
    cols = max((len(imgs) for _, imgs, _ in rows), default=1)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.25 * cols + 0.6, 1.45 * len(rows) + 0.4),
                             squeeze=False, layout="constrained")
    data: dict[str, Any] = {}
    for r, (label, imgs, titles) in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(imgs):
                ax.axis("off")
                continue
            if r in signed:
                draw_map(ax, imgs[c].sum(0) if imgs[c].dim() == 3 else imgs[c],
                         colorbar=c == len(imgs) - 1)
            else:
                ax.imshow(image_array(imgs[c]), cmap="gray", vmin=0, vmax=1)
            ax.set_title(titles[c] if c < len(titles) else "", fontsize=7)
        axes[r, 0].set_ylabel(label, fontsize=7)
        data[label] = titles
    fig.suptitle(title, fontsize=9)
    return _png(fig), data


def influence_rows(x: torch.Tensor, titles: list[str], train_x: torch.Tensor,
                   train_y: torch.Tensor, helpful: torch.Tensor, harmful: torch.Tensor,
                   classes: tuple[str, ...], k: int) -> list[tuple[str, torch.Tensor, list[str]]]:
    """Rows for :func:`image_rows`: each test input (titled ``titles[i]``), then its ``k``
    most helpful and ``k`` most harmful training images, titled with their labels."""
    rows = []
    for i in range(len(x)):
        help_i, harm_i = helpful[i][:k], harmful[i][:k]
        rows.append((f"test {i}", torch.cat([x[i:i + 1], train_x[help_i], train_x[harm_i]]),
                     [titles[i]] + [f"helps: {classes[int(train_y[j])]}" for j in help_i]
                     + [f"hurts: {classes[int(train_y[j])]}" for j in harm_i]))
    return rows
