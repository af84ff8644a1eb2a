"""Monte Carlo dropout: epistemic (and aleatoric) uncertainty, with a per-input map."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from scrutiny.base import grad_wrt
from scrutiny.errors import InputError
from scrutiny.explain.base import Explainer, function_twin
from scrutiny.models.wrapper import as_model
from scrutiny.params import param
from scrutiny.registry import register
from scrutiny.types import Tags
from scrutiny.validation import check_x

MAPS: tuple[str, ...] = ("epistemic", "entropy")


def _at_least_two(name: str, n: int) -> None:
    if n < 2:
        raise InputError(f"{name} must be >= 2 to estimate a variance, got {n}")


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    """Every dropout layer (``nn.Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout`` ...)."""
    return [m for m in model.modules() if isinstance(m, _DropoutNd)]


@contextlib.contextmanager
def dropout_enabled(model: nn.Module) -> Iterator[list[nn.Module]]:
    """Switch only the dropout layers to training mode; their modes restored on exit."""
    mods = dropout_modules(model)
    modes = [m.training for m in mods]
    try:
        for m in mods:
            m.train()
        yield mods
    finally:
        for m, t in zip(mods, modes, strict=True):
            m.training = t


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)


@register("explainer", "mc_dropout", paper="Gal, Ghahramani. Dropout as a Bayesian "
          "approximation: representing model uncertainty in deep learning. ICML 2016; Kendall, "
          "Gal. What uncertainties do we need in Bayesian deep learning for computer vision? "
          "NeurIPS 2017", test_params={"n_samples": 4, "uncertainty_map": "entropy"})
class MCDropout(Explainer):
    """MC dropout: uncertainty from ``n_samples`` stochastic forward passes.

    Only the dropout layers are switched to training mode (batch norm and
    everything else stay in eval mode; all modes are restored afterwards,
    even on error); each input is repeated ``n_samples`` times in one batch
    (``batch_size`` rows per forward), so every pass samples its own dropout
    masks. With ``p_t`` the softmax of pass ``t`` and ``c`` the target class,
    ``meta`` holds per input:

    * ``mean_probs`` ``(N, K)``: the predictive mean ``p = mean_t p_t``;
    * ``epistemic``: ``Var_t p_t[c]``, the variance of the target
      probability across passes (exactly 0 without active dropout);
    * ``predictive_entropy`` ``H[p]``, ``expected_entropy`` ``mean_t H[p_t]``
      and ``mutual_information`` = their difference (the epistemic part of
      the predictive entropy, BALD);
    * ``aleatoric`` (``heteroscedastic=True`` only): the model returns
      ``(N, 2K)``, logits then log-variances of the logits (Kendall & Gal's
      classification model); ``aleatoric`` is ``mean_t exp(logvar_t[c])``,
      the predicted variance of the target logit averaged over passes. The
      other quantities then use the first ``K`` outputs, without sampling
      the logit noise.

    The attributions are a per-input map of the uncertainty: the absolute
    gradient, with respect to the input, of the Monte Carlo estimate of the
    epistemic variance (``uncertainty_map="epistemic"``) or of the
    predictive entropy ``H[p]`` (``"entropy"``, total uncertainty, non-zero
    also for a deterministic model), the dropout masks of the passes held
    fixed; maximum over channels for images (``(N, H, W)``, like a saliency
    map), the input's shape otherwise. It says which input elements would
    change the estimated uncertainty most under a small change: a
    sensitivity map of the uncertainty, not a decomposition of it, and
    noisy for few passes.

    Parameters
    ----------
    n_samples : int
        Stochastic forward passes ``T`` (at least 2).
    uncertainty_map : {"epistemic", "entropy"}
        Quantity whose input gradient is the map.
    heteroscedastic : bool
        The model predicts its own logit log-variances (``(N, 2K)`` output).
    batch_size : int
        Rows (inputs x passes) per forward/backward pass.

    References
    ----------
    .. [1] Gal, Ghahramani. "Dropout as a Bayesian approximation:
       representing model uncertainty in deep learning". ICML 2016.
    .. [2] Kendall, Gal. "What uncertainties do we need in Bayesian deep
       learning for computer vision?". NeurIPS 2017.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> x = load_digits(split="test").x[:4]
    >>> e = MCDropout(n_samples=8)(pretrained("digits-cnn", progress=False), x)
    >>> e.attributions.shape, float(e.meta["epistemic"].max())  # no dropout layer: zero
    (torch.Size([4, 8, 8]), 0.0)
    """

    tags = Tags(stochastic=True)

    n_samples: int = param(32, integer=True, positive=True, check=_at_least_two)
    uncertainty_map: str = param("epistemic", choices=MAPS)
    heteroscedastic: bool = param(False, kind=bool)
    batch_size: int = param(1024, integer=True, positive=True)

    def explain(self, model, x, target=None, *, seed=0, **data):
        if target is None and self.heteroscedastic:
            # the default target is the argmax of the K logits, not of all 2K outputs
            m = as_model(model)
            check_x(x, m.bounds)
            out = m.logits(x)
            target = out[:, :out.shape[1] // 2].argmax(dim=1)
        return super().explain(model, x, target, seed=seed, **data)

    __call__ = explain

    def _explain(self, model, x, target):
        t_ = self.n_samples
        per = max(1, self.batch_size // t_)
        stats: dict[str, list[torch.Tensor]] = {}
        maps = []
        with dropout_enabled(model):
            for i in range(0, max(len(x), 1), per):  # an empty batch: one empty chunk
                xc = x[i:i + per].detach().requires_grad_(True)
                tc = target[i:i + per]
                with torch.enable_grad():
                    out = model(xc.repeat_interleave(t_, dim=0))
                    k = out.shape[1] // 2 if self.heteroscedastic else out.shape[1]
                    if self.heteroscedastic and out.shape[1] % 2:
                        raise InputError("heteroscedastic=True needs (N, 2K) outputs: K logits, "
                                         f"then K log-variances; got {out.shape[1]} columns")
                    if len(tc) and int(tc.max()) >= k:
                        raise InputError(f"target has values up to {int(tc.max())}; the model "
                                         f"has {k} classes")
                    probs = out[:, :k].softmax(dim=1).reshape(len(xc), t_, k)
                    pt = probs.gather(2, tc[:, None, None].expand(-1, t_, 1))[..., 0]
                    dev = pt - pt[:, :1]          # shifted: exactly 0 when all passes agree
                    var = ((dev ** 2).mean(1) - dev.mean(1) ** 2).clamp_min(0)
                    # means written as p_0 + mean(p_t - p_0): exact when all passes agree
                    pbar = probs[:, 0] + (probs - probs[:, :1]).mean(1)
                    h = _entropy(pbar)
                    scalar = var if self.uncertainty_map == "epistemic" else h
                    g = grad_wrt(scalar, xc).abs()
                maps.append(g.amax(dim=1) if g.dim() == 4 else g)
                ht = _entropy(probs.detach())
                eh = ht[:, 0] + (ht - ht[:, :1]).mean(1)
                parts = {"mean_probs": pbar, "epistemic": var, "predictive_entropy": h,
                         "expected_entropy": eh, "mutual_information": (h.detach() - eh).clamp_min(0)}
                if self.heteroscedastic:
                    lv = out[:, k:].reshape(len(xc), t_, k).gather(
                        2, tc[:, None, None].expand(-1, t_, 1))[..., 0]
                    parts["aleatoric"] = torch.exp(lv).mean(1)
                for name, v in parts.items():
                    stats.setdefault(name, []).append(v.detach())
        meta = {name: torch.cat(v).cpu() for name, v in stats.items()}
        meta["n_samples"] = t_
        meta["dropout_layers"] = len(dropout_modules(model))
        return torch.cat(maps).to(x.dtype), meta


mc_dropout = function_twin(MCDropout, "mc_dropout")

