"""Plots of explanations and adversarial examples: one call, a matplotlib Figure back.

:func:`explanation` draws inputs with their attribution maps, :func:`adversarial`
the clean inputs, their adversarial versions and the perturbation. Every map
has a symmetric colour scale (zero is white) with a colour bar; a map drawn over
its input is transparent where it is weak, so the input stays readable (no
brown of a diverging map blended over grey); titles read ``true -> predicted
(confidence%)``. The audit's figures draw with the same pieces (:func:`image_array`,
:func:`draw_map`, :func:`outcome_title`).

The figures are built without pyplot (``matplotlib.figure.Figure``), so no
global figure is left open: save one with ``fig.savefig("map.png")``; a notebook
shows a returned figure as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from scrutiny.errors import InputError
from scrutiny.types import AttackResult, Explanation

#: The diverging map of attributions and perturbations: negative blue, positive red.
CMAP = "RdBu_r"


def image_array(x: torch.Tensor) -> np.ndarray:
    """One input ``(C, H, W)`` in [0, 1] as an array for ``imshow`` (grey ``(H, W)`` or RGB)."""
    a = x.detach().cpu().float().numpy()
    return a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0)).clip(0, 1)


def _grey(x: torch.Tensor) -> np.ndarray:
    a = image_array(x)
    return a.mean(-1) if a.ndim == 3 else a


def draw_map(ax: Axes, m: torch.Tensor | np.ndarray, *, background: torch.Tensor | None = None,
             lim: float | None = None, colorbar: bool = True) -> ScalarMappable:
    """Draw a map ``(H, W)`` on ``ax`` with a symmetric colour scale ``[-lim, lim]``.

    ``lim`` defaults to the map's largest magnitude. With ``background`` (an
    input ``(C, H, W)``) the input is drawn in grey first and the map over it
    with an opacity that grows with ``|m| / lim``: weak attributions leave the
    input visible instead of tinting it. Returns the mappable (for a shared
    colour bar); ``colorbar`` adds one beside ``ax``.
    """
    a = m.detach().cpu().float().numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
    if a.ndim != 2:
        raise InputError(f"a map to draw is (H, W), got shape {a.shape}")
    lim = float(np.abs(a).max()) if lim is None else float(lim)
    lim = lim if np.isfinite(lim) and lim > 0 else 1.0
    norm, cmap = Normalize(-lim, lim), colormaps[CMAP]
    if background is None:
        ax.imshow(a, cmap=cmap, norm=norm)
    else:
        ax.imshow(_grey(background), cmap="gray", vmin=0, vmax=1)
        rgba = cmap(norm(a))
        rgba[..., 3] = np.clip(np.abs(a) / lim, 0, 1) ** 0.5 * 0.9
        ax.imshow(rgba)
    ax.set_xticks([])
    ax.set_yticks([])
    mappable = ScalarMappable(norm=norm, cmap=cmap)
    if colorbar:
        bar = ax.figure.colorbar(mappable, ax=ax, shrink=0.8, pad=0.02)
        bar.ax.tick_params(labelsize=6)
    return mappable


def _name(k: int, classes: Sequence[str] | None) -> str:
    return str(classes[k]) if classes is not None and 0 <= k < len(classes) else str(k)


def outcome_title(y: int | None, pred: int, confidence: float | None = None,
                  classes: Sequence[str] | None = None) -> str:
    """``"true -> predicted (confidence%)"``: ``"3 -> 8 (91%)"``, the confidence being the
    softmax probability of the predicted class; ``"-> 8"`` without ``y``.

    Examples
    --------
    >>> outcome_title(3, 8, 0.912), outcome_title(None, 8), outcome_title(1, 0, 0.5, ["a", "b"])
    ('3 -> 8 (91%)', '-> 8', 'b -> a (50%)')
    """
    conf = f" ({100 * confidence:.0f}%)" if confidence is not None else ""
    head = f"{_name(y, classes)} " if y is not None else ""
    return f"{head}-> {_name(pred, classes)}{conf}"


def _predictions(model: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted class and its softmax probability per input."""
    with torch.no_grad():
        p = model(x).softmax(dim=1).cpu()
    conf, pred = p.max(dim=1)
    return pred, conf


