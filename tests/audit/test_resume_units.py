"""The long sections resume inside themselves: robustness per (attack, eps), the headline per chunk."""

import pytest
import torch

from scrutiny.attacks.base import Attack
from scrutiny.audit import AuditConfig, run_audit
from scrutiny.audit.sections import headline


class Killed(RuntimeError):
    """Stands for a kill: not an InputError, so the audit stops."""


#: 40 samples and a weak curve, so the headline attack gets two chunks (32 + the rest).
_CFG = dict(n_samples=40, eps=(0.0, 0.05), attacks=("fgsm",), sections=("robustness", "headline"),
            params={"worst_case": {"attacks": (("apgd", {"steps": 5}),)}})


def _numbers(rows):
    return {k: [{f: v for f, v in r.items() if f != "seconds"} for r in rs]
            for k, rs in rows.items()}


def test_a_killed_audit_resumes_inside_its_sections_with_the_same_numbers(
        digits_test, tmp_path, monkeypatch):
    from scrutiny.models import pretrained

    model = pretrained("digits-cnn", progress=False)
    calls: list[tuple[str, int]] = []
    real = Attack.__call__
    kill_at: list[int] = []

    def counted(self, model, x, y, **kw):
        if self.name in ("fgsm", "worst_case"):
            calls.append((self.name, len(x)))
            if len(calls) in kill_at:
                raise Killed
        return real(self, model, x, y, **kw)

    monkeypatch.setattr(Attack, "__call__", counted)
    monkeypatch.setattr(headline, "CHUNK", 32)  # small chunks: two of them on 40 samples
    fresh = run_audit(model, digits_test, AuditConfig(**_CFG), progress=False)
    CHUNK = headline.CHUNK
    n_todo = fresh.headline["strong_attack"]["samples_attacked"]
    assert n_todo > CHUNK, "the curve must leave more than one chunk for the headline"
    assert calls == [("fgsm", 40), ("fgsm", 40), ("worst_case", 32), ("worst_case", n_todo - 32)]

    # killed in the robustness section after its first unit (eps 0), then, rerun, in the
    # headline's second chunk: the rerun computes eps 0.05 and the first chunk only
    for kill, expect in (([2], [("fgsm", 40)]), ([3], [("fgsm", 40), ("worst_case", 32)])):
        calls[:], kill_at[:] = [], kill
        with pytest.raises(Killed):
            run_audit(model, digits_test, AuditConfig(**_CFG), progress=False, state_dir=tmp_path)
        assert calls[:-1] == expect  # what ran before the kill (each finished unit saved)
    calls[:], kill_at[:] = [], []
    resumed = run_audit(model, digits_test, AuditConfig(**_CFG), progress=False,
                        state_dir=tmp_path)
    assert calls == [("worst_case", n_todo - 32)]  # only the unit the kill interrupted
    assert _numbers(resumed.robustness) == _numbers(fresh.robustness)
    assert resumed.headline["robust_accuracy"] == fresh.headline["robust_accuracy"]
    assert resumed.headline["strong_attack"]["stages"][0]["robust_accuracy"] == \
        fresh.headline["strong_attack"]["stages"][0]["robust_accuracy"]
    for name in ("robust", "x_adv"):
        assert torch.equal(resumed.sections["headline"].tensors[name],
                           fresh.sections["headline"].tensors[name])
    assert not list(tmp_path.glob("*.part-*"))  # units go once their section is saved
