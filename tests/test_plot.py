"""scrutiny.plot: symmetric colour scales with colour bars, a readable input under the map,
titles "true -> predicted (confidence%)", in the API's plots and the audit's figures."""

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from scrutiny import plot
from scrutiny.attacks import PGD
from scrutiny.errors import InputError
from scrutiny.explain import InputXGradient, IntegratedGradients
from scrutiny.types import ThreatModel


def _bars(fig: Figure) -> list:
    return [a for a in fig.axes if a.get_label() == "<colorbar>"]


def test_explanation_figure(digits_model, digits_test, tmp_path):
    x, y = digits_test.x[:4], digits_test.y[:4]
    e = IntegratedGradients(steps=16, rule="riemann_middle")(digits_model, x)
    fig = plot.explanation(x, e, y=y, model=digits_model)
    assert isinstance(fig, Figure)
    with torch.no_grad():
        p = digits_model(x).softmax(1)
    conf, pred = p.max(1)
    tops = [a for a in fig.axes if "->" in a.get_title()]
    assert [a.get_title() for a in tops] == [
        f"{int(y[i])} -> {int(pred[i])} ({100 * float(conf[i]):.0f}%)" for i in range(4)]
    bars = _bars(fig)
    assert len(bars) == 4  # one colour bar per map
    maps = e.pixel_map()
    for i, bar in enumerate(bars):  # symmetric around zero, at the map's largest magnitude
        lo, hi = bar.get_ylim()
        assert lo == -hi and hi == pytest.approx(float(maps[i].abs().max()), rel=1e-6)
    fig.savefig(tmp_path / "ig.png")
    assert (tmp_path / "ig.png").stat().st_size > 0


def test_overlay_keeps_the_input_readable():
    """Where the map is zero the overlay is fully transparent: the pixel is the input's grey."""
    x = torch.rand(1, 1, 6, 6)
    m = torch.zeros(1, 6, 6)
    m[0, 2, 3], m[0, 4, 1] = 1.0, -0.5
    fig = plot.explanation(x, m)
    ax = [a for a in fig.axes if a.get_label() != "<colorbar>"][1]
    grey, over = ax.get_images()
    assert np.allclose(grey.get_array(), x[0, 0].numpy())
    alpha = over.get_array()[..., 3]
    assert alpha[m[0] == 0].max() == 0 and alpha[2, 3] > alpha[4, 1] > 0
    # the colour at the strongest positive attribution is the map's red end
    assert over.get_array()[2, 3, 0] > 0.3 and over.get_array()[2, 3, 2] < 0.2


def test_adversarial_figure(digits_model, digits_test):
    x, y = digits_test.x[:5], digits_test.y[:5]
    res = PGD(steps=5)(digits_model, x, y, threat=ThreatModel("linf", 0.2))
    fig = plot.adversarial(res, x, model=digits_model, classes=[f"c{k}" for k in range(10)])
    assert fig._suptitle.get_text() == "pgd, linf eps=0.2"
    titles = [a.get_title() for a in fig.axes if a.get_label() != "<colorbar>"]
    conf, pred = res.logits.softmax(1).max(1)
    assert titles[5:10] == [f"c{int(y[i])} -> c{int(pred[i])} ({100 * float(conf[i]):.0f}%)"
                            for i in range(5)]
    (bar,) = _bars(fig)  # one shared scale for the perturbation row
    lo, hi = bar.get_ylim()
    assert lo == -hi and hi == pytest.approx(float((res.x_adv - x).sum(1).abs().max()), rel=1e-5)
    # without the model, the clean row says whether the clean prediction was right
    bare = plot.adversarial(res, x)
    assert bare.axes[0].get_title() == f"true {int(y[0])}"


def test_plot_refuses_what_it_cannot_draw(digits_model, digits_test):
    x = digits_test.x[:2]
    with pytest.raises(InputError, match="images"):
        plot.explanation(x.flatten(1), x.flatten(1))
    with pytest.raises(InputError, match="for the 2 inputs"):
        plot.explanation(x, torch.zeros(3, 8, 8))
    res = PGD(steps=1)(digits_model, x, digits_test.y[:2], threat=ThreatModel("linf", 0.1))
    with pytest.raises(InputError, match="not the attacked batch"):
        plot.adversarial(res, digits_test.x[:3])
    # a layer map is drawn at its own resolution, not over the input
    e = InputXGradient(layer="features.4")(digits_model, x)
    fig = plot.explanation(x, e)
    assert [a.get_ylabel() for a in fig.axes if a.get_ylabel()] == ["input", "at features.4"]
    assert len(fig.axes[2].get_images()) == 1  # the first map alone, no input under it


