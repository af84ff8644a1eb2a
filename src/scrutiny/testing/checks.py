"""The common checks every registered method must pass.

Use them from pytest::

    from scrutiny.registry import list_methods
    from scrutiny.testing import parametrize_with_checks

    @parametrize_with_checks(list_methods())
    def test_common(spec, check):
        check(spec)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scrutiny import registry
from scrutiny.data import ArrayDataset
from scrutiny.defenses.base import Detector
from scrutiny.errors import InputError, ModelOutputError
from scrutiny.models.query import QueryModel
from scrutiny.models.wrapper import TorchModel
from scrutiny.testing.models import (
    Failing,
    NonFinite,
    tiny_cnn,
    tiny_images,
    tiny_linear,
    tiny_resnet,
    tiny_vit,
)
from scrutiny.types import ThreatModel

Check = Callable[[str], None]


def _make(spec: str, **extra):
    info = registry.get(spec)
    return registry.create(spec, **{**info.test_params, **extra})


def _problem(seed: int = 0):
    model = tiny_cnn(seed)
    x = tiny_images(5, seed)
    y = model.predict(x)
    return model, x, y


class _NoGrad:
    """A callable black box over a torch model: answers numpy arrays (no autograd graph can
    reach the model) and counts every row it is asked, to check the QueryModel's counter."""

    def __init__(self, model: TorchModel, output: str) -> None:
        self.model, self.output, self.rows = model, output, 0

    def __call__(self, x: torch.Tensor):
        self.rows += len(x)
        with torch.no_grad():
            out = self.model(x)
        if self.output == "probs":
            out = out.softmax(dim=1)
        elif self.output == "label":
            out = out.argmax(dim=1)
        return out.numpy()


def _query_model(model: TorchModel, output: str, budget: int | None = None) -> QueryModel:
    """The model as a gradient-free QueryModel revealing ``output`` (tiny models: the last
    parameter is the classifier's bias, so its length is the number of classes)."""
    k = model.num_classes or list(model.parameters())[-1].shape[0]
    return QueryModel(_NoGrad(model, output), output=output, budget=budget, bounds=model.bounds,
                      num_classes=k)


def _tiny_dataset(n: int = 20, shape: tuple[int, ...] = (1, 6, 6)) -> ArrayDataset:
    """Labelled tiny images (training data for the methods that take some)."""
    return ArrayDataset(x=tiny_images(n, seed=7, shape=shape), y=torch.arange(n) % 3,
                        classes=("a", "b", "c"), name="tiny")


def _call_data(method: Any, x: torch.Tensor, train: ArrayDataset | None = None) -> dict[str, Any]:
    """Stand-ins for the call-time data a metric requires (``masks``, ``train_data``)."""
    data: dict[str, Any] = {}
    for k in getattr(method, "call_data", ()):
        if k == "masks":
            data[k] = torch.zeros((len(x), *x.shape[2:]), dtype=torch.bool)
        elif k == "train_data":
            data[k] = train if train is not None else _tiny_dataset()
    return data


def _attack_subject(method: Any, model: TorchModel) -> Any:
    """What an attack is called on: the model, or a gradient-free QueryModel over it."""
    return model if method.tags.white_box else _query_model(model, method.tags.output)


def _output(spec: str, method, model, x, y, seed: int = 0, eps: float = 0.1) -> torch.Tensor:
    if registry.get(spec).kind == "attack":
        norm = method.tags.norms[0]
        if not method.tags.white_box and isinstance(model, TorchModel):
            model = _query_model(model, method.tags.output)  # black box: queries only
        return method(model, x, y, threat=ThreatModel(norm, eps), seed=seed).x_adv
    return method(model, x, y, seed=seed).attributions


# ---------------------------------------------------------------- all methods
def check_params_roundtrip(spec: str) -> None:
    """Constructor parameters are stored verbatim and rebuild an equal method."""
    m = _make(spec)
    params = m.get_params()
    again = type(m)(**params)
    assert again == m and again.get_params() == params
    assert type(m).__name__ in repr(m)


