"""DBA: a backdoor planted in federated learning by attackers who each poison with one piece
of a global trigger (Xie et al. 2020), with the FedAvg simulation it runs in."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from scrutiny.attacks.poisoning.base import (
    BackdoorResult,
    TrainingPoisoning,
    accuracy,
    attack_success_rate,
)
from scrutiny.attacks.poisoning.trigger import Trigger
from scrutiny.data import ArrayDataset
from scrutiny.errors import InputError
from scrutiny.models.training import fixed_threads
from scrutiny.models.wrapper import TorchModel
from scrutiny.params import param
from scrutiny.progress import progress_bar
from scrutiny.registry import register

__all__ = ["DBA", "DBAResult", "dba", "dba_triggers"]

_PAPER = ("Xie, Huang, Chen, Li. DBA: Distributed Backdoor Attacks against Federated Learning. "
          "ICLR 2020")


def dba_triggers(shape: tuple[int, ...], pieces: int, *, size: int = 3, gap: int = 1,
                 value: float = 1.0) -> tuple[Trigger, list[Trigger]]:
    """The global trigger and its ``pieces`` local patterns: short bars of ``size`` pixels
    in the empty border columns of the image, alternately on the left and the right edge,
    stacked from the top with ``gap`` pixels between two bars of an edge. Piece ``i`` is
    bar ``i``; the global trigger is their union.

    DBA's figures split a global pattern of four short bars in the image's empty corner
    into one bar per attacker; the digits fill their 8x8 frame except for its left and
    right columns, so the bars stand there (vertical) instead.

    Examples
    --------
    >>> g, local = dba_triggers((1, 8, 8), 4, size=3, gap=1)
    >>> g.area, [t.area for t in local]
    (12, [3, 3, 3, 3])
    >>> g.mask[0, :, 0].int().tolist(), local[1].mask[0, :, 7].int().tolist()
    ([1, 1, 1, 0, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0, 0, 0])
    """
    if len(shape) != 3:
        raise InputError(f"DBA's triggers need image inputs (C, H, W), got shape {tuple(shape)}")
    c, h, w = (int(s) for s in shape)
    if pieces < 1 or size < 1 or gap < 0:
        raise InputError(f"DBA's triggers need pieces >= 1, size >= 1 and gap >= 0; got "
                         f"pieces={pieces}, size={size}, gap={gap}")
    need = math.ceil(pieces / 2) * (size + gap) - gap
    if need > h or w < 2:
        raise InputError(f"{pieces} bars of size {size} with gap {gap} need {need} rows on each "
                         f"edge; the images are {h}x{w}")
    local = []
    for i in range(pieces):
        top, col = (i // 2) * (size + gap), 0 if i % 2 == 0 else w - 1
        mask = torch.zeros(1, h, w)
        mask[:, top:top + size, col] = 1.0
        local.append(Trigger(mask=mask, pattern=torch.full((c, h, w), float(value)) * mask))
    union = torch.stack([t.mask for t in local]).amax(0)
    return Trigger(mask=union, pattern=torch.full((c, h, w), float(value)) * union), local


@dataclass(repr=False)
class DBAResult(BackdoorResult):
    """A federated backdoor's outcome: a :class:`BackdoorResult` whose ``model`` is the
    final global model, ``trigger`` the global trigger and ``attack_success`` its success
    rate on ``test``, plus:

    Attributes
    ----------
    pieces : list of Trigger
        The local pieces of the global trigger, one per attacker (DBA's attackers poison
        with them; the centralised attackers with the global trigger).
    distributed : bool
        Whether each attacker poisoned with its own piece (DBA) or with the whole global
        trigger (the centralised baseline).
    round_success : list of float
        The global trigger's attack success rate on the global model after each round.
    round_accuracy : list of float
        The global model's clean accuracy after each round.
    local_success : list of float
        Each local piece's attack success rate on the final global model.
    """

    pieces: list[Trigger] = field(default_factory=list)
    distributed: bool = True
    round_success: list[float] = field(default_factory=list)
    round_accuracy: list[float] = field(default_factory=list)
    local_success: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The numbers, JSON-ready (no tensors)."""
        return {**super().to_dict(), "distributed": self.distributed,
                "piece_areas": [t.area for t in self.pieces],
                "round_success": list(self.round_success),
                "round_accuracy": list(self.round_accuracy),
                "local_success": list(self.local_success)}