def test_no_pyplot_figure_is_left_open(digits_model, digits_test):
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    plot.explanation(digits_test.x[:2], torch.rand(2, 8, 8))
    assert len(plt.get_fignums()) == before
    assert matplotlib.get_backend()  # the caller's backend is not forced


def _captured(monkeypatch) -> list[Figure]:
    """The matplotlib figures the audit's figure helpers draw (before they become PNG bytes)."""
    from scrutiny.audit import figures

    drawn: list[Figure] = []
    real = figures._png
    monkeypatch.setattr(figures, "_png", lambda fig: drawn.append(fig) or real(fig))
    return drawn


def _by_name(res, drawn: list[Figure]) -> dict[str, Figure]:
    """Each report figure's matplotlib figure (the sections ran, and drew, in this order)."""
    names = [f.name for s in res.sections.values() for f in s.figures]
    assert len(names) == len(drawn)
    return dict(zip(names, drawn, strict=True))


def _symmetric_bars(fig: Figure) -> list[float]:
    """The colour bars' upper limits; each bar's scale is symmetric around zero."""
    bars = _bars(fig)
    for bar in bars:
        lo, hi = bar.get_ylim()
        assert lo == -hi and 0 < hi < np.inf
    return [bar.get_ylim()[1] for bar in bars]


def test_audit_adversarial_examples_are_titled_with_outcome_and_confidence(
        digits_model, digits_test, monkeypatch):
    """The audit's examples figure: clean and adversarial rows titled true -> predicted
    (softmax confidence of the prediction %), red where wrong; the perturbation row on one
    symmetric scale with its colour bar."""
    from scrutiny.audit import AuditConfig, run_audit
    from scrutiny.audit.context import build_context

    drawn = _captured(monkeypatch)
    cfg = AuditConfig(n_samples=16, n_examples=4, eps=(0.0, 0.2), attacks=("fgsm",),
                      sections=("examples",), skip=("verdict",))
    res = run_audit(digits_model, digits_test, cfg, progress=False)
    fig = _by_name(res, drawn)["adversarial_examples"]
    ex, x_adv = res.sections["examples"].tensors["ex"], res.sections["examples"].tensors["x_adv"]
    ctx = build_context(digits_model, digits_test, cfg)  # the audited samples
    x, y, x_adv = ctx.x[ex], ctx.y[ex], x_adv[ex]
    with torch.no_grad():
        p_clean, p_adv = digits_model(x).softmax(1), digits_model(x_adv).softmax(1)
    axes = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    n = len(ex)
    for row, p in ((axes[:n], p_clean), (axes[n:2 * n], p_adv)):
        conf, pred = p.max(1)
        for i, ax in enumerate(row):
            assert ax.get_title() == f"{int(y[i])} -> {int(pred[i])} ({100 * float(conf[i]):.0f}%)"
            assert (ax.title.get_color() == "red") == (int(pred[i]) != int(y[i]))
    assert any(a.title.get_color() == "red" for a in axes[n:2 * n])  # fgsm at 0.2 breaks some
    (top,) = _symmetric_bars(fig)  # one bar: the perturbation row's shared scale
    assert top == pytest.approx(float((x_adv - x).sum(1).abs().max()), rel=1e-5)
    data = next(f for f in res.figures if f.name == "adversarial_examples").data
    assert data["confidence_adv"] == pytest.approx(p_adv.max(1).values.tolist(), abs=1e-4)


def test_every_audit_heatmap_has_a_symmetric_colour_bar(digits_model, digits_test, monkeypatch):
    """The explanations figure and the gallery (maps over the grey input): one symmetric
    colour bar per map."""
    from scrutiny.audit import AuditConfig, run_audit

    drawn = _captured(monkeypatch)
    cfg = AuditConfig(n_samples=8, n_examples=2, eps=(0.0, 0.1), attacks=("fgsm",),
                      explainers=("saliency", "integrated_gradients"), metrics=("deletion",),
                      trust_samples=4, params={"deletion": {"steps": 4}},
                      sections=("trust",), skip=("verdict",))
    res = run_audit(digits_model, digits_test, cfg, progress=False)
    figs = _by_name(res, drawn)
    for name, overlay in (("explanations", False), ("gallery", True)):
        fig = figs[name]
        cells = [a for a in fig.axes if a.get_label() != "<colorbar>"]
        maps = [a for a in cells if a.get_title() != "input" and (
            len(a.get_images()) == 2 or a.get_images()[0].get_cmap().name != "gray")]
        assert len(maps) == 2 * len(cells) // 3  # input column, then the two explainers
        assert len(_symmetric_bars(fig)) == len(maps), name
        # the gallery draws each map over the grey input, the explanations figure on its own
        assert all((len(a.get_images()) == 2) == overlay for a in maps), name