def check_unknown_param_rejected(spec: str) -> None:
    """``create`` rejects an unknown parameter and lists the accepted ones."""
    with pytest.raises(InputError, match="accepted"):
        registry.create(spec, not_a_parameter=1)


def check_input_not_mutated(spec: str) -> None:
    model, x, y = _problem()
    x0, y0 = x.clone(), y.clone()
    _output(spec, _make(spec), model, x, y)
    assert torch.equal(x, x0) and torch.equal(y, y0)


def check_dtype_device_kept(spec: str) -> None:
    model, x, y = _problem()
    out = _output(spec, _make(spec), model, x, y)
    assert out.dtype == x.dtype and out.device == x.device
    assert len(out) == len(x)


def check_state_restored(spec: str) -> None:
    """Mode, ``requires_grad`` and hooks are as before, also when forward raises."""
    inner = tiny_cnn(0)
    failing = Failing(inner.module, fail_at=2)
    model = TorchModel(failing)
    model.train()
    model.module.inner[2].requires_grad_(False)
    before_modes = [m.training for m in model.modules()]
    before_grads = [p.requires_grad for p in model.parameters()]
    hooks = [len(m._forward_hooks) for m in model.modules()]
    x = tiny_images(4)
    with pytest.raises(RuntimeError, match="on purpose"):
        _output(spec, _make(spec), model, x, torch.zeros(4, dtype=torch.long))
    assert [m.training for m in model.modules()] == before_modes
    assert [p.requires_grad for p in model.parameters()] == before_grads
    assert [len(m._forward_hooks) for m in model.modules()] == hooks
    for p in model.parameters():
        assert p.grad is None, "a method must not compute weight gradients"


def check_same_seed_same_result(spec: str) -> None:
    model, x, y = _problem()
    m = _make(spec)
    a = _output(spec, m, model, x, y, seed=3)
    b = _output(spec, m, model, x, y, seed=3)
    assert torch.equal(a, b)


def check_rejects_bad_input(spec: str) -> None:
    """NaN inputs and out-of-range labels give a clear InputError."""
    model, x, y = _problem()
    m = _make(spec)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        _output(spec, m, model, bad, y)
    with pytest.raises(InputError, match="classes"):
        _output(spec, m, model, x, torch.full_like(y, 7))


def check_rejects_nonfinite_outputs(spec: str) -> None:
    """A model answering NaN or infinite logits is refused with a ModelOutputError at the
    clean forward pass, instead of reading argmax(NaN) as a prediction."""
    m = _make(spec)
    kind = registry.get(spec).kind
    x, y = tiny_images(5), torch.zeros(5, dtype=torch.long)
    for value in (float("nan"), float("inf"), float("-inf")):
        model = TorchModel(NonFinite(tiny_cnn(0).module, value=value, row=1))
        with pytest.raises(ModelOutputError, match="NaN or infinite"):
            if kind == "attack":  # a black-box attack wraps it; the evaluator sees the logits
                m(model, x, y, threat=ThreatModel(m.tags.norms[0], 0.1))
            elif kind == "explainer":
                m(model, x, y)
            else:
                m(model, x, y, explainer="saliency", **_call_data(m, x))


