"""The audit's queries section: samples a query budget cut short are counted and shown."""

from types import SimpleNamespace

from scrutiny.audit.context import SectionResult
from scrutiny.audit.report import _ENV
from scrutiny.audit.sections.queries import query_curve
from scrutiny.models import QueryModel
from scrutiny.types import ThreatModel


def _ctx(model, x, y):
    """The part of an AuditContext that query_curve reads."""
    config = SimpleNamespace(params={"square": {"max_queries": 30}})
    return SimpleNamespace(model=model, x=x, y=y, config=config, seed=0,
                           threat=lambda: ThreatModel("linf", 0.1))


def test_the_samples_a_budget_cut_short_are_counted_and_shown(digits_model, digits_test):
    x, y = digits_test.x[:32], digits_test.y[:32]
    correct = int((digits_model.predict(x) == y).sum())
    # a budget that pays for the initial point of each sample and nothing more
    cut = query_curve(_ctx(QueryModel(digits_model, output="probs", budget=len(x)), x, y),
                      "square")
    assert cut["total_queries"] == len(x) and cut["evaluator_queries"] == 2 * len(x)
    # every correctly classified sample the initial point did not break was cut short
    assert cut["budget_exhausted"] == round(correct * (1 - cut["success_rate"])) > 0
    free = query_curve(_ctx(digits_model, x, y), "square")
    assert free["budget_exhausted"] == 0 and free["evaluator_queries"] == 2 * len(x)
    # success 0.00-0.10 with the budget, 0.17-0.40 with 30 queries per sample (shipped CNN
    # and seeds 1-4; smallest gap 0.10)
    assert free["success_rate"] > cut["success_rate"] + 0.05
    section = SectionResult("queries")
    section.data = {"square": cut}
    html = _ENV.get_template("sections/queries.html").render(
        s=section, figure=lambda name: "",
        r=SimpleNamespace(config=SimpleNamespace(norm="linf", reference_eps=0.1), n_samples=32))
    assert f"<td>{cut['budget_exhausted']} of 32 samples</td>" in html
    assert "cut short by the query budget" in html and "evaluator" in html
