"""The ``scrutiny`` command line: audit, compare, serve, attack, explain, learned, poison, scan,
privacy, trust, certify, reprogram, train, list.

Errors on bad input print one line (``error: ...``) and exit with status 2; an endpoint
(``--model http(s)://...``) that stays down, with status 3 (``attack --out`` then saved its
state: the same command resumes).
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from scrutiny import progress, registry
from scrutiny.cli.learned import (
    LEARNED_IMAGE_ONLY,
    LEARNED_OPTIONS,
    RUNS,
    LearnedJob,
    as_numpy,
    run_generic,
)
from scrutiny.errors import InputError, ModelUnavailableError, ScrutinyError
from scrutiny.params import docstring_params

app = typer.Typer(help="Explain, attack, defend and certify PyTorch classifiers.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
out = Console()
err = Console(stderr=True)

ModelOpt = Annotated[str | None, typer.Option(
    "--model", help="Zoo model (digits-cnn, digits-mlp, synthetic-cnn, breast-cancer-mlp, "
    "colour-digits-resnet), 'module:factory' returning an nn.Module (numeric keyword "
    "arguments allowed: 'torchvision.models:resnet18(num_classes=10)'), a .safetensors file "
    "written by scrutiny "
    "(scrutiny poison), or an Open Inference Protocol endpoint "
    "http(s)://host:port/v2/models/NAME (KServe, MLServer, Triton; queried as a black box). "
    "Default: the zoo model of --data.")]
WeightsOpt = Annotated[Path | None, typer.Option(
    "--weights", help="Weights for a 'module:factory' model: .safetensors, or a torch state "
    "dict (.pt, .pth, .bin) read with torch.load(weights_only=True).")]
DataOpt = Annotated[str | None, typer.Option(
    "--data", help="digits, digits28, synthetic, breast_cancer, colour_digits (32x32x3), or a "
    "path (.npz, image folder, "
    "MNIST or CIFAR-10 binary files). Default: the zoo model's data, else digits.")]
MeanOpt = Annotated[str | None, typer.Option(
    "--mean", help="Per-channel mean applied inside the model, e.g. '0.5,0.5,0.5'.")]
StdOpt = Annotated[str | None, typer.Option("--std", help="Per-channel std, with --mean.")]
ParamOpt = Annotated[list[str] | None, typer.Option(
    "--param", "-p", help="Method hyperparameter NAME=VALUE (repeatable).")]
DeviceOpt = Annotated[str | None, typer.Option(
    "--device", help="cpu or cuda; default cuda when available.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of every stochastic step.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
TokenEnvOpt = Annotated[str | None, typer.Option(
    "--token-env", help="Endpoint: the environment variable holding its credential (sent as "
    "'Authorization: Bearer ...'). Default: SCRUTINY_TOKEN when it is set. The token itself "
    "never goes on the command line.")]
TokenFileOpt = Annotated[Path | None, typer.Option(
    "--token-file", help="Endpoint: a file whose first line is its credential.")]
OutputKindOpt = Annotated[str | None, typer.Option(
    "--output", help="Endpoint: what it answers: logits, probs or label. Default: logits.")]
CaBundleOpt = Annotated[Path | None, typer.Option(
    "--ca-bundle", help="Endpoint (https): CA certificates its TLS certificate is verified "
    "with (default: the system's; verification is always on).")]
RateLimitOpt = Annotated[float | None, typer.Option(
    "--rate-limit", help="Endpoint: most requests started a second (retries included).")]
ConcurrencyOpt = Annotated[int | None, typer.Option(
    "--max-concurrency", help="Endpoint: most requests in flight at once (default 1).")]

#: The environment variable an endpoint's credential is read from when it is set and
#: neither --token-env nor --token-file is given.
TOKEN_ENV = "SCRUTINY_TOKEN"


def _quiet_option(command: Callable[..., None]) -> Callable[..., None]:
    """Run a command inside :func:`scrutiny.progress.quiet` when its ``--quiet`` is given."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        with progress.quiet(kwargs.get("quiet", False)):
            command(*args, **kwargs)

    return run


