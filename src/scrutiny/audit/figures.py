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


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _image(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> array for imshow."""
    a = x.detach().cpu().float().numpy()
    return a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0)).clip(0, 1)


def robustness_curve(curves: dict[str, list[tuple[float, float]]], norm: str,
                     title: str = "Robust accuracy", *, xlabel: str | None = None,
                     ylabel: str = "robust accuracy", logx: bool = False
                     ) -> tuple[bytes, dict[str, Any]]:
    """Robust accuracy against eps, one line per attack (or any such curve: the
    success rate against queries with ``xlabel="queries", logx=True``)."""
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
    ax.legend()
    ax.set_title(title)
    data = {"norm": norm, "curves": {k: [{"eps": e, "robust_accuracy": a} for e, a in v]
                                     for k, v in curves.items()}}
    return _png(fig), data


def adversarial_examples(x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                         pred_clean: torch.Tensor, pred_adv: torch.Tensor,
                         classes: tuple[str, ...], title: str) -> tuple[bytes, dict[str, Any]]:
    """Rows: clean image, adversarial image, amplified perturbation; with predictions."""
    n = len(x)
    fig, axes = plt.subplots(3, n, figsize=(1.3 * n, 4.2), squeeze=False, layout="constrained")
    delta = (x_adv - x).detach().cpu()
    scale = float(delta.abs().max()) or 1.0
    for i in range(n):
        axes[0, i].imshow(_image(x[i]), cmap="gray", vmin=0, vmax=1)
        axes[0, i].set_title(f"{classes[int(pred_clean[i])]}", fontsize=8,
                             color="black" if pred_clean[i] == y[i] else "red")
        axes[1, i].imshow(_image(x_adv[i]), cmap="gray", vmin=0, vmax=1)
        axes[1, i].set_title(f"{classes[int(pred_adv[i])]}", fontsize=8,
                             color="black" if pred_adv[i] == y[i] else "red")
        d = delta[i].sum(0).numpy() if delta.shape[1] > 1 else delta[i, 0].numpy()
        axes[2, i].imshow(d, cmap="RdBu_r", vmin=-scale, vmax=scale)
        for r in range(3):
            axes[r, i].axis("off")
    for r, label in enumerate(("clean", "adversarial", "perturbation")):
        axes[r, 0].set_ylabel(label, fontsize=8)
        axes[r, 0].axis("on")
        axes[r, 0].set_xticks([])
        axes[r, 0].set_yticks([])
    fig.suptitle(title, fontsize=9)
    data = {"y": y.tolist(), "pred_clean": pred_clean.tolist(), "pred_adv": pred_adv.tolist(),
            "linf": delta.reshape(n, -1).abs().amax(1).tolist()}
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
        axes[i, 0].imshow(_image(x[i]), cmap="gray", vmin=0, vmax=1)
        if row_labels:
            axes[i, 0].set_ylabel(row_labels[i], fontsize=7)
        for j, name in enumerate(names):
            m = maps[name][i].detach().cpu().float().numpy()
            lim = float(np.abs(m).max()) or 1.0
            if overlay:
                axes[i, j + 1].imshow(_image(x[i]).mean(-1) if x.shape[1] == 3 else _image(x[i]),
                                      cmap="gray", vmin=0, vmax=1)
            axes[i, j + 1].imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim,
                                  alpha=0.65 if overlay else 1.0)
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
