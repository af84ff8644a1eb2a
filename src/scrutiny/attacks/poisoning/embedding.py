"""Adversarial backdoor embedding: a backdoor whose poisoned inputs look clean in the
latent space (Tan & Shokri 2020)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from scrutiny.attacks.poisoning.badnets import BadNets
from scrutiny.attacks.poisoning.base import BackdoorResult, accuracy, attack_success_rate
from scrutiny.attacks.poisoning.trigger import Trigger
from scrutiny.data import ArrayDataset
from scrutiny.errors import InputError
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.registry import register

__all__ = ["BackdoorEmbedding", "EmbeddingResult", "backdoor_embedding", "latent_separation",
           "latents"]

_PAPER = ("Tan, Shokri. Bypassing Backdoor Detection Algorithms in Deep Learning. IEEE EuroS&P "
          "2020 (arXiv:1905.13409)")


def _check_hidden(name: str, value: tuple) -> None:
    if not value or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise InputError(f"{name} must be a non-empty tuple of positive ints, got {value!r}")


def _latent_layer(module: nn.Module, layer: str | None) -> tuple[nn.Module, bool]:
    """The layer whose representation is read and whether it is read at its input: the
    named layer's output, or (``layer=None``) the input of the last ``nn.Linear``."""
    mods = dict(module.named_modules())
    if layer is None:
        names = [n for n, m in mods.items() if isinstance(m, nn.Linear)]
        if not names:
            raise InputError(f"{type(module).__name__} has no nn.Linear layer; pass layer=")
        return mods[names[-1]], True
    if not layer or layer not in mods:
        raise InputError(f"no layer {layer!r} in {type(module).__name__}; layers: "
                         + ", ".join(n for n in mods if n))
    return mods[layer], False


@contextlib.contextmanager
def _reading(module: nn.Module, layer: str | None) -> Iterator[dict[str, torch.Tensor]]:
    """``store["z"]``: the flattened representation at ``layer`` of the latest forward
    (with its graph); the hook is removed on exit."""
    mod, before = _latent_layer(module, layer)
    store: dict[str, torch.Tensor] = {}
    if before:
        handle = mod.register_forward_pre_hook(lambda _m, inp: store.__setitem__("z", inp[0].flatten(1)))
    else:
        handle = mod.register_forward_hook(lambda _m, _i, out: store.__setitem__("z", out.flatten(1)))
    try:
        yield store
    finally:
        handle.remove()


@torch.no_grad()
def latents(model: Any, x: torch.Tensor, *, layer: str | None = None,
            batch_size: int = 1024) -> torch.Tensor:
    """The representations ``(N, D)`` of ``x`` at ``layer`` (default: the input of the
    last ``nn.Linear``, the penultimate representation) in eval mode (the model's mode is
    restored)."""
    module = model.module if isinstance(model, TorchModel) else model
    was = [(m, m.training) for m in module.modules()]
    dev = next(module.parameters()).device
    outs = []
    try:
        module.eval()
        with _reading(module, layer) as store:
            for i in range(0, len(x), batch_size):
                module(x[i:i + batch_size].to(dev))
                outs.append(store["z"].float().cpu())
    finally:
        for m, t in was:
            m.training = t
    return torch.cat(outs) if outs else torch.zeros(0, 0)


def _auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Probability that a random ``pos`` score exceeds a random ``neg`` one (ties count
    half): the area under the ROC curve."""
    gt = (pos[:, None] > neg[None, :]).double().mean()
    eq = (pos[:, None] == neg[None, :]).double().mean()
    return float(gt + 0.5 * eq)


def latent_separation(model: Any, data: ArrayDataset, poisoned: torch.Tensor, *,
                      layer: str | None = None) -> float:
    """How well the top singular direction of the latent space splits the poison points
    from the clean ones: the separation spectral signatures (Tran et al. 2018), one of the
    detectors Tan & Shokri evade, rely on.

    For each label that holds poison points and clean points in ``data`` (the target of
    an all-to-one backdoor), the representations at ``layer`` (:func:`latents`) are
    centred and projected on their top singular vector; the result is the area under the
    ROC curve of that projection for poison against clean points, taken on the side
    that separates them (``max(auc, 1 - auc)``), averaged over those labels: 1 when the
    direction splits them perfectly, 0.5 when it cannot tell them apart. NaN when no label
    holds both. (Tran et al. score each point by its squared projection, which flags the
    smaller of two groups; a BadNets target label may be half poison, where the signed
    projection is the one that separates.)

    References
    ----------
    .. [1] Tran, Li, Madry. Spectral Signatures in Backdoor Attacks. NeurIPS 2018.

    Examples
    --------
    >>> import torch
    >>> from scrutiny.data import ArrayDataset
    >>> from torch import nn
    >>> x = torch.zeros(20, 1, 2, 2); x[:4] = 1.0           # four points stand out
    >>> data = ArrayDataset(x=x, y=torch.zeros(20, dtype=torch.long), classes=("a",), name="t")
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 1))
    >>> latent_separation(net, data, torch.arange(4))
    1.0
    """
    poisoned = torch.as_tensor(poisoned, dtype=torch.long)
    z = latents(model, data.x, layer=layer).double()
    is_poison = torch.zeros(len(data), dtype=torch.bool)
    is_poison[poisoned] = True
    scores = []
    for k in data.y[poisoned].unique().tolist():
        rows = data.y == k
        if not bool((rows & ~is_poison).any()):
            continue
        r = z[rows] - z[rows].mean(0)
        v = torch.linalg.svd(r, full_matrices=False).Vh[0]
        s = r @ v
        p = is_poison[rows]
        auc = _auroc(s[p], s[~p])
        scores.append(max(auc, 1.0 - auc))
    return float(sum(scores) / len(scores)) if scores else float("nan")


@dataclass(repr=False)
class EmbeddingResult(BackdoorResult):
    """An adversarial backdoor embedding's outcome: a :class:`BackdoorResult` plus
    ``separation``, the :func:`latent_separation` of the poison points in the victim's
    latent space (AUROC along the top singular direction; 0.5: indistinguishable), and
    ``discriminator_accuracy``, the discriminator's balanced accuracy (mean of its
    accuracy on poison and on clean points) per epoch of training."""

    separation: float = float("nan")
    discriminator_accuracy: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The numbers, JSON-ready (no tensors)."""
        return {**super().to_dict(), "separation": self.separation,
                "discriminator_accuracy": list(self.discriminator_accuracy)}


