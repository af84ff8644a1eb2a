"""The ResNet and vision-transformer test models, and what methods do on them (the common
check ``check_architectures`` runs every registered method on both)."""

import pytest
import torch
from torch import nn

from scrutiny import registry
from scrutiny.errors import InputError, UnsupportedModelError
from scrutiny.testing import tiny_images, tiny_resnet, tiny_vit
from scrutiny.types import ThreatModel


def test_tiny_models_have_the_parts_of_real_networks():
    resnet, vit = tiny_resnet(0), tiny_vit(0)
    kinds = {type(m) for m in resnet.modules()} | {type(m) for m in vit.modules()}
    for part in (nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.LayerNorm,
                 nn.GELU, nn.Softmax):
        assert part in kinds, part
    assert not any(m.training for m in (*resnet.modules(), *vit.modules()))
    for bn in (m for m in resnet.modules() if isinstance(m, nn.BatchNorm2d)):  # not identity
        assert (bn.running_var - 1).abs().max() > 0.1 and bn.running_mean.abs().max() > 0.1
    x = tiny_images(2, shape=(3, 8, 8))
    for build in (tiny_resnet, tiny_vit):
        assert torch.equal(build(0)(x), build(0)(x)) and not torch.equal(build(0)(x), build(1)(x))


def test_grad_cam_on_the_last_block():
    """ResNet: the last residual block's output; ViT: the last block's patch tokens on the
    4x4 patch grid (the class token left out)."""
    x = tiny_images(2, shape=(3, 8, 8))
    gc = registry.create("explainer:grad_cam")
    for build, layer in ((tiny_resnet, "layer2.0"), (tiny_vit, "blocks.0")):
        e = gc(build(0), x)
        assert e.meta["layer"] == layer and e.meta["layer_map"].shape == (2, 4, 4)
        assert e.attributions.shape == (2, 8, 8) and torch.isfinite(e.attributions).all()
    with pytest.raises(InputError, match="square patch grid"):
        registry.create("explainer:grad_cam", layer="head")(tiny_vit(0), x)


@pytest.mark.parametrize("spec", ["certifier:ibp", "certifier:crown"])
def test_bound_certifiers_name_what_they_cannot_bound(spec):
    m = registry.create(spec)
    x = tiny_images(2, shape=(3, 8, 8))
    for build, words in ((tiny_resnet, ("residual", "'layer1.0.shortcut' (Identity)")),
                         (tiny_vit, ("'blocks.0.ln1' (LayerNorm)",))):
        model = build(0)
        with pytest.raises(UnsupportedModelError) as err:
            m.certify(model, x, model.predict(x), ThreatModel("linf", 0.01))
        assert all(w in str(err.value) for w in words), str(err.value)