def _floats(s: str | None, what: str) -> list[float] | None:
    if s is None:
        return None
    try:
        return [float(v) for v in s.split(",") if v.strip()]
    except ValueError as e:
        raise InputError(f"{what} must be comma-separated numbers, got {s!r}") from e


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``["steps=10", "loss=margin"]`` -> ``{"steps": 10, "loss": "margin"}``."""
    params: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"--param must be NAME=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            params[k.strip()] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            params[k.strip()] = v
    return params


def _device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda asked for, but no CUDA device is available")
    return torch.device(device)


def is_endpoint(model: str | None) -> bool:
    """Whether ``--model`` names an endpoint (``http://`` or ``https://``)."""
    return isinstance(model, str) and model.lower().startswith(("http://", "https://"))


def endpoint_options(model: str | None, *, output: str | None = None,
                     token_env: str | None = None, token_file: Path | None = None,
                     budget: int | None = None, ca_bundle: Path | None = None,
                     rate_limit: float | None = None,
                     max_concurrency: int | None = None) -> dict[str, Any] | None:
    """The :class:`~scrutiny.models.HttpModel` keywords of ``--output``, ``--token-env``,
    ``--token-file``, ``--budget``, ``--ca-bundle``, ``--rate-limit`` and
    ``--max-concurrency`` for an endpoint ``--model``; None for another model (then the
    endpoint options must not be given). The credential is named (an environment
    variable, default :data:`TOKEN_ENV` when set, or a file), never given."""
    if not is_endpoint(model):
        given = [o for o, v in (("--output", output), ("--token-env", token_env),
                                ("--token-file", token_file), ("--ca-bundle", ca_bundle),
                                ("--rate-limit", rate_limit),
                                ("--max-concurrency", max_concurrency)) if v is not None]
        if given:
            raise InputError(f"{', '.join(given)}: only for an endpoint --model "
                             f"http(s)://host:port/v2/models/NAME (--model is {model or 'the zoo model'!r})")
        return None
    if token_env is not None and token_file is not None:
        raise InputError("give --token-env or --token-file, not both")
    if token_env is None and token_file is None and os.environ.get(TOKEN_ENV):
        token_env = TOKEN_ENV
    if budget is not None and budget < 0:
        raise InputError(f"--budget must be >= 0, got {budget}")
    limits = {k: v for k, v in (("rate_limit", rate_limit), ("max_concurrency", max_concurrency))
              if v is not None}
    return {"output": output or "logits", "token_env": token_env,
            "token_file": None if token_file is None else str(token_file), "budget": budget,
            "ca_bundle": None if ca_bundle is None else str(ca_bundle), **limits}


def black_box_methods(kind: str, output: str = "logits") -> list[str]:
    """Registered methods of ``kind`` that need only queries an endpoint answering ``output``
    reveals (``tags.white_box=False``; an explainer needs scores)."""
    from scrutiny.models.query import REVEALS

    names = []
    for spec in registry.list_methods(kind):
        t = registry.get(spec).cls.tags
        need = "probs" if kind == "explainer" else t.output
        if not t.white_box and REVEALS[output] >= REVEALS[need]:
            names.append(spec.split(":", 1)[1])
    return names


def refuse_white_box(kind: str, name: str, output: str) -> InputError:
    """The one-line error for a white-box method asked to run on an endpoint."""
    alts = black_box_methods(kind, output)
    hint = (f"use a black-box {kind} ({', '.join(alts)}; 'scrutiny list {kind}' marks them)"
            if alts else f"no black-box {kind} works on an endpoint answering {output!r} only")
    return InputError(f"{name} is a white-box {kind} (it needs the model's gradients); the "
                      f"model is an endpoint that only answers queries: {hint}")


def resolve_endpoint(url: str, data: str | None, *, split: str = "test", output: str = "logits",
                     budget: int | None = None, **options: Any):
    """The :class:`~scrutiny.models.HttpModel` at ``url`` and the data, checked against its
    metadata (input shape, number of classes) before any query; ``options``: its other
    keywords (credential, ``ca_bundle``, limits: :func:`endpoint_options`)."""
    from scrutiny.data import load
    from scrutiny.models import HttpModel

    ds = load(data or "digits", split=split)
    hm = HttpModel(url, output=output, budget=budget,
                   num_classes=ds.num_classes if output == "label" else None, **options)
    hm.metadata()  # not a query: unreachable, unknown or refusing servers stop here
    try:
        hm._check_shape((len(ds.x), *ds.x.shape[1:]))
    except InputError as e:
        raise InputError(f"--data {ds.name} does not fit the endpoint: {e}") from None
    if hm.num_classes is not None and hm.num_classes != ds.num_classes:
        raise InputError(f"the endpoint has {hm.num_classes} outputs, {ds.name} has "
                         f"{ds.num_classes} classes")
    return hm, ds


def _endpoint_rows(table: Table, model: Any) -> None:
    """An endpoint's usage (:meth:`HttpModel.usage`) as rows of a result table."""
    u = model.usage()
    per = u["seconds_per_query"]
    for k, v in (("endpoint", u["url"]), ("endpoint queries", u["queries"]),
                 ("evaluator queries", u["evaluations"]), ("requests", u["requests"]),
                 ("seconds per query", "n/a" if per is None else f"{per:.4f}")):
        table.add_row(k, escape(str(v)))


def _write_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # a reader (a resumed run) never sees half a record


#: Exit status of a command whose endpoint stayed down (ModelUnavailableError); ``attack
#: --out`` has then saved its state, and the same command resumes from it.
EXIT_UNAVAILABLE = 3


def _npz_path(save: Path) -> Path:
    """Where ``np.savez`` writes ``save`` (it adds ``.npz`` to a name without it)."""
    return save if save.suffix == ".npz" else save.with_name(save.name + ".npz")


def _resume_key(atk: Any, m: Any, x: torch.Tensor, y: torch.Tensor, **settings: Any
                ) -> dict[str, Any]:
    """What an interrupted endpoint attack's saved state is valid for: the attack and its
    settings, the endpoint, the budget and the inputs (their SHA-256, as
    :class:`~scrutiny.attacks.WorstCase` fingerprints its state)."""
    from scrutiny.attacks.ensemble import _fingerprint

    key = {"version": 1, "method": atk.name, "params": atk.get_params(), **settings,
           "endpoint": m.url, "output": m.output, "inputs_sha256": _fingerprint(x, y)}
    return json.loads(json.dumps(key, default=str))  # as it reads back from the JSON


def _load_resume(save: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The state ``attack --out save`` left when its endpoint stayed down (None: none, or
    for other settings, or unreadable: the attack starts afresh)."""
    rec_path, npz_path = save.with_suffix(".json"), _npz_path(save)
    if not (rec_path.is_file() and npz_path.is_file()):
        return None
    try:
        rec = json.loads(rec_path.read_text(encoding="utf-8"))
        if rec.get("status") != "interrupted":
            return None
        if rec.get("resume") != key:
            err.print(escape(f"warning: {rec_path} holds an interrupted run of other settings, "
                             "endpoint or inputs: starting afresh"))
            return None
        with np.load(npz_path) as z:
            state = {k: torch.from_numpy(z[k]) for k in ("x_adv", "queries")}
        if len(state["queries"]) != key["n"]:
            raise ValueError(f"{len(state['queries'])} samples saved, {key['n']} attacked")
        return {**state, "budget_spent": int(rec["budget_spent"]), "runs": int(rec["runs"]),
                "evaluations": int(rec["evaluator_queries_total"])}
    except Exception as e:  # a damaged state (truncated, edited): not a reason to stop
        err.print(escape(f"warning: cannot read the saved state {rec_path} "
                         f"({type(e).__name__}: {e}): starting afresh"))
        return None


def _attack_endpoint(atk: Any, m: Any, x: torch.Tensor, y: torch.Tensor, threat: Any,
                     target: int | None, seed: int, save: Path | None,
                     key: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Run ``atk`` on the endpoint ``m``, resumable: ``(result, totals over every run)``.

    When the endpoint stays down (:class:`ModelUnavailableError`) the attack's best points
    so far (unverified), the queries answered per sample and the queries charged to the
    budget go to ``save`` (``.npz`` and ``.json``, ``"status": "interrupted"``) and the
    error, naming them, goes on. A rerun with the same settings resumes: the saved points
    are verified (the evaluator's look, outside the budget), the samples they fool are
    kept (``finished``), the others are attacked again from their clean inputs, and the
    budget is what the earlier runs left (never exceeded over all of them).
    """
    from scrutiny.types import AttackResult

    n = len(y)
    state = _load_resume(save, key) if save is not None else None
    x_adv, queries = x.clone(), torch.zeros(n, dtype=torch.long)
    finished = torch.zeros(n, dtype=torch.bool)
    spent, evals, runs = 0, 0, 1
    clean = adv = None
    rest = torch.arange(n)
    if state is not None:
        x_adv, queries = state["x_adv"].to(x.dtype), state["queries"].long()
        spent, evals, runs = state["budget_spent"], state["evaluations"], state["runs"] + 1
        if m.budget is not None:
            m.budget = max(m.budget - spent, 0)
    try:
        if state is not None:  # verify the saved points: the evaluator's, outside the budget
            scores, _ = m._evaluate(torch.cat([x, x_adv]))
            clean, adv = scores[:n], scores[n:]
            pred = adv.argmax(1)
            finished = pred != y if target is None else pred == target
        rest = (~finished).nonzero()[:, 0]
        res = atk(m, x[rest], y[rest], threat=threat, target=target, seed=seed) \
            if len(rest) else None
    except ModelUnavailableError as e:
        part = getattr(e, "partial", None)
        if part is not None:
            x_adv[rest] = part["x_adv"].cpu().to(x.dtype)
            queries[rest] += part["queries"].cpu().long()
        if save is None:
            raise ModelUnavailableError(f"{e}; nothing saved: give --out FILE.npz to keep the "
                                        "best points so far and resume") from e
        spent_now = spent + m.queries
        np.savez_compressed(save, x=x.numpy(), x_adv=x_adv.numpy(), y=y.numpy(),
                            queries=queries.numpy(), finished=finished.numpy())
        _write_record(save.with_suffix(".json"), {
            "status": "interrupted", "error": str(e), "resume": key, "runs": runs,
            "budget": key.get("budget"), "budget_spent": spent_now,
            "queries_total": int(queries.sum()), "evaluator_queries_total": evals + m.evaluations,
            "finished": int(finished.sum()), "endpoint": m.usage()})
        raise ModelUnavailableError(
            f"{e}; saved the best points so far (unverified) of {n - int(finished.sum())} "
            f"unfinished sample(s) and {spent_now} queries spent in {_npz_path(save)} and "
            f"{save.with_suffix('.json')}: rerun the same command to resume") from e
    totals = {"runs": runs, "budget_spent": spent + m.queries,
              "evaluator_queries_total": evals + m.evaluations}
    if state is None:
        return res, {**totals, "queries_total": int(res.queries.sum())}
    # resumed: the samples the saved points fool, and this run's result for the others
    logits, clean_ok = adv.clone(), clean.argmax(1) == y
    exhausted = torch.zeros(n, dtype=torch.bool)
    meta: dict[str, Any] = {"attack": atk.name}
    if res is not None:
        x_adv[rest], logits[rest] = res.x_adv.cpu().to(x.dtype), res.logits.cpu()
        clean_ok[rest], queries[rest] = res.clean_correct, queries[rest] + res.queries.cpu()
        if res.budget_exhausted is not None:
            exhausted[rest] = res.budget_exhausted
        meta = {**res.meta, "stopped_by_budget": bool(res.meta.get("stopped_by_budget"))}
    pred = logits.argmax(1)
    tt = None if target is None else torch.full_like(y, target)
    resolved = threat if res is None else res.threat
    merged = AttackResult(
        x_adv=x_adv, success=pred != y if tt is None else pred == tt,
        norms=resolved.distance(x, x_adv), logits=logits, clean_correct=clean_ok,
        adv_correct=pred == y, y=y, target=tt, threat=resolved, queries=queries,
        meta={**meta, "resumed_samples": int(finished.sum()),
              "queries_total": int(queries.sum())}, budget_exhausted=exhausted)
    return merged, {**totals, "queries_total": int(queries.sum())}


def resolve(model: str | None, weights: Path | None, data: str | None, mean: str | None = None,
            std: str | None = None, device: str | None = None, split: str = "test",
            progress: bool = True, endpoint: dict[str, Any] | None = None):
    """Load the model and data the options name, and check they fit together.

    An endpoint ``--model http(s)://...`` gives an :class:`~scrutiny.models.HttpModel`
    (``endpoint``: the keywords of :func:`endpoint_options`), checked against the data by
    its metadata (:func:`resolve_endpoint`)."""
    from scrutiny.data import load
    from scrutiny.models import RECIPES, TorchModel, load_built, load_factory, load_weights, pretrained

    if is_endpoint(model):
        given = [o for o, v in (("--weights", weights), ("--mean", mean), ("--std", std),
                                ("--device", device)) if v is not None]
        if given:
            raise InputError(f"{', '.join(given)} do not apply to an endpoint (it runs the "
                             "model, its normalisation and its device itself)")
        return resolve_endpoint(model, data, split=split,
                                **(endpoint or endpoint_options(model) or {}))
    by_data: dict[str, str] = {}
    for name, r in RECIPES.items():
        by_data.setdefault(r.dataset, name)
    if model is None:
        model = by_data.get(data or "digits")
        if model is None:
            load(data, split=split)  # a missing path is reported first
            raise InputError(f"no zoo model for data {data!r}: give --model module:factory "
                             "--weights file.safetensors")
    if model in RECIPES:
        if weights is not None:
            raise InputError("--weights is for 'module:factory' models, not zoo models")
        data = data or RECIPES[model].dataset
        m = pretrained(model, progress=progress)
    elif model.endswith(".safetensors"):  # a network saved with its architecture (save_built)
        if weights is not None:
            raise InputError("--model FILE.safetensors holds its weights; drop --weights")
        m = load_built(model)
        if mean is not None or std is not None:
            m = TorchModel(m.module, mean=_floats(mean, "--mean"), std=_floats(std, "--std"),
                           num_classes=m.num_classes, name=m.name)
    elif ":" in model:
        net = load_factory(model)
        if weights is not None:
            load_weights(net, weights)
        elif _randomly_initialised(model, net):
            err.print(f"[yellow]warning:[/] {model} has no --weights and its factory gives "
                      "different weights at each call: it looks untrained")
        if isinstance(net, TorchModel):  # the factory set bounds and normalisation itself
            if mean is not None or std is not None:
                raise InputError(f"{model} returns a TorchModel with its own normalisation; "
                                 "do not give --mean/--std")
            m = net
        else:
            m = TorchModel(net, mean=_floats(mean, "--mean"), std=_floats(std, "--std"),
                           name=model)
    else:
        raise InputError(f"--model must be a zoo model ({', '.join(RECIPES)}), "
                         f"'module:factory' or a .safetensors file written by scrutiny, got "
                         f"{model!r}")
    ds = load(data or "digits", split=split)
    m = m.to(_device(device))
    try:
        with torch.no_grad(), m.evaluating():
            probe = m(ds.x[:2].to(m.device))
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"the model fails on inputs of shape {tuple(ds.x.shape[1:])} from "
                         f"{ds.name}: {e}") from e
    if probe.shape[1] != ds.num_classes:
        hint = (f" (give the factory the class count, e.g. --model "
                f"'{model.split('(')[0]}(num_classes={ds.num_classes})')"
                if ":" in model and not model.endswith(".safetensors") else "")
        raise InputError(f"the model has {probe.shape[1]} outputs, {ds.name} has "
                         f"{ds.num_classes} classes{hint}")
    return m, ds


def find_method(name: str) -> registry.MethodInfo:
    """The registered method ``name``: ``"attack:pgd"``, or ``"pgd"`` when one kind has it."""
    if ":" in name:
        return registry.get(name)
    found = [s for s in registry.list_methods() if s.split(":", 1)[1] == name]
    if not found:
        raise InputError(f"unknown kind or method {name!r}; kinds: {', '.join(registry.KINDS)} "
                         "('scrutiny list' shows the methods)")
    if len(found) > 1:
        raise InputError(f"{name!r} names {' and '.join(found)}: give one of them")
    return registry.get(found[0])


def method_tags(info: registry.MethodInfo) -> list[str]:
    """What a method declares about itself (its ``Tags``), in words."""
    t = info.cls.tags
    words = []
    if info.kind in ("attack", "explainer"):  # a black-box explainer needs scores (probs)
        words.append("white-box (gradients)" if t.white_box else
                     f"black-box (queries revealing {'probs' if info.kind == 'explainer' else t.output})")
    if info.kind in ("attack", "certifier"):
        words.append("norms " + ", ".join(t.norms))
    if info.kind == "attack":
        words += [w for w, on in (("targeted", t.targeted), ("minimum-norm", t.minimum_norm)) if on]
    words += [w for w, on in (("stochastic", t.stochastic), ("images only", t.image_only)) if on]
    return words


def method_params(info: registry.MethodInfo) -> list[tuple[str, str, str, str]]:
    """``(name, default, constraint, description)`` of each hyperparameter of a method.

    The constraint comes from the declaration (:func:`scrutiny.params.param`), the
    description is the first sentence of the class docstring's ``Parameters`` entry.
    """
    declared = getattr(info.cls, "hyperparameters", {})
    text = docstring_params(info.cls.__doc__)
    rows = []
    for name, p in info.params().items():
        default = "required" if p.default is inspect.Parameter.empty else repr(p.default)
        constraint = declared[name].constraint() if name in declared else ""
        rows.append((name, default, constraint, _plain(text.get(name, ""))))
    return rows


def _plain(rst: str) -> str:
    """Docstring text for the help: ``:func:`~a.b``` -> ```b```, double backticks -> single."""
    rst = re.sub(r":[a-z]+:`~[\w.]*?(\w+)`", r"`\1`", rst)
    return re.sub(r":[a-z]+:`([^`]+)`", r"`\1`", rst).replace("``", "`")


def method_markdown(info: registry.MethodInfo) -> str:
    """One method as markdown: kind, class, paper, tags and a table of its parameters."""
    lines = [f"### `{info.spec}`", "",
             f"`{info.cls.__module__}.{info.cls.__name__}`: {_summary(info)}", "",
             f"Paper: {info.paper}", ""]
    tags = method_tags(info)
    if tags:
        lines += [f"Tags: {', '.join(tags)}", ""]
    rows = method_params(info)
    if rows:
        lines += ["| parameter | default | constraint | description |", "|---|---|---|---|"]
        lines += ["| " + " | ".join(f"`{c}`" if i < 2 else c for i, c in enumerate(_md(r))) + " |"
                  for r in rows]
    else:
        lines.append("No hyperparameters.")
    return "\n".join(lines) + "\n"


def _summary(info: registry.MethodInfo) -> str:
    doc = (info.cls.__doc__ or "").strip()
    return _plain(doc.splitlines()[0]) if doc else ""


def _md(cells: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(c.replace("|", "\\|").replace("`", "") if i < 2 else c.replace("|", "\\|")
                 for i, c in enumerate(cells))


def _architectures(info: registry.MethodInfo) -> str:
    """The test architectures the method declares it works on (``Method.architectures``,
    checked both ways by the common check ``check_architectures``), or "none"."""
    return ", ".join(info.cls.architectures) or "none"


def methods_markdown(kind: str | None = None) -> str:
    """The registry as markdown: one table of the methods, then each method's parameters
    (docs/methods.md is this output)."""
    specs = registry.list_methods(kind)
    lines = ["| method | class | reference | architectures |", "|---|---|---|---|"]
    for spec in specs:
        info = registry.get(spec)
        lines.append(f"| `{spec}` | `{info.cls.__module__}.{info.cls.__name__}` | {info.paper} | "
                     f"{_architectures(info)} |")
    sections = [method_markdown(registry.get(spec)) for spec in specs]
    return "\n".join(lines) + "\n\n## Parameters\n\n" + "\n".join(sections)


def _print_method(info: registry.MethodInfo) -> None:
    out.print(f"[bold]{info.spec}[/]: {escape(_summary(info))}")
    out.print(f"kind: {info.kind}")
    out.print(f"class: {escape(info.cls.__module__)}.{info.cls.__name__}")
    out.print(f"paper: {escape(info.paper)}")
    out.print(f"tags: {escape(', '.join(method_tags(info)) or 'none')}")
    rows = method_params(info)
    if not rows:
        out.print("no hyperparameters")
        return
    table = Table(title=f"{info.name} parameters")
    table.add_column("parameter", no_wrap=True)
    table.add_column("default", max_width=24, overflow="fold")
    table.add_column("constraint", max_width=24)
    table.add_column("description")
    for row in rows:
        table.add_row(*(escape(c) for c in row))
    out.print(table)


@app.command("list")
def list_cmd(name: Annotated[str | None, typer.Argument(
                 metavar="KIND|METHOD",
                 help="A kind (attack, explainer, metric, defense, certifier, learned) to list its "
                 "methods, or a method (pgd, attack:pgd) to show its parameters.")] = None,
             markdown: Annotated[bool, typer.Option(help="Print markdown.")] = False) -> None:
    """List the registered methods and their papers, or show one method's parameters."""
    if name is not None and name not in registry.KINDS:
        info = find_method(name)
        if markdown:
            print(method_markdown(info), end="")
        else:
            _print_method(info)
        return
    if markdown:
        print(methods_markdown(name), end="")
        return
    table = Table("method", "access", "architectures", "reference", title="scrutiny methods")
    for spec in registry.list_methods(name):  # access: what an endpoint (--model http...) runs
        info = registry.get(spec)
        access = ("" if info.kind not in ("attack", "explainer") else
                  "white-box" if info.cls.tags.white_box else "black-box")
        table.add_row(spec, access, _architectures(info), info.paper)
    out.print(table)


def _randomly_initialised(spec: str, net: torch.nn.Module) -> bool:
    """Whether a second call of the factory gives other weights (a random initialisation,
    not weights the factory loads or seeds itself)."""
    from scrutiny.models import load_factory

    other = load_factory(spec).state_dict()
    return any(k not in other or other[k].shape != v.shape or not torch.equal(other[k], v)
               for k, v in net.state_dict().items())


def _section_names() -> list[str]:
    from scrutiny.audit.sections import run_order

    return run_order()


def _check_out_dir(path: Path) -> None:
    """An output folder that can be written, checked before the work that fills it."""
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise InputError(f"--out {path}: {p} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {path} cannot be created: {e}") from e
    probe = path / ".scrutiny-write-test"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise InputError(f"--out {path} is not writable: {e}") from e


def _default(name: str) -> str:
    """An :class:`AuditConfig` field's default as the command line writes it."""
    from scrutiny.audit.config import AuditConfig

    v = AuditConfig.__dataclass_fields__[name].default
    if v is None:
        return "none"
    return ",".join(map(str, v)) if isinstance(v, tuple) else str(v)


def _opt(help: str, field: str, *names: str) -> Any:
    """An audit option that sets the :class:`AuditConfig` field ``field``; None when not given
    (the config file's value or the default applies)."""
    return typer.Option(*names, help=f"{help} Default: {_default(field) or 'none'}.")


#: Settings of ``scrutiny audit`` outside :class:`AuditConfig` that a config file may hold.
AUDIT_RUN_KEYS = ("model", "weights", "data", "mean", "std", "device", "robust_model",
                  "robust_weights", "out", "output", "token_env", "token_file", "budget",
                  "ca_bundle", "rate_limit", "max_concurrency", "backend", "address", "workers",
                  "shard_size")
#: The explainers of an audit of an endpoint when none are configured (the default ones
#: need gradients).
ENDPOINT_EXPLAINERS = ("occlusion", "lime", "kernel_shap")


def audit_settings(config: Path | None, given: dict[str, Any]
                   ) -> tuple[Any, dict[str, Any]]:
    """The audit's :class:`AuditConfig` and run settings (:data:`AUDIT_RUN_KEYS`): the
    defaults, overridden by the ``--config`` TOML file, overridden by the options ``given``
    on the command line (None: not given). ``given["params"]`` adds to the file's
    parameters of each method. Unknown keys or badly typed values are an InputError."""
    from scrutiny.audit.config import AuditConfig, config_values, read_toml

    values = config_values(read_toml(config), f"config file {config}", AUDIT_RUN_KEYS) \
        if config is not None else {}
    for k in ("mean", "std"):  # a list of numbers in the file, "0.5,0.5" on the command line
        if isinstance(values.get(k), list):
            values[k] = ",".join(map(str, values[k]))
    given = {k: v for k, v in given.items() if v is not None}
    if given.get("sections") == "":
        given["sections"] = None  # '' runs every section, as no option does
    if "eps" in given:
        given["eps"] = _floats(given["eps"], "--eps")
    params = given.pop("params", {})
    values.update(config_values(given, "the command line", AUDIT_RUN_KEYS))
    if params:
        merged = {m: dict(p) for m, p in values.get("params", {}).items()}
        for m, p in params.items():
            merged.setdefault(m, {}).update(p)
        values["params"] = merged
    run = {k: values.pop(k) for k in AUDIT_RUN_KEYS if k in values}
    for k in ("weights", "robust_weights", "out", "token_file", "ca_bundle"):
        if k in run and run[k] is not None:
            run[k] = Path(run[k])
    return AuditConfig(**values), run


def _run_record(run: dict[str, Any]) -> dict[str, Any]:
    """The run settings as ``config.toml`` keeps them: paths absolute, no output folder."""
    rec = {k: v for k, v in run.items() if k != "out" and v is not None}
    for k in ("weights", "robust_weights", "token_file", "ca_bundle"):  # paths, never a text
        if k in rec:
            rec[k] = str(Path(rec[k]).resolve())
    for k in ("data", "model", "robust_model"):
        if k in rec and Path(rec[k]).exists():
            rec[k] = str(Path(rec[k]).resolve())
    return rec


@app.command()
@_quiet_option
def audit(config: Annotated[Path | None, typer.Option(
              "--config", help="TOML file of the audit's settings: AuditConfig's fields (attacks, "
              "eps, n_samples, ..., a params.pgd table) and model, weights, data, mean, std, "
              "device, robust_model, robust_weights, out. Options given here override it.")] = None,
          model: ModelOpt = None, weights: WeightsOpt = None, data: DataOpt = None,
          mean: MeanOpt = None, std: StdOpt = None,
          attacks: Annotated[str | None, _opt("Comma-separated attacks of the robustness "
                                              "curve.", "attacks")] = None,
          headline_attack: Annotated[str | None, _opt(
              "Attack run at the reference eps on what the curve left robust ('' for none).",
              "headline_attack")] = None,
          explainers: Annotated[str | None, _opt("Comma-separated explainers.",
                                                 "explainers")] = None,
          norm: Annotated[str | None, _opt("linf, l2 or l1.", "norm")] = None,
          eps: Annotated[str | None, typer.Option(
              help="Comma-separated radii, in input units. Default: chosen from the input "
              "shape (grey up to 64x64 and tables, linf: 0,0.02,0.05,0.1,0.15,0.2,0.3; 32x32 "
              "colour: 0 to 16/255, headline 8/255; 224x224: 0 to 8/255, headline 4/255; "
              "docs/audit.md).")] = None,
          reference_eps: Annotated[float | None, typer.Option(
              help="The eps of the headline number and the examples (added to --eps). "
              "Default: the middle nonzero eps.")] = None,
          n: Annotated[int | None, _opt("Test samples attacked.", "n_samples", "--n",
                                        "--n-samples")] = None,
          n_examples: Annotated[int | None, _opt("Samples shown in the example and "
                                                 "explanation figures.", "n_examples")] = None,
          param: ParamOpt = None,
          seed: Annotated[int | None, _opt("Seed of every stochastic step.", "seed")] = None,
          device: DeviceOpt = None,
          out_dir: Annotated[Path | None, typer.Option(
              "--out", help="Report folder. Default: audit-report.")] = None,
          robust_model: Annotated[str | None, typer.Option(
              help="A model to compare with, given as --model is (a zoo model such as "
              "digits-cnn-pgd, or 'module:factory' with --robust-weights; --mean/--std apply "
              "to it too): it gets the same attacks, headline attack, certifier and checks on "
              "the same samples; curves, a table and input gradients side by side.")] = None,
          robust_weights: Annotated[Path | None, typer.Option(
              help="safetensors weights for a 'module:factory' --robust-model.")] = None,
          metrics: Annotated[str | None, _opt("Comma-separated trust measures of every "
                                              "explainer ('' for none).", "metrics")] = None,
          trust_samples: Annotated[int | None, _opt("Samples the trust measures use.",
                                                    "trust_samples")] = None,
          query_attacks: Annotated[str | None, _opt(
              "Comma-separated black-box attacks plotted against queries ('' for none).",
              "query_attacks")] = None,
          defenses: Annotated[str | None, _opt("Comma-separated defenses of the game matrix "
                                               "('' for none).", "defenses")] = None,
          certifier: Annotated[str | None, _opt("ibp, crown, smoothing (l2), or '' for none.",
                                                "certifier")] = None,
          cert_samples: Annotated[int | None, _opt("Samples certified.", "cert_samples")] = None,
          checks: Annotated[bool | None, _opt("Run the gradient-masking checks.", "checks",
                                              "--checks/--no-checks")] = None,
          black_box: Annotated[str | None, _opt(
              "Black-box attack of the 'black-box beats white-box' check ('' for none).",
              "black_box")] = None,
          compare_samples: Annotated[int | None, _opt(
              "Samples (the first audited) the --robust-model is evaluated on.",
              "compare_samples")] = None,
          explore_samples: Annotated[int | None, _opt(
              "Samples the report's sample explorer holds (the example figures' first).",
              "explore_samples")] = None,
          sections: Annotated[str | None, typer.Option(
              help="Comma-separated report sections to run (and what they need); default all: "
              + ", ".join(_section_names()) + ".")] = None,
          skip: Annotated[str | None, typer.Option(
              help="Comma-separated sections not to run.")] = None,
          fresh: Annotated[bool, typer.Option(
              help="Recompute every section instead of resuming the finished ones saved in "
              "OUT/.audit-state.")] = False,
          output: OutputKindOpt = None, token_env: TokenEnvOpt = None,
          token_file: TokenFileOpt = None,
          budget: Annotated[int | None, typer.Option(
              help="Endpoint: total queries the audit may send it.")] = None,
          ca_bundle: CaBundleOpt = None, rate_limit: RateLimitOpt = None,
          max_concurrency: ConcurrencyOpt = None,
          backend: Annotated[str | None, typer.Option(
              help="What runs the per-sample sections' shards: local (this process) or ray "
              "(the 'ray' extra of scrutiny). Default: local.")] = None,
          address: Annotated[str | None, typer.Option(
              help="--backend ray: the Ray cluster to join (ray://host:10001, auto); without "
              "it a local Ray instance starts with --workers CPUs.")] = None,
          workers: Annotated[int | None, typer.Option(
              help="--backend ray: actors running shards, one thread each. Default: 2.")] = None,
          shard_size: Annotated[int | None, typer.Option(
              help="Samples per shard of the per-sample sections (robustness, headline, "
              "certification), each with its own seed; finished shards are saved. The numbers "
              "depend on it, not on the backend. Default: no shards (local), 64 (ray).")] = None,
          quiet: QuietOpt = False) -> None:
    """Attack and explain a model; write one HTML report (default: embedded digits CNN).

    --param takes METHOD.NAME=VALUE, e.g. -p pgd.steps=100.

    --config reads the settings from a TOML file; options given override it.

    OUT/config.toml holds the resolved settings; the report, the command that reruns them.

    Finished sections are saved under OUT/.audit-state: a rerun resumes after them.

    --model http(s)://host:port/v2/models/NAME audits an endpoint: only what needs queries
    runs (query attacks, black-box explainers: occlusion, lime, kernel_shap by default);
    the sections that need gradients are skipped with a note.

    --backend ray --workers N runs the shards of --shard-size samples on Ray actors; a
    rerun after a kill computes only the shards that did not finish.
    """
    import shutil

    from scrutiny.audit import run_audit, write_report

    params: dict[str, dict[str, Any]] = {}
    for k, v in parse_params(param).items():
        if "." not in k:
            raise InputError(f"audit --param must be METHOD.NAME=VALUE, got {k!r}")
        meth, name = k.split(".", 1)
        params.setdefault(meth, {})[name] = v
    if explainers is None:  # an endpoint's default explainers: the default ones need gradients
        from scrutiny.audit.config import read_toml

        in_file = read_toml(config) if config is not None else {}
        if is_endpoint(model or in_file.get("model")) and "explainers" not in in_file:
            explainers = ",".join(ENDPOINT_EXPLAINERS)
    cfg, run = audit_settings(config, {
        "attacks": attacks, "headline_attack": headline_attack, "explainers": explainers,
        "norm": norm, "eps": eps, "reference_eps": reference_eps, "n_samples": n,
        "n_examples": n_examples, "params": params or None, "seed": seed, "metrics": metrics,
        "trust_samples": trust_samples, "defenses": defenses, "query_attacks": query_attacks,
        "certifier": certifier, "cert_samples": cert_samples, "checks": checks,
        "black_box": black_box, "compare_samples": compare_samples,
        "explore_samples": explore_samples, "sections": sections,
        "skip": skip, "model": model, "weights": weights, "data": data, "mean": mean,
        "std": std, "device": device,
        "robust_model": robust_model, "robust_weights": robust_weights, "out": out_dir,
        "output": output, "token_env": token_env, "token_file": token_file, "budget": budget,
        "ca_bundle": ca_bundle, "rate_limit": rate_limit, "max_concurrency": max_concurrency,
        "backend": backend, "address": address, "workers": workers, "shard_size": shard_size})
    model, weights, data, mean, std, device, robust_model, robust_weights = (
        run.get(k) for k in ("model", "weights", "data", "mean", "std", "device", "robust_model",
                             "robust_weights"))
    endpoint = endpoint_options(model, output=run.get("output"), token_env=run.get("token_env"),
                                token_file=run.get("token_file"), ca_bundle=run.get("ca_bundle"),
                                rate_limit=run.get("rate_limit"),
                                max_concurrency=run.get("max_concurrency"))
    if run.get("budget") is not None:
        if endpoint is None:
            raise InputError("--budget is for an endpoint --model http(s)://...")
        endpoint["budget"] = int(run["budget"])
        if endpoint["budget"] < 0:
            raise InputError(f"--budget must be >= 0, got {endpoint['budget']}")
    if robust_weights is not None and robust_model is None:
        raise InputError("--robust-weights is for a 'module:factory' --robust-model; give one")
    out_dir = run.get("out") or Path("audit-report")
    from scrutiny.audit.sections import resolve as resolve_sections
    from scrutiny.audit.shards import get_backend

    if run.get("shard_size") is not None and int(run["shard_size"]) < 1:
        raise InputError(f"--shard-size must be >= 1, got {run['shard_size']}")
    if run.get("workers") is not None and int(run["workers"]) < 1:
        raise InputError(f"--workers must be >= 1, got {run['workers']}")
    shard_backend = get_backend(run.get("backend") or "local", address=run.get("address"),
                                workers=run.get("workers"))
    if run.get("backend") == "ray":
        shard_backend.check()  # Ray installed, before any work

    resolve_sections(cfg.sections, cfg.skip)  # unknown or needed sections: refused now
    _check_out_dir(out_dir)  # before any work, not after it
    state = out_dir / ".audit-state"
    if fresh and state.is_dir():
        shutil.rmtree(state)
    m, ds = resolve(model, weights, data, mean, std, device, progress=not quiet,
                    endpoint=endpoint)
    robust = None
    if robust_model is not None:
        try:  # any model spec --model takes, checked against the audited model's data
            robust, _ = resolve(robust_model, robust_weights, data or ds.name, mean, std,
                                device, progress=not quiet)
        except InputError as e:
            raise InputError(f"--robust-model {robust_model}: {e}") from e
    res = run_audit(m, ds, cfg, robust_model=robust, progress=not quiet, state_dir=state,
                    shard_size=run.get("shard_size"),
                    backend=shard_backend if run.get("backend") == "ray"
                    or run.get("shard_size") is not None else None)
    path = write_report(res, out_dir, run=_run_record(run))
    for line in (res.verdict or {}).get("lines", []):  # the verdict first
        out.print(("[bold red]FLAGGED[/]" + escape(line[7:])) if line.startswith("FLAGGED")
                  else escape(line))
    cfg = res.config  # the defaults resolved for the data's input shape
    table = Table(f"attack \\ eps ({cfg.norm})", *[f"{e:g}" for e in cfg.eps],
                  title=f"{res.model} on {res.dataset}: robust accuracy ({res.n_samples} samples)")
    for name, rows in res.robustness.items():
        table.add_row(name, *[f"{100 * r['robust_accuracy']:.1f}%" for r in rows])
    if res.robustness:
        out.print(table)
    h = res.headline
    robust = (f"robust accuracy {100 * h['robust_accuracy']:.1f}% at {h['norm']} eps={h['eps']:g} "
              "(worst case)" if h.get("robust_accuracy") is not None
              else "robust accuracy n/a (the robustness section did not run)")
    draws = res.probe.get("draw_accuracy") or []
    spread = (f" (one seeded draw of a randomized model; {100 * sum(draws) / len(draws):.1f}% "
              f"on average over {len(draws)} draws)" if draws else "")
    out.print(f"clean accuracy {100 * res.clean_accuracy:.1f}%{spread}, {robust}")
    for name, e in res.explanations.items():
        extra = (f", completeness error {e['completeness_error']:.2e}"
                 if "completeness_error" in e else "")
        out.print(f"{name}: {e['seconds']:.2f} s{extra}")
    flagged = [f for f in res.flags if f.flagged]
    out.print(f"checks (model probe, gradient masking, explanations): "
              f"{len(res.flags) - len(flagged)} of {len(res.flags)} ok")
    for f in flagged if res.verdict is None else ():  # else the verdict listed them
        out.print(f"[bold red]FLAGGED[/] {f.check}: {f.message}")
    if res.endpoint is not None:
        u, per = res.endpoint, res.endpoint.get("seconds_per_query")
        out.print(escape(f"endpoint {u.get('url') or u.get('name')}: {u['queries']} queries, "
                         f"{u['evaluations']} evaluator queries, {u.get('requests', 'n/a')} "
                         "requests, " + ("n/a" if per is None else f"{1000 * per:.2f} ms")
                         + " per query"))
    out.print(f"report: {path}  ({res.seconds:.1f} s)")


@app.command()
@_quiet_option
def attack(method: Annotated[str, typer.Argument(help="Registered attack, e.g. pgd.")],
           model: ModelOpt = None, weights: WeightsOpt = None, data: DataOpt = None,
           mean: MeanOpt = None, std: StdOpt = None,
           norm: Annotated[str, typer.Option(help="linf, l2 or l1.")] = "linf",
           eps: Annotated[float, typer.Option(help="Radius in input units.")] = 0.1,
           target: Annotated[int | None, typer.Option(help="Target class (targeted).")] = None,
           n: Annotated[int, typer.Option("--n", help="Test samples attacked.")] = 256,
           param: ParamOpt = None, seed: SeedOpt = 0, device: DeviceOpt = None,
           save: Annotated[Path | None, typer.Option(
               "--out", help="Save x, x_adv, y, success as f.npz and the settings and numbers "
               "as f.json.")] = None,
           budget: Annotated[int | None, typer.Option(
               help="Black-box attacks: total queries the model answers (all samples).")] = None,
           output: OutputKindOpt = None, token_env: TokenEnvOpt = None,
           token_file: TokenFileOpt = None, ca_bundle: CaBundleOpt = None,
           rate_limit: RateLimitOpt = None, max_concurrency: ConcurrencyOpt = None,
           quiet: QuietOpt = False) -> None:
    """Run one attack on test samples and print robust accuracy.

    --model http(s)://host:port/v2/models/NAME attacks an endpoint with a black-box attack.
    """
    from scrutiny.models import QueryModel
    from scrutiny.types import ThreatModel

    atk = registry.create(method, kind="attack", **parse_params(param))
    threat = ThreatModel(norm, eps)
    endpoint = endpoint_options(model, output=output, token_env=token_env,
                                token_file=token_file, budget=budget, ca_bundle=ca_bundle,
                                rate_limit=rate_limit, max_concurrency=max_concurrency)
    if endpoint is not None and atk.tags.white_box:
        raise refuse_white_box("attack", method, endpoint["output"])
    if n < 1:
        raise InputError(f"--n must be >= 1, got {n}")
    if budget is not None and atk.tags.white_box:
        raise InputError(f"--budget is for black-box attacks; {method} is white-box")
    if budget is not None and budget < 0:
        raise InputError(f"--budget must be >= 0, got {budget}")
    m, ds = resolve(model, weights, data, mean, std, device, progress=not quiet,
                    endpoint=endpoint)
    x, y = ds.x[:n], ds.y[:n]
    t0 = time.perf_counter()
    subject = m if budget is None or endpoint is not None else QueryModel(
        m, output=atk.tags.output, budget=budget)
    totals: dict[str, Any] = {}
    # one call (attacks do not split into batches without changing their numbers); an attack
    # that counts its own steps or stages shows its bar in this one's place
    with progress.progress_bar(1, "attack", hand_over=True) as bar:
        bar.step(f"{atk.name} on {len(y)} samples")
        if endpoint is not None:  # resumable when the endpoint stays down
            key = _resume_key(atk, m, x, y, norm=norm, eps=eps, target=target, seed=seed,
                              data=ds.name, n=len(y), budget=budget)
            res, totals = _attack_endpoint(atk, m, x, y, threat, target, seed, save, key)
        else:
            res = atk(subject, x, y, threat=threat, target=target, seed=seed)  # model's bounds
        bar.advance()
    dt = time.perf_counter() - t0
    table = Table("metric", "value", title=f"{atk!r} on {m.name} / {ds.name}")
    for k, v in res.to_dict().items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    table.add_row("seconds", f"{dt:.2f}")
    if endpoint is not None:
        _endpoint_rows(table, m)
        if totals["runs"] > 1:  # resumed: what every run together spent
            table.add_row("runs (resumed)", str(totals["runs"]))
            table.add_row("budget spent (all runs)", str(totals["budget_spent"]))
    out.print(table)
    if res.meta.get("stopped_by_budget"):
        out.print(f"the query budget cut the attack short on {int(res.budget_exhausted.sum())} "
                  f"of {len(y)} samples: their robustness is the budget's, not the model's")
    if save is not None:
        arrays = {"queries": res.queries.numpy()} if res.queries is not None else {}
        np.savez_compressed(save, x=x.numpy(), x_adv=res.x_adv.cpu().numpy(), y=y.numpy(),
                            success=res.success.numpy(), **arrays)
        record = {"method": atk.name, "params": atk.get_params(), "norm": norm, "eps": eps,
                  "target": target, "n": len(y), "seed": seed, "data": ds.name,
                  "model": m.name, "budget": budget, "seconds": dt, **res.to_dict()}
        if endpoint is not None:  # this run's usage; the totals: over every (resumed) run
            record.update(status="complete", endpoint=m.usage(), **totals)
        _write_record(save.with_suffix(".json"), record)
        out.print(f"saved {save} and {save.with_suffix('.json')}")


@app.command()
@_quiet_option
def explain(method: Annotated[str, typer.Argument(help="Registered explainer.")],
            model: ModelOpt = None, weights: WeightsOpt = None, data: DataOpt = None,
            mean: MeanOpt = None, std: StdOpt = None,
            target: Annotated[int | None, typer.Option(help="Class explained (default: "
                                                       "predicted).")] = None,
            n: Annotated[int, typer.Option("--n", help="Samples explained.")] = 8,
            param: ParamOpt = None, seed: SeedOpt = 0, device: DeviceOpt = None,
            save: Annotated[Path, typer.Option("--out", help="f.png or f.npz: the figure "
                                               "(inputs titled true -> predicted (confidence), "
                                               "maps with colour bars) goes to f.png, the "
                                               "arrays (x, y, pred, attributions, map) to "
                                               "f.npz, the settings and numbers to "
                                               "f.json.")] = Path("explanation.png"),
            budget: Annotated[int | None, typer.Option(
                help="Endpoint: total queries it may answer.")] = None,
            output: OutputKindOpt = None, token_env: TokenEnvOpt = None,
            token_file: TokenFileOpt = None, ca_bundle: CaBundleOpt = None,
            rate_limit: RateLimitOpt = None, max_concurrency: ConcurrencyOpt = None,
            quiet: QuietOpt = False) -> None:
    """Explain predictions on test samples; save a labelled figure and the arrays.

    --model http(s)://host:port/v2/models/NAME explains an endpoint with a black-box
    explainer (lime, kernel_shap, occlusion), every perturbed input a query.
    """
    from scrutiny import plot
    from scrutiny.audit import figures

    exp = registry.create(method, kind="explainer", **parse_params(param))
    endpoint = endpoint_options(model, output=output, token_env=token_env,
                                token_file=token_file, budget=budget, ca_bundle=ca_bundle,
                                rate_limit=rate_limit, max_concurrency=max_concurrency)
    if endpoint is None and budget is not None:
        raise InputError("--budget is for an endpoint --model http(s)://...")
    if endpoint is not None and exp.tags.white_box:
        raise refuse_white_box("explainer", method, endpoint["output"])
    if n < 1:
        raise InputError(f"--n must be >= 1, got {n}")
    if save.suffix.lower() not in (".png", ".npz"):
        raise InputError(f"--out must end in .png or .npz (all are written), got {save}")
    m, ds = resolve(model, weights, data, mean, std, device, progress=not quiet,
                    endpoint=endpoint)
    x, y = ds.x[:n], ds.y[:n]
    # background rows for the tabular surrogates (on images LIME and SHAP use their fill)
    data_kw = ({"background": ds.x[n:n + 100]} if "background" in exp.call_data
               and not ds.is_image else {})
    t0 = time.perf_counter()
    e = exp(m, x, target, seed=seed, **data_kw)
    dt = time.perf_counter() - t0
    if endpoint is not None:  # the evaluator's look (not a query), as log-probabilities
        scores, _ = m._evaluate(x)
        scores = scores.log_softmax(1) if m.output == "logits" else scores.clamp_min(1e-45).log()

        def view(t: torch.Tensor) -> torch.Tensor:  # the figure's titles: the first len(t)
            return scores[:len(t)]
    else:
        view = m.logits
    png_path, npz_path = save.with_suffix(".png"), save.with_suffix(".npz")
    png_path.parent.mkdir(parents=True, exist_ok=True)
    if ds.is_image:
        fig = plot.explanation(x, e, y=y, model=view, classes=ds.classes, max_samples=16,
                               title=f"{exp.name} (first {min(n, 16)} of {n} samples)"
                               if n > 16 else exp.name)
        fig.savefig(png_path, dpi=110)
    else:
        png, _ = figures.feature_bars({exp.name: e.attributions}, ds.feature_names or (),
                                      exp.name)
        png_path.write_bytes(png)
    logits = view(x).cpu()
    arrays = {"x": x.cpu().numpy(), "y": y.cpu().numpy(), "pred": logits.argmax(1).numpy(),
              "confidence": logits.softmax(1).amax(1).numpy(),
              "attributions": e.attributions.cpu().numpy(), "target": e.target.numpy(),
              "outputs": e.outputs.numpy()}
    if ds.is_image:
        arrays["map"] = e.pixel_map().cpu().numpy()
    np.savez_compressed(npz_path, **arrays)
    json_path = save.with_suffix(".json")
    record = {"method": exp.name, "params": exp.get_params(), "n": n, "target": target,
              "seed": seed, "data": ds.name, "model": m.name, "seconds": dt}
    msg = f"{exp!r}: {n} samples in {dt:.2f} s"
    if e.delta is not None:
        msg += f", max |completeness error| {float(e.delta.abs().max()):.2e}"
    if endpoint is not None:
        record["endpoint"] = u = m.usage()
        per = u["seconds_per_query"]
        msg += (f"; {u['url']}: {u['queries']} queries (+{u['evaluations']} evaluator), "
                f"{u['requests']} requests, "
                + ("n/a" if per is None else f"{1000 * per:.2f} ms") + " per query")
    _write_record(json_path, record)
    out.print(escape(msg))
    out.print(f"saved {png_path}, {npz_path} and {json_path}")


@app.command()
@_quiet_option
def learned(method: Annotated[str, typer.Argument(
                help="Registered method of kind learned ('scrutiny list learned').")],
            model: ModelOpt = None, weights: WeightsOpt = None,
            data: Annotated[str | None, typer.Option(
                "--data", help="As for the other commands; beta_vae also takes 'factors' (the "
                "synthetic shapes with known generative factors: MIG).")] = None,
            mean: MeanOpt = None, std: StdOpt = None,
            layer: Annotated[str | None, typer.Option(
                help="activation_maximization, multifaceted, dataset_examples: the layer of "
                "the unit. Default: the last convolution.")] = None,
            unit: Annotated[int | None, typer.Option(
                help="The channel of --layer. Default: its most active on the data.")] = None,
            cls: Annotated[int | None, typer.Option(
                "--class", help="activation_maximization: maximise this class's logit "
                "instead of a unit.")] = None,
            n: Annotated[int | None, typer.Option(
                "--n", help="Test samples: counterfactual (default 8), influence (4), "
                "influence_poisoning's targets (1).")] = None,
            desired: Annotated[int | None, typer.Option(
                help="counterfactual: the class wanted. Default: each sample's second most "
                "likely class.")] = None,
            param: ParamOpt = None, seed: SeedOpt = 0, device: DeviceOpt = None,
            save: Annotated[Path, typer.Option(
                "--out", help="f.png, f.npz or f.json: the labelled figure goes to f.png, the "
                "arrays to f.npz, the settings and numbers to f.json.")] = Path("learned.png"),
            quiet: QuietOpt = False) -> None:
    """What has the model learned? Run a method of kind learned (class prototypes, feature
    visualisation, influence, counterfactuals, surrogates, beta-VAE); save a labelled figure
    and the arrays.

    The data is --data's test split; influence, counterfactual and the surrogates read its
    training split too, beta_vae trains on the training split (or on 'factors').
    """
    import json

    from scrutiny.data import load, make_factors
    from scrutiny.models import RECIPES

    info = _kind_method(method, "learned")
    name = info.name
    meth = registry.create(info.spec, **parse_params(param))
    given = {"--layer": layer, "--unit": unit, "--class": cls, "--n": n, "--desired": desired}
    for opt, value in given.items():
        if value is not None and name not in LEARNED_OPTIONS[opt]:
            raise InputError(f"{opt} is not read by {name}; it is for "
                             f"{', '.join(LEARNED_OPTIONS[opt])}")
    if n is not None and n < 1:
        raise InputError(f"--n must be >= 1, got {n}")
    if save.suffix.lower() not in (".png", ".npz", ".json"):
        raise InputError(f"--out must end in .png, .npz or .json (all are written), got {save}")
    factors = None
    if info.cls.needs_model:
        if data == "factors":
            raise InputError(f"--data factors is for beta_vae; {name} needs a classifier's data")
        m, ds = resolve(model, weights, data, mean, std, device, progress=not quiet)
    else:  # learns from the data alone
        if model is not None or weights is not None:
            raise InputError(f"{name} learns from the data alone: drop --model/--weights")
        m = None
        if data == "factors":
            factors = make_factors()
            ds = factors.data
        else:
            ds = load(data or "digits", split="train")
    if name in LEARNED_IMAGE_ONLY and not ds.is_image:
        raise InputError(f"{name} works on images; {ds.name} is a table (try counterfactual, "
                         "influence or surrogate_tree)")
    train_spec = data or (RECIPES[model].dataset if model in RECIPES else "digits")
    job = LearnedJob(meth, m, ds, seed, layer, unit, cls, n, desired, train_spec, factors)
    t0 = time.perf_counter()
    with progress.progress_bar(1, "learned", hand_over=True) as bar:
        bar.step(f"{name} on {ds.name}")
        res = RUNS.get(name, run_generic)(job)
        bar.advance()
    dt = time.perf_counter() - t0
    if len(res.table.columns) == 2:
        res.table.add_row("seconds", f"{dt:.2f}")
    out.print(res.table)
    if len(res.table.columns) != 2:
        out.print(f"{dt:.2f} seconds")
    if res.text:
        out.print(escape(res.text))
    paths = {ext: save.with_suffix(ext) for ext in (".png", ".npz", ".json")}
    paths[".npz"].parent.mkdir(parents=True, exist_ok=True)
    written = []
    if res.figure is not None:
        paths[".png"].write_bytes(res.figure)
        written.append(paths[".png"])
    np.savez_compressed(paths[".npz"], **{k: as_numpy(v) for k, v in res.arrays.items()})
    written.append(paths[".npz"])
    record = {"method": info.spec, "params": meth.get_params(), "seed": seed,
              "model": None if m is None else m.name, "data": ds.name, **(res.record or {})}
    paths[".json"].write_text(json.dumps(record, indent=1, default=str) + "\n",
                              encoding="utf-8")
    written.append(paths[".json"])
    out.print(f"saved {', '.join(map(str, written))}")
    if res.figure is None:
        out.print("no figure for this method and data: the numbers are in the .npz and .json")


def _kind_method(method: str, kind: str) -> registry.MethodInfo:
    """The registered method ``method`` of ``kind`` (an unknown one: an error listing that
    kind's)."""
    info = registry.get(method, kind)
    if info.kind != kind:  # "attack:pgd" given to a command of another kind
        raise InputError(f"{info.spec} is not of kind {kind}; registered: "
                         f"{', '.join(registry.list_methods(kind))}")
    return info


def _finish(job: Any, res: Any, folder: Path, record: dict[str, Any], title: str,
            dt: float) -> list[Path]:
    """Print a run's numbers, write its record and figure to ``folder``; the paths written."""
    from scrutiny.cli.tampering import figure_of, numbers_table, write_record

    numbers = res.to_dict()
    table = numbers_table(numbers, title)
    table.add_row("seconds", f"{dt:.2f}")
    out.print(table)
    written = [write_record(folder, {**record, "seconds": dt, "result": numbers})]
    png = figure_of(job, res)
    if png is not None:
        (folder / "figure.png").write_bytes(png)
        written.append(folder / "figure.png")
    return written


@app.command()
@_quiet_option
def poison(method: Annotated[str, typer.Argument(
               help="Registered attack on training ('scrutiny list poisoning'): badnets, "
               "backdoor_embedding, dba, feature_collision, svm_poisoning.")],
           model: Annotated[str | None, typer.Option(
               "--model", help="The victim: a zoo model name (its architecture, trained from "
               "scratch on the poisoned data; feature_collision fine-tunes the trained zoo "
               "model, dba starts federated training from it) or 'module:factory' (with "
               "--weights: trained on from them). Default: the zoo model of --data.")] = None,
           weights: WeightsOpt = None, data: DataOpt = None,
           target: Annotated[int | None, typer.Option(
               help="feature_collision: the test sample to misclassify (default 0).")] = None,
           param: ParamOpt = None, seed: SeedOpt = 0, device: DeviceOpt = None,
           save: Annotated[Path, typer.Option(
               "--out", help="Folder for victim.safetensors, poisoned.npz, result.json and "
               "figure.png.")] = Path("poisoned"),
           quiet: QuietOpt = False) -> None:
    """Poison a training set and train a model on it: a backdoored or poisoned victim to
    study, scan and audit.

    The training split of --data is poisoned, the victim trained on it and measured on the
    test split (clean accuracy, attack success). The victim's weights go to
    OUT/victim.safetensors (load it with --model OUT/victim.safetensors in every command,
    e.g. scrutiny audit), the poisoned set to OUT/poisoned.npz (--data OUT/poisoned.npz).
    A BadNets patch is sized to the image (a seventh of its side: 2x2 on the 8x8 digits)
    unless -p size= is given.
    """
    from scrutiny.base import seeded
    from scrutiny.cli.tampering import (
        CALLS,
        PRETRAINED_VICTIM,
        Job,
        call_training,
        check_out_folder,
        poison_defaults,
    )
    from scrutiny.data import load
    from scrutiny.models import RECIPES, TorchModel, build, save_built, save_weights

    info = _kind_method(method, "poisoning")
    given = parse_params(param)
    meth = registry.create(info.spec, **given)
    check_out_folder(save)
    if target is not None and info.name != "feature_collision":
        raise InputError(f"--target is for feature_collision; {info.name} does not read it")
    train_ds = load(data or (RECIPES[model].dataset if model in RECIPES else "digits"),
                    split="train")
    scaled = poison_defaults(info.name, tuple(train_ds.input_shape))
    if scaled.keys() - given.keys():  # e.g. BadNets' trigger sized to the image
        meth = registry.create(info.spec, **{**scaled, **given})
    arch = None
    if not info.cls.needs_model:
        if model is not None or weights is not None:
            raise InputError(f"{info.name} poisons a model it fits itself: drop --model/--weights")
        m, test_ds = None, load(data or "digits", split="test")
    elif info.name in PRETRAINED_VICTIM or (model is not None and model not in RECIPES):
        m, test_ds = resolve(model, weights, data, None, None, device, progress=not quiet)
        if m.name in RECIPES:  # a trained zoo model, fine-tuned
            arch = RECIPES[m.name].arch
    else:  # a zoo architecture, untrained: the outsourced-training scenario
        name = model or next((n for n, r in RECIPES.items()
                              if r.dataset == (data or "digits")), None)
        if name is None:
            raise InputError(f"no zoo architecture for data {data!r}: give --model module:factory")
        arch = RECIPES[name].arch
        test_ds = load(data or RECIPES[name].dataset, split="test")
        with seeded(seed):
            m = build(arch, tuple(train_ds.input_shape), train_ds.num_classes)
        m = m.to(_device(device))
    if target is not None and not 0 <= target < len(test_ds):
        raise InputError(f"--target {target} is not a test sample (0 to {len(test_ds) - 1})")
    job = Job(meth, m, train_ds, test_ds, seed, {"target": target or 0})
    t0 = time.perf_counter()
    with progress.progress_bar(1, "poison", hand_over=True) as bar:
        bar.step(f"{info.name} on {train_ds.name}")
        res = CALLS.get(info.name, call_training)(job)
        bar.advance()
    dt = time.perf_counter() - t0
    record = {"method": info.spec, "params": meth.get_params(), "seed": seed,
              "data": train_ds.name, "model": model}
    written = _finish(job, res, save, record, f"{info.name} on {train_ds.name}", dt)
    victim = getattr(res, "model", None)
    if isinstance(victim, TorchModel):
        victim = victim.module
    if isinstance(victim, torch.nn.Module):
        path = save / "victim.safetensors"
        meta = {"method": info.spec, "seed": str(seed)}
        if arch is not None:
            save_built(victim, path, arch=arch, input_shape=tuple(train_ds.input_shape),
                       num_classes=train_ds.num_classes, metadata=meta)
            hint = f"scrutiny audit --model {path}"
        else:
            save_weights(victim, path, metadata=meta)
            hint = f"scrutiny audit --model {model} --weights {path}"
        written.append(path)
    else:
        hint = ""
    pdata = getattr(res, "data", None)
    if pdata is not None and hasattr(pdata, "x"):
        npz = save / "poisoned.npz"
        np.savez_compressed(npz, x=pdata.x.numpy(), y=pdata.y.numpy(),
                            classes=np.array(pdata.classes), poisoned=res.poisoned.numpy())
        written.append(npz)
    out.print(f"saved {', '.join(map(str, written))}")
    if hint:
        out.print(f"audit the victim: {escape(hint)}")


@app.command()
@_quiet_option
def scan(method: Annotated[str, typer.Argument(
             help="Registered backdoor scan ('scrutiny list backdoor_scan'): neural_cleanse "
             "or k_arm (the model, on clean test data), activation_clustering or spectral_signatures "
             "(the model's training set).")] = "neural_cleanse",
         model: ModelOpt = None, weights: WeightsOpt = None,
         data: Annotated[str | None, typer.Option(
             "--data", help="As for the other commands. neural_cleanse and k_arm read its test split; the "
             "training-set scans read its training split, or the whole of a poisoned.npz "
             "written by scrutiny poison (whose poison points then score the scan).")] = None,
         mean: MeanOpt = None, std: StdOpt = None,
         param: ParamOpt = None, seed: SeedOpt = 0, device: DeviceOpt = None,
         save: Annotated[Path, typer.Option(
             "--out", help="Folder for result.json and figure.png.")] = Path("scan"),
         quiet: QuietOpt = False) -> None:
    """Scan a model for a backdoor (Neural Cleanse, K-Arm) or its training set for poison points
    (activation clustering, spectral signatures); print the flagged labels."""
    from scrutiny.cli.tampering import CALLS, Job, check_out_folder

    info = _kind_method(method, "backdoor_scan")
    meth = registry.create(info.spec, **parse_params(param))
    check_out_folder(save)
    training_scan = info.name not in ("neural_cleanse", "k_arm")
    m, ds = resolve(model, weights, data, mean, std, device, split="train" if training_scan
                    else "test", progress=not quiet)
    poisoned = None
    if data is not None and data.endswith(".npz") and Path(data).is_file():
        with np.load(data, allow_pickle=False) as f:
            if "poisoned" in f.files:
                poisoned = torch.as_tensor(f["poisoned"], dtype=torch.long)
    job = Job(meth, m, ds, ds, seed, {"poisoned": poisoned})
    t0 = time.perf_counter()
    with progress.progress_bar(1, "scan", hand_over=True) as bar:
        bar.step(f"{info.name} on {m.name}")
        res = CALLS.get(info.name, lambda j: j.method(j.model, j.train, seed=j.seed))(job)
        bar.advance()
    dt = time.perf_counter() - t0
    record = {"method": info.spec, "params": meth.get_params(), "seed": seed, "data": ds.name,
              "model": m.name}
    if poisoned is not None and len(res.suspicious):
        from scrutiny.defenses.backdoor import precision_recall

        p, r = precision_recall(res.suspicious, poisoned)
        record.update(precision=p, recall=r, n_poisoned=len(poisoned))
    written = _finish(job, res, save, record, f"{info.name} on {m.name}", dt)
    if "precision" in record:
        out.print(f"against the {record['n_poisoned']} poison points of {data}: precision "
                  f"{record['precision']:.2f}, recall {record['recall']:.2f}")
    names = ds.classes
    flagged = ", ".join(f"{k} ({names[k]})" for k in res.flagged)
    out.print(f"[bold red]flagged labels: {escape(flagged)}[/]" if res.flagged
              else "no label flagged")
    out.print(f"saved {', '.join(map(str, written))}")


@app.command()
@_quiet_option
def privacy(method: Annotated[str, typer.Argument(
                help="Registered privacy attack ('scrutiny list privacy'): dlg, idlg (gradient "
                "leakage of training inputs), membership_inference.")],
            model: ModelOpt = None, weights: WeightsOpt = None, data: DataOpt = None,
            mean: MeanOpt = None, std: StdOpt = None,
            index: Annotated[int, typer.Option(
                help="dlg, idlg: the first training sample of the client's batch.")] = 0,
            batch: Annotated[int, typer.Option(
                "--batch", help="dlg, idlg: the client's batch size (samples index.. "
                "index+batch-1 of the training split).")] = 1,
            param: ParamOpt = None, seed: SeedOpt = 0, device: DeviceOpt = None,
            save: Annotated[Path, typer.Option(
                "--out", help="Folder for result.json and figure.png.")] = Path("privacy"),
            quiet: QuietOpt = False) -> None:
    """What a model gives away about its training data: rebuild training inputs from the
    gradient a federated-learning client shares (dlg, idlg), or tell training members from
    non-members by their loss (membership_inference: training split vs test split)."""
    from scrutiny.cli.tampering import CALLS, Job, check_out_folder

    info = _kind_method(method, "privacy")
    meth = registry.create(info.spec, **parse_params(param))
    check_out_folder(save)
    m, test_ds = resolve(model, weights, data, mean, std, device, progress=not quiet)
    _, train_ds = resolve(model, weights, data, mean, std, device, split="train",
                          progress=False)
    if batch < 1 or not 0 <= index <= len(train_ds) - batch:
        raise InputError(f"--index {index} --batch {batch} do not fit the {len(train_ds)} "
                         "training samples")
    job = Job(meth, m, train_ds, test_ds, seed, {"index": index, "batch": batch})
    t0 = time.perf_counter()
    with progress.progress_bar(1, "privacy", hand_over=True) as bar:
        bar.step(f"{info.name} on {m.name}")
        res = CALLS.get(info.name, lambda j: j.method(j.model, j.train, seed=j.seed))(job)
        bar.advance()
    dt = time.perf_counter() - t0
    record = {"method": info.spec, "params": meth.get_params(), "seed": seed,
              "data": train_ds.name, "model": m.name, **job.options}
    written = _finish(job, res, save, record, f"{info.name} on {m.name}", dt)
    out.print(f"saved {', '.join(map(str, written))}")


@app.command()
@_quiet_option
def trust(metric: Annotated[str, typer.Argument(help="Registered metric, e.g. deletion.")],
          explainer: Annotated[str, typer.Option(help="Registered explainer judged.")] = "saliency",
          model: ModelOpt = None, weights: WeightsOpt = None, data: DataOpt = None,
          mean: MeanOpt = None, std: StdOpt = None,
          n: Annotated[int, typer.Option("--n", help="Samples used.")] = 32,
          param: ParamOpt = None, seed: SeedOpt = 0, device: DeviceOpt = None,
          quiet: QuietOpt = False) -> None:
    """Score whether an explainer's maps can be trusted (sanity checks, faithfulness)."""
    met = registry.create(metric, kind="metric", **parse_params(param))
    exp = registry.create(explainer, kind="explainer")
    if n < 1:
        raise InputError(f"--n must be >= 1, got {n}")
    m, ds = resolve(model, weights, data, mean, std, device, progress=not quiet)
    x, y = ds.x[:n], ds.y[:n]
    kw: dict[str, Any] = {}
    if "masks" in met.call_data:
        if ds.masks is None:
            raise InputError(f"{met.name} needs data with ground-truth masks (--data synthetic)")
        kw["masks"] = ds.masks[:n]
    if "train_data" in met.call_data:  # data randomization retrains on the training split
        _, kw["train_data"] = resolve(model, weights, data, mean, std, device, split="train",
                                      progress=False)
    t0 = time.perf_counter()
    with progress.progress_bar(1 if met.needs_explainer else 2, "trust",
                               hand_over=met.needs_explainer) as bar:
        if met.needs_explainer:
            bar.step(f"{met.name} of {exp.name}")
            res = met(m, x, y, explainer=exp, seed=seed, **kw)
        else:
            data_kw = {"background": ds.x[n:n + 100]} if "background" in exp.call_data else {}
            bar.step(f"{exp.name} maps")
            attributions = exp(m, x, y, seed=seed, **data_kw)
            bar.advance()
            bar.step(f"{met.name} of {exp.name}")
            res = met(m, x, y, attributions=attributions, seed=seed, **kw)
        bar.advance()
    table = Table("metric", "value", title=f"{met!r} of {exp.name} on {m.name} / {ds.name}")
    for k, v in res.to_dict().items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    table.add_row("seconds", f"{time.perf_counter() - t0:.2f}")
    out.print(table)


@app.command()
@_quiet_option
def certify(method: Annotated[str, typer.Argument(help="Registered certifier: ibp, crown, "
                                                  "alpha_crown, smoothing.")],
            model: ModelOpt = None, weights: WeightsOpt = None, data: DataOpt = None,
            mean: MeanOpt = None, std: StdOpt = None,
            norm: Annotated[str, typer.Option(help="A norm the certifier declares: ibp, crown, "
                                              "alpha_crown: linf or l2; smoothing: l2.")] = "linf",
            eps: Annotated[str, typer.Option(help="Comma-separated radii.")] = "0.01,0.02,0.05",
            n: Annotated[int, typer.Option("--n", help="Test samples certified.")] = 100,
            param: ParamOpt = None, seed: SeedOpt = 0, device: DeviceOpt = None,
            quiet: QuietOpt = False) -> None:
    """Certified accuracy at each radius (what no attack within it can change)."""
    from scrutiny.types import ThreatModel

    cert = registry.create(method, kind="certifier", **parse_params(param))
    if is_endpoint(model):
        raise InputError("certification reads the network's weights; an endpoint only answers "
                         "queries: certify the model itself (--model a zoo name, "
                         "module:factory or .safetensors)")
    radii = _floats(eps, "--eps") or []
    if n < 1 or not radii:
        raise InputError("--n must be >= 1 and --eps must name at least one radius")
    if norm not in cert.tags.norms:  # asked of the certifier, before loading anything
        raise InputError(f"{cert.name} certifies {', '.join(cert.tags.norms)} radii: use "
                         f"--norm {cert.tags.norms[0]}")
    m, ds = resolve(model, weights, data, mean, std, device, progress=not quiet)
    x, y = ds.x[:n], ds.y[:n]
    for r in radii:  # every radius is checked before any is certified
        ThreatModel(norm, r)
    t0 = time.perf_counter()
    # a bound method certifies each radius on its own (the same numbers as all at once); a
    # certifier that gives radii answers them from one run, whose own bar shows in this one's place
    per_radius = [] if cert.gives_radius else radii
    with progress.progress_bar(len(per_radius) or 1, f"certify ({cert.name})",
                               hand_over=not per_radius) as bar:
        acc = {}
        for r in per_radius:
            bar.step(f"{norm} eps={r:g}")
            acc.update(cert.certified_accuracy(m, x, y, [r], norm=norm, seed=seed))
            bar.advance()
        if not per_radius:
            bar.step(f"{norm} radii up to {max(radii):g}")
            acc = cert.certified_accuracy(m, x, y, radii, norm=norm, seed=seed)
            bar.advance()
    table = Table(f"{norm} radius", "certified accuracy",
                  title=f"{cert!r} on {m.name} / {ds.name} ({n} samples)")
    for r, a in acc.items():
        table.add_row(f"{r:g}", f"{100 * a:.1f}%")
    table.add_row("seconds", f"{time.perf_counter() - t0:.2f}")
    out.print(table)


@app.command()
@_quiet_option
def reprogram(task: Annotated[str, typer.Option(help="Data of the new task (breast_cancer, "
                                                "digits, synthetic or a path).")] =
              "breast_cancer",
              model: ModelOpt = None, weights: WeightsOpt = None, data: DataOpt = None,
              mean: MeanOpt = None, std: StdOpt = None,
              param: ParamOpt = None, seed: SeedOpt = 0, device: DeviceOpt = None,
              quiet: QuietOpt = False) -> None:
    """Reprogram a frozen black box (probabilities only) to a new task; print its accuracy."""
    from scrutiny.attacks.blackbox.reprogram import BlackBoxReprogramming
    from scrutiny.data import load
    from scrutiny.models import QueryModel

    bar = BlackBoxReprogramming(**parse_params(param))
    m, ds = resolve(model, weights, data, mean, std, device, progress=not quiet)
    train_t, test_t = load(task, split="train"), load(task, split="test")
    box = QueryModel(m, output="probs")
    t0 = time.perf_counter()
    program = bar.fit(box, train_t.x, train_t.y, input_shape=tuple(ds.x.shape[1:]), seed=seed)
    fit_queries = box.queries
    acc = bar.score(box, test_t.x, test_t.y, program)
    chance = float(torch.bincount(test_t.y).max()) / len(test_t.y)
    table = Table("metric", "value", title=f"{m.name} reprogrammed to {train_t.name}")
    table.add_row("test accuracy", f"{100 * acc:.1f}%")
    table.add_row("majority-class rate", f"{100 * chance:.1f}%")
    table.add_row("queries to fit", str(fit_queries))
    table.add_row("seconds", f"{time.perf_counter() - t0:.2f}")
    out.print(table)


@app.command()
@_quiet_option
def train(model: Annotated[str, typer.Option(
              "--model", help="Zoo model name, or 'module:factory' (then --data and --out).")]
          = "digits-cnn",
          data: DataOpt = None,
          epochs: Annotated[int, typer.Option(help="Epochs (module:factory models).")] = 10,
          lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 3e-3,
          save: Annotated[Path | None, typer.Option("--out", help="safetensors file to write "
                                                    "(module:factory models).")] = None,
          retrain: Annotated[bool, typer.Option(help="Retrain a cached zoo model.")] = False,
          seed: SeedOpt = 0, quiet: QuietOpt = False) -> None:
    """Train a zoo model (cached) or your own 'module:factory' model."""
    from scrutiny.data import load
    from scrutiny.models import RECIPES, TorchModel, load_factory, pretrained, save_weights
    from scrutiny.models.training import train as fit

    if model in RECIPES:
        m = pretrained(model, retrain=retrain, progress=not quiet)
        test = load(RECIPES[model].dataset, split="test")
    else:
        if save is None:
            raise InputError("give --out FILE.safetensors for a 'module:factory' model")
        net = load_factory(model)
        ds = load(data or "digits", split="train")
        fit(net, ds, epochs=epochs, lr=lr, seed=seed, progress=not quiet)
        save_weights(net, save, metadata={"model": model, "data": ds.name})
        m, test = TorchModel(net, name=model), load(data or "digits", split="test")
        out.print(f"saved {save}")
    acc = float((m.predict(test.x.to(m.device)).cpu() == test.y).float().mean())
    out.print(f"{m.name}: test accuracy {100 * acc:.1f}% on {test.name} ({len(test)} samples)")


@app.command()
def compare(runs: Annotated[list[Path], typer.Argument(
                help="Audit folders (written by 'scrutiny audit --out'), their result.json, or "
                "folders holding audits.")],
            save: Annotated[Path | None, typer.Option(
                "--out", help="HTML leaderboard to write (links to each audit's report).")] =
            None,
            json_out: Annotated[Path | None, typer.Option(
                "--json", help="Write the leaderboard as JSON to this file ('-': stdout, no "
                "table).")] = None) -> None:
    """Rank audits by their headline robust accuracy (RobustBench-style leaderboard).

    Audits on other data, norm or reference eps are listed after the ranked ones, marked
    not comparable with the reason.
    """
    import json

    from scrutiny.audit.compare import compare as rank
    from scrutiny.audit.compare import write_html

    board = rank(runs)
    if json_out is not None:
        text = json.dumps(board.to_dict(), indent=1)
        if str(json_out) == "-":
            print(text)
            return
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(text + "\n", encoding="utf-8")
    table = Table(title=f"robust accuracy on {board.dataset}, {board.norm} "
                  f"eps={board.reference_eps:g}")
    for col in ("rank", "model", "audit", "clean", f"robust @ {board.reference_eps:g}",
                "certified", "flags", "comparable"):
        table.add_column(col, no_wrap=col in ("rank", "model", "clean"),
                         overflow="fold")
    for e in board.entries:
        table.add_row(str(e.rank or ""), escape(e.model), escape(e.path),
                      f"{100 * e.clean_accuracy:.1f}%",
                      "n/a" if e.headline is None else f"{100 * e.headline:.1f}%",
                      "n/a" if e.certified is None else f"{100 * e.certified:.1f}%",
                      escape(", ".join(e.flags)) or "none",
                      escape("yes" + "".join(f"; {c}" for c in e.caveats)) if e.comparable
                      else escape(f"no: {e.reason}"))
    out.print(table)
    if json_out is not None:
        out.print(f"saved {json_out}")
    if save is not None:
        out.print(f"saved {write_html(board, save)}")


@app.command()
def serve(folder: Annotated[Path, typer.Argument(help="Folder of audits (searched below it).")],
          host: Annotated[str, typer.Option(
              help="Address to listen on; the default, 127.0.0.1, serves this machine only.")]
          = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port (0: a free one).")] = 8000,
          verbose: Annotated[bool, typer.Option(help="Log each request.")] = False) -> None:
    """Browse a folder of audits: the compare leaderboard, linking to each report (read-only)."""
    from scrutiny.audit.serve import make_server

    server = make_server(folder, host=host, port=port, verbose=verbose)
    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]warning:[/] serving {escape(str(folder))} to every machine that "
                  f"can reach {escape(host)}")
    out.print(f"serving {escape(str(folder))} at {server.url} (Ctrl-C stops)")
    sys.stdout.flush()  # before blocking, also when the output is a pipe or a file
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()

def main(argv: list[str] | None = None) -> int:
    """Entry point; bad input gives one line on stderr and exit status 2."""
    try:
        app(args=argv, prog_name="scrutiny")
    except SystemExit as e:  # typer exits on its own after a command or --help
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except ModelUnavailableError as e:  # the endpoint stayed down: rerun to resume
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (ScrutinyError, FileNotFoundError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
