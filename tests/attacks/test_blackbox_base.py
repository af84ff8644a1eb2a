"""The black-box path of the Attack base: QueryModel in, per-sample counts, budget honoured."""

import pytest
import torch
from torch import nn

from scrutiny.attacks import PGD
from scrutiny.attacks.base import Attack, BlackBox
from scrutiny.errors import InputError, NotDifferentiableError, QueryBudgetExceeded
from scrutiny.models import QueryModel
from scrutiny.testing.models import tiny_cnn, tiny_images
from scrutiny.types import Tags, ThreatModel


class RandomSigns(Attack):
    """Toy score-free black-box attack: ``steps`` random corners of the linf ball per sample,
    sample ``i`` tried ``i + 1`` times per step (uneven per-sample counts)."""

    tags = Tags(white_box=False, output="label", norms=("linf",), stochastic=True)

    def __init__(self, *, steps: int = 3, batch_size: int | None = None) -> None:
        self.steps = steps
        self.batch_size = batch_size

    def _run(self, box, x, y, threat, target):
        assert isinstance(box, BlackBox)
        reps = torch.arange(1, len(x) + 1)
        rows = torch.repeat_interleave(torch.arange(len(x)), reps)
        for _ in range(self.steps):
            if not box.affords(len(rows)):
                break
            xq = threat.project(x[rows], x[rows] + threat.eps * torch.randn_like(x[rows]).sign())
            fooled = box.labels(xq, rows) != y[rows]
            box.best[rows[fooled]] = xq[fooled]
        return box.best


class Greedy(RandomSigns):
    """Ignores affords(): the base must stop it at the budget and return box.best."""

    def _run(self, box, x, y, threat, target):
        while True:
            xq = threat.project(x, x + threat.eps * torch.randn_like(x).sign())
            fooled = box.labels(xq) != y
            box.best[fooled] = xq[fooled]


def _problem(n=4):
    model = tiny_cnn(0)
    x = tiny_images(n)
    return model, x, model.predict(x)


def test_per_sample_counts_are_exact_and_verification_is_free():
    model, x, y = _problem()
    qm = QueryModel(model, output="label")
    res = RandomSigns(steps=3)(qm, x, y, threat=ThreatModel("linf", 0.3))
    assert res.queries.tolist() == [3, 6, 9, 12]
    assert qm.queries == 30 == res.meta["queries_total"]  # the base's checks are uncounted
    assert torch.equal(res.success, model.predict(res.x_adv) != y)
    # chunking by batch_size changes nothing but the size of the predict calls
    qm2 = QueryModel(model, output="label")
    res2 = RandomSigns(steps=3, batch_size=4)(qm2, x, y, threat=ThreatModel("linf", 0.3))
    assert torch.equal(res2.x_adv, res.x_adv) and qm2.queries == 30


def test_a_plain_module_is_wrapped_and_never_differentiated():
    model, x, y = _problem()
    res = RandomSigns(steps=2)(model.module, x, y, threat=ThreatModel("linf", 0.3))
    assert res.queries.sum() == 20
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("budget", [0, 1, 9, 10, 29, 30, 31])
def test_the_budget_is_never_exceeded_and_the_attack_stops_cleanly(budget):
    model, x, y = _problem()
    for attack in (RandomSigns(steps=3), Greedy()):
        qm = QueryModel(model, output="label", budget=budget)
        res = attack(qm, x, y, threat=ThreatModel("linf", 0.3))
        assert qm.queries <= budget and int(res.queries.sum()) == qm.queries
        assert ThreatModel("linf", 0.3).contains(x, res.x_adv).all()
    # the greedy attack ran into the budget: the base returned its best points so far
    assert res.meta.get("stopped_by_budget") and qm.queries > budget - len(x)


def test_refusals_are_clear():
    model, x, y = _problem()
    tm = ThreatModel("linf", 0.1)

    class Scores(RandomSigns):
        tags = Tags(white_box=False, output="probs", norms=("linf",))

    with pytest.raises(InputError, match="reveal 'probs'.*only 'label'"):
        Scores()(QueryModel(model, output="label"), x, y, threat=tm)
    Scores(steps=1)(QueryModel(model, output="logits"), x, y, threat=tm)  # more is fine
    with pytest.raises(InputError, match="QueryModel or a torch.nn.Module"):
        RandomSigns()(lambda z: z, x, y, threat=tm)
    with pytest.raises(InputError, match="num_classes"):
        RandomSigns()(QueryModel(lambda z: torch.zeros(len(z)).long(), output="label"), x, y,
                      threat=tm)
    with pytest.raises(InputError, match="supports norms"):
        RandomSigns()(model, x, y, threat=ThreatModel("l2", 0.1))
    with pytest.raises(NotDifferentiableError, match="black-box"):
        PGD()(QueryModel(model), x, y, threat=tm)
    with pytest.raises(InputError, match="unknown output"):
        Tags(output="scores")


