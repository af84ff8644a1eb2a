"""Feature collision: targeted clean-label poisoning (Shafahi et al., Poison Frogs!, 2018)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from scrutiny.attacks.poisoning.base import PoisonResult, TrainingPoisoning, accuracy
from scrutiny.data import ArrayDataset
from scrutiny.errors import InputError
from scrutiny.models.data_method import DataMethod, DataResult
from scrutiny.models.hooks import capture
from scrutiny.models.training import TrainHistory, train
from scrutiny.models.wrapper import TorchModel, as_model
from scrutiny.params import param
from scrutiny.progress import progress_bar
from scrutiny.registry import register

__all__ = ["FeatureCollision", "FeatureCollisionResult", "feature_collision"]

_PAPER = ("Shafahi, Huang, Najibi, Suciu, Studer, Dumitras, Goldstein. Poison Frogs! Targeted "
          "Clean-Label Poisoning Attacks on Neural Networks. NeurIPS 2018")

#: The step-size rule of the paper's code: a step whose objective is not below the mean of the
#: last ``_WINDOW`` accepted objectives is rejected and the step size multiplied by ``_DECAY``.
_WINDOW = 40
_DECAY = 0.5


@dataclass(repr=False)
class FeatureCollisionResult(PoisonResult):
    """The outcome of a feature-collision attack on one target.

    ``data`` is the clean training set with the poisons appended (``poisoned`` their
    indices), ``model`` the victim whose last layer was fine-tuned on it, ``attack_success``
    1.0 when the victim classifies the target as ``base_label``, else 0.0.

    Attributes
    ----------
    poisons : torch.Tensor
        The poison images ``(n, C, H, W)``, in the model's input bounds.
    poison_labels : torch.Tensor
        Their ``int64`` labels: every one is ``base_label``, the correct label of its base.
    base_indices : torch.Tensor
        ``int64`` indices, in the clean training set, of the base instance of each poison.
    target_x : torch.Tensor
        The target instance ``(C, H, W)``.
    target_label : int
        The target's true label.
    base_label : int
        The class the attacker wants the target classified as (the bases' class).
    prediction_before : int
        The clean model's prediction for the target.
    prediction_after : int
        The victim's prediction for the target.
    feature_distance : torch.Tensor
        ``||f(p) - f(t)||_2`` per poison after crafting (``f``: the features of ``layer``).
    base_feature_distance : torch.Tensor
        ``||f(b) - f(t)||_2`` per base: where the optimisation started from.
    input_distance : torch.Tensor
        ``||p - b||_2`` per poison, from its (un-watermarked) base.
    """

    poisons: torch.Tensor | None = None
    poison_labels: torch.Tensor | None = None
    base_indices: torch.Tensor | None = None
    target_x: torch.Tensor | None = None
    target_label: int | None = None
    base_label: int | None = None
    prediction_before: int | None = None
    prediction_after: int | None = None
    feature_distance: torch.Tensor | None = None
    base_feature_distance: torch.Tensor | None = None
    input_distance: torch.Tensor | None = None

    def to_dict(self) -> dict[str, Any]:
        """The numbers, JSON-ready (no tensors)."""
        def mean(t: torch.Tensor | None) -> float | None:
            return None if t is None or t.numel() == 0 else float(t.mean())
        return {"method": self.meta.get("method"), "target_label": self.target_label,
                "base_label": self.base_label, "prediction_before": self.prediction_before,
                "prediction_after": self.prediction_after, "attack_success": self.attack_success,
                "n_poisons": len(self.poisoned), "poison_rate": self.poison_rate,
                "clean_accuracy": self.clean_accuracy,
                "feature_distance": mean(self.feature_distance),
                "base_feature_distance": mean(self.base_feature_distance),
                "input_distance": mean(self.input_distance)}


def _head(model: TorchModel) -> tuple[str, nn.Linear]:
    """The model's last ``nn.Linear`` (the layer the transfer-learning victim retrains)."""
    linears = [(n, m) for n, m in model.module.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InputError(f"{model.name} has no nn.Linear layer to fine-tune")
    return linears[-1]


@contextlib.contextmanager
def _head_input(head: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Record the input of ``head`` (the penultimate features); hook removed on exit."""
    store: dict[str, torch.Tensor] = {}
    handle = head.register_forward_pre_hook(lambda _m, inp: store.__setitem__("out", inp[0]))
    try:
        yield store
    finally:
        handle.remove()


@register("poisoning", "feature_collision", paper=_PAPER,
          test_params={"n_poisons": 2, "max_iter": 3, "epochs": 1})
class FeatureCollision(TrainingPoisoning):
    """Feature collision: clean-label poisons that sit on the target in feature space.

    The attacker wants one target test instance ``t`` (of class ``target_label``)
    classified as ``base_label`` by a victim that fine-tunes the last layer of a
    pretrained network on data the attacker can add to, without controlling labels. It
    takes ``n_poisons`` base instances ``b`` of the base class from the training set and
    turns each into a poison ``p`` that looks like ``b`` in input space but is represented
    like ``t`` by the frozen feature extractor ``f``:

    ``p = argmin_x ||f(x) - f(t)||^2 + beta ||x - b||^2``

    solved by forward-backward splitting (Algorithm 1 of [1]_): a gradient step on the
    feature term, ``x' = p - lam * grad ||f(p) - f(t)||^2``, then the proximal step of the
    input term, ``p = (x' + lam * beta * b) / (1 + lam * beta)``, kept in the model's input
    bounds, starting at ``p = b`` (``b`` watermarked, see below).
    ``beta = beta0 * (D_f / D_in)^2`` with ``D_f`` the feature dimension and ``D_in`` the
    input dimension (the paper's scaling of ``beta0 = 0.25`` from InceptionV3's 2048
    features to the image size). Step size rule of
    the paper's code: a step whose objective is not below the mean of the objectives of the
    last 40 iterates is rejected and ``lam`` halved (per poison); the iterations stop after
    ``max_iter`` or when no poison moves by more than ``tol`` relative to its norm.

    Watermarking (Section 4.2 of [1]_): each base is first blended with the target,
    ``b <- opacity * t + (1 - opacity) * b``, so that the poisons keep some of the
    target's features whatever the network learns (``opacity=0`` turns it off).

    The poisons keep their base's correct label (clean label: the attacker does not label
    them; how much they still look like their base is in ``input_distance``, see Notes)
    and are appended to the training set. The victim is a copy of the model whose
    last ``nn.Linear`` layer alone is fine-tuned on the clean training set plus the
    poisons (the paper's transfer-learning scenario; the layer must output the logits),
    with ``epochs``, ``lr`` and ``batch_size`` (Adam, cosine schedule,
    :func:`scrutiny.models.training.train`); the attack succeeds when the victim
    classifies the target as ``base_label``.

    Call: ``attack(model, data, *, target, base_label=None, target_label=None, test=None,
    seed=0)``:

    - ``data``: the victim's clean training set; the bases are drawn from its points of
      class ``base_label``;
    - ``target``: an index into ``test`` (its label is then ``target_label``), or the
      target image itself (``(C, H, W)`` or ``(1, C, H, W)``);
    - ``target_label``: the target's true label (default ``test.y[target]`` for an index,
      else the clean model's prediction);
    - ``base_label``: the class the target should go to (default: the clean model's
      runner-up class for the target, the closest other class);
    - ``test``: clean test data; the victim's clean accuracy is measured on it;
    - ``seed``: seeds the draw of the bases and the fine-tuning.

    Parameters
    ----------
    n_poisons : int
        How many poisons (one per base instance; all of them when the base class has
        fewer points). The paper's one-shot kill needs InceptionV3's 2048 features; its
        end-to-end attack uses 50 watermarked poisons, as the 64 features of the digits
        CNN need (see Notes).
    bases : {"random", "closest"}
        Which base instances: drawn at random (seeded) among the training points of the
        base class, as in the paper, or those closest to the target in feature space.
    opacity : float
        Opacity ``gamma`` of the target watermark blended into each base, in ``[0, 1)``
        (the paper uses up to 0.3; 0 turns watermarking off).
    beta0 : float
        Weight of the input-space term before scaling by ``(D_f / D_in)^2`` (the paper's
        0.25).
    step_size : float
        Initial step size ``lam`` of the forward (gradient) step, in input units per unit
        of squared feature distance; halved by the step-size rule when too large.
    max_iter : int
        Maximum number of forward-backward iterations.
    tol : float
        Stop when no poison's relative change ``||p_new - p|| / ||p_new||`` exceeds it.
    layer : str, optional
        The layer whose output is the feature space ``f`` (``model.layer_names()``);
        default the penultimate features, the input of the last ``nn.Linear``.
    epochs : int
        Epochs of the victim's fine-tuning of the last layer.
    lr : float
        Learning rate of the victim's fine-tuning.
    batch_size : int
        Batch size of the victim's fine-tuning.

    Notes
    -----
    On the 8x8 digits with the shipped digits CNN (64 penultimate features), fine-tuning
    its last layer on the 1347 training points plus the 50 poisons of the defaults sends 19
    of the first 20 correctly classified test targets to their runner-up class (30 poisons:
    16 of 20), the clean accuracy dropping by at most about 0.02; the same bases added
    unmodified move none. The poisons carry their bases' correct labels and end at 6% of
    the bases' feature distance to the target, but 64 pixels leave no room to hide that:
    they move most of the way to the target in input space (L2 about 2.2 from the base,
    about 0.9 of it the watermark, against 2.7-3.0 between target and base), an
    independently trained digits MLP classifies only 15% of them as the base class, and the
    clean CNN none, since its logits are computed from the features the poisons share with
    the target. A larger ``beta0`` keeps the poisons nearer their bases and lowers the
    success (at ``beta0=16``, 2 of 10 targets with 30 poisons, 50 iterations and 10
    epochs, against 8 of 10 at 0.25).

    References
    ----------
    .. [1] Shafahi, Huang, Najibi, Suciu, Studer, Dumitras, Goldstein. Poison Frogs!
       Targeted Clean-Label Poisoning Attacks on Neural Networks. NeurIPS 2018.

    Examples
    --------
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.models import pretrained
    >>> train_set, test = load_digits(split="train"), load_digits(split="test")
    >>> attack = FeatureCollision(max_iter=50, epochs=10, lr=0.03)
    >>> r = attack(pretrained("digits-cnn", progress=False), train_set, target=0, test=test)
    >>> r.target_label, r.base_label, r.prediction_before, r.prediction_after
    (1, 8, 1, 8)
    >>> bool((r.poison_labels == r.base_label).all()), r.attack_success
    (True, 1.0)
    """

    n_poisons: int = param(50, integer=True, positive=True)
    bases: str = param("random", choices=("random", "closest"))
    opacity: float = param(0.3, between=(0.0, 1.0), interval="[)")
    beta0: float = param(0.25, positive=True)
    step_size: float = param(0.1, positive=True)
    max_iter: int = param(200, integer=True, positive=True)
    tol: float = param(1e-6, nonneg=True)
    layer: str | None = param(None, kind=str)

    def features(self, model: TorchModel, x: torch.Tensor) -> torch.Tensor:
        """The features ``f(x)`` the poisons collide in, flattened to ``(N, D_f)``
        (differentiable with respect to ``x``)."""
        ctx = capture(model.layer(self.layer)) if self.layer is not None \
            else _head_input(_head(model)[1])
        with ctx as store:
            model(x)
        return store["out"].flatten(1)

    def _target(self, model: TorchModel, target: Any, target_label: int | None,
                test: ArrayDataset | None, data: ArrayDataset) -> tuple[torch.Tensor, int]:
        """The target image ``(C, H, W)`` and its true label."""
        shape = tuple(data.x.shape[1:])
        if isinstance(target, torch.Tensor) and target.is_floating_point():
            t = target.detach().reshape(shape) if target.numel() == data.x[0].numel() \
                and target.dim() in (len(shape), len(shape) + 1) else None
            if t is None:
                raise InputError(f"target must be one input of shape {shape} (or an index "
                                 f"into test), got shape {tuple(target.shape)}")
            if not bool(torch.isfinite(t).all()):
                raise InputError("target holds NaN or infinite values")
            label = int(model.predict(t[None])[0]) if target_label is None else target_label
        else:
            if isinstance(target, bool) or not isinstance(target, int | torch.Tensor):
                raise InputError(f"target must be an index into test or an input tensor, "
                                 f"got {target!r}")
            if test is None:
                raise InputError(f"target={int(target)} is an index into test: pass test=")
            i = int(target)
            if not 0 <= i < len(test):
                raise InputError(f"target={i} is not an index of test ({len(test)} points)")
            t = test.x[i]
            label = int(test.y[i]) if target_label is None else target_label
        k = len(data.classes)
        if not 0 <= int(label) < k:
            raise InputError(f"target_label={label} is not a label of {data.name} ({k} classes)")
        return t.to(torch.float32), int(label)

    def craft(self, model: TorchModel, target: torch.Tensor, bases: torch.Tensor, *,
              progress: bool | None = None) -> torch.Tensor:
        """The poisons made from ``bases`` ``(n, C, H, W)`` for ``target`` ``(C, H, W)``
        (watermark, then forward-backward splitting)."""
        dev = model.device
        lo, hi = model.bounds
        t = target.to(dev)[None]
        with torch.no_grad():
            ft = self.features(model, t)
        b = (self.opacity * t + (1 - self.opacity) * bases.to(dev)).clamp(lo, hi)
        beta = self.beta0 * (ft.shape[1] / t[0].numel()) ** 2
        view = (-1,) + (1,) * (b.dim() - 1)

        def objective(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """The objective of each poison and the gradient of its feature term."""
            x = x.clone().requires_grad_(True)
            dist = ((self.features(model, x) - ft) ** 2).sum(1)
            (g,) = torch.autograd.grad(dist.sum(), x)
            value = dist.detach() + beta * ((x.detach() - b) ** 2).flatten(1).sum(1)
            return value, g

        p = b.clone()
        value, g = objective(p)
        lam = torch.full((len(b),), float(self.step_size), device=dev)
        history = [value]
        with progress_bar(self.max_iter, "feature collision", enabled=progress) as bar:
            for _ in range(self.max_iter):
                bar.step(f"objective {float(history[-1].mean()):.4g}")
                step = lam.view(view)
                forward = p - step * g
                new = ((forward + step * beta * b) / (1 + step * beta)).clamp(lo, hi)
                new_value, new_g = objective(new)
                accept = new_value < torch.stack(history[-_WINDOW:]).mean(0)
                change = (new - p).flatten(1).norm(dim=1) / new.flatten(1).norm(dim=1).clamp_min(1e-12)
                keep = accept.view(view)
                p, g = torch.where(keep, new, p), torch.where(keep, new_g, g)
                lam = torch.where(accept, lam, lam * _DECAY)
                history.append(torch.where(accept, new_value, history[-1]))
                bar.advance()
                if bool((change <= self.tol).all()):
                    break
        return p.detach()

    def _run(self, model: TorchModel, data: ArrayDataset, *, seed: int | None,
             test: ArrayDataset | None = None, target: Any = None,
             target_label: int | None = None, base_label: int | None = None
             ) -> FeatureCollisionResult:
        if target is None:
            raise InputError("FeatureCollision needs target= (an index into test or an input)")
        if self.layer is not None:
            model.layer(self.layer)  # a clear error for an unknown name
        _head(model)  # a clear error for a model without a linear layer
        t, t_label = self._target(model, target, target_label, test, data)
        k = len(data.classes)
        with torch.no_grad():
            logits = model(t[None].to(model.device))[0].cpu()
        before = int(logits.argmax())
        if base_label is None:
            logits[t_label] = -float("inf")
            base_label = int(logits.argmax())
        if isinstance(base_label, bool) or not 0 <= int(base_label) < k:
            raise InputError(f"base_label={base_label} is not a label of {data.name} ({k} classes)")
        base_label = int(base_label)
        if base_label == t_label:
            raise InputError(f"base_label={base_label} is the target's own label")
        cand = torch.nonzero(data.y == base_label).flatten()
        if len(cand) == 0:
            raise InputError(f"{data.name} has no point of base_label={base_label} to make "
                             "poisons from")
        n = min(self.n_poisons, len(cand))
        if self.bases == "random":
            gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
            idx = cand[torch.randperm(len(cand), generator=gen)[:n]].sort().values
        else:
            with torch.no_grad():
                ft = self.features(model, t[None].to(model.device))
                dist = (self.features(model, data.x[cand].to(model.device)) - ft).norm(dim=1)
            idx = cand[dist.cpu().argsort()[:n]].sort().values
        base_x = data.x[idx]
        poisons = self.craft(model, t, base_x).cpu()
        labels = torch.full((n,), base_label, dtype=torch.int64)
        poisoned = ArrayDataset(x=torch.cat([data.x, poisons]), y=torch.cat([data.y, labels]),
                                classes=data.classes, name=f"{data.name}+feature_collision",
                                feature_names=data.feature_names)
        victim, hist = self.finetune(model, poisoned, seed=seed)
        dev = model.device
        with torch.no_grad():
            ft = self.features(model, t[None].to(dev))
            fdist = (self.features(model, poisons.to(dev)) - ft).norm(dim=1).cpu()
            bdist = (self.features(model, base_x.to(dev)) - ft).norm(dim=1).cpu()
            after = int(victim.predict(t[None].to(dev))[0])
        return FeatureCollisionResult(
            data=poisoned, poisoned=torch.arange(len(data), len(poisoned)), model=victim,
            history=hist, clean_accuracy=accuracy(victim, test) if test is not None else None,
            attack_success=float(after == base_label), poisons=poisons, poison_labels=labels,
            base_indices=idx, target_x=t.cpu(), target_label=t_label, base_label=base_label,
            prediction_before=before, prediction_after=after, feature_distance=fdist,
            base_feature_distance=bdist,
            input_distance=(poisons - base_x).flatten(1).norm(dim=1),
            meta={"method": self.name, **self.get_params()})

    def finetune(self, model: Any, data: ArrayDataset, *, seed: int | None = 0
                 ) -> tuple[TorchModel, TrainHistory]:
        """The transfer-learning victim: a copy of ``model`` (wrapped) whose last
        ``nn.Linear`` layer alone is trained on ``data`` with ``epochs``, ``lr`` and
        ``batch_size``, in eval mode, with its history. The frozen network's penultimate
        features are computed once and the layer is trained on them (the same as training
        it inside the network, without the repeated forwards). ``model`` is not changed."""
        model = as_model(model)
        head_name, _ = _head(model)
        victim = copy.deepcopy(model).eval().requires_grad_(False)
        head = dict(victim.module.named_modules())[head_name]
        dev = model.device
        with torch.no_grad(), _head_input(head) as store:
            feats, outs = [], []
            for i in range(0, len(data), 1024):
                outs.append(victim(data.x[i:i + 1024].to(dev)))
                feats.append(store["out"].flatten(1))
            check = head(feats[0])
        if not torch.allclose(check, outs[0], atol=1e-5, rtol=1e-4):
            raise InputError(f"the last nn.Linear layer {head_name!r} of {model.name} does not "
                             "output the logits; the transfer-learning victim retrains that layer")
        fds = ArrayDataset(x=torch.cat(feats).cpu(), y=data.y, classes=data.classes,
                           name=f"{data.name}:features")
        head.requires_grad_(True)
        hist = train(head, fds, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                     seed=0 if seed is None else int(seed), progress=False)
        for p in victim.parameters():
            p.requires_grad_(True)
            p.grad = None
        return victim.eval(), hist

    @classmethod
    def common_call(cls, method: DataMethod, model: TorchModel, data: ArrayDataset, *,
                    seed: int | None = 0) -> DataResult:
        return method(model, data, seed=seed, test=data, target=0)


def feature_collision(model: Any, data: ArrayDataset, *, target: Any,
                      test: ArrayDataset | None = None, base_label: int | None = None,
                      target_label: int | None = None, seed: int | None = 0,
                      **params: Any) -> FeatureCollisionResult:
    """Function form of :class:`FeatureCollision`:
    ``feature_collision(model, train, target=0, test=test, n_poisons=50)``."""
    return FeatureCollision(**params)(model, data, target=target, test=test,
                                      base_label=base_label, target_label=target_label, seed=seed)
