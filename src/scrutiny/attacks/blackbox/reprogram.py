"""Black-box adversarial reprogramming (BAR): repurpose a frozen black box for a new task.

Not an evasion attack (it learns a program from a training set and is judged
on held-out data), so it is not registered as ``attack:*``; it is a
:class:`~scrutiny.base.Method` with ``fit`` / ``predict`` / ``score``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from scrutiny.base import Method, seeded
from scrutiny.errors import InputError
from scrutiny.models.query import QueryModel
from scrutiny.params import param
from scrutiny.progress import progress_bar

OPTIMIZERS = ("adam", "sgd")
LABEL_MAPPINGS = ("frequency", "fixed")


@dataclass
class ReprogramResult:
    """A learned program: the input transformation and the label mapping.

    Attributes
    ----------
    weights : Tensor
        ``W``, one value per frame element of the black box's input ``(C, H, W)``
        (zero inside the embedded region, which the mask excludes).
    mask : Tensor
        ``M`` (C, H, W): 1 where the program lives, 0 where the new task's input goes.
    label_map : Tensor
        ``(K_new, m)`` source labels whose probabilities are averaged into each new class.
    input_shape : tuple of int
        The black box's input shape ``(C, H, W)``.
    bounds : (float, float)
        The black box's input range.
    losses : list of float
        Training loss per step (at the current program, on that step's minibatch).
    queries : int
        Queries spent fitting.
    """

    weights: torch.Tensor
    mask: torch.Tensor
    label_map: torch.Tensor
    input_shape: tuple[int, ...]
    bounds: tuple[float, float]
    losses: list[float] = field(default_factory=list)
    queries: int = 0

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Place new-task inputs (tabular ``(N, F)`` or images ``(N, c, h, w)``) in the centre."""
        return embed(x, self.input_shape, self.bounds)[0]

    def transform(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``X~ = M * program(W) + (1 - M) * embed(x)``: what the black box is asked."""
        w = self.weights if weights is None else weights
        return _program(self.embed(x), w, self.mask, self.bounds)


def embed(x: torch.Tensor, input_shape: tuple[int, ...], bounds: tuple[float, float]
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed new-task inputs in the centre of the black box's input; ``(X, mask)``.

    A table ``(N, F)`` (features in ``[0, 1]``) becomes a ``s x s`` image,
    ``s = ceil(sqrt(F))``, zero-padded; an image ``(N, c, h, w)`` is used as
    is (a single channel repeated over ``C``). Values are mapped from
    ``[0, 1]`` to ``bounds``. The mask is 1 outside the embedded square.
    """
    if len(input_shape) != 3:
        raise InputError(f"input_shape must be (C, H, W), got {input_shape!r}")
    c_in, h_in, w_in = input_shape
    if x.dim() == 2:
        s = math.ceil(math.sqrt(x.shape[1]))
        img = torch.zeros(len(x), s * s, dtype=x.dtype, device=x.device)
        img[:, :x.shape[1]] = x
        img = img.view(len(x), 1, s, s)
    elif x.dim() == 4:
        img = x
    else:
        raise InputError(f"new-task inputs must be a table (N, F) or images (N, c, h, w), got "
                         f"shape {tuple(x.shape)}")
    c, h, w = img.shape[1:]
    if h > h_in or w > w_in or c not in (1, c_in):
        raise InputError(f"new-task inputs of shape {(c, h, w)} do not fit in the black box's "
                         f"input {tuple(input_shape)}")
    lo, hi = bounds
    out = torch.zeros(len(x), c_in, h_in, w_in, dtype=x.dtype, device=x.device)
    top, left = (h_in - h) // 2, (w_in - w) // 2
    out[:, :, top:top + h, left:left + w] = lo + (hi - lo) * img.clamp(0, 1)
    mask = torch.ones(c_in, h_in, w_in, dtype=x.dtype, device=x.device)
    mask[:, top:top + h, left:left + w] = 0
    return out, mask


def frequency_label_map(source_pred: torch.Tensor, y: torch.Tensor, k_src: int, k_new: int,
                        m: int) -> torch.Tensor:
    """Frequency label mapping: ``(k_new, m)`` source labels per new class.

    Counts ``C[s, t]``, how often source label ``s`` is predicted for samples of
    new class ``t``; repeatedly takes the largest count among unused source labels
    and classes that still need labels, and assigns ``s`` to ``t`` (ties: lowest
    indices), until every class has ``m``.

    Examples
    --------
    >>> frequency_label_map(torch.tensor([3, 3, 1, 1, 1]), torch.tensor([0, 0, 1, 1, 0]), 4, 2, 1)
    tensor([[3],
            [1]])
    """
    counts = torch.zeros(k_src, k_new)
    counts.index_put_((source_pred.long(), y.long()), torch.ones(len(y)), accumulate=True)
    chosen: list[list[int]] = [[] for _ in range(k_new)]
    for _ in range(k_new * m):
        flat = int(counts.flatten().argmax())
        s, t = divmod(flat, k_new)
        chosen[t].append(s)
        counts[s] = -1  # each source label once
        if len(chosen[t]) == m:
            counts[:, t] = -1
    return torch.tensor(chosen)


def _program(embedded: torch.Tensor, w: torch.Tensor, mask: torch.Tensor,
             bounds: tuple[float, float]) -> torch.Tensor:
    """``M * (lo + (hi - lo) (tanh(W) + 1) / 2) + (1 - M) * embedded``; ``w`` (..., C, H, W)."""
    lo, hi = bounds
    p = lo + (hi - lo) * (torch.tanh(w) + 1) / 2
    return mask * p + (1 - mask) * embedded


class BlackBoxReprogramming(Method):
    """Black-box adversarial reprogramming (BAR) with zeroth-order gradient estimates.

    Learns a *program* (the pixels around a new-task input embedded at the
    centre of the black box's input, ``P = program(W)`` on the frame ``M``)
    and uses a fixed many-to-one *label mapping* (each new class gets ``m``
    source labels; its score is the mean of their probabilities), so that a
    frozen black box answering probabilities solves the new task. The loss
    is the focal loss ``-(1 - h_y)^gamma log h_y`` of the mapped scores;
    its gradient in ``W`` is estimated from queries only:
    ``g = d / (q beta) * sum_j [L(W + beta U_j) - L(W)] U_j`` with ``U_j``
    uniform on the unit sphere of the program's ``d`` parameters, averaged
    over ``q = n_samples`` directions (all ``(q + 1) * batch`` inputs in one
    query call);
    ``W`` follows Adam (or the paper's plain descent) on this estimate.

    Parameters
    ----------
    steps : int
        Optimisation steps (one minibatch each).
    n_samples : int
        Random directions per gradient estimate (the paper's ``q``).
    beta : float
        Smoothing radius of the estimate.
    lr : float
        Learning rate of the optimiser.
    optimizer : {"adam", "sgd"}
        Adam on the estimate (default, robust to its scale) or the paper's
        ``W <- W - lr * g``.
    batch_size : int
        New-task training samples per step.
    labels_per_class : int, optional
        ``m`` source labels per new class (default: as many as fit,
        ``K_source // K_new``).
    label_mapping : {"frequency", "fixed"}
        How source labels are assigned to new classes. ``"frequency"``
        (default; the paper's frequency mapping): the black box is asked once
        about every training input at the empty program, and the source labels
        most often predicted for a new class's samples go to that class,
        greedily, each label used once (``N`` extra queries). ``"fixed"``:
        class ``j`` gets labels ``j, j + K_new, ...`` whatever the black box
        says about the new task; on a small frame this can leave every mapped
        label with a probability near zero, where the zeroth-order estimate
        finds no slope.
    gamma : float
        Focal-loss exponent (0: cross-entropy).

    Notes
    -----
    Like the paper, the label mapping is fixed before training, not learned,
    and the program is a free pixel frame around the embedded input (the
    paper allows any mask). Tabular tasks are embedded as small square images.

    References
    ----------
    .. [1] Tsai, Chen, Ho. "Transfer learning without knowing: reprogramming
       black-box machine learning models with scarce data and limited
       resources". ICML 2020.
    .. [2] Elsayed, Goodfellow, Sohl-Dickstein. "Adversarial reprogramming of
       neural networks". ICLR 2019 (white-box reprogramming).

    Examples
    --------
    >>> from scrutiny.models import QueryModel, pretrained
    >>> from scrutiny.data import load_breast_cancer
    >>> black_box = QueryModel(pretrained("digits-cnn", progress=False), output="probs")
    >>> train, test = load_breast_cancer(), load_breast_cancer(split="test")
    >>> bar = BlackBoxReprogramming(steps=50, lr=0.3)
    >>> program = bar.fit(black_box, train.x, train.y, input_shape=(1, 8, 8))
    >>> bar.score(black_box, test.x, test.y, program) > 0.7  # majority class: 0.63
    True
    """

    steps: int = param(200, integer=True, positive=True)
    n_samples: int = param(10, integer=True, positive=True)
    beta: float = param(0.01, positive=True)
    lr: float = param(0.1, positive=True)
    optimizer: str = param("adam", choices=OPTIMIZERS)
    batch_size: int = param(32, integer=True, positive=True)
    labels_per_class: int | None = param(None, integer=True, positive=True)
    label_mapping: str = param("frequency", choices=LABEL_MAPPINGS)
    gamma: float = param(2.0, nonneg=True)

    @staticmethod
    def _check_model(model: QueryModel) -> None:
        if not isinstance(model, QueryModel):
            raise InputError(f"model must be a QueryModel (the black box), got "
                             f"{type(model).__name__}")
        if not model.reveals("probs"):
            raise InputError(f"reprogramming needs scores; this QueryModel answers only "
                             f"{model.output!r}")

    @staticmethod
    def _probs(model: QueryModel, xq: torch.Tensor) -> torch.Tensor:
        out = model.predict(xq)
        return out.softmax(dim=1) if model.output == "logits" else out

    def _mapped(self, probs: torch.Tensor, label_map: torch.Tensor) -> torch.Tensor:
        return probs[:, label_map].mean(dim=2)  # (n, K_new)

    def _loss(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        hy = h.gather(-1, y.expand(*h.shape[:-1]).unsqueeze(-1)).squeeze(-1).clamp_min(1e-12)
        return (-(1 - hy) ** self.gamma * hy.log()).mean(dim=-1)

    def fit(self, model: QueryModel, x: torch.Tensor, y: torch.Tensor, *,
            input_shape: tuple[int, int, int], seed: int = 0) -> ReprogramResult:
        """Learn the program on ``(x, y)`` of the new task, querying ``model`` only.

        Parameters
        ----------
        model : QueryModel
            The frozen black box; answers probabilities (or logits). Every query counted.
        x : Tensor
            New-task inputs, a table ``(N, F)`` or images ``(N, c, h, w)``, in ``[0, 1]``.
        y : Tensor
            New-task labels ``(N,)`` in ``0..K_new-1``.
        input_shape : (C, H, W)
            The black box's input shape.
        seed : int
            Seeds the minibatches and the random directions.
        """
        self._check_model(model)
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or not len(x):
            raise InputError("x must be a non-empty floating-point tensor")
        if not isinstance(y, torch.Tensor) or y.shape != (len(x),) or y.is_floating_point():
            raise InputError(f"y must be integer labels of shape ({len(x)},)")
        k_new = int(y.max()) + 1
        emb, mask = embed(x.detach().float().cpu(), tuple(input_shape), model.bounds)
        start_q = model.queries
        with seeded(seed):
            # the number of source classes, from one query at the empty program
            probe = self._probs(model, _program(emb[:1], torch.zeros_like(mask), mask, model.bounds))
            k_src = probe.shape[1]
            m = self.labels_per_class or k_src // k_new
            if m < 1 or m * k_new > k_src:
                raise InputError(f"{k_new} new classes x {m} labels each do not fit in the black "
                                 f"box's {k_src} classes")
            if self.label_mapping == "fixed":
                label_map = torch.arange(m)[None, :] * k_new + torch.arange(k_new)[:, None]
            else:
                empty = _program(emb, torch.zeros_like(mask), mask, model.bounds)
                pred = self._probs(model, empty).argmax(dim=1)
                label_map = frequency_label_map(pred, y.long().cpu(), k_src, k_new, m)
            frame = mask.flatten().nonzero().flatten()
            d = len(frame)
            theta = torch.zeros(d)
            mom, vel = torch.zeros(d), torch.zeros(d)
            losses: list[float] = []
            y = y.long().cpu()
            with progress_bar(self.steps, "BAR") as bar:
                for t in range(1, self.steps + 1):
                    idx = torch.randperm(len(x))[:self.batch_size]
                    q = self.n_samples
                    u = torch.randn(q, d)
                    u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
                    params = torch.cat([theta[None], theta[None] + self.beta * u])  # (q+1, d)
                    w = torch.zeros(q + 1, mask.numel())
                    w[:, frame] = params
                    w = w.view(q + 1, *mask.shape)
                    xq = _program(emb[idx][None], w[:, None], mask, model.bounds)  # (q+1, b, ...)
                    probs = self._probs(model, xq.flatten(0, 1)).view(q + 1, len(idx), -1)
                    loss = self._loss(self._mapped(probs.flatten(0, 1), label_map)
                                      .view(q + 1, len(idx), k_new), y[idx])
                    g = d / (q * self.beta) * ((loss[1:] - loss[0])[:, None] * u).sum(dim=0)
                    if self.optimizer == "adam":
                        mom = 0.9 * mom + 0.1 * g
                        vel = 0.999 * vel + 0.001 * g * g
                        step = (mom / (1 - 0.9 ** t)) / ((vel / (1 - 0.999 ** t)).sqrt() + 1e-8)
                    else:
                        step = g
                    theta = theta - self.lr * step
                    losses.append(float(loss[0]))
                    bar.advance(f"loss {losses[-1]:.3f}")
        weights = torch.zeros(mask.numel())
        weights[frame] = theta
        return ReprogramResult(weights=weights.view_as(mask), mask=mask.cpu(), label_map=label_map,
                               input_shape=tuple(input_shape), bounds=model.bounds, losses=losses,
                               queries=model.queries - start_q)

    def predict(self, model: QueryModel, x: torch.Tensor, result: ReprogramResult) -> torch.Tensor:
        """New-task labels of ``x`` through the program (one counted query per input)."""
        self._check_model(model)
        probs = self._probs(model, result.transform(x.detach().float().cpu()))
        return self._mapped(probs, result.label_map).argmax(dim=1)

    def score(self, model: QueryModel, x: torch.Tensor, y: torch.Tensor,
              result: ReprogramResult) -> float:
        """Accuracy of the reprogrammed black box on ``(x, y)``."""
        return float((self.predict(model, x, result) == y.long().cpu()).float().mean())