def check_empty_batch(spec: str) -> None:
    """Zero samples are a normal case: an empty result of the right shapes, no error."""
    m = _make(spec)
    kind = registry.get(spec).kind
    model = tiny_cnn(0)
    x, y = tiny_images(0), torch.zeros(0, dtype=torch.long)
    if kind == "attack":
        for norm in m.tags.norms:
            for target in ((None, y) if m.tags.targeted else (None,)):
                res = m(_attack_subject(m, model), x, y, threat=ThreatModel(norm, 0.1),
                        target=target)
                assert res.x_adv.shape == x.shape and res.x_adv.dtype == x.dtype
                assert res.logits.shape == (0, 3)
                for t in (res.success, res.norms, res.clean_correct, res.adv_correct,
                          res.robust, res.y):
                    assert t.shape == (0,)
                assert res.queries is None or res.queries.shape == (0,)
                assert math.isnan(res.robust_accuracy()) and math.isnan(res.clean_accuracy())
                assert res.to_dict()["n"] == 0
    elif kind == "explainer":
        for target in (None, y):
            e = m(model, x, target)
            assert e.attributions.shape in (x.shape, (0, *x.shape[2:]))
            assert e.target.shape == (0,) and e.outputs.shape == (0,)
            assert e.delta is None or e.delta.shape == (0,)
    elif kind == "metric":
        data = _call_data(m, x)
        runs = [{"explainer": "saliency"}]
        if not m.needs_explainer:
            runs.append({"attributions": torch.zeros_like(x)})
        for judged in runs:
            res = m(model, x, **judged, **data)
            assert res.scores.shape == (0,) and res.target.shape == (0,)
            assert math.isnan(res.aggregate) and res.to_dict()["n"] == 0
    elif kind == "certifier":
        model = tiny_linear(0)  # a chain every bound certifier supports
        for norm in m.tags.norms:
            for res in (m.certify(model, x, y, ThreatModel(norm, 0.1)),
                        m.certified_radius(model, x, y, norm=norm)):
                for t in (res.label, res.radius, res.abstain, res.certified, res.y):
                    assert t.shape == (0,)
                assert math.isnan(res.certified_accuracy()) and res.to_dict()["n"] == 0
            acc = m.certified_accuracy(model, x, y, [0.1], norm=norm)
            assert list(acc) == [0.1] and math.isnan(acc[0.1])
            assert m.classify(model, x).shape == (0,)
        if hasattr(m, "bounds"):
            b = m.bounds(model, x, 0.1)
            assert b.logits_lower.shape == b.margin_lower.shape == (0, 3)
    elif kind == "defense":
        defended = m.fit(model, _tiny_dataset(8)).wrap(model)
        with defended.evaluating(), torch.no_grad():
            assert defended(x).shape == (0, 3)
        if isinstance(m, Detector):
            assert m.detect(x).shape == (0,) and m.score(x).shape == (0,)
        # fitting on no data at all: fitted, or a clear InputError (never a crash)
        empty = ArrayDataset(x=x, y=y, classes=("a", "b", "c"), name="empty")
        try:
            _make(spec).fit(model, empty)
        except InputError:
            pass


# ---------------------------------------------------------------- certifiers
def _cert_problem():
    """A tiny CNN with labels that are partly wrong: 12 samples, 3 classes."""
    model = tiny_cnn(0)
    x = tiny_images(12, seed=3)
    y = model.predict(x)
    y[::4] = (y[::4] + 1) % 3
    return model, x, y


def check_certifier_api(spec: str) -> None:
    """One API for every certifier: the base's signatures, the declared norms (others refused
    with an InputError), certified accuracy from a ThreatModel or radii alike, labels and
    ``certified`` consistent, the same seed giving the same result."""
    from scrutiny.certify.base import Certifier, CertResult

    m = _make(spec)
    assert isinstance(m, Certifier) and m.tags.norms
    for name in ("certify", "certified_at", "certified_accuracy", "certified_radius", "classify"):
        assert inspect.signature(getattr(type(m), name)) == \
            inspect.signature(getattr(Certifier, name)), f"{name} is not the protocol's"
    model, x, y = _cert_problem()
    x0 = x.clone()
    for norm in ("linf", "l2", "l1"):
        if norm not in m.tags.norms:
            with pytest.raises(InputError, match="norms"):
                m.certify(model, x, y, ThreatModel(norm, 0.1))
            with pytest.raises(InputError, match="norms"):
                m.certified_accuracy(model, x, y, [0.1], norm=norm)
    norm = m.tags.norms[0]
    threat = ThreatModel(norm, 0.05)
    res = m.certify(model, x, y, threat, seed=1)
    assert isinstance(res, CertResult) and res.eps == 0.05 and res.norm == norm
    assert torch.equal(res.y, y) and res.radius.shape == res.label.shape == (12,)
    assert not (res.certified & ((res.label != y) | res.abstain)).any()
    assert torch.equal(res.certified, res.certified_at())
    acc = m.certified_accuracy(model, x, y, threat, seed=1)
    assert acc == m.certified_accuracy(model, x, y, [0.05], norm=norm, seed=1)
    assert acc == {0.05: res.certified_accuracy()}
    again = m.certify(model, x, y, threat, seed=1)
    assert torch.equal(again.certified, res.certified) and torch.equal(again.radius, res.radius)
    assert torch.equal(x, x0)
    with pytest.raises(InputError, match="ThreatModel"):
        m.certify(model, x, y, 0.05)
    with pytest.raises(InputError, match="classes"):
        m.certify(model, x, torch.full_like(y, 7), threat)