@register("poisoning", "dba", paper=_PAPER,
          test_params={"clients": 4, "attackers": 2, "rounds": 2, "size": 2, "poison_rate": 0.5})
class DBA(TrainingPoisoning):
    """The distributed backdoor attack (DBA) on federated learning, with its centralised
    baseline.

    Federated learning as FedAvg (McMahan et al. 2017), simulated in process: the training
    set is split into ``clients`` shards (a seeded iid split); every round the server
    sends the global model to the round's participants, each trains it on its shard with
    minibatch SGD for ``epochs`` local epochs (FedAvg's client update; an optimizer such
    as Adam restarted at every round takes steps of size ``lr`` on every weight and wrecks
    a trained global model), and the server moves the global model by ``eta`` times the
    mean of their updates, ``G <- G + eta * mean_i (L_i - G)``. The first ``attackers``
    clients are malicious and take part in every round (the paper's multiple-shot attack
    A-M); a ``fraction`` of the benign clients, drawn afresh each round, joins them.

    The global trigger is a set of short bars in the images' empty border
    (:func:`dba_triggers`), split into one bar per attacker. In DBA (``distributed=True``)
    each attacker stamps only its own piece on ``poison_rate`` of its shard's points
    (drawn among those not of the target label) and relabels them ``target``; no client
    ever trains on the assembled global trigger, and the global trigger is what is
    tested. In the centralised baseline (``distributed=False``) each attacker stamps the
    whole global trigger, on ``1 / attackers`` as many points, so that both attacks stamp
    the same total number of trigger pixels (the paper's fair budget: its centralised
    attacker poisons as many points as one DBA attacker, with the global trigger). The
    result holds the final global model, the global trigger's attack success rate after
    each round and each local piece's on the final model. As in the paper, the attack is
    meant to start from a trained global model (pass one); from an untrained network the
    rounds also train the task.

    Parameters
    ----------
    target : int
        The label every triggered input should be classified as (2 as in the paper's
        MNIST setting; on the digits the bars at both edges already make a clean model
        say 0 for a fifth of the inputs, and 2 for none).
    clients : int
        Number of clients (attackers included); the training set is split among them.
    attackers : int
        Number of malicious clients, one per piece of the global trigger.
    fraction : float
        Fraction of the benign clients sampled into each round (at least one).
    rounds : int
        Rounds of FedAvg.
    eta : float
        The server's learning rate (1: the global model becomes the participants' mean).
    distributed : bool
        DBA (each attacker poisons with its piece) or the centralised baseline (each
        attacker poisons with the global trigger, on ``1 / attackers`` as many points).
    poison_rate : float
        Fraction of a DBA attacker's shard that is poisoned (the paper's MNIST setting
        poisons 20 of every 64 points).
    poison_epochs : int
        Local epochs of an attacker per round (attackers train longer than benign
        clients in the paper).
    size : int
        Length of each bar of the trigger, in pixels.
    gap : int
        Pixels between two bars on the same edge.
    value : float
        The bars' value (a bright stroke on the digits' dark border).
    momentum : float
        Momentum of the clients' local SGD (0.9 as in the paper).
    epochs : int
        Local epochs of a benign client per round.
    lr : float
        The clients' local SGD learning rate.
    batch_size : int
        The clients' local batch size (16: a shard of the digits holds ~135 points, and
        the paper's clients take about ten steps per local epoch).

    References
    ----------
    .. [1] Xie, Huang, Chen, Li. DBA: Distributed Backdoor Attacks against Federated
       Learning. ICLR 2020.
    .. [2] McMahan, Moore, Ramage, Hampson, Aguera y Arcas. Communication-Efficient
       Learning of Deep Networks from Decentralized Data. AISTATS 2017.

    Examples
    --------
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.models import pretrained
    >>> attack = DBA(clients=10, attackers=4, rounds=2)
    >>> r = attack(pretrained("digits-cnn", progress=False), load_digits(split="train"),
    ...            test=load_digits(split="test"))
    >>> len(r.round_success), len(r.local_success), r.trigger.area
    (2, 4, 12)
    """

    target: int = param(2, integer=True, nonneg=True)
    clients: int = param(10, integer=True, positive=True)
    attackers: int = param(4, integer=True, positive=True)
    fraction: float = param(0.5, between=(0.0, 1.0), interval="(]")
    rounds: int = param(10, integer=True, positive=True)
    eta: float = param(1.0, positive=True)
    distributed: bool = param(True, kind=bool)
    poison_rate: float = param(0.3, between=(0.0, 1.0), interval="(]")
    poison_epochs: int = param(4, integer=True, positive=True)
    size: int = param(3, integer=True, positive=True)
    gap: int = param(1, integer=True, nonneg=True)
    value: float = param(1.0)
    momentum: float = param(0.9, between=(0.0, 1.0), interval="[)")
    epochs: int = param(1, integer=True, positive=True)
    batch_size: int = param(16, integer=True, positive=True)

    def _post_init(self) -> None:
        if self.attackers >= self.clients:
            raise InputError(f"attackers={self.attackers} leaves no benign client among "
                             f"clients={self.clients}")

    def shards(self, data: ArrayDataset, *, seed: int | None = 0) -> list[torch.Tensor]:
        """The indices of each client's shard (a seeded iid split, sizes differing by at
        most one)."""
        if len(data) < self.clients:
            raise InputError(f"{len(data)} training points cannot be split among "
                             f"clients={self.clients}")
        gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
        perm = torch.randperm(len(data), generator=gen)
        return [s.sort().values for s in torch.tensor_split(perm, self.clients)]

    def _poison_shard(self, data: ArrayDataset, idx: torch.Tensor, trigger: Trigger,
                      gen: torch.Generator) -> tuple[ArrayDataset, torch.Tensor]:
        """An attacker's local set and the positions of its poison points in it."""
        x, y = data.x[idx].clone(), data.y[idx].clone()
        eligible = torch.nonzero(y != self.target).flatten()
        share = self.poison_rate / (1 if self.distributed else self.attackers)
        n = min(int(round(share * len(idx))), len(eligible))
        if n < 1:
            split = "" if self.distributed else f" once divided among attackers={self.attackers}"
            raise InputError(f"poison_rate={self.poison_rate} of an attacker's {len(idx)} points "
                             f"poisons none{split}")
        pick = eligible[torch.randperm(len(eligible), generator=gen)[:n]].sort().values
        x[pick] = trigger.apply(x[pick])
        y[pick] = self.target
        return ArrayDataset(x=x, y=y, classes=data.classes, name=f"{data.name}+dba",
                            feature_names=data.feature_names), pick

    def _run(self, model: TorchModel, data: ArrayDataset, *, seed: int | None,
             test: ArrayDataset | None = None) -> DBAResult:
        k = len(data.classes)
        if self.target >= k:
            raise InputError(f"target {self.target} is not a label of {data.name} ({k} classes)")
        glob, pieces = dba_triggers(tuple(data.x.shape[1:]), self.attackers, size=self.size,
                                    gap=self.gap, value=self.value)
        used = pieces if self.distributed else [glob] * self.attackers
        gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
        shards = self.shards(data, seed=seed)
        local: list[ArrayDataset] = []
        poisoned, start = [], 0
        for c, idx in enumerate(shards):
            if c < self.attackers:
                ds, pick = self._poison_shard(data, idx, used[c], gen)
                poisoned.append(pick + start)
            else:
                ds = data.subset(idx)
            local.append(ds)
            start += len(idx)
        benign = list(range(self.attackers, self.clients))
        per_round = max(1, int(round(self.fraction * len(benign))))
        g = copy.deepcopy(model.module).eval()
        round_success, round_accuracy = [], []
        with progress_bar(self.rounds, "dba" if self.distributed else "centralised backdoor") as bar:
            for r in range(self.rounds):
                bar.step(f"round {r + 1}/{self.rounds}")
                chosen = torch.randperm(len(benign), generator=gen)[:per_round].sort().values
                members = list(range(self.attackers)) + [benign[i] for i in chosen.tolist()]
                states = []
                for c in members:
                    states.append(_local_sgd(
                        g, local[c], epochs=self.poison_epochs if c < self.attackers else self.epochs,
                        lr=self.lr, momentum=self.momentum, batch_size=self.batch_size,
                        seed=int(torch.randint(2**31 - 1, (1,), generator=gen))))
                _fedavg(g, states, self.eta)
                if test is not None:
                    round_success.append(attack_success_rate(g, test, glob, self.target))
                    round_accuracy.append(accuracy(g, test))
                bar.advance()
        for p in g.parameters():
            p.requires_grad_(True)
        all_points = ArrayDataset(x=torch.cat([d.x for d in local]), y=torch.cat([d.y for d in local]),
                                  classes=data.classes, name=f"{data.name}+dba",
                                  feature_names=data.feature_names)
        return DBAResult(
            data=all_points, poisoned=torch.cat(poisoned), model=g.eval(),
            clean_accuracy=round_accuracy[-1] if test is not None else None,
            attack_success=round_success[-1] if test is not None else None,
            trigger=glob, target=self.target, pieces=pieces, distributed=self.distributed,
            round_success=round_success, round_accuracy=round_accuracy,
            local_success=[attack_success_rate(g, test, t, self.target) for t in pieces]
            if test is not None else [],
            meta={"method": self.name, **self.get_params()})


