"""The audit's certification section: the certifier protocol only, resumable chunk by chunk."""

import pytest
import torch

from scrutiny.audit import AuditConfig, run_audit
from scrutiny.audit.runner import build_context
from scrutiny.audit.sections.certification import CHUNK
from scrutiny.certify import IBP, RandomizedSmoothing

#: 40 samples: chunks of 16, 16 and 8; one radius (0.02 is the only nonzero eps).
_CFG = dict(n_samples=40, cert_samples=40, eps=(0.0, 0.02), attacks=("fgsm",),
            sections=("certification",), certifier="ibp")


class Killed(RuntimeError):
    """Stands for a kill: not an InputError, so the audit stops."""


@pytest.fixture(scope="module")
def mlp():
    from scrutiny.models import pretrained

    return pretrained("digits-mlp", progress=False)


def test_a_killed_certification_resumes_with_the_remaining_chunks_only(mlp, digits_test,
                                                                       tmp_path, monkeypatch):
    assert CHUNK == 16
    calls = []
    real = IBP.certified_at

    def counted(self, model, x, *args, **kw):
        calls.append(len(x))
        if kill and len(calls) == 2:
            raise Killed
        return real(self, model, x, *args, **kw)

    monkeypatch.setattr(IBP, "certified_at", counted)
    kill = True
    with pytest.raises(Killed):
        run_audit(mlp, digits_test, AuditConfig(**_CFG), progress=False, state_dir=tmp_path)
    assert calls == [16, 16]
    assert len(list(tmp_path.glob("certification-*.part-chunk0.safetensors"))) == 1
    assert not list(tmp_path.glob("certification-*.json"))

    kill, calls[:] = False, []
    resumed = run_audit(mlp, digits_test, AuditConfig(**_CFG), progress=False, state_dir=tmp_path)
    assert calls == [16, 8]  # chunk 0 was loaded, not recomputed
    assert resumed.sections["robustness"].resumed
    assert not list(tmp_path.glob("*.part-*"))  # the chunks go once the section is saved

    calls[:] = []
    fresh = run_audit(mlp, digits_test, AuditConfig(**_CFG), progress=False)  # uninterrupted
    assert calls == [16, 16, 8]
    assert resumed.certification["rows"] == fresh.certification["rows"]
    got = resumed.sections["certification"].tensors["certified"]
    assert torch.equal(got, fresh.sections["certification"].tensors["certified"])
    # and they are the certifier's on the 40 samples at once
    ctx = build_context(mlp, digits_test, AuditConfig(**_CFG))
    assert torch.equal(got[0], real(IBP(), mlp, ctx.x, ctx.y, [0.02])[0.02])
    row = fresh.certification["rows"][0]
    # measured (shipped digits-mlp and SCRUTINY_RETRAIN_SEED=1-4): certified 0.30-0.375,
    # robust under FGSM 0.925-0.95
    assert row["eps"] == 0.02 and 0.1 < row["certified_accuracy"] < row["robust_accuracy"] - 0.3


def test_a_norm_the_certifier_does_not_declare_is_a_note_and_params_pass_through(
        mlp, digits_test):
    cfg = AuditConfig(**{**_CFG, "certifier": "smoothing", "n_samples": 8, "cert_samples": 8})
    res = run_audit(mlp, digits_test, cfg, progress=False)
    assert res.certification is None
    assert any("smoothing certifies l2 radii only" in n and "linf" in n for n in res.notes)

    params = {"sigma": 0.5, "n0": 8, "n": 64, "batch_size": 512}
    cfg = AuditConfig(n_samples=8, cert_samples=8, eps=(0.0, 0.5), attacks=("fgsm",), norm="l2",
                      sections=("certification",), certifier="smoothing", seed=3,
                      params={"smoothing": params})
    res = run_audit(mlp, digits_test, cfg, progress=False)
    assert {k: res.certification["params"][k] for k in params} == params
    # the numbers are the certifier's own, with its parameters and the audit's seed
    ctx = build_context(mlp, digits_test, cfg)
    want = RandomizedSmoothing(**params).certified_at(mlp, ctx.x, ctx.y, [0.5], norm="l2", seed=3)
    assert torch.equal(res.sections["certification"].tensors["certified"][0], want[0.5])
    assert res.certification["rows"][0]["certified_accuracy"] == float(want[0.5].float().mean())