def check_certified_is_sound(spec: str) -> None:
    """A sample certified at eps is classified correctly at x and is not broken by PGD within
    eps (for each declared norm), as judged by the classifier the certificate is about
    (:meth:`Certifier.classify`: the model, or smoothing's smoothed classifier, which may
    abstain but never answers another class). eps is the median certified radius, so
    some samples are certified and some are not."""
    m = _make(spec)
    model, x, y = _cert_problem()
    pgd = registry.create("attack:pgd", steps=20)
    for norm in m.tags.norms:
        radius = m.certified_radius(model, x, y, norm=norm).radius
        assert (radius > 0).any(), "nothing certified: the property would be vacuous"
        eps = float(radius[radius > 0].median())
        res = m.certify(model, x, y, ThreatModel(norm, eps))
        cert = res.certified
        assert cert.any()
        assert (m.classify(model, x)[cert] == y[cert]).all()
        adv = pgd(model, x[cert], y[cert], threat=ThreatModel(norm, eps))
        at_adv = m.classify(model, adv.x_adv, seed=1)
        assert ((at_adv == y[cert]) | (at_adv == -1)).all()


# ---------------------------------------------------------------- attacks
def check_threat_invariants(spec: str) -> None:
    """Property: x_adv lies in the eps-ball and the bounds, for every declared norm."""
    m = _make(spec)
    model, x, y = _problem()

    @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
    @given(norm=st.sampled_from(m.tags.norms), eps=st.floats(0.0, 3.0),
           lo=st.sampled_from([0.0, 0.2]), seed=st.integers(0, 2**16))
    def prop(norm, eps, lo, seed):
        hi = 1.0
        xs = x * (hi - lo) + lo
        threat = ThreatModel(norm, eps, (lo, hi))
        bounded = TorchModel(model.module, bounds=(lo, hi))
        res = m(bounded, xs, y, threat=threat, seed=seed)
        assert bool(threat.contains(xs, res.x_adv).all())

    prop()


def check_results_recomputed(spec: str) -> None:
    """success, norms and correctness agree with the model on x_adv."""
    model, x, y = _problem()
    threat = ThreatModel(_make(spec).tags.norms[0], 0.3)
    res = _make(spec)(model, x, y, threat=threat)
    pred = model.predict(res.x_adv)
    assert torch.equal(res.success, pred != y)
    assert torch.equal(res.adv_correct, pred == y)
    assert torch.allclose(res.norms, threat.distance(x, res.x_adv))
    assert res.robust_accuracy() <= res.clean_accuracy()


