"""Users' models on the command line: ``--model 'module:factory(num_classes=K)'`` with
``--weights`` as safetensors or a torch state dict (``weights_only``), at 32x32x3 and
224x224x3; torchvision's resnet18 where torchvision imports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from scrutiny.attacks import PGD
from scrutiny.cli import resolve
from scrutiny.errors import InputError
from scrutiny.explain import Saliency
from scrutiny.models.zoo import ResNet
from scrutiny.types import ThreatModel

IMAGENET_MEAN, IMAGENET_STD = "0.485,0.456,0.406", "0.229,0.224,0.225"


def _weights(net: torch.nn.Module, tmp_path):
    """The state dict as safetensors, as a plain torch file and as a training checkpoint."""
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pt")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")
    return [tmp_path / "w.safetensors", tmp_path / "w.pt", tmp_path / "ckpt.pth"]


def _images(tmp_path, side: int, n: int = 2):
    """An .npz of ``n`` 3 x side x side images in [0, 1], labels 0 and 9 (10 classes)."""
    g = torch.Generator().manual_seed(0)
    path = tmp_path / f"images{side}.npz"
    np.savez(path, x=torch.rand(n, 3, side, side, generator=g).numpy(),
             y=np.array([0, 9] * (n // 2), dtype=np.int64))
    return str(path)


def _reference(net: torch.nn.Module, x: torch.Tensor, mean: str, std: str) -> torch.Tensor:
    m = torch.tensor([float(v) for v in mean.split(",")]).view(1, 3, 1, 1)
    s = torch.tensor([float(v) for v in std.split(",")]).view(1, 3, 1, 1)
    with torch.no_grad():
        return net.eval()((x - m) / s)


def test_factory_arguments_and_torch_state_dicts_load_the_same_network(tmp_path):
    torch.manual_seed(0)
    net = ResNet(in_channels=3, num_classes=10, widths=(4, 8))
    with torch.no_grad():  # running statistics that are not the initial ones
        net.train()(torch.rand(8, 3, 32, 32))
    spec = "scrutiny.models.zoo:ResNet(num_classes=10, widths=(4, 8))"
    data = _images(tmp_path, 32)
    for path in _weights(net, tmp_path):
        model, ds = resolve(spec, path, data, IMAGENET_MEAN, IMAGENET_STD, "cpu", progress=False)
        assert model.mean is not None
        assert torch.equal(model.logits(ds.x), _reference(net, ds.x, IMAGENET_MEAN, IMAGENET_STD))
    # a pickle of anything but tensors is refused; so are arguments that are not numbers
    torch.save({"state_dict": net.state_dict(), "note": _Opaque()}, tmp_path / "evil.pt")
    with pytest.raises(InputError, match="pickle is refused"):
        resolve(spec, tmp_path / "evil.pt", data, device="cpu", progress=False)
    with pytest.raises(InputError, match="name=number"):
        resolve("os:system(command='true')", None, data, device="cpu", progress=False)
    # a head of the wrong size: the error says how to give the factory the class count
    with pytest.raises(InputError, match=r"zoo:ResNet\(num_classes=10\)"):
        resolve("scrutiny.models.zoo:ResNet(num_classes=4)", None, data, device="cpu",
                progress=False)


class _Opaque:
    """Not a tensor: torch.load(weights_only=True) refuses to unpickle it."""


def test_attack_and_explain_at_224x224(tmp_path):
    torch.manual_seed(0)
    net = ResNet(in_channels=3, num_classes=10, widths=(4, 8))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    model, ds = resolve("scrutiny.models.zoo:ResNet(num_classes=10, widths=(4, 8))",
                        tmp_path / "w.safetensors", _images(tmp_path, 224), IMAGENET_MEAN,
                        IMAGENET_STD, "cpu", progress=False)
    _attack_and_explain(model, ds)


def _attack_and_explain(model, ds):
    """A PGD at 4/255 and a saliency map on one 224x224x3 input: in the ball, in [0, 1], a
    nonzero map of the input's size."""
    ds = ds.subset([0])
    res = PGD(steps=2)(model, ds.x, ds.y, threat=ThreatModel("linf", 4 / 255), seed=0)
    assert res.x_adv.shape == ds.x.shape
    assert float((res.x_adv - ds.x).abs().max()) <= 4 / 255 + 1e-6
    assert 0.0 <= float(res.x_adv.min()) and float(res.x_adv.max()) <= 1.0
    expl = Saliency().explain(model, ds.x[:1], target=ds.y[:1])
    assert tuple(expl.attributions.shape[-2:]) == (224, 224)
    assert float(expl.attributions.abs().sum()) > 0


def _torchvision():
    try:
        import torchvision
    except Exception as e:  # PyPI's torchvision links a CUDA torch: beside a CPU torch its
        # compiled ops do not register and the import fails ('torchvision::nms does not exist')
        pytest.skip(f"torchvision does not import here ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}); it needs a torchvision "
                    "built for this torch (docs/audit.md, 'Bring your model')")
    return torchvision


def test_torchvision_resnet18_through_the_cli_path(tmp_path):
    tv = _torchvision()
    torch.manual_seed(0)
    net = tv.models.resnet18(num_classes=10)
    data = _images(tmp_path, 224)
    for path in _weights(net, tmp_path)[:2]:  # safetensors and torch.load(weights_only=True)
        model, ds = resolve("torchvision.models:resnet18(num_classes=10)", path, data,
                            IMAGENET_MEAN, IMAGENET_STD, "cpu", progress=False)
        assert torch.equal(model.logits(ds.x), _reference(net, ds.x, IMAGENET_MEAN, IMAGENET_STD))
    _attack_and_explain(model, ds)
