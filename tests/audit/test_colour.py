"""Audits of colour inputs: defaults chosen from the input shape, figures drawn in colour."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from scrutiny.audit import run_audit, write_report
from scrutiny.audit.config import DEFAULT_EPS, INPUT_DEFAULTS, AuditConfig, input_defaults
from scrutiny.audit.context import build_context
from scrutiny.data import load_colour_digits
from scrutiny.errors import InputError
from scrutiny.models import pretrained
from scrutiny.testing.models import tiny_resnet


def test_defaults_are_chosen_from_the_input_shape():
    assert input_defaults((1, 8, 8)).kind == input_defaults((64,)).kind == "small"
    assert input_defaults((1, 28, 28)).kind == "small"
    assert input_defaults((3, 32, 32)).kind == "colour"
    assert input_defaults((3, 224, 224)).kind == input_defaults((1, 128, 128)).kind == "large"
    with pytest.raises(InputError, match="input_shape"):
        input_defaults((3, 0, 32))
    # small inputs keep the digits grid and the methods' own batch sizes (numbers unchanged)
    small = AuditConfig().for_input((1, 8, 8))
    assert small.eps == DEFAULT_EPS["linf"] and small.reference_eps == 0.1
    assert small.batch_size is None
    for norm, ref in (("linf", 8 / 255), ("l2", 0.5), ("l1", 12.0)):
        cfg = AuditConfig(norm=norm).for_input((3, 32, 32))
        assert cfg.eps == INPUT_DEFAULTS["colour"].eps[norm] and cfg.reference_eps == ref
        assert cfg.batch_size == 128
    large = AuditConfig().for_input((3, 224, 224))
    assert large.reference_eps == 4 / 255 and max(large.eps) == 8 / 255
    assert large.batch_size == 16 < 128
    # what is given stays; a resolved configuration is resolved once
    given = AuditConfig(eps=(0.0, 0.1), batch_size=7).for_input((3, 224, 224))
    assert (given.eps, given.reference_eps, given.batch_size) == ((0.0, 0.1), 0.1, 7)
    assert AuditConfig(reference_eps=2 / 255).for_input((3, 32, 32)).reference_eps == 2 / 255
    assert large.for_input((1, 8, 8)) is large
    with pytest.raises(InputError, match="batch_size"):
        AuditConfig(batch_size=0)


def test_the_batch_size_caps_the_methods_the_audit_creates():
    data = load_colour_digits(split="test").subset(slice(0, 4))
    ctx = build_context(tiny_resnet(num_classes=10), data, AuditConfig(
        n_samples=4, attacks=("fgsm",), certifier="crown", batch_size=8))
    assert ctx.config.batch_size == 8
    assert ctx.create("explainer", "saliency").batch_size == 8  # its own default: 256
    assert ctx.create("certifier", "crown").batch_size == 8     # 32
    cfg = AuditConfig(n_samples=4, attacks=("fgsm",), params={"saliency": {"batch_size": 64}})
    ctx = build_context(tiny_resnet(num_classes=10), data, cfg)
    assert ctx.config.batch_size == 128 and ctx.config.reference_eps == 8 / 255
    assert ctx.create("explainer", "saliency").batch_size == 64  # params win
    assert ctx.create("certifier", "crown").batch_size == 32     # below the cap: its own


def _chroma_share(png: bytes, rows: float = 1.0, cols: float = 1.0) -> float:
    """Share of pixels in colour (channels differing by more than 0.1) in the top ``rows``
    and left ``cols`` fractions of a figure: where it draws the inputs, not the maps."""
    rgb = imread(io.BytesIO(png))[..., :3]
    h, w = rgb.shape[:2]
    part = rgb[:round(h * rows), :round(w * cols)]
    return float(((part.max(-1) - part.min(-1)) > 0.1).mean())


def test_audit_of_the_colour_resnet_shows_colour_images(tmp_path):
    # the zoo's CIFAR-size ResNet (shipped weights), normalised inside: 32x32x3 in [0, 1]
    model = pretrained("colour-digits-resnet", progress=False)
    assert model.mean is not None and tuple(model.mean.shape) == (3,)
    data = load_colour_digits(split="test")
    cfg = AuditConfig(n_samples=8, n_examples=2, explore_samples=2, attacks=("fgsm",),
                      headline_attack=None, explainers=("saliency",), metrics=(),
                      sections=("examples", "explanations", "explorer"))
    res = run_audit(model, data, cfg, progress=False)
    out = write_report(res, tmp_path).parent
    # the defaults of 32x32 colour inputs, in pixel units
    assert res.config.reference_eps == 8 / 255 and res.config.batch_size == 128
    saved = json.loads((out / "result.json").read_text())
    assert saved["config"]["reference_eps"] == pytest.approx(8 / 255)
    assert saved["clean_accuracy"] == res.clean_accuracy >= 0.75  # shipped weights: 1.0
    rows = saved["robustness"]["fgsm"]
    assert [r["eps"] for r in rows] == pytest.approx(list(res.config.eps))
    assert rows[0]["robust_accuracy"] == res.clean_accuracy
    # measured: 1.0 down to 0.0 at 12/255 and 16/255 (fgsm, 8 samples)
    assert rows[-1]["robust_accuracy"] < rows[0]["robust_accuracy"]
    html = (out / "report.html").read_text()
    figs = {f.name: f for f in res.figures}
    # colour inputs drawn as RGB (not channel 0 in grey): the clean row of the examples,
    # the input column of the explanations (measured: 0.41 and 0.48 in colour; 0.0 and
    # 0.002 for the same audit of the inputs made grey)
    for name, part in (("adversarial_examples", (0.33, 1.0)), ("explanations", (1.0, 0.5))):
        png = figs[name].png
        assert base64.b64encode(png).decode() in html
        assert _chroma_share(png, *part) > 0.15, (name, _chroma_share(png, *part))
    # the explorer shows the inputs as the model takes them: pixels in [0, 1], the
    # normalisation (inside the model) not applied, three distinct channels
    s = figs["explorer"].data["samples"][0]
    assert figs["explorer"].data["rgb"] is True
    clean = np.asarray(s["clean"])
    assert clean.shape == (32, 32, 3)
    x = data.x[int(s["index"])].permute(1, 2, 0).numpy()
    assert np.allclose(clean, x, atol=1e-4)
    assert np.abs(clean[..., 0] - clean[..., 1]).max() > 0.05
    assert np.abs(clean[..., 1] - clean[..., 2]).max() > 0.05


def test_a_grey_drawing_of_the_same_figure_has_no_colour():
    # the check above is discriminative: the same figure with the channels made equal
    from scrutiny.audit import figures

    x = load_colour_digits(split="test").x[:2]
    y = torch.tensor([0, 1])
    grey = x.mean(1, keepdim=True).expand_as(x)
    args = (y, y, y, tuple("0123456789"), "t")
    colour_png, _ = figures.adversarial_examples(x, x.flip(0), *args)
    grey_png, _ = figures.adversarial_examples(grey, grey.flip(0), *args)
    # measured: 0.33 in colour, 0.0 in grey
    assert _chroma_share(colour_png, 0.33) > 0.15 > 0.01 > _chroma_share(grey_png, 0.33)