def check_robust_needs_clean_correct(spec: str) -> None:
    """Property (AutoAttack's convention): a sample is robust only if it is classified
    correctly clean and the attack failed on it, so robust accuracy <= clean accuracy, also
    on a batch where some clean inputs are misclassified (and an attack may fix them)."""
    m = _make(spec)
    model = tiny_cnn(0)
    x = tiny_images(6, seed=1)
    pred = model.predict(x)

    @settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
    @given(wrong=st.lists(st.booleans(), min_size=6, max_size=6).filter(any),
           shift=st.sampled_from([1, 2]), norm=st.sampled_from(m.tags.norms),
           eps=st.sampled_from([0.0, 0.1, 0.5, 2.0]), seed=st.integers(0, 2**16))
    def prop(wrong, shift, norm, eps, seed):
        y = torch.where(torch.tensor(wrong), (pred + shift) % 3, pred)
        res = m(_attack_subject(m, model), x, y, threat=ThreatModel(norm, eps), seed=seed)
        clean = model.predict(x) == y
        held = clean & (model.predict(res.x_adv) == y)
        assert torch.equal(res.clean_correct, clean)
        assert torch.equal(res.robust, held)
        assert not bool((res.robust & ~res.clean_correct).any())
        assert res.robust_accuracy() == float(held.float().mean()) <= res.clean_accuracy()

    prop()


def check_targeted(spec: str) -> None:
    """Targeted runs report success as reaching the target."""
    m = _make(spec)
    if not m.tags.targeted:
        with pytest.raises(InputError, match="untargeted"):
            m(*_problem()[:3], threat=ThreatModel(m.tags.norms[0], 0.1), target=0)
        return
    model, x, y = _problem()
    t = (y + 1) % 3
    res = m(model, x, y, threat=ThreatModel(m.tags.norms[0], 0.5), target=t)
    assert torch.equal(res.success, model.predict(res.x_adv) == t)


# ---------------------------------------------------------------- black-box attacks
def check_query_budget(spec: str) -> None:
    """Property: the budget is never exceeded, no error reaches the user, and the per-sample
    counts add up exactly to the queries the black box answered (evaluation excluded)."""
    m = _make(spec)
    model, x, y = _problem()

    @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
    @given(budget=st.one_of(st.integers(0, 40), st.integers(41, 400), st.none()),
           norm=st.sampled_from(m.tags.norms), seed=st.integers(0, 2**16))
    def prop(budget, norm, seed):
        qm = _query_model(model, m.tags.output, budget)
        threat = ThreatModel(norm, 0.3 if norm == "linf" else 1.0)
        res = m(qm, x, y, threat=threat, seed=seed)
        assert budget is None or qm.queries <= budget
        assert res.queries is not None and res.queries.shape == (len(x),)
        assert res.queries.dtype == torch.int64 and bool((res.queries >= 0).all())
        # the callable saw the attack's rows plus the evaluator's clean and final checks
        assert int(res.queries.sum()) == qm.queries == qm._fn.rows - 2 * len(x)
        assert res.meta["queries_total"] == qm.queries
        assert bool(threat.contains(x, res.x_adv).all())
        assert torch.equal(res.success, model.predict(res.x_adv) != y)

    prop()


