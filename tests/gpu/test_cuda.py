"""Every attack, explainer and certifier runs on CUDA when the model is on CUDA.

Marked ``gpu``; skipped (reason "no CUDA device") where torch sees none. Each registered
method (its ``test_params``) runs on the tiny CNN on the CPU and on its copy on CUDA: the
result must live where the inputs live, and a deterministic method's must equal the CPU's
to a float tolerance. A real CUDA out-of-memory error (a module allocating a third of the
card per row) must be answered by a smaller batch, not a crash.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from scrutiny import registry
from scrutiny.errors import InputError
from scrutiny.models import QueryModel, TorchModel
from scrutiny.models.memory import BatchSizeWarning
from scrutiny.registry import list_methods
from scrutiny.testing.models import tiny_cnn, tiny_images
from scrutiny.types import ThreatModel

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

KINDS = ("attack", "explainer", "certifier")
SPECS = [s for s in list_methods() if registry.get(s).kind in KINDS]


def _run(spec: str, model: TorchModel, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The method's outputs on ``(model, x, y)``: tensors by name."""
    info = registry.get(spec)
    m = registry.create(spec, **info.test_params)
    try:
        return _outputs(info.kind, m, model, x, y)
    except InputError as e:  # a method that cannot go without its call-time data
        needed = [k for k in getattr(m, "call_data", ()) if k in str(e)]
        if needed:
            pytest.skip(f"{spec} needs call-time data {needed[0]!r}")
        raise


def _outputs(kind: str, m, model: TorchModel, x: torch.Tensor, y: torch.Tensor
             ) -> dict[str, torch.Tensor]:
    if kind == "attack":
        subject = model if m.tags.white_box else QueryModel(model, output=m.tags.output)
        res = m(subject, x, y, threat=ThreatModel(m.tags.norms[0], 0.1), seed=0)
        out = {"x_adv": res.x_adv, "success": res.success}
        if res.queries is not None:
            out["queries"] = res.queries
        return out
    if kind == "explainer":
        return {"attributions": m.explain(model, x, seed=0).attributions}
    norm = m.tags.norms[0]
    res = m.certify(model, x, y, ThreatModel(norm, 0.01), seed=0)
    return {"certified": res.certified, "radius": res.radius,
            "classify": m.classify(model, x, seed=0)}


@pytest.mark.parametrize("spec", SPECS)
def test_runs_on_cuda_as_on_the_cpu(spec):
    model, x = tiny_cnn(), tiny_images(5)
    y = model.predict(x)
    cpu = _run(spec, model, x, y)
    cuda_model = copy.deepcopy(model).to("cuda")
    gpu = _run(spec, cuda_model, x.cuda(), y.cuda())
    # inputs given on CUDA give per-input tensors on CUDA (the summaries are on the CPU)
    for name in ("x_adv", "attributions"):
        if name in gpu:
            assert gpu[name].device.type == "cuda", name
    # the model and its parameters stay where they were
    assert all(p.device.type == "cuda" for p in cuda_model.parameters())
    if registry.get(spec).cls.tags.stochastic:
        for name, t in gpu.items():
            assert t.shape == cpu[name].shape, name
        return
    for name, t in gpu.items():
        a, b = t.cpu(), cpu[name]
        if a.dtype == torch.bool or not a.is_floating_point():
            # iterative searches may part ways on a float tie: at most one sample differs
            assert int((a != b).flatten(1).any(1).sum() if a.dim() > 1 else (a != b).sum()) <= 1, name
        elif name == "x_adv":
            assert (a - b).abs().amax(dim=tuple(range(1, a.dim()))).le(1e-3).sum() >= len(a) - 1
        else:
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3, equal_nan=True)


def test_stochastic_method_seeded_on_cuda_repeats():
    model = tiny_cnn().to("cuda")
    x = tiny_images(4).cuda()
    sg = registry.create("explainer:smoothgrad", n_samples=8)
    a, b = sg.explain(model, x, seed=5).attributions, sg.explain(model, x, seed=5).attributions
    assert a.device.type == "cuda" and torch.equal(a, b)


class Hungry(nn.Module):
    """Allocates ``share`` of the card per input row (a real CUDA out-of-memory error above
    about 1 / share rows), then applies ``module``."""

    def __init__(self, module: nn.Module, share: float) -> None:
        super().__init__()
        self.inner = module
        self.bytes = int(torch.cuda.get_device_properties(0).total_memory * share)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        held = torch.empty(len(x) * self.bytes, dtype=torch.uint8, device=x.device)
        out = self.inner(x)
        del held
        return out


def test_real_cuda_out_of_memory_finishes_at_a_smaller_batch():
    base = tiny_cnn()
    x = tiny_images(8)
    expected = registry.create("explainer:saliency", batch_size=8).explain(base, x).attributions
    model = TorchModel(Hungry(copy.deepcopy(base.module), 0.3), bounds=base.bounds).to("cuda")
    sal = registry.create("explainer:saliency", batch_size=8)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = sal.explain(model, x.cuda()).attributions
    torch.testing.assert_close(out.cpu(), expected, atol=1e-5, rtol=1e-4)
    mine = [str(m.message) for m in w if issubclass(m.category, BatchSizeWarning)
            and str(m.message).startswith("Saliency ran")]
    assert len(mine) == 1 and "batch_size=8" in mine[0]
