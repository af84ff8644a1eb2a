"""Per-sample worst case over a list of attacks (AutoAttack-style), resumable."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from scrutiny import registry
from scrutiny.attacks.base import Attack
from scrutiny.errors import InputError
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.progress import progress_bar
from scrutiny.registry import register
from scrutiny.types import Tags, ThreatModel

DEFAULT_ATTACKS: tuple[Any, ...] = ("apgd", "apgd_t", "fmn", "square")
_STATE_VERSION = 1


def _member(spec: Any) -> Attack:
    """An Attack from a spec: ``"name"``, ``("name", {params})`` or an Attack instance."""
    if isinstance(spec, Attack):
        return spec
    if isinstance(spec, str):
        return registry.create(spec, kind="attack")
    if (isinstance(spec, tuple | list) and len(spec) == 2 and isinstance(spec[0], str)
            and isinstance(spec[1], dict)):
        return registry.create(spec[0], kind="attack", **spec[1])
    raise InputError(f"each entry of attacks must be a registered attack name, a (name, params) "
                     f"pair or an Attack instance, got {spec!r}")


def _stages(name: str, value: tuple[Any, ...]) -> None:
    if not value:
        raise InputError(f"{name} must be a non-empty tuple of attack names, (name, params) "
                         f"pairs or Attack instances, got {value!r}")
    for spec in value:
        _member(spec)  # an unknown name or parameter is refused now


def _path(name: str, value: Any) -> None:
    if not isinstance(value, str | os.PathLike):
        raise InputError(f"{name} must be a path or None, got {value!r}")


def stage_name(attack: Attack) -> str:
    """Readable name of a stage: the registered name and the non-default parameters."""
    defaults = {k: p.default for k, p in registry.get(attack.name, "attack").params().items()} \
        if attack.name else {}
    changed = [f"{k}={v!r}" for k, v in attack.get_params().items()
               if k not in defaults or defaults[k] != v]
    name = attack.name or type(attack).__name__
    return f"{name}({', '.join(changed)})" if changed else name


def _fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in (x, y):
        c = t.detach().cpu().contiguous()
        h.update(str((tuple(c.shape), str(c.dtype))).encode())
        h.update(c.numpy().tobytes())
    return h.hexdigest()


@register("attack", "worst_case", paper="Croce, Hein. Reliable evaluation of adversarial "
          "robustness with an ensemble of diverse parameter-free attacks. ICML 2020",
          test_params={"attacks": (("apgd", {"steps": 3}), ("apgd_t", {"steps": 3, "targets": 2}),
                                   ("fmn", {"steps": 5}), ("square", {"max_queries": 10}))})
class WorstCase(Attack):
    """Per-sample worst case over several attacks, each run on the still-robust samples.

    The stages run in order; each attacks only the samples that every earlier
    stage failed to break (clean errors are never attacked). A sample is robust
    only if every stage failed on it, and its ``x_adv`` comes from the stage that
    broke it. This is AutoAttack's protocol; the default stages are APGD-CE,
    APGD-T (targeted DLR over the top 9 classes), the minimum-norm FMN in
    place of FAB, and the score-based Square attack (5000 queries per sample,
    as in AutoAttack), which queries the model through a
    :class:`~scrutiny.models.QueryModel` wrapper (no gradients, so it catches
    gradient masking) and attacks only the samples the white-box stages left.

    Robust accuracy after each stage and its time go to
    ``result.meta["stages"]`` (list of dicts ``name``, ``robust_accuracy``,
    ``seconds``, ``resumed``, ``queries``: the model queries a black-box
    stage spent, 0 for white-box stages, ``budget_exhausted``: the
    samples a query budget cut short in that stage, 0 for white-box stages,
    ``skipped``: None for a stage that ran, else why it did not (``"no
    sample left to attack"`` once every sample is broken, ``"needs images"``;
    its name then ends in ``(skipped: ...)``), and ``stalled``: the samples
    the stage stopped attacking because it had stalled, see
    ``stop_stalled``).

    Parameters
    ----------
    attacks : tuple
        Stages, each a registered attack name (``"apgd"``), a pair
        ``(name, {params})`` or an :class:`Attack` instance. Every stage must
        support the threat model's norm.
    state_path : str, optional
        File where the state is saved after each stage (safetensors, with a
        JSON sidecar ``state_path + ".json"``; never pickle). A run with the
        same stages, threat, seed and inputs (checked by a hash of ``x`` and
        ``y``) resumes after the last finished stage; a state that does not
        match is ignored (with a warning) and overwritten. Each stage's seed is
        drawn from the call's ``seed``, so resuming needs a fixed seed (the
        default 0), not ``seed=None``.
    stop_stalled : bool
        Stages that can tell when their search has stalled (the Square
        attack's ``stop_stalled``: a sample whose margin would not reach the
        boundary even at twice its recent pace over the queries it has left)
        stop attacking such samples instead of spending their whole budget.
        On the benchmarks' digits models it found nothing that the full
        budget finds, in a fraction of the queries (docs/benchmarks.md);
        False runs every stage to its full budget, as AutoAttack does.

    Notes
    -----
    Each stage is seeded from the call's seed and its position, so a resumed
    run gives the same result as an uninterrupted one.

    References
    ----------
    .. [1] Croce, Hein. "Reliable evaluation of adversarial robustness with an
       ensemble of diverse parameter-free attacks". ICML 2020.

    Examples
    --------
    >>> from scrutiny.models import pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> ens = WorstCase(attacks=(("apgd", {"steps": 20}), ("apgd_t", {"steps": 20, "targets": 3})))
    >>> res = ens(model, data.x[:64], data.y[:64], threat=ThreatModel("linf", 0.1))
    >>> [s["name"] for s in res.meta["stages"]]
    ['apgd(steps=20)', 'apgd_t(steps=20, targets=3)']
    >>> res.robust_accuracy() == res.meta["stages"][-1]["robust_accuracy"]
    True
    """

    tags = Tags(norms=("linf", "l2"), stochastic=True)

    attacks: tuple[Any, ...] = param(DEFAULT_ATTACKS, kind=tuple, check=_stages)
    state_path: str | None = param(None, check=_path)
    stop_stalled: bool = param(True, kind=bool)

    def _post_init(self) -> None:
        members = self.members()
        norms = tuple(n for n in ("linf", "l2", "l1") if all(n in m.tags.norms for m in members))
        if not norms:
            raise InputError("the attacks share no norm: " + ", ".join(
                f"{stage_name(m)} ({'/'.join(m.tags.norms)})" for m in members))
        # instance tags: the norms every stage supports. The ensemble itself is white-box
        # (it runs the model to find clean errors); black-box stages get a QueryModel over it.
        self.tags = Tags(norms=norms, stochastic=any(m.tags.stochastic for m in members),
                         white_box=True)

    def members(self) -> list[Attack]:
        """The stages as Attack instances."""
        return [_member(a) for a in self.attacks]

    # ------------------------------------------------------------------ state
    @staticmethod
    def _header(names: list[str], seeds: list[int], threat: ThreatModel, fp: str,
                stop_stalled: bool) -> dict[str, Any]:
        return {"version": _STATE_VERSION, "stages": names, "stage_seeds": seeds,
                "stop_stalled": stop_stalled,
                "norm": threat.norm, "eps": threat.eps if math.isfinite(threat.eps) else "inf",
                "bounds": list(threat.bounds), "inputs_sha256": fp}

    def _load(self, header: dict[str, Any], n: int) -> tuple[int, dict[str, torch.Tensor],
                                                            list[dict[str, Any]]] | None:
        path = str(self.state_path)
        if not (os.path.exists(path) and os.path.exists(path + ".json")):
            return None
        try:
            with open(path + ".json") as f:
                meta = json.load(f)
            if {k: meta.get(k) for k in header} != header:
                warnings.warn(f"the state in {path} is for other inputs, stages or threat; "
                              "starting from the first stage", stacklevel=4)
                return None
            tensors = load_file(path)
            if len(tensors["broken"]) != n:
                return None
            return int(meta["done"]), tensors, list(meta["log"])
        except Exception as e:  # a damaged state file (truncated, edited): not a reason to fail
            warnings.warn(f"the state in {path} cannot be read ({type(e).__name__}: {e}); "
                          "starting from the first stage", stacklevel=4)
            return None

    def _save(self, header: dict[str, Any], done: int, broken: torch.Tensor,
              x_adv: torch.Tensor, log: list[dict[str, Any]]) -> None:
        path = str(self.state_path)
        tmp = path + ".tmp"
        save_file({"broken": broken.cpu().contiguous(), "x_adv": x_adv.cpu().contiguous()}, tmp)
        os.replace(tmp, path)
        with open(tmp, "w") as f:
            json.dump({**header, "done": done, "log": log}, f, indent=1)
        os.replace(tmp, path + ".json")

    # ------------------------------------------------------------------ run
    def _run(self, model: TorchModel, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             target: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, Any]]:
        members = self.members()
        names = [stage_name(m) for m in members]
        # one seed per stage, drawn from the (seeded) RNG, so resuming changes nothing
        stage_seeds = torch.randint(0, 2**31 - 1, (len(members),)).tolist()
        with torch.no_grad():
            logits = model(x)
        broken = logits.argmax(1) != y  # clean errors are never attacked
        if logits.shape[1] < 3:  # the DLR loss needs 3 classes: such stages use CE instead
            for i, m in enumerate(members):
                if getattr(m, "loss", None) == "dlr":
                    members[i] = type(m)(**{**m.get_params(), "loss": "ce"})
                    names[i] += " (ce: 2 classes)"
        for i, m in enumerate(members):  # stages that can tell when they have stalled
            if "stop_stalled" in m.get_params() and m.stop_stalled != self.stop_stalled:
                members[i] = type(m)(**{**m.get_params(), "stop_stalled": self.stop_stalled})
        skip = {i for i, m in enumerate(members) if m.tags.image_only and x.dim() != 4}
        x_adv = x.clone()
        start, log = 0, []
        header = None
        if self.state_path is not None:
            header = self._header(list(names), stage_seeds, threat, _fingerprint(x, y),
                                  self.stop_stalled)
            state = self._load(header, len(x))
            if state is not None:
                start, tensors, log = state
                broken = tensors["broken"].to(x.device)
                x_adv = tensors["x_adv"].to(device=x.device, dtype=x.dtype)
                log = [{**s, "resumed": True} for s in log]
        # under another bar (the audit's) this one shows as "worst case 2/4 apgd-t" after its step
        with progress_bar(len(members), "worst case") as bar:
            bar.advance(n=start)
            for i in range(start, len(members)):
                bar.step(names[i])
                t0 = time.perf_counter()
                idx = (~broken).nonzero()[:, 0]
                queries = cut = stalled = 0
                skipped = None
                if i in skip:  # e.g. Square on tabular data
                    skipped = "needs images"
                elif not len(idx):  # every sample is broken (or a clean error): nothing to find
                    skipped = "no sample left to attack"
                else:
                    res = members[i](model, x[idx], y[idx], threat=threat, seed=stage_seeds[i])
                    hit = res.success.to(x.device)
                    x_adv[idx[hit]] = res.x_adv.to(x.device, x.dtype)[hit]
                    broken[idx[hit]] = True
                    queries = int(res.queries.sum()) if res.queries is not None else 0
                    cut = int(res.budget_exhausted.sum()) if res.budget_exhausted is not None \
                        else 0
                    if isinstance(res.meta.get("stalled"), torch.Tensor):
                        stalled = int((res.meta["stalled"] & ~res.success).sum())
                if skipped is not None:
                    names[i] += f" (skipped: {skipped})"
                log.append({"name": names[i], "robust_accuracy": float((~broken).float().mean()),
                            "seconds": time.perf_counter() - t0, "resumed": False,
                            "queries": queries, "budget_exhausted": cut, "skipped": skipped,
                            "stalled": stalled})
                if header is not None:
                    self._save(header, i + 1, broken, x_adv, log)
                bar.advance()
        return x_adv, {"stages": log}
