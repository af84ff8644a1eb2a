"""OnnxModel: an exported ONNX file answers as the torch model does, as a counted black box."""

import pytest
import torch

from scrutiny.errors import InputError, QueryBudgetExceeded
from scrutiny.testing.models import tiny_cnn, tiny_images

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx", reason="torch.onnx.export needs the onnx package")

from scrutiny.models import OnnxModel  # noqa: E402


def _export(module, path, dynamic=True):
    kw = {"dynamic_axes": {"x": {0: "n"}, "y": {0: "n"}}} if dynamic else {}
    with pytest.warns(DeprecationWarning):  # the legacy (TorchScript) exporter: no onnxscript
        torch.onnx.export(module.eval(), (torch.rand(2, 1, 6, 6),), str(path), dynamo=False,
                          input_names=["x"], output_names=["y"], **kw)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_cnn(0)
    d = tmp_path_factory.mktemp("onnx")
    return model, _export(model.module, d / "dyn.onnx"), _export(model.module, d / "fixed.onnx",
                                                                  dynamic=False)


@pytest.mark.parametrize("which", [1, 2])
def test_matches_torch_and_counts(exported, which):
    model, path = exported[0], exported[which]  # dynamic and fixed (=2) batch dimension
    x = tiny_images(5)
    om = OnnxModel(path, budget=7)
    assert torch.allclose(om.predict(x), model.logits(x), atol=1e-5)
    assert om.queries == 5
    probs = OnnxModel(path, output="probs").predict(x)
    assert torch.allclose(probs, model.logits(x).softmax(1), atol=1e-5)
    labels = OnnxModel(path, output="label").predict(x)
    assert torch.equal(labels, model.predict(x))
    with pytest.raises(QueryBudgetExceeded):
        om.predict(x)  # 5 + 5 > 7: refused, not run
    assert om.queries == 5


def test_gradients_unavailable(exported):
    from scrutiny.attacks import PGD
    from scrutiny.errors import NotDifferentiableError
    from scrutiny.types import ThreatModel

    om = OnnxModel(exported[1])
    x = tiny_images(2)
    with pytest.raises(NotDifferentiableError):
        PGD(steps=2)(om, x, om.predict(x).argmax(1), threat=ThreatModel("linf", 0.1))


def test_bad_arguments(exported, tmp_path):
    with pytest.raises(InputError, match="no ONNX file"):
        OnnxModel(tmp_path / "missing.onnx")
    with pytest.raises(InputError, match="cannot reveal"):
        OnnxModel(exported[1], returns="label", output="probs")
    with pytest.raises(InputError, match="output"):
        OnnxModel(exported[1], output="scores")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(InputError, match="cannot load"):
        OnnxModel(tmp_path / "junk.onnx")
    with pytest.raises(InputError, match="rejected"):
        OnnxModel(exported[1]).predict(torch.rand(2, 1, 7, 7))


def test_a_decision_based_attack_on_an_onnx_file(digits_model, digits_test, tmp_path):
    from scrutiny.attacks.blackbox import BoundaryAttack
    from scrutiny.types import ThreatModel

    model = digits_model
    path = tmp_path / "digits.onnx"
    with pytest.warns(DeprecationWarning):
        torch.onnx.export(model.module.eval(), (torch.rand(1, 1, 8, 8),), str(path), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "n"}})
    x = digits_test.x[:4]
    y = model.predict(x)
    om = OnnxModel(path, output="label", budget=1000)  # num_classes read from the graph
    res = BoundaryAttack(steps=100)(om, x, y, threat=ThreatModel("l2", float("inf")))
    assert res.success.all() and om.queries <= 1000
    assert torch.equal(model.predict(res.x_adv), res.logits.argmax(1))