def test_a_label_callable_with_num_classes_works_and_blackbox_query_refuses_past_budget():
    model, x, y = _problem()
    qm = QueryModel(lambda z: model.predict(z), output="label", num_classes=3)
    res = RandomSigns(steps=1)(qm, x, y, threat=ThreatModel("linf", 0.3))
    assert res.logits.shape == (4, 3) and torch.equal(res.logits.argmax(1), model.predict(res.x_adv))
    box = BlackBox(QueryModel(model, budget=5), x)
    with pytest.raises(QueryBudgetExceeded):
        box.query(torch.cat([x, x]))
    assert box.counts.sum() == 0 and box.model.queries == 0  # nothing run, nothing counted
    box.query(x[:2], torch.tensor([3, 3]))
    assert box.counts.tolist() == [0, 0, 0, 2] and box.remaining == 3
    assert torch.allclose(box.log_probs(x[:1]).exp().sum(), torch.tensor(1.0))


def test_seeded_and_same_result_on_a_callable_returning_probabilities():
    model, x, y = _problem()
    qm = QueryModel(lambda z: model(z).softmax(1).detach().numpy(), output="probs")
    tm = ThreatModel("linf", 0.3)
    a = RandomSigns()(qm, x, y, threat=tm, seed=1)
    b = RandomSigns()(qm, x, y, threat=tm, seed=1)
    assert torch.equal(a.x_adv, b.x_adv) and qm.queries == 60
    assert isinstance(model.module, nn.Module)


def test_fit_and_affords_record_the_samples_the_budget_cut():
    model, x, y = _problem()
    box = BlackBox(QueryModel(model, budget=5), x)
    assert torch.equal(box.fit(torch.arange(4)), torch.arange(4)) and not box.stopped
    assert box.fit(torch.arange(4), cost=2).tolist() == [0, 1]  # 5 // 2 samples fit
    assert box.cut.tolist() == [False, False, True, True] and box.stopped
    assert box.affords(5, torch.tensor([0])) and not box.affords(6, torch.tensor([0]))
    assert box.cut.tolist() == [True, False, True, True]
    free = BlackBox(QueryModel(model), x)
    assert len(free.fit(torch.arange(4), cost=10**9)) == 4 and free.affords(10**9)
    assert not free.stopped and not free.cut.any()
    assert not box.affords(6) and box.cut.all()  # no rows: every sample


@pytest.mark.parametrize("attack", [RandomSigns(steps=3), Greedy()], ids=["affords", "raises"])
def test_a_budget_that_stopped_the_attack_is_reported_per_sample(attack):
    model, x, y = _problem()
    tm = ThreatModel("linf", 0.3)
    qm = QueryModel(model, output="label", budget=9)
    res = attack(qm, x, y, threat=tm)
    # RandomSigns stops on affords() after one step (10 queries), Greedy on the exception
    assert res.meta["stopped_by_budget"] is True
    assert torch.equal(res.budget_exhausted, ~res.success)  # every unbroken sample was cut
    # the evaluator's looks: the clean inputs and x_adv, one row each, outside the budget
    assert res.meta["evaluator_queries"] == 2 * len(x) == qm.evaluations
    assert qm.queries == int(res.queries.sum()) <= 9
    free = RandomSigns(steps=3)(QueryModel(model, output="label"), x, y, threat=tm)
    assert free.meta["stopped_by_budget"] is False and not free.budget_exhausted.any()
    enough = RandomSigns(steps=3)(QueryModel(model, output="label", budget=30), x, y, threat=tm)
    assert enough.meta["stopped_by_budget"] is False and torch.equal(enough.x_adv, free.x_adv)


def test_evaluator_looks_are_counted_apart_and_reset():
    model, x, y = _problem()
    qm = QueryModel(model, output="label", budget=0)
    res = RandomSigns(steps=1)(qm, x, y, threat=ThreatModel("linf", 0.0))  # nothing to attack
    assert qm.queries == 0 and qm.evaluations == 8 == res.meta["evaluator_queries"]
    assert res.meta["stopped_by_budget"] is False and not res.budget_exhausted.any()
    qm.reset()
    assert qm.queries == qm.evaluations == 0