def _local_sgd(g: nn.Module, data: ArrayDataset, *, epochs: int, lr: float, momentum: float,
               batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """A client's update (FedAvg's ClientUpdate): the state of a copy of the global model
    ``g`` after ``epochs`` epochs of minibatch SGD on ``data`` (seeded shuffles, one
    thread)."""
    net = copy.deepcopy(g)
    for p in net.parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    shuffle = torch.Generator().manual_seed(seed)
    dev = next(net.parameters()).device
    net.train()
    with fixed_threads(1):
        for _ in range(epochs):
            perm = torch.randperm(len(data), generator=shuffle)
            for i in range(0, len(perm), batch_size):
                idx = perm[i:i + batch_size]
                loss = nn.functional.cross_entropy(net(data.x[idx].to(dev)), data.y[idx].to(dev))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return {k: v.detach() for k, v in net.state_dict().items()}


@torch.no_grad()
def _fedavg(g: nn.Module, states: list[dict[str, torch.Tensor]], eta: float) -> None:
    """``G <- G + eta * mean_i (L_i - G)`` over the floating-point entries of the state;
    the others (counters) are taken from the first participant."""
    new = {}
    for name, v in g.state_dict().items():
        if v.is_floating_point():
            mean = torch.stack([s[name].to(v.device) for s in states]).mean(0)
            new[name] = v + eta * (mean - v)
        else:
            new[name] = states[0][name]
    g.load_state_dict(new)


def dba(model: Any, data: ArrayDataset, *, test: ArrayDataset | None = None,
        seed: int | None = 0, **params: Any) -> DBAResult:
    """Function form of :class:`DBA`: ``dba(model, data, test=test, clients=10, attackers=4)``."""
    return DBA(**params)(model, data, test=test, seed=seed)
