"""The Attack base class: owns every invariant, a subclass writes ``_run``."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from scrutiny.base import Method, grad_wrt, seeded
from scrutiny.errors import InputError, QueryBudgetExceeded
from scrutiny.losses import margin_loss_terms  # also re-exported: attacks import it from here
from scrutiny.models.adaptive import adaptive, is_non_differentiable, is_randomized
from scrutiny.models.query import QueryModel
from scrutiny.models.wrapper import TorchModel, as_model
from scrutiny.types import AttackResult, Tags, ThreatModel
from scrutiny.validation import check_labels, check_outputs, check_x


class Attack(Method):
    """Base class of evasion attacks.

    ``__call__`` validates the arguments, puts the model in eval mode with
    frozen parameters (restored afterwards, even on error), seeds the RNG,
    calls ``_run``, projects the result into the threat model and the bounds,
    and recomputes success and norms from the model's predictions, so no
    subclass can report a success it did not achieve.

    Black-box attacks (``tags.white_box=False``) take a
    :class:`~scrutiny.models.QueryModel` (a plain ``nn.Module`` or
    :class:`TorchModel` is wrapped in one, so its gradients are never used)
    that reveals at least ``tags.output``; their ``_run`` gets a
    :class:`BlackBox` instead of a model: every query goes through
    :meth:`BlackBox.query`, which counts it per sample (reported as
    :attr:`AttackResult.queries`) and never goes past the QueryModel's budget.
    When the budget is spent the attack stops and the base returns
    :attr:`BlackBox.best`, the attack's best points so far. The final check
    of success at ``x_adv`` is the evaluator's, not the attacker's: it goes
    through the QueryModel's uncounted ``_evaluate``.
    """

    kind = "attack"
    tags = Tags()
    #: Names of call-time data keywords ``__call__`` forwards to ``_run`` (e.g.
    #: ``("guide",)`` for feature adversaries); data, not hyperparameters.
    call_data: ClassVar[tuple[str, ...]] = ()

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, *, threat: ThreatModel,
                 target: torch.Tensor | int | None = None, seed: int | None = 0,
                 adaptive: bool = True, **data: Any) -> AttackResult:
        """Attack ``model`` on ``(x, y)`` within ``threat``.

        Parameters
        ----------
        model : nn.Module or TorchModel
        x : Tensor
            Clean inputs ``(N, ...)`` within the model's bounds; not modified.
        y : Tensor
            True labels ``(N,)``.
        threat : ThreatModel
            Norm, eps, bounds (and optional mask) of allowed perturbations.
        target : Tensor or int, optional
            Target classes for a targeted attack.
        seed : int, optional
            Seeds random starts; the same seed gives the same result.
        adaptive : bool
            White-box attacks on a model whose defense front end declares
            itself non-differentiable or randomized differentiate
            :func:`scrutiny.defenses.adaptive` of it (BPDA, EOT); success is
            judged on the defended model. ``False`` attacks the model as is
            (to show what a non-adaptive evaluation would report).
        **data
            Call-time data the attack declares in ``call_data``.
        """
        unknown = [k for k in data if k not in self.call_data]
        if unknown:
            raise InputError(f"{type(self).__name__} does not accept "
                             f"{', '.join(map(repr, unknown))}; accepted data keywords: "
                             f"{', '.join(self.call_data) or 'none'}")
        if not self.tags.white_box:
            return self._call_black_box(model, x, y, threat, target, seed, data)
        model = as_model(model, threat.bounds if isinstance(threat, ThreatModel) else None)
        self._check_threat(x, threat)
        dev = model.device
        x0 = x.detach().to(dev).clone()
        with model.evaluating(), seeded(seed, dev):
            with torch.no_grad():
                clean_logits = check_outputs(model(x0), len(x0))
            y, target = self._check_labels(y, target, len(x0), clean_logits.shape[1], dev)
            extra: dict = {}
            attacked, how = adaptive_model(model) if adaptive else (model, None)
            if len(x0) and (threat.eps > 0 or self.tags.minimum_norm):
                x_adv = self._run(attacked, x0, y, threat, target, **data)
                if isinstance(x_adv, tuple):  # (x_adv, meta): extra per-run information
                    x_adv, extra = x_adv
            else:  # nothing to optimise: the threat set is {x}
                x_adv = x0
            if how:
                extra = {**extra, "adaptive": how}
            x_adv = threat.project(x0, x_adv.detach().to(x0.dtype)).detach()
            with torch.no_grad():  # success is judged on the defended model itself
                logits = model(x_adv)
        return self._result(x, x0, x_adv, logits, clean_logits, y, target, threat, extra)

    # ------------------------------------------------------------------ shared steps
    def _check_threat(self, x: torch.Tensor, threat: ThreatModel) -> None:
        if not isinstance(threat, ThreatModel):
            raise InputError(f"threat must be a ThreatModel, got {type(threat).__name__}")
        if threat.norm not in self.tags.norms:
            raise InputError(f"{type(self).__name__} supports norms {', '.join(self.tags.norms)}; "
                             f"got {threat.norm!r}")
        check_x(x, threat.bounds, image=self.tags.image_only)

    def _check_labels(self, y: Any, target: Any, n: int, k: int, dev: torch.device
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        y = check_labels(y, n, k).to(dev)
        if target is not None:
            if not self.tags.targeted:
                raise InputError(f"{type(self).__name__} is untargeted; do not pass target=")
            target = check_labels(target, n, k, "target").to(dev)
        return y, target

    def _result(self, x: torch.Tensor, x0: torch.Tensor, x_adv: torch.Tensor,
                logits: torch.Tensor, clean_logits: torch.Tensor, y: torch.Tensor,
                target: torch.Tensor | None, threat: ThreatModel, extra: dict,
                queries: torch.Tensor | None = None) -> AttackResult:
        pred = logits.argmax(dim=1)
        success = pred == target if target is not None else pred != y
        return AttackResult(
            x_adv=x_adv.to(x.device), success=success.cpu(), norms=threat.distance(x0, x_adv).cpu(),
            logits=logits.cpu(), clean_correct=(clean_logits.argmax(1) == y).cpu(),
            adv_correct=(pred == y).cpu(), y=y.cpu(),
            target=None if target is None else target.cpu(), threat=threat,
            queries=None if queries is None else queries.cpu(),
            meta={"attack": self.name, **extra})

    def _call_black_box(self, model: Any, x: torch.Tensor, y: Any, threat: ThreatModel,
                        target: Any, seed: int | None, data: dict[str, Any]) -> AttackResult:
        """The black-box path: queries counted per sample, the budget honoured."""
        self._check_threat(x, threat)  # before wrapping: a bad threat is the clearer error
        qm = as_query_model(model, threat.bounds, self.tags.output, type(self).__name__)
        dev = qm.device
        x0 = x.detach().to(dev).clone()
        with seeded(seed, dev):
            clean_logits, _ = qm._evaluate(x0)  # the evaluator's look: uncounted
            check_outputs(clean_logits, len(x0))
            y, target = self._check_labels(y, target, len(x0), clean_logits.shape[1], dev)
            box = BlackBox(qm, x0, batch_size=getattr(self, "batch_size", None))
            extra: dict = {}
            start = qm.queries
            if len(x0) and (threat.eps > 0 or self.tags.minimum_norm):
                try:
                    x_adv = self._run(box, x0, y, threat, target, **data)
                    if isinstance(x_adv, tuple):
                        x_adv, extra = x_adv
                except QueryBudgetExceeded:  # stop cleanly with the best points so far
                    x_adv = box.best
                    extra = {"stopped_by_budget": True}
            else:
                x_adv = x0
            x_adv = threat.project(x0, x_adv.detach().to(x0.dtype)).detach()
            logits, _ = qm._evaluate(x_adv)  # verification: the evaluator's, uncounted
        extra = {**extra, "queries_total": qm.queries - start}
        return self._result(x, x0, x_adv, logits, clean_logits, y, target, threat, extra,
                            queries=box.counts)

    def _run(self, model: TorchModel, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             target: torch.Tensor | None
             ) -> torch.Tensor | tuple[torch.Tensor, dict]:  # pragma: no cover - abstract
        """The algorithm: return ``x_adv``, or ``(x_adv, meta)`` to add entries to
        :attr:`AttackResult.meta` (e.g. per-sample constants found by a search)."""
        raise NotImplementedError


def as_query_model(model: Any, bounds: tuple[float, float], output: str,
                   who: str = "this attack") -> QueryModel:
    """The QueryModel a black-box attack queries.

    A QueryModel passes through if it reveals at least ``output`` (else an
    :class:`InputError`); a torch module is wrapped in a QueryModel that
    reveals exactly ``output``, without budget, so its gradients are never used.
    """
    if isinstance(model, QueryModel):
        if not model.reveals(output):
            raise InputError(f"{who} needs queries that reveal {output!r}; this QueryModel "
                             f"answers only {model.output!r}")
        return model
    if isinstance(model, torch.nn.Module):
        return QueryModel(model, output=output, bounds=bounds)
    raise InputError(f"{who} is a black-box attack: give it a QueryModel or a torch.nn.Module, "
                     f"got {type(model).__name__}; wrap a callable in QueryModel(fn, output=...)")


class BlackBox:
    """What a black-box attack's ``_run`` gets: the QueryModel, counted per sample.

    Parameters
    ----------
    model : QueryModel
        The black box; its own counter and budget cover the whole batch.
    x0 : Tensor
        The clean inputs ``(N, ...)``; :attr:`best` starts as a copy.
    batch_size : int, optional
        Largest number of rows sent in one ``predict`` call.

    Attributes
    ----------
    counts : Tensor
        ``(N,)`` int64: queries charged to each sample (becomes ``AttackResult.queries``).
    best : Tensor
        The attack's best points so far, ``(N, ...)``. Write into it whenever a
        sample improves: if a query goes past the budget, the base returns it.

    Notes
    -----
    How to write a black-box attack: set ``tags = Tags(white_box=False,
    output="probs" | "logits" | "label")``; in ``_run(box, x, y, threat,
    target)`` stack every input to query this iteration (all samples, all
    directions) into one tensor ``xq`` with ``rows`` the sample index of each
    row, and call ``box.query(xq, rows)`` (or :meth:`log_probs` /
    :meth:`labels`). Check :meth:`affords` before a query and stop, returning
    the best points, when it is False; a query past the budget raises
    :class:`~scrutiny.errors.QueryBudgetExceeded` before anything is run,
    which the base catches and answers with :attr:`best`.
    """

    def __init__(self, model: QueryModel, x0: torch.Tensor, batch_size: int | None = None) -> None:
        self.model = model
        self.output = model.output
        self.device = x0.device
        self.batch_size = batch_size
        self.counts = torch.zeros(len(x0), dtype=torch.long, device=x0.device)
        self.best = x0.clone()

    @property
    def remaining(self) -> int | None:
        """Queries the budget still allows (None: no budget)."""
        return self.model.remaining

    def affords(self, n: int) -> bool:
        """Whether ``n`` more queries fit in the budget."""
        r = self.model.remaining
        return r is None or n <= r

    def query(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``model.predict(x)`` in chunks of ``batch_size``; row ``i`` is charged to
        sample ``rows[i]`` (default: row ``i`` is sample ``i``).

        Raises :class:`~scrutiny.errors.QueryBudgetExceeded` before querying
        anything if the rows do not all fit in the budget.
        """
        n = len(x)
        if rows is None:
            rows = torch.arange(n, device=self.device)
        if len(rows) != n:
            raise InputError(f"rows has {len(rows)} entries for {n} queried inputs")
        if not self.affords(n):
            raise QueryBudgetExceeded(f"{n} queries asked, {self.model.remaining} left")
        bs = self.batch_size or n or 1
        rows = rows.to(self.device)
        outs = []
        for i in range(0, n, bs):
            outs.append(self.model.predict(x[i:i + bs]))
            r = rows[i:i + bs]
            self.counts.index_add_(0, r, torch.ones_like(r))
        if not outs:
            return torch.empty(0, device=self.device)
        return torch.cat(outs).to(self.device)

    def log_probs(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Query scores and return log-probabilities ``(n, K)`` (needs ``"probs"`` or ``"logits"``)."""
        if self.output == "label":
            raise InputError("this QueryModel reveals only labels; scores are needed")
        out = self.query(x, rows)
        if self.output == "logits":
            return out.log_softmax(dim=1)
        return out.clamp_min(1e-30).log()

    def labels(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Query and return the top labels ``(n,)`` (works for every output)."""
        out = self.query(x, rows)
        return out if self.output == "label" else out.argmax(dim=1)


def adaptive_model(model: TorchModel) -> tuple[TorchModel, str | None]:
    """The model a white-box attack differentiates: BPDA/EOT when a defense declares it.

    A defense front end (:class:`scrutiny.models.adaptive.Transform`) that declares
    itself ``non_differentiable`` gets a straight-through backward pass (BPDA);
    one that declares itself ``randomized`` gets EOT (outputs averaged over
    draws in one batched forward), as Athalye et al. (ICML 2018) prescribe. A
    model without such front ends is returned as is. Returns the model and
    ``"BPDA"``, ``"EOT"``, ``"BPDA+EOT"`` or None.
    """
    bpda, eot = is_non_differentiable(model), is_randomized(model)
    if not (bpda or eot) or getattr(model, "is_adaptive", False):
        return model, None
    how = "+".join(n for n, on in (("BPDA", bpda), ("EOT", eot)) if on)
    return adaptive(model), how


def input_gradient(model: TorchModel, x: torch.Tensor, y: torch.Tensor,
                   target: torch.Tensor | None, loss: str = "ce"
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward + backward: ``(objective per sample, d objective / dx, logits)``."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    obj = margin_loss_terms(logits, y, target, loss)
    return obj.detach(), grad_wrt(obj, x), logits.detach()
