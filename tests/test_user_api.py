"""What users of other libraries meet first: where eps goes, and one-line reprs of results."""

import pytest
import torch

from scrutiny import registry
from scrutiny.attacks import FGSM, PGD
from scrutiny.errors import InputError
from scrutiny.explain import IntegratedGradients, Saliency
from scrutiny.metrics import Deletion
from scrutiny.types import ThreatModel


def test_torchattacks_keywords_say_where_they_belong():
    with pytest.raises(InputError) as err:
        PGD(eps=8 / 255, alpha=2 / 255, steps=10)
    msg = str(err.value)
    assert msg.startswith("PGD does not accept 'eps', 'alpha'; accepted: steps")
    assert "threat=ThreatModel('linf', 0.1)" in msg and "use step_size=" in msg
    with pytest.raises(InputError, match="belong to the ThreatModel") as err:
        PGD(norm="Linf")
    assert "use step_size" not in str(err.value)
    with pytest.raises(InputError, match="FGSM takes no step size"):
        FGSM(alpha=0.1)
    with pytest.raises(InputError) as err:  # explainers get no attack hint
        Saliency(eps=0.1)
    assert "ThreatModel" not in str(err.value)


def test_pgd_takes_an_absolute_step(digits_model, digits_test):
    """step_size= is torchattacks' alpha: the same attack as rel_step_size = alpha / eps."""
    x, y, threat = digits_test.x[:8], digits_test.y[:8], ThreatModel("linf", 0.1)
    a = PGD(steps=5, step_size=0.025)(digits_model, x, y, threat=threat)
    b = PGD(steps=5, rel_step_size=0.25)(digits_model, x, y, threat=threat)
    assert torch.allclose(a.x_adv, b.x_adv, atol=1e-6)


def _one_line(r: object) -> str:
    s = repr(r)
    assert "\n" not in s and "tensor(" not in s and len(s) < 240, s
    return s


def test_results_have_one_line_reprs(digits_model, digits_test):
    x, y = digits_test.x[:8], digits_test.y[:8]
    res = PGD(steps=3)(digits_model, x, y, threat=ThreatModel("linf", 0.1))
    s = _one_line(res)
    assert s.startswith("AttackResult(attack='pgd', n=8, threat='linf eps=0.1', ")
    assert f"robust_accuracy={res.robust_accuracy():.4g}" in s and "x_adv=(8, 1, 8, 8)" in s
    e = IntegratedGradients(steps=8, rule="riemann_middle")(digits_model, x)
    s = _one_line(e)
    assert s.startswith("Explanation(explainer='integrated_gradients', n=8, "
                        "attributions=(8, 1, 8, 8), location='input', max_abs_delta=")
    m = Deletion(steps=4)(digits_model, x, explainer="saliency")
    assert _one_line(m) == (f"CurveResult(metric='deletion', explainer='saliency', n=8, "
                            f"aggregate={m.aggregate:.4g})")
    cert = registry.create("ibp", kind="certifier")
    c = cert.certify(digits_model, x, y, ThreatModel("linf", 0.01))
    s = _one_line(c)
    assert s.startswith(f"CertResult(certifier='ibp', n=8, norm='linf', eps=0.01, "
                        f"certified_accuracy={c.certified_accuracy():.4g}, "
                        f"certified={int(c.certified.sum())}, median_radius=")
    empty = PGD(steps=3)(digits_model, x[:0], y[:0], threat=ThreatModel("linf", 0.1))
    assert "n=0" in _one_line(empty) and "robust_accuracy=nan" in repr(empty)


def test_the_coming_from_page_runs(tmp_path, monkeypatch):
    """docs/coming-from.md: its python blocks run in order, as a user would paste them."""
    import re
    import tempfile
    from pathlib import Path

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    text = (Path(__file__).parents[1] / "docs" / "coming-from.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 4
    scope: dict = {}
    exec(compile("\n".join(blocks), "docs/coming-from.md", "exec"), scope)  # noqa: S102
    assert scope["res"].y.shape == (16,) and scope["e"].location == "features.4"
