"""The audit's certification section: the certifier protocol only, resumable chunk by chunk."""

import time

import pytest
import torch

from scrutiny import registry
from scrutiny.audit import AuditConfig, run_audit
from scrutiny.audit.runner import build_context
from scrutiny.audit.sections import certification
from scrutiny.audit.sections.certification import CHUNK, PROBE, SPOT, certification_rows
from scrutiny.certify import CROWN, IBP, AlphaCROWN, RandomizedSmoothing
from scrutiny.certify.base import Certifier, CertResult
from scrutiny.types import Tags

#: 40 samples: chunks of 16, 16 and 8; one radius (0.02 is the only nonzero eps); no time for
#: the stronger certifiers (IBP alone).
_CFG = dict(n_samples=40, cert_samples=40, eps=(0.0, 0.02), attacks=("fgsm",),
            sections=("certification",), certifier="ibp", certify_seconds=0.0)


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
    def numbers(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert numbers(resumed.certification["rows"]) == numbers(fresh.certification["rows"])
    assert fresh.certification["rows"][0]["methods_run"] == ["ibp"]
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


class _Fake(Certifier):
    """A fake deterministic certifier: ``lie`` certifies every correctly classified sample
    (unsound), otherwise none; ``sleep`` seconds per sample."""

    tags = Tags(norms=("linf", "l2"))
    lie: bool = False
    sleep: float = 0.0

    def _certify(self, model, x, y, threat):
        time.sleep(self.sleep * len(x))
        label = model.predict(x).cpu()
        yes = torch.full((len(x),), self.lie, dtype=torch.bool)
        return CertResult(label=label, radius=torch.where(yes, threat.eps, 0.0), abstain=
                          torch.zeros_like(yes), certified=yes)


def _fake(monkeypatch, name, ladder, **attrs):
    """Register ``_Fake`` with ``attrs`` as ``certifier:name`` and make ``ladder`` the section's."""
    cls = type(name, (_Fake,), attrs)
    monkeypatch.setitem(registry._REGISTRY, f"certifier:{name}",
                        registry.MethodInfo("certifier", name, cls, "a test's fake"))
    monkeypatch.setattr(certification, "LADDER", ladder)


def test_the_union_is_never_below_a_single_method_and_rows_come_from_per_sample_lists(
        mlp, digits_test, monkeypatch):
    monkeypatch.setattr(certification, "LADDER", ("ibp", "crown", "alpha_crown"))
    cfg = AuditConfig(n_samples=16, cert_samples=16, eps=(0.0, 0.02), attacks=("fgsm",),
                      sections=("certification",), certifier="ibp", certify_seconds=600.0,
                      params={"alpha_crown": {"iterations": 2}})
    res = run_audit(mlp, digits_test, cfg, progress=False)
    data = res.certification
    union = res.sections["certification"].tensors["certified"][0]
    ctx = build_context(mlp, digits_test, cfg)
    alone = {"ibp": IBP(), "crown": CROWN(), "alpha_crown": AlphaCROWN(iterations=2)}
    alone = {m: c.certified_at(mlp, ctx.x, ctx.y, [0.02])[0.02] for m, c in alone.items()}
    for m, mask in alone.items():  # every method's certificates are in the union
        assert bool((union | ~mask).all()), m
    s = data["samples"]
    for i, m in enumerate(s["method"][0]):  # and a sample's method certifies it on its own
        assert (m is None) != bool(union[i]) and (m is None or alone[m][i])
    robust = torch.tensor(s["robust"][0])
    assert not bool((union & ~robust).any())
    # an ample budget: the strongest method tried every robust sample the others left
    left = [i for i in range(16) if robust[i] and not any(alone[m][i] for m in ("ibp", "crown"))]
    assert all("alpha_crown" in s["tried"][0][i] for i in left)
    row = data["rows"][0]
    # measured (shipped digits-mlp): IBP 5, CROWN 13 = alpha-CROWN 13 of 16, FGSM robust 15
    assert row["certified_by"]["ibp"] == int(alone["ibp"].sum()) and row["gap"] == pytest.approx(
        row["robust_accuracy"] - row["certified_accuracy"])
    assert row["methods_run"] == ["ibp", "crown", "alpha_crown"]
    # the rows are the per-sample lists' (minus the attacks' names); two shards' lists
    # concatenated give the same rows
    assert [{k: v for k, v in r.items() if k != "attacks"} for r in data["rows"]] == \
        certification_rows(s)
    halves = [{k: (v if k in ("eps", "sound") else [col[a:b] for col in v]) for k, v in s.items()}
              for a, b in ((0, 7), (7, 16))]
    joined = {k: (halves[0][k] if k in ("eps", "sound") else [x + y for x, y in zip(
        halves[0][k], halves[1][k], strict=True)]) for k in s}
    assert certification_rows(joined) == certification_rows(s)


def test_the_budget_decides_which_methods_run_and_the_result_says_so(mlp, digits_test,
                                                                       monkeypatch):
    # a sound fake "slow" certifier above IBP: 0.3 s per sample (asleep: no CPU)
    _fake(monkeypatch, "slow", ("ibp", "slow"), sleep=0.3)
    cfg = dict(n_samples=16, cert_samples=16, eps=(0.0, 0.02), attacks=("fgsm",),
               sections=("certification",), certifier="ibp")
    tried = {}
    for budget in (0.0, 3.0, 600.0):
        data = run_audit(mlp, digits_test, AuditConfig(**cfg, certify_seconds=budget),
                         progress=False).certification
        tried[budget] = sum("slow" in ms for ms in data["samples"]["tried"][0])
        # the budget (on top of IBP's run) holds, but for 0.3 s of one sample
        assert sum(r["seconds"] for r in data["runs"]) < budget + 0.3
        skipped = [k for k in data["skipped"] if k["method"] == "slow"]
        if budget == 0.0:  # no time: IBP alone, and the result says why
            assert skipped[0]["reason"].startswith("no time left to probe it")
            assert data["rows"][0]["methods_run"] == ["ibp"] and data["certifier"] == "ibp"
        elif budget == 3.0:  # probed (0.9 s), but the 10 samples left (3 s) do not fit
            assert skipped[0]["reason"] == "its estimate does not fit the budget left"
            assert skipped[0]["seconds"]["estimate"] > skipped[0]["seconds"]["left"]
        else:
            assert not skipped and data["rows"][0]["methods_run"] == ["ibp", "slow"]
    robust_left = sum(r and not c for r, c in zip(data["samples"]["robust"][0],
                                                  data["samples"]["certified"][0], strict=True))
    # measured: IBP certifies 5 of 16, FGSM leaves 15 robust: 10 samples left for "slow"
    assert tried[0.0] == 0 and tried[3.0] == PROBE + SPOT
    assert tried[600.0] == robust_left + SPOT


def test_certified_samples_are_never_broken_on_the_digits_cnn(digits_test, monkeypatch):
    from scrutiny.models import pretrained

    monkeypatch.setattr(certification, "LADDER", ("ibp", "crown"))  # alpha-CROWN: the union test
    cnn = pretrained("digits-cnn", progress=False)
    cfg = AuditConfig(n_samples=8, cert_samples=8, eps=(0.0, 0.02), attacks=("pgd",),
                      sections=("certification",), certifier="ibp", certify_seconds=600.0,
                      params={"pgd": {"steps": 20}})
    data = run_audit(cnn, digits_test, cfg, progress=False).certification
    s, row = data["samples"], data["rows"][0]
    # per sample: certified implies robust under PGD (the union of every method's)
    assert all(r or not c for c, r in zip(s["certified"][0], s["robust"][0], strict=True))
    assert row["certified_broken"] == [] and row["certified_accuracy"] <= row["robust_accuracy"]
    # measured (shipped digits-cnn and SCRUTINY_RETRAIN_SEED=1-3): certified 7-8 of 8,
    # robust under PGD 8 of 8
    assert row["certified_accuracy"] >= 0.5


def test_a_lying_certifier_is_flagged_as_a_soundness_bug(mlp, digits_test, monkeypatch):
    _fake(monkeypatch, "liar", ("ibp", "liar"), lie=True)
    cfg = dict(n_samples=16, cert_samples=16, eps=(0.0, 0.05), attacks=("fgsm",),
               certify_seconds=600.0, black_box=None)
    # as a stronger method: its probe's spot check certifies a sample FGSM broke
    res = run_audit(mlp, digits_test, AuditConfig(**cfg, certifier="ibp",
                                                  sections=("certification", "checks")),
                    progress=False)
    row = res.certification["rows"][0]
    assert row["certified_broken"] and row["certified_by"].get("liar")
    assert any(n.startswith("SOUNDNESS BUG") for n in res.sections["certification"].notes)
    flag = next(f for f in res.sections["checks"].flags if f.check == "certified above empirical")
    assert flag.flagged and flag.details["certified_broken"] == row["certified_broken"]
    # as the configured certifier: it runs alone on every sample, every broken one is caught
    res = run_audit(mlp, digits_test, AuditConfig(**cfg, certifier="liar",
                                                  sections=("certification",)), progress=False)
    s, row = res.certification["samples"], res.certification["rows"][0]
    ok = res.sections["certification"].tensors["certified"][0]  # the liar: every correct one
    assert row["certified_broken"] == [i for i in range(16) if ok[i] and not s["robust"][0][i]]
    assert row["certified_broken"] and row["methods_run"] == ["liar"]
