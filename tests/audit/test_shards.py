"""Sharded audits on the local backend: shard seeds, merging, resume after a kill, no Ray."""

import json
import sys

import pytest
import torch

from scrutiny.audit import AuditConfig, run_audit, shards
from scrutiny.errors import InputError

#: 24 samples in 3 shards of 8; certification of the first 12 (one shard and a half).
CFG = dict(n_samples=24, eps=(0.0, 0.1), attacks=("fgsm",), certifier="ibp", cert_samples=12,
           certify_seconds=0.0,  # the base certifier only: which stronger ones fit is machine speed
           sections=("robustness", "headline", "certification"),
           params={"worst_case": {"attacks": (("apgd", {"steps": 3}),)}})
SIZE = 8


class Killed(RuntimeError):
    """Stands for a kill of the driver (not an InputError, so the audit stops)."""


def numbers(res) -> dict:
    """result.json's sections without timings."""
    def strip(o):
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if k not in ("seconds", "trust_seconds")}
        if isinstance(o, list):
            return [strip(v) for v in o]
        return o
    d = json.loads(json.dumps(res.to_dict(), default=str))
    return strip({k: v for k, v in d.items() if k != "sections"})


@pytest.fixture(scope="module")
def fresh(digits_model, digits_test):
    """The uninterrupted sharded run, without a store."""
    return run_audit(digits_model, digits_test, AuditConfig(**CFG), progress=False,
                     shard_size=SIZE)


def test_the_merged_shards_are_the_audits_samples(fresh, digits_model, digits_test):
    # per-sample tensors join in the audit's order; the rows are the joined masks' means
    rob, head, cert = (fresh.sections[k] for k in ("robustness", "headline", "certification"))
    assert rob.tensors["x_adv"].shape[0] == head.tensors["robust"].shape[0] == 24
    assert cert.tensors["certified"].shape == (1, 12)
    assert fresh.headline["robust_accuracy"] == int(head.tensors["robust"].sum()) / 24
    assert fresh.certification["rows"][0]["robust_accuracy"] == \
        float(head.tensors["robust"][:12].float().mean())
    assert fresh.provenance["shard_size"] == SIZE
    # each shard is the audit's samples there under its own seed: run alone, it gives the same
    from scrutiny.audit.context import build_context

    ctx = build_context(digits_model, digits_test, AuditConfig(**CFG))
    one = shards.run_shard(ctx, ["robustness", "headline"], 8, 16)
    assert torch.equal(one["headline"].tensors["robust"], head.tensors["robust"][8:16])
    assert shards.shard_context(ctx, 8, 16).seed == shards.shard_seed(0, int(ctx.idx[8]))
    assert torch.equal(shards.shard_context(ctx, 8, 16).x, ctx.x[8:16])


def test_a_killed_sharded_audit_resumes_from_its_finished_shards(
        fresh, digits_model, digits_test, tmp_path, monkeypatch):
    ran: list[tuple[int, int]] = []
    kill = [2]  # killed in the second shard of the first run
    real = shards.run_shard

    def counted(ctx, names, start, stop):
        ran.append((start, stop))
        if len(ran) in kill:
            kill.clear()
            raise Killed
        return real(ctx, names, start, stop)

    monkeypatch.setattr(shards, "run_shard", counted)
    with pytest.raises(Killed):
        run_audit(digits_model, digits_test, AuditConfig(**CFG), progress=False,
                  shard_size=SIZE, state_dir=tmp_path)
    assert len(list(tmp_path.glob("shard*.json"))) == 1  # the first shard, saved
    ran.clear()
    resumed = run_audit(digits_model, digits_test, AuditConfig(**CFG), progress=False,
                        shard_size=SIZE, state_dir=tmp_path)
    assert ran == [(8, 16), (16, 24)]  # the finished shard was loaded, not recomputed
    assert numbers(resumed) == numbers(fresh)
    assert not list(tmp_path.glob("*@*")) and not list(tmp_path.glob("shard*"))  # merged: gone
    ran.clear()  # the merged sections are saved: a third run computes nothing
    again = run_audit(digits_model, digits_test, AuditConfig(**CFG), progress=False,
                      shard_size=SIZE, state_dir=tmp_path)
    assert ran == [] and numbers(again) == numbers(fresh)
    # another shard size is another audit (its own seeds): nothing of this one is reused
    run_audit(digits_model, digits_test, AuditConfig(**CFG), progress=False,
              shard_size=12, state_dir=tmp_path)
    assert ran == [(0, 12), (12, 24)]


def test_missing_ray_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(InputError, match=r"scrutiny\[ray\]"):
        shards.get_backend("ray").check()
    with pytest.raises(InputError, match="unknown backend 'spark'"):
        shards.get_backend("spark")
    with pytest.raises(InputError, match="shard size must be >= 1, got 0"):
        shards.shard_bounds(10, 0)
