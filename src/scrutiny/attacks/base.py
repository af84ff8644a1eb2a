"""The Attack base class: owns every invariant, a subclass writes ``_run``."""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import torch

from scrutiny.base import Method, grad_wrt
from scrutiny.errors import InputError, ModelUnavailableError, QueryBudgetExceeded
from scrutiny.losses import margin_loss_terms  # also re-exported: attacks import it from here
from scrutiny.models.adaptive import adaptive, is_non_differentiable, is_randomized
from scrutiny.models.calls import Call, as_batch, prepare
from scrutiny.models.memory import chunked, retry_rows, retry_smaller
from scrutiny.models.query import QueryModel
from scrutiny.models.wrapper import TorchModel
from scrutiny.types import AttackResult, Tags, ThreatModel


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
    :attr:`BlackBox.best`, the attack's best points so far. Whenever the
    budget refused a query (the attack stopped on :meth:`BlackBox.affords`
    or :meth:`BlackBox.fit`, or a query raised
    :class:`~scrutiny.errors.QueryBudgetExceeded`), the result says so:
    ``meta["stopped_by_budget"]``, and per sample
    :attr:`AttackResult.budget_exhausted`. The check of the clean prediction
    and the final check of success at ``x_adv`` are the evaluator's, not the
    attacker's (AutoAttack's convention): they go through the
    QueryModel's ``_evaluate``, one row per sample each, outside the budget
    and not in :attr:`AttackResult.queries`; ``meta["evaluator_queries"]``
    reports them.
    """

    kind = "attack"
    tags = Tags()
    #: Names of call-time data keywords ``__call__`` forwards to ``_run`` (e.g.
    #: ``("guide",)`` for feature adversaries); data, not hyperparameters.
    call_data: ClassVar[tuple[str, ...]] = ()
    #: Each sample's adversarial input depends on that sample alone, so a run that
    #: runs out of memory may be split over the samples; False for a universal
    #: perturbation (one patch, one UAP for the whole batch).
    per_sample: ClassVar[bool] = True

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor | None = None, *,
                 threat: ThreatModel,
                 target: torch.Tensor | int | None = None, seed: int | None = 0,
                 adaptive: bool = True, **data: Any) -> AttackResult:
        """Attack ``model`` on ``(x, y)`` within ``threat``.

        Parameters
        ----------
        model : nn.Module or TorchModel
        x : Tensor or DataLoader
            Clean inputs ``(N, ...)`` within the model's bounds; not modified.
            A DataLoader (any iterable of ``(x, y)`` batches) is gathered into
            one batch (:func:`scrutiny.models.calls.as_batch`).
        y : Tensor
            True labels ``(N,)``; from the loader when ``x`` is one.
        threat : ThreatModel
            Norm, eps (and optional mask) of allowed perturbations; its bounds
            are the model's (:meth:`ThreatModel.resolve`).
        target : Tensor or int, optional
            Target classes for a targeted attack.
        seed : int, optional
            Seeds random starts; the same seed gives the same result.
        adaptive : bool
            White-box attacks on a model whose defense front end declares
            itself non-differentiable or randomized (or that
            :func:`scrutiny.models.adaptive.declare` marked so) differentiate
            :func:`scrutiny.defenses.adaptive` of it (BPDA, EOT); success is
            judged on the defended model. ``False`` attacks the model as is
            (to show what a non-adaptive evaluation would report).
        **data
            Call-time data the attack declares in ``call_data``.
        """
        x, y = as_batch(x, y)
        if y is None:
            raise InputError(f"{type(self).__name__} needs the true labels: give y (N,), or x "
                             "as a DataLoader of (x, y) batches")
        if not self.tags.white_box:
            return self._call_black_box(model, x, y, threat, target, seed, data)
        with self._prepare(model, x, threat, seed, data) as call:
            model, x0, threat, clean_logits = call.model, call.x0, call.threat, call.logits
            y, target = self._check_labels(call, y, target)
            extra: dict = {}
            attacked, how = adaptive_model(model) if adaptive else (model, None)
            if len(x0) and (threat.eps > 0 or self.tags.minimum_norm):
                x_adv = self._run_fitting(attacked, x0, y, threat, target, seed, data)
                if isinstance(x_adv, tuple):  # (x_adv, meta): extra per-run information
                    x_adv, extra = x_adv
            else:  # nothing to optimise: the threat set is {x}
                x_adv = x0
            if how:
                extra = {**extra, "adaptive": how}
            x_adv = threat.project(x0, x_adv.detach().to(x0.dtype)).detach()
            if torch.equal(x_adv, x0):  # nothing moved: the clean pass is the verdict (a
                logits = clean_logits   # randomized model's second draw would differ)
            else:
                with torch.no_grad():  # success is judged on the defended model itself
                    logits = chunked(model, x_adv, len(x_adv),
                                     what=f"{type(self).__name__}'s check of x_adv")
        return self._result(x, x0, x_adv, logits, clean_logits, y, target, threat, extra)

    # ------------------------------------------------------------------ shared steps
    def _run_fitting(self, model: TorchModel, x0: torch.Tensor, y: torch.Tensor,
                     threat: ThreatModel, target: torch.Tensor | None, seed: int | None,
                     data: dict[str, Any]) -> Any:
        """``_run`` with out-of-memory handled (:mod:`scrutiny.models.memory`): again at half
        the ``batch_size`` when the attack declares one, else (a :attr:`per_sample` attack
        without call-time data) on halves of the samples."""
        if isinstance(getattr(self, "batch_size", None), int) or not self.per_sample or data:
            return retry_smaller(self, lambda m: m._run(model, x0, y, threat, target, **data),
                                 seed=seed)
        return retry_rows(self, lambda lo, hi: self._run(
            model, x0[lo:hi], y[lo:hi], threat, None if target is None else target[lo:hi]),
            len(x0), seed=seed)

    def _prepare(self, model: Any, x: torch.Tensor, threat: Any, seed: int | None,
                 data: dict[str, Any], query: str | None = None):
        """The shared call preamble (:func:`scrutiny.models.calls.prepare`) for this attack."""
        return prepare(self, model, x, seed=seed, data=data, threat=threat,
                       norms=self.tags.norms, image=self.tags.image_only, query=query)

    def _check_labels(self, call: Call, y: Any, target: Any
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        y = call.labels(y)
        if target is not None:
            if not self.tags.targeted:
                raise InputError(f"{type(self).__name__} is untargeted; do not pass target=")
            target = call.labels(target, "target")
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
        """The black-box path: queries counted per sample, the budget honoured and reported.

        ``meta``: ``queries_total`` (the attack's queries), ``evaluator_queries``
        (the evaluator's looks at the clean inputs and at ``x_adv``, outside the
        budget by design) and ``stopped_by_budget`` (the budget refused a query);
        :attr:`AttackResult.budget_exhausted` the samples it cut short.
        """
        # the clean look (call.logits) is the evaluator's: QueryModel._evaluate, outside the budget
        with self._prepare(model, x, threat, seed, data, query=self.tags.output) as call:
            qm, x0, threat, clean_logits = call.model, call.x0, call.threat, call.logits
            start, start_eval = call.queries_at_start, call.evaluations_at_start
            y, target = self._check_labels(call, y, target)
            box = BlackBox(qm, x0, batch_size=getattr(self, "batch_size", None))
            extra: dict = {}
            if len(x0) and (threat.eps > 0 or self.tags.minimum_norm):
                try:
                    x_adv = self._run(box, x0, y, threat, target, **data)
                    if isinstance(x_adv, tuple):
                        x_adv, extra = x_adv
                except QueryBudgetExceeded:  # stop cleanly with the best points so far
                    x_adv = box.best
                    box.refuse()  # the run was cut off: every sample it had not finished
                except ModelUnavailableError as e:  # the endpoint stayed down: nothing to verify
                    e.partial = {"x_adv": threat.project(x0, box.best).to(x.device),  # type: ignore[attr-defined]
                                 "queries": box.counts.cpu().clone()}
                    e.add_note("the attack's best points so far (unverified) and its queries per "
                               "sample are in this error's .partial['x_adv'] and ['queries']")
                    raise
            else:
                x_adv = x0
            x_adv = threat.project(x0, x_adv.detach().to(x0.dtype)).detach()
            logits, _ = qm._evaluate(x_adv)  # verification: the evaluator's, outside the budget
        extra = {**extra, "stopped_by_budget": box.stopped, "queries_total": qm.queries - start,
                 "evaluator_queries": qm.evaluations - start_eval}
        res = self._result(x, x0, x_adv, logits, clean_logits, y, target, threat, extra,
                           queries=box.counts)
        # cut short: a query for it was refused and it is not broken (any sample at eps = inf,
        # where a minimum-norm attack's every further query could still shrink its norm)
        unfinished = ~res.success if math.isfinite(threat.eps) else torch.ones_like(res.success)
        res.budget_exhausted = box.cut.cpu() & unfinished
        return res

    def _run(self, model: TorchModel, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             target: torch.Tensor | None
             ) -> torch.Tensor | tuple[torch.Tensor, dict]:  # pragma: no cover - abstract
        """The algorithm: return ``x_adv``, or ``(x_adv, meta)`` to add entries to
        :attr:`AttackResult.meta` (e.g. per-sample constants found by a search)."""
        raise NotImplementedError


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
    cut : Tensor
        ``(N,)`` bool: samples the budget refused a query for (recorded by
        :meth:`fit`, :meth:`affords` and :meth:`query`); the base reports
        those not broken as :attr:`AttackResult.budget_exhausted`.
    stopped : bool
        Whether the budget refused any query (``meta["stopped_by_budget"]``).

    Notes
    -----
    How to write a black-box attack: set ``tags = Tags(white_box=False,
    output="probs" | "logits" | "label")``; in ``_run(box, x, y, threat,
    target)`` stack every input to query this iteration (all samples, all
    directions) into one tensor ``xq`` with ``rows`` the sample index of each
    row, and call ``box.query(xq, rows)`` (or :meth:`log_probs` /
    :meth:`labels`). Before an iteration, keep the samples the budget can pay
    for with ``live = box.fit(live, cost)`` (never by reading
    :attr:`remaining`: the samples left out must be recorded), or check
    :meth:`affords` and stop, returning the best points, when it is False; a
    query past the budget raises :class:`~scrutiny.errors.QueryBudgetExceeded`
    before anything is run, which the base catches and answers with
    :attr:`best`. Every way records the samples cut short, so the result
    reports them.
    """

    def __init__(self, model: QueryModel, x0: torch.Tensor, batch_size: int | None = None) -> None:
        self.model = model
        self.output = model.output
        self.device = x0.device
        self.batch_size = batch_size
        self.counts = torch.zeros(len(x0), dtype=torch.long, device=x0.device)
        self.best = x0.clone()
        self.cut = torch.zeros(len(x0), dtype=torch.bool, device=x0.device)
        self.stopped = False

    @property
    def remaining(self) -> int | None:
        """Queries the budget still allows (None: no budget)."""
        return self.model.remaining

    def refuse(self, rows: torch.Tensor | None = None) -> None:
        """Record that the budget refused the queries of ``rows`` (default: every sample)."""
        self.stopped = True
        if rows is None:
            self.cut[:] = True
        else:
            self.cut[rows.to(self.device)] = True

    def affords(self, n: int, rows: torch.Tensor | None = None) -> bool:
        """Whether ``n`` more queries fit in the budget.

        A False answer is recorded as the budget stopping the attack: the
        samples ``rows`` the queries were for (default: every sample) are cut
        short. Stop (or query less) when it is False.
        """
        r = self.model.remaining
        if r is None or n <= r:
            return True
        self.refuse(rows)
        return False

    def fit(self, rows: torch.Tensor, cost: int = 1) -> torch.Tensor:
        """The samples of ``rows`` whose next ``cost`` queries each fit in the budget.

        All of ``rows`` without a budget or when they all fit; else the first
        ``remaining // cost`` of them, and the others are recorded as cut short.
        """
        r = self.model.remaining
        if r is None or len(rows) * cost <= r:
            return rows
        k = max(r // max(cost, 1), 0)
        self.refuse(rows[k:])
        return rows[:k]

    def query(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``model.predict(x)`` in chunks of ``batch_size``; row ``i`` is charged to
        sample ``rows[i]`` (default: row ``i`` is sample ``i``).

        Raises :class:`~scrutiny.errors.QueryBudgetExceeded` before querying
        anything if the rows do not all fit in the budget (recording their
        samples, or every sample without ``rows``, as cut short).
        """
        n = len(x)
        if rows is not None and len(rows) != n:
            raise InputError(f"rows has {len(rows)} entries for {n} queried inputs")
        if not self.affords(n, rows):
            raise QueryBudgetExceeded(f"{n} queries asked, {self.model.remaining} left")
        if rows is None:
            rows = torch.arange(n, device=self.device)
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
    """One forward + backward: ``(objective per sample, d objective / dx, logits)``.

    Warns (once per place) when the gradient is zero for every sample of a batch:
    the attack then gets no signal and its robust accuracy means nothing (masked
    gradients: see :func:`scrutiny.models.adaptive.declare` and black-box attacks).
    """
    x = x.detach().requires_grad_(True)
    logits = model(x)
    obj = margin_loss_terms(logits, y, target, loss)
    grad = grad_wrt(obj, x)
    warn_if_masked(grad)
    return obj.detach(), grad, logits.detach()


def warn_if_masked(grad: torch.Tensor) -> None:
    """Warn when an input gradient is exactly zero for every sample of a batch."""
    if len(grad) and not bool(grad.any()):
        warnings.warn(
            f"the input gradient is exactly zero for all {len(grad)} samples: the model masks "
            "its gradients (a quantiser, a non-differentiable step), so this white-box attack "
            "gets no signal and its robust accuracy is not a bound; declare the front end "
            "(scrutiny.models.adaptive.declare(model, non_differentiable=True): BPDA) or use a "
            "black-box attack (square)", stacklevel=3)