def check_budget_cut_reported(spec: str) -> None:
    """Property: a budget that cut the attack short says so, per sample and in ``meta``.

    One run without a budget, then runs (same seed) with budgets below and at what it
    spent: the budget stopped the attack (``meta["stopped_by_budget"]``) exactly when the
    free run spent more than the budget; every sample the budgeted run did not break and
    that the free run went on querying is in ``budget_exhausted`` (no broken sample is);
    a budget the free run fits in changes nothing. The evaluator's two looks per sample
    are reported in ``meta["evaluator_queries"]``, outside the budget."""
    m = _make(spec)
    model, x, y = _problem()
    norm = m.tags.norms[0]
    threat = ThreatModel(norm, 0.3 if norm == "linf" else 1.0)
    free_qm = _query_model(model, m.tags.output)
    free = m(free_qm, x, y, threat=threat, seed=0)
    total = int(free.queries.sum())
    assert free.meta["evaluator_queries"] == 2 * len(x) == free_qm._fn.rows - free_qm.queries
    assert free.meta["stopped_by_budget"] is False and not free.budget_exhausted.any()
    for budget in sorted({0, 1, len(x), total // 2, total}):
        qm = _query_model(model, m.tags.output, budget)
        res = m(qm, x, y, threat=threat, seed=0)
        cut = res.budget_exhausted
        assert qm.queries <= budget and int(res.queries.sum()) == qm.queries
        assert cut is not None and cut.dtype == torch.bool and cut.shape == (len(x),)
        assert res.meta["stopped_by_budget"] is (total > budget), (budget, total)
        assert res.meta["evaluator_queries"] == 2 * len(x) == qm.evaluations
        assert not (cut & res.success).any()
        if total <= budget:
            assert torch.equal(res.queries, free.queries) and not cut.any()
        left = free.queries > res.queries  # the free run went on querying these samples
        assert bool((cut | res.success)[left].all()), (budget, cut, res.success, left)


def check_refuses_too_little_output(spec: str) -> None:
    """A QueryModel revealing less than the attack needs is refused with a clear InputError;
    one revealing more is accepted."""
    m = _make(spec)
    model, x, y = _problem()
    threat = ThreatModel(m.tags.norms[0], 0.1)
    levels = ("label", "probs", "logits")
    need = levels.index(m.tags.output)
    for out in levels[:need]:
        with pytest.raises(InputError, match="reveal"):
            m(_query_model(model, out), x, y, threat=threat)
    for out in levels[need:]:
        res = m(_query_model(model, out, budget=50), x, y, threat=threat)
        assert int(res.queries.sum()) <= 50


# ---------------------------------------------------------------- explainers
def check_shapes(spec: str) -> None:
    model, x, y = _problem()
    e = _make(spec)(model, x, y)
    assert e.attributions.shape in (x.shape, (x.shape[0], *x.shape[2:]))
    assert e.target.shape == (len(x),) and e.outputs.shape == (len(x),)
    assert torch.isfinite(e.attributions).all()


def check_batched_equals_single(spec: str) -> None:
    model, x, y = _problem()
    m = _make(spec)
    full = m(model, x, y).attributions
    single = torch.cat([m(model, x[i:i + 1], y[i:i + 1]).attributions for i in range(len(x))])
    assert torch.allclose(full, single, atol=1e-5, rtol=1e-4)


def check_linear_oracle(spec: str) -> None:
    """On ``f = Wx + b`` the attribution equals the method's closed form."""
    m = _make(spec)
    oracle = getattr(m, "linear_oracle", None)
    if oracle is None:
        pytest.skip(f"{spec} has no closed form on a linear model (needs convolutions)")
    model = tiny_linear(0)
    x = tiny_images(4)
    t = torch.tensor([0, 1, 2, 0])
    w = model.module[1].weight[t].reshape(x.shape).detach()
    e = m(model, x, t)
    assert torch.allclose(e.attributions, oracle(w, x), atol=1e-5)


def check_randomization_changes_map(spec: str) -> None:
    """The map depends on the weights (the model-randomization sanity check)."""
    model, x, y = _problem()
    m = _make(spec)
    a = m(model, x, y).attributions
    other = tiny_cnn(seed=1)
    b = m(other, x, y).attributions
    assert not torch.allclose(a, b, atol=1e-6)


COMMON: tuple[Check, ...] = (check_params_roundtrip, check_unknown_param_rejected,
                             check_input_not_mutated, check_dtype_device_kept,
                             check_state_restored, check_same_seed_same_result,
                             check_rejects_bad_input, check_rejects_nonfinite_outputs,
                             check_empty_batch)
ATTACK: tuple[Check, ...] = (check_threat_invariants, check_results_recomputed,
                             check_robust_needs_clean_correct, check_targeted)
#: Added for attacks with ``tags.white_box=False``.
BLACK_BOX: tuple[Check, ...] = (check_query_budget, check_budget_cut_reported,
                                check_refuses_too_little_output)
EXPLAINER: tuple[Check, ...] = (check_shapes, check_batched_equals_single, check_linear_oracle,
                                check_randomization_changes_map)


# ------------------------------------------------ methods on a model and a dataset
# (kinds learned, poisoning, privacy, backdoor_scan: scrutiny.models.data_method.DataMethod)
def _data_call(spec: str, model: TorchModel, data: ArrayDataset, seed: int = 0):
    method = _make(spec)
    return type(method).common_call(method, model, data, seed=seed)


def check_leaves_data_and_model(spec: str) -> None:
    """The data is not modified; the model's mode, ``requires_grad`` and hooks are as before
    and no weight gradient is left behind (also when the model's forward raises)."""
    data = _tiny_dataset()
    x0, y0 = data.x.clone(), data.y.clone()
    model = tiny_cnn(0)
    model.train()
    model.module[2].requires_grad_(False)
    modes = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    hooks = [len(m._forward_hooks) for m in model.modules()]
    _data_call(spec, model, data)
    assert torch.equal(data.x, x0) and torch.equal(data.y, y0)
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == grads
    assert [len(m._forward_hooks) for m in model.modules()] == hooks
    assert all(p.grad is None for p in model.parameters()), "weight gradients left behind"
    if registry.get(spec).cls.needs_model:  # a forward that raises mid-way (if it runs twice)
        failing = TorchModel(Failing(tiny_cnn(0).module, fail_at=2))
        failing.train()
        try:
            _data_call(spec, failing, data)
        except RuntimeError as e:
            assert "on purpose" in str(e)
        assert all(m.training for m in failing.modules())
        assert all(len(m._forward_hooks) == 0 for m in failing.modules())
        assert all(p.requires_grad and p.grad is None for p in failing.parameters())


def check_data_same_seed_same_result(spec: str) -> None:
    from scrutiny.models.data_method import DataResult, same_result

    data = _tiny_dataset()
    a = _data_call(spec, tiny_cnn(0), data, seed=3)
    b = _data_call(spec, tiny_cnn(0), data, seed=3)
    assert isinstance(a, DataResult)
    assert same_result(a, b)


PARAMS: tuple[Check, ...] = (check_params_roundtrip, check_unknown_param_rejected)
DATA_METHOD: tuple[Check, ...] = PARAMS + (check_leaves_data_and_model,
                                           check_data_same_seed_same_result)
#: Checks per kind; metrics, defenses and certifiers get the constructor contract, the empty
#: batch (metrics the refusal of non-finite outputs; certifiers the shared API and soundness
#: against PGD) here, and their other invariants in their own test modules.
KIND_CHECKS: dict[str, tuple[Check, ...]] = {
    "attack": COMMON + ATTACK, "explainer": COMMON + EXPLAINER,
    "metric": PARAMS + (check_rejects_nonfinite_outputs, check_empty_batch),
    "certifier": PARAMS + (check_empty_batch, check_certifier_api, check_certified_is_sound),
    "defense": PARAMS + (check_empty_batch,),
    **{kind: DATA_METHOD for kind in ("learned", "poisoning", "privacy", "backdoor_scan")}}


# ------------------------------------------------ real architectures (every kind)
#: The test models with the parts of real networks, by the names methods declare in
#: ``Method.architectures``: batch norm, residual additions, max and average pooling,
#: dropout (``tiny_resnet``); layer norm, GELU, self-attention (``tiny_vit``).
ARCHITECTURES: dict[str, Callable[..., TorchModel]] = {"resnet": tiny_resnet, "vit": tiny_vit}
_ARCH_SHAPE = (3, 8, 8)


def _arch_works(spec: str, model: TorchModel) -> None:
    """The basic property of the method's kind on ``model`` (2 or a few 3x8x8 images)."""
    info = registry.get(spec)
    m = _make(spec)
    x = tiny_images(2, seed=0, shape=_ARCH_SHAPE)
    y = model.predict(x)
    if info.kind == "attack":
        norm = m.tags.norms[0]
        threat = ThreatModel(norm, 0.1 if norm == "linf" else 1.0)
        res = m(_attack_subject(m, model), x, y, threat=threat, seed=0)
        assert bool(threat.contains(x, res.x_adv).all())
        pred = model.predict(res.x_adv)
        assert torch.equal(res.success, pred != y) and torch.equal(res.clean_correct, y == y)
        assert torch.equal(res.robust, pred == y)
    elif info.kind == "explainer":
        e = m(model, x, y)
        assert e.attributions.shape in (x.shape, (len(x), *x.shape[2:]))
        assert torch.isfinite(e.attributions).all()
    elif info.kind == "metric":
        res = m(model, x, y, explainer="saliency",
                **_call_data(m, x, _tiny_dataset(8, shape=_ARCH_SHAPE)))
        assert res.scores.shape == (len(x),)
        assert not torch.isinf(res.scores).any()
    elif info.kind == "certifier":
        # sound: no certified sample is broken by PGD within its certified radius
        norm = m.tags.norms[0]
        radius = m.certified_radius(model, x, y, norm=norm).radius
        cert = radius > 0
        if cert.any():
            eps = float(radius[cert].min())
            pgd = registry.create("attack:pgd", steps=10)
            adv = pgd(model, x[cert], y[cert], threat=ThreatModel(norm, eps))
            at_adv = m.classify(model, adv.x_adv, seed=1)
            assert ((at_adv == y[cert]) | (at_adv == -1)).all()
    elif info.kind == "defense":
        defended = m.fit(model, _tiny_dataset(8, shape=_ARCH_SHAPE)).wrap(model)
        with defended.evaluating(), torch.no_grad():
            out = defended(x)
        assert out.shape == (len(x), 3) and torch.isfinite(out).all()
        if isinstance(m, Detector):
            assert m.score(x).shape == (len(x),)
    else:  # a method on a model and a dataset: runs, leaves the data and the model as they were
        data = _tiny_dataset(8, shape=_ARCH_SHAPE)
        x0 = data.x.clone()
        grads = [p.requires_grad for p in model.parameters()]
        _data_call(spec, model, data)
        assert torch.equal(data.x, x0)
        assert not any(mod.training for mod in model.modules())  # built in eval mode
        assert [p.requires_grad for p in model.parameters()] == grads
        assert all(p.grad is None for p in model.parameters())


def check_architectures(spec: str) -> None:
    """On each test architecture (a ResNet, a vision transformer) the method does what it
    declares in ``architectures``: a declared one works with its kind's basic property
    (an attack's adversarial inside the threat model with its flags recomputed, an
    explainer's finite map of the input's shape, a certifier sound against PGD, a
    defense's finite outputs, a metric's scores, a data method leaving data and model
    as they were); on an undeclared one the method raises an UnsupportedModelError that
    names a layer of the model by its type and path (or the model, where no one layer is
    at fault: a defense feeding a larger input to a fixed-size transformer)."""
    from scrutiny.errors import UnsupportedModelError

    declared = registry.get(spec).cls.architectures
    assert set(declared) <= set(ARCHITECTURES), declared
    for arch, build in ARCHITECTURES.items():
        model = build(0)
        if arch in declared:
            _arch_works(spec, model)
            continue
        with pytest.raises(UnsupportedModelError) as err:
            _arch_works(spec, model)
        msg = str(err.value)  # names a layer (path and type), or else the model
        assert model.name in msg or any(f"'{n}'" in msg and type(mod).__name__ in msg
                                        for n, mod in model.module.named_modules() if n), msg


def checks_for(spec: str) -> tuple[Check, ...]:
    info = registry.get(spec)
    checks = KIND_CHECKS.get(info.kind, PARAMS)
    if info.kind == "attack" and not info.cls.tags.white_box:
        checks = checks + BLACK_BOX
    return checks + (check_architectures,)


def parametrize_with_checks(specs: list[str]):
    """``pytest.mark.parametrize("spec, check", ...)`` over every check of every method."""
    cases = [pytest.param(s, c, id=f"{s}-{c.__name__.removeprefix('check_')}")
             for s in specs for c in checks_for(s)]
    return pytest.mark.parametrize("spec, check", cases)


