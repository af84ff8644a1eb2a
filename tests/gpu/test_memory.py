"""Out-of-memory handled, not fatal (scrutiny.models.memory): on the CPU, with a module that
raises torch.OutOfMemoryError above k rows, every kind of method finishes at a smaller batch,
warns once, and returns what the normal run returns."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from scrutiny.attacks import PGD
from scrutiny.certify import RandomizedSmoothing
from scrutiny.explain import Saliency, SmoothGrad
from scrutiny.metrics import Infidelity
from scrutiny.models import TorchModel
from scrutiny.models.memory import BatchSizeWarning, is_out_of_memory
from scrutiny.testing.models import tiny_cnn, tiny_images, tiny_linear
from scrutiny.types import ThreatModel


class Limited(nn.Module):
    """``module``, but a batch of more than ``k`` rows runs out of memory (CUDA's error, or the
    CPU allocator's with ``cpu=True``)."""

    def __init__(self, module: nn.Module, k: int, cpu: bool = False) -> None:
        super().__init__()
        self.inner, self.k, self.cpu, self.refused = module, k, cpu, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > self.k:
            self.refused += 1
            if self.cpu:
                raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: "
                                   "can't allocate memory: you tried to allocate 1099511627776 bytes")
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.inner(x)


def limited(model: TorchModel, k: int, cpu: bool = False) -> TorchModel:
    return TorchModel(Limited(model.module, k, cpu), bounds=model.bounds)


def run_both(fn, model, k, cpu=False):
    """``fn(model)`` normally and on the limited twin: (normal, limited, warnings, twin)."""
    normal = fn(model)
    twin = limited(model, k, cpu)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = fn(twin)
    # the method's warnings (the clean forward pass of the call says so on its own)
    return normal, out, [x for x in w if issubclass(x.category, BatchSizeWarning)
                         and "clean forward" not in str(x.message)
                         and "check of x_adv" not in str(x.message)], twin


def test_out_of_memory_errors_are_recognised():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


@pytest.mark.parametrize("cpu", [False, True])
def test_explainer_halves_its_batch_size_and_matches_the_normal_run(cpu):
    model, x = tiny_cnn(), tiny_images(10)
    sal = Saliency(batch_size=8)
    normal, out, w, twin = run_both(lambda m: sal.explain(m, x), model, 3, cpu)
    assert torch.equal(out.attributions, normal.attributions)
    assert torch.equal(out.target, normal.target)
    assert len(w) == 1 and str(w[0].message) == (
        "Saliency ran out of memory at batch_size=8; it finished at batch_size=2")
    assert sal.batch_size == 8 and sal.get_params()["batch_size"] == 8  # hyperparameter unchanged
    refused = twin.module.refused
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BatchSizeWarning)  # the clean pass says so each call
        warnings.filterwarnings("error", "Saliency ran", BatchSizeWarning)  # once: starts at 2
        again = sal.explain(twin, x)
    # only the clean pass (10 rows, then 5) was refused again, not the explainer's passes
    assert twin.module.refused - refused == 2
    assert torch.equal(again.attributions, normal.attributions)


def test_stochastic_explainer_reseeds_so_the_retry_equals_the_normal_run():
    model, x = tiny_cnn(), tiny_images(3)
    sg = SmoothGrad(n_samples=8, batch_size=24)  # 24 noisy copies a pass; fits at 6
    normal, out, w, _ = run_both(lambda m: sg.explain(m, x, seed=3), model, 6)
    assert torch.allclose(out.attributions, normal.attributions, atol=1e-6)
    assert len(w) == 1 and "batch_size=6" in str(w[0].message)


def test_attack_without_batch_size_splits_its_samples():
    model, x = tiny_cnn(), tiny_images(9)
    y = model.predict(x)
    pgd = PGD(steps=5, random_start=False)
    threat = ThreatModel("linf", 0.1)
    normal, out, w, _ = run_both(lambda m: pgd(m, x, y, threat=threat), model, 4)
    assert torch.allclose(out.x_adv, normal.x_adv, atol=1e-6)
    assert torch.equal(out.success, normal.success) and torch.equal(out.robust, normal.robust)
    assert len(w) == 1 and str(w[0].message) == (
        "PGD ran out of memory at batch_size=9; it finished at batch_size=4")


def test_certifier_and_metric_finish_at_a_smaller_batch():
    model, x = tiny_linear(), tiny_images(10)
    y = model.predict(x)
    smooth = RandomizedSmoothing(sigma=0.25, n0=8, n=32, batch_size=64)
    threat = ThreatModel("l2", 0.1)
    normal, out, w, _ = run_both(lambda m: smooth.certify(m, x, y, threat, seed=1), model, 20)
    assert torch.equal(out.certified, normal.certified) and torch.equal(out.radius, normal.radius)
    assert len(w) == 1 and str(w[0].message) == (
        "RandomizedSmoothing ran out of memory at batch_size=64; it finished at batch_size=16")
    metric = Infidelity(n_samples=4, batch_size=16)  # 40 perturbed rows in passes of 16
    normal, out, w, _ = run_both(lambda m: metric.evaluate(m, x, explainer="saliency"), model, 10)
    assert torch.allclose(out.scores, normal.scores, atol=1e-6, equal_nan=True)
    assert len(w) == 1 and str(w[0].message) == (
        "Infidelity ran out of memory at batch_size=16; it finished at batch_size=8")


def test_one_row_that_does_not_fit_is_still_an_error():
    model, x = tiny_cnn(), tiny_images(4)
    with pytest.raises(torch.OutOfMemoryError) as err:
        Saliency(batch_size=4).explain(limited(model, 0), x)
    assert any("out of memory" in n for n in getattr(err.value, "__notes__", []))