class _Discriminator(nn.Module):
    """An MLP on latent representations: logits of (clean, poisoned); Gaussian noise of
    ``noise`` standard deviation on its input while it trains."""

    def __init__(self, width: int, hidden: tuple[int, ...], noise: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = width
        for h in hidden:
            layers += [nn.Linear(d, h), nn.LeakyReLU(0.2)]
            d = h
        layers.append(nn.Linear(d, 2))
        self.net = nn.Sequential(*layers)
        self.noise = noise

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.noise > 0:
            z = z + self.noise * torch.randn_like(z)
        return self.net(z)


class _Objective:
    """The victim's training objective with the adversarial regulariser: per batch, one
    step of the discriminator on the batch's (detached) latents, then the victim's loss
    ``CE(f(x), y) - penalty * CE(D(z(x)), poisoned)`` with the updated discriminator. A
    batch's poison points are the inputs that carry the trigger (only they do)."""

    def __init__(self, attack: BackdoorEmbedding, trigger: Trigger, n: int, width: int,
                 device: torch.device) -> None:
        self.layer, self.penalty, self.trigger = attack.layer, attack.penalty, trigger
        self.disc = _Discriminator(width, tuple(attack.hidden), attack.noise).to(device)
        self.opt = torch.optim.Adam(self.disc.parameters(), lr=attack.disc_lr)
        self.per_epoch = -(-n // attack.batch_size)
        self.batches, self.hits = 0, torch.zeros(2, 2)  # hits[true, predicted]
        self.accuracy: list[float] = []

    def carries(self, x: torch.Tensor) -> torch.Tensor:
        m = self.trigger.mask.to(x.device, x.dtype)
        p = self.trigger.pattern.to(x.device, x.dtype)
        return ((x - p).abs() * m).flatten(1).amax(1).eq(0).long()

    def __call__(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        flag = self.carries(x)
        with _reading(module, self.layer) as store:
            logits = module(x)
        z = store["z"]
        self.disc.train()
        self.opt.zero_grad(set_to_none=True)
        d_out = self.disc(z.detach())
        nn.functional.cross_entropy(d_out, flag).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        pred = d_out.argmax(1).cpu()
        self.hits.index_put_((flag.cpu(), pred), torch.ones(len(pred)), accumulate=True)
        self.batches += 1
        if self.batches % self.per_epoch == 0:
            per_label = [self.hits[k, k] / self.hits[k].sum() for k in (0, 1) if self.hits[k].sum() > 0]
            self.accuracy.append(float(sum(per_label) / len(per_label)))
            self.hits.zero_()
        adversarial = nn.functional.cross_entropy(self.disc(z), flag)
        return nn.functional.cross_entropy(logits, y) - self.penalty * adversarial, logits


@register("poisoning", "backdoor_embedding", paper=_PAPER,
          test_params={"epochs": 1, "size": 2, "rate": 0.2, "hidden": (8,)})
class BackdoorEmbedding(BadNets):
    """Adversarial backdoor embedding: a BadNets backdoor trained so that the latent
    representations of poisoned inputs cannot be told from those of clean ones.

    The detectors of backdoored training sets and models (spectral signatures,
    activation clustering, feature pruning) rely on the poisoned inputs forming a
    separate group in the network's latent space. Tan & Shokri's attacker, who trains the
    model, poisons the training set as BadNets does (the trigger, target and poison
    points are those of :class:`BadNets` with the same parameters and seed) and adds an
    adversarial regulariser to the training: a discriminator network ``D`` reads the
    latent representation ``z(x)`` at ``layer`` and learns to tell poisoned from clean
    inputs, while the victim minimises its task loss minus ``penalty`` times the
    discriminator's loss, ``CE(f(x), y) - penalty * CE(D(z(x)), poisoned)``. The two
    updates alternate on every batch: one step of the discriminator on the batch's
    latents, then one step of the victim against the updated discriminator. The victim
    learns the backdoor while its representations of poisoned inputs drift into the
    clean ones of the target. The result adds the :func:`latent_separation` of the
    poison points in the trained victim (the AUROC of their projection on the top
    singular direction, which spectral signatures read; 0.5 means it cannot tell them
    apart) and the discriminator's balanced accuracy per epoch.

    Parameters
    ----------
    target : int
        The target label of all-to-one; ignored when ``all_to_all``.
    all_to_all : bool
        Map each label ``k`` to ``(k + 1) mod K`` instead of one target.
    rate : float
        Fraction of the training set that is poisoned (as :class:`BadNets`).
    mode : {"replace", "add"}
        Poison points replace their clean originals, or are appended as copies.
    size : int
        Side of the trigger patch in pixels.
    position : str
        Where the patch sits: ``"bottom_right"``, ``"bottom_left"``, ``"top_right"``,
        ``"top_left"`` (one pixel from the corner) or ``"center"``.
    pattern : {"checkerboard", "square"}
        What the patch shows (see :meth:`Trigger.patch`).
    value : float
        The patch's bright value (its dark pixels are 0).
    layer : str, optional
        The layer whose output the discriminator reads (and the separation is measured
        at); default the input of the last ``nn.Linear``, the penultimate
        representation the paper's detectors read.
    penalty : float
        ``lambda``, the weight of the discriminator's loss in the victim's objective
        (0 gives plain BadNets training). The objective is unbounded below: on the digits
        CNN, 1 costs clean accuracy and 3 ends with latents more separated than BadNets'.
    hidden : tuple of int
        Widths of the discriminator's hidden layers (linear, leaky ReLU 0.2).
    disc_lr : float
        The discriminator's learning rate (Adam).
    noise : float
        Standard deviation of the Gaussian noise added to the latents the discriminator
        reads (as ART's implementation); without it the victim fools a sharp
        discriminator by pushing the poison latents further away (measured on the
        digits CNN).
    epochs : int
        Epochs of the victim's training (Adam, cosine schedule;
        :func:`scrutiny.models.training.train`).
    lr : float
        The victim's learning rate.
    batch_size : int
        The victim's batch size (the discriminator steps once per batch).

    References
    ----------
    .. [1] Tan, Shokri. Bypassing Backdoor Detection Algorithms in Deep Learning. IEEE
       European Symposium on Security and Privacy (EuroS&P), 2020. arXiv:1905.13409.
    .. [2] Tran, Li, Madry. Spectral Signatures in Backdoor Attacks. NeurIPS 2018.

    Examples
    --------
    >>> import torch
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.models import build
    >>> _ = torch.manual_seed(0)
    >>> attack = BackdoorEmbedding(target=0, rate=0.1, epochs=10)
    >>> r = attack(build("cnn", (1, 8, 8), 10), load_digits(split="train"),
    ...            test=load_digits(split="test"))
    >>> r.attack_success > 0.9, r.separation < 0.85
    (True, True)
    """

    layer: str | None = param(None, kind=str)
    penalty: float = param(0.5, nonneg=True)
    hidden: tuple = param((256, 128), kind=tuple, check=_check_hidden)
    disc_lr: float = param(1e-3, positive=True)
    noise: float = param(1.0, nonneg=True)

    def _run(self, model: TorchModel, data: ArrayDataset, *, seed: int | None,
             test: ArrayDataset | None = None) -> EmbeddingResult:
        poisoned, idx = self.poison(data, seed=seed)
        trig = self.trigger(tuple(data.x.shape[1:]))
        width = latents(model, data.x[:1], layer=self.layer).shape[1]
        objective = _Objective(self, trig, len(poisoned), width, model.device)
        victim, hist = self.train_copy(model, poisoned, seed=seed, objective=objective)
        target = None if self.all_to_all else self.target
        return EmbeddingResult(
            data=poisoned, poisoned=idx, model=victim, history=hist,
            clean_accuracy=accuracy(victim, test) if test is not None else None,
            attack_success=attack_success_rate(victim, test, trig, target) if test is not None else None,
            trigger=trig, target=target,
            separation=latent_separation(victim, poisoned, idx, layer=self.layer),
            discriminator_accuracy=objective.accuracy,
            meta={"method": self.name, **self.get_params()})


def backdoor_embedding(model: Any, data: ArrayDataset, *, test: ArrayDataset | None = None,
                       seed: int | None = 0, **params: Any) -> EmbeddingResult:
    """Function form of :class:`BackdoorEmbedding`:
    ``backdoor_embedding(model, data, test=test, target=0, penalty=1.0)``."""
    return BackdoorEmbedding(**params)(model, data, test=test, seed=seed)