def _check_images(x: Any, what: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"{what} must be images (N, C, H, W) to plot, got {got}")
    return x


def explanation(x: torch.Tensor, attributions: torch.Tensor | Explanation, *,
                y: torch.Tensor | None = None, model: Any = None,
                classes: Sequence[str] | None = None, overlay: bool = True,
                max_samples: int = 8, title: str | None = None) -> Figure:
    """Inputs (top row) and their attribution maps (bottom row), one column per sample.

    Parameters
    ----------
    x : Tensor
        Images ``(N, C, H, W)`` in [0, 1].
    attributions : Tensor or Explanation
        Maps of the shape of ``x`` (summed over channels) or ``(N, H, W)``; an
        :class:`~scrutiny.types.Explanation` gives its :meth:`pixel_map` and
        names the explained class in the map's title. Layer maps (a
        resolution other than the input's) are drawn on their own.
    y : Tensor, optional
        True labels ``(N,)``, the left of ``true -> predicted``.
    model : callable, optional
        The classifier (a TorchModel or ``nn.Module``); its prediction and
        softmax confidence go into the titles.
    classes : sequence of str, optional
        Class names for the titles.
    overlay : bool
        Draw each map over its (grey) input, transparent where the map is weak.
    max_samples : int
        Columns at most (the first samples).
    title : str, optional
        The figure's title (default: the explainer's name, if known).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.explain import IntegratedGradients
    >>> data, model = load_digits(split="test"), pretrained("digits-cnn", progress=False)
    >>> x, y = data.x[:3], data.y[:3]
    >>> e = IntegratedGradients(steps=16)(model, x)
    >>> fig = explanation(x, e, y=y, model=model)
    >>> fig.axes[0].get_title()  # true -> predicted (softmax confidence)
    '1 -> 1 (...%)'
    >>> len(fig.axes)  # 3 inputs, 3 maps, 3 colour bars
    9
    """
    x = _check_images(x)
    exp = attributions if isinstance(attributions, Explanation) else None
    maps = exp.pixel_map() if exp is not None else attributions
    if not isinstance(maps, torch.Tensor):
        raise InputError(f"attributions must be a Tensor or an Explanation, "
                         f"got {type(maps).__name__}")
    if maps.dim() == 4:
        maps = maps.sum(dim=1)
    if maps.dim() != 3 or len(maps) != len(x):
        raise InputError(f"attributions must be (N, H, W) or (N, C, H, W) for the {len(x)} "
                         f"inputs, got shape {tuple(maps.shape)}")
    n = min(len(x), int(max_samples))
    if n == 0:
        raise InputError("nothing to plot: x holds no sample")
    on_input = overlay and tuple(maps.shape[1:]) == tuple(x.shape[2:])
    pred, conf = _predictions(model, x[:n]) if model is not None else (None, None)
    fig = Figure(figsize=(2.0 * n, 4.3), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for i in range(n):
        ax = axes[0, i]
        ax.imshow(image_array(x[i]), cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        if pred is not None:
            yi = int(y[i]) if y is not None else None
            ax.set_title(outcome_title(yi, int(pred[i]), float(conf[i]), classes), fontsize=8,
                         color="black" if yi is None or yi == int(pred[i]) else "red")
        elif y is not None:
            ax.set_title(f"true {_name(int(y[i]), classes)}", fontsize=8)
        draw_map(axes[1, i], maps[i], background=x[i] if on_input else None)
        if exp is not None:
            axes[1, i].set_title(f"for {_name(int(exp.target[i]), classes)}", fontsize=8)
    axes[0, 0].set_ylabel("input", fontsize=8)
    axes[1, 0].set_ylabel("attribution" if exp is None or exp.location == "input"
                          else f"at {exp.location}", fontsize=8)
    name = title if title is not None else (exp.meta.get("explainer") if exp else None)
    if name:
        fig.suptitle(str(name), fontsize=9)
    return fig


def adversarial(result: AttackResult, x: torch.Tensor, *, model: Any = None,
                classes: Sequence[str] | None = None, max_samples: int = 8,
                title: str | None = None) -> Figure:
    """Clean inputs, adversarial inputs and the perturbation, one column per sample.

    Titles read ``true -> predicted (confidence)``: the adversarial row's from
    the attack's own logits at ``x_adv``, the clean row's from ``model`` when
    given (otherwise ``true y`` and whether the clean prediction was right).
    The perturbation ``x_adv - x`` (summed over channels) has a symmetric
    colour scale shared by the row, with its colour bar.

    Parameters
    ----------
    result : AttackResult
        What the attack returned for ``x``.
    x : Tensor
        The clean images ``(N, C, H, W)`` that were attacked.
    model : callable, optional
        The classifier, for the clean predictions and their confidence.
    classes : sequence of str, optional
        Class names for the titles.
    max_samples : int
        Columns at most (the first samples).
    title : str, optional
        The figure's title (default: the attack and the threat model).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.attacks import PGD
    >>> from scrutiny.types import ThreatModel
    >>> import tempfile
    >>> data, model = load_digits(split="test"), pretrained("digits-cnn", progress=False)
    >>> x, y = data.x[:4], data.y[:4]
    >>> res = PGD(steps=10)(model, x, y, threat=ThreatModel("linf", 0.2))
    >>> fig = adversarial(res, x, model=model)
    >>> fig._suptitle.get_text(), fig.axes[0].get_title(), fig.axes[4].get_title()
    ('pgd, linf eps=0.2', '1 -> 1 (...%)', '1 -> 8 (...%)')
    >>> fig.savefig(tempfile.mkdtemp() + "/adversarial.png")
    """
    if not isinstance(result, AttackResult):
        raise InputError(f"result must be an AttackResult, got {type(result).__name__}")
    x = _check_images(x)
    if x.shape != result.x_adv.shape:
        raise InputError(f"x {tuple(x.shape)} is not the attacked batch: x_adv has shape "
                         f"{tuple(result.x_adv.shape)}")
    n = min(len(x), int(max_samples))
    if n == 0:
        raise InputError("nothing to plot: x holds no sample")
    x, x_adv = x[:n].detach().cpu(), result.x_adv[:n].detach().cpu()
    y = result.y[:n]
    conf_adv, pred_adv = result.logits[:n].float().softmax(dim=1).max(dim=1)
    clean = _predictions(model, x) if model is not None else None
    delta = (x_adv - x).sum(dim=1)
    lim = float(delta.abs().max()) or 1.0
    fig = Figure(figsize=(1.6 * n + 0.8, 5.2), layout="constrained")
    axes = fig.subplots(3, n, squeeze=False)
    mappable = None
    for i in range(n):
        yi = int(y[i])
        axes[0, i].imshow(image_array(x[i]), cmap="gray", vmin=0, vmax=1)
        if clean is not None:
            p = int(clean[0][i])
            axes[0, i].set_title(outcome_title(yi, p, float(clean[1][i]), classes), fontsize=8,
                                 color="black" if p == yi else "red")
        else:
            ok = bool(result.clean_correct[i])
            axes[0, i].set_title(f"true {_name(yi, classes)}" + ("" if ok else " (missed)"),
                                 fontsize=8, color="black" if ok else "red")
        axes[1, i].imshow(image_array(x_adv[i]), cmap="gray", vmin=0, vmax=1)
        p = int(pred_adv[i])
        axes[1, i].set_title(outcome_title(yi, p, float(conf_adv[i]), classes), fontsize=8,
                             color="black" if p == yi else "red")
        mappable = draw_map(axes[2, i], delta[i], lim=lim, colorbar=False)
        for r in range(2):
            axes[r, i].set_xticks([])
            axes[r, i].set_yticks([])
    for r, label in enumerate(("clean", "adversarial", "perturbation")):
        axes[r, 0].set_ylabel(label, fontsize=8)
    bar = fig.colorbar(mappable, ax=list(axes[2]), shrink=0.8, pad=0.02)
    bar.ax.tick_params(labelsize=6)
    if title is None:
        t = result.threat
        title = ", ".join(s for s in (result.meta.get("attack"),
                                      f"{t.norm} eps={t.eps:g}" if t is not None else None) if s)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
