"""Square Attack (Andriushchenko et al. ECCV 2020): score-based random search, linf and l2."""

from __future__ import annotations

import math

import torch

from scrutiny.attacks.base import Attack, BlackBox, margin_loss_terms
from scrutiny.errors import InputError
from scrutiny.params import param
from scrutiny.progress import progress_bar
from scrutiny.registry import register
from scrutiny.types import Tags, ThreatModel

#: Iterations (of 10000) after which the square's area fraction p is halved.
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(p_init: float, it: int, n_iters: int) -> float:
    """The paper's piecewise-constant schedule of ``p`` (fraction of pixels changed).

    ``p`` is halved after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000
    and 8000 of a 10000-query run; for other budgets ``it`` is rescaled to
    ``it * 10000 / n_iters`` first.
    """
    scaled = int(it / max(n_iters, 1) * 10000)
    return p_init / 2 ** sum(scaled > h for h in _HALVINGS)


def _rect_bump(h: int, w: int) -> torch.Tensor:
    """Concentric rectangles summed with weights ``1/(k+1)^2``: a pseudo-Gaussian bump."""
    out = torch.zeros(h, w)
    ch, cw = h // 2, w // 2
    for k in range(max(h // 2 + 1, w // 2 + 1)):
        out[max(ch - k, 0):min(ch + k + 1, h), max(cw - k, 0):min(cw + k + 1, w)] += 1.0 / (k + 1) ** 2
    return out / out.norm().clamp_min(1e-12)


def meta_pattern(s: int) -> torch.Tensor:
    """The l2 update's ``s x s`` pattern: two bumps of opposite sign, unit l2 norm, randomly
    transposed (Andriushchenko et al., Sec. 3.2)."""
    out = torch.zeros(s, s)
    if s // 2:
        out[:s // 2] = _rect_bump(s // 2, s)
    out[s // 2:] = -_rect_bump(s - s // 2, s)
    out = out / out.norm().clamp_min(1e-12)
    return out.t().contiguous() if bool(torch.rand(()) > 0.5) else out


def _window(n: int, h: int, w: int, s: int, device: torch.device
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ``s x s`` window per sample: (mask (n, 1, h, w), row offsets, column offsets)."""
    r = torch.randint(0, h - s + 1, (n,), device=device)
    c = torch.randint(0, w - s + 1, (n,), device=device)
    ii = torch.arange(h, device=device)[None, :] - r[:, None]  # (n, h) row inside the window
    jj = torch.arange(w, device=device)[None, :] - c[:, None]
    inside = ((ii >= 0) & (ii < s))[:, :, None] & ((jj >= 0) & (jj < s))[:, None, :]
    return inside[:, None].float(), ii.clamp(0, s - 1), jj.clamp(0, s - 1)


#: Largest number of values in a cached table of every window position (see :func:`_windows`).
_BANK_LIMIT = 2**22
_banks: dict[tuple[int, int, int, str], torch.Tensor] = {}


def _windows(n: int, h: int, w: int, s: int, device: torch.device) -> torch.Tensor:
    """Random ``s x s`` window per sample as a bool mask ``(n, 1, h, w)``.

    Draws from a cached table of all ``(h - s + 1) (w - s + 1)`` window masks
    (one index per sample) when it is small, else builds them (:func:`_window`).
    """
    positions = (h - s + 1) * (w - s + 1)
    if positions * h * w > _BANK_LIMIT:
        return _window(n, h, w, s, device)[0].bool()
    key = (h, w, s, str(device))
    bank = _banks.get(key)
    if bank is None:
        r = torch.arange(h - s + 1, device=device).repeat_interleave(w - s + 1)
        c = torch.arange(w - s + 1, device=device).repeat(h - s + 1)
        ii = torch.arange(h, device=device)[None, :] - r[:, None]
        jj = torch.arange(w, device=device)[None, :] - c[:, None]
        bank = (((ii >= 0) & (ii < s))[:, :, None] & ((jj >= 0) & (jj < s))[:, None, :])[:, None]
        _banks[key] = bank
    # the same draws as _window: row offset, then column offset, each uniform
    r = torch.randint(0, h - s + 1, (n,), device=device)
    c = torch.randint(0, w - s + 1, (n,), device=device)
    return bank[r * (w - s + 1) + c]


def _place(pattern: torch.Tensor, ii: torch.Tensor, jj: torch.Tensor) -> torch.Tensor:
    """``pattern`` (s, s) at each sample's window offsets: (n, 1, h, w) (mask it afterwards)."""
    return pattern.to(ii.device)[ii[:, :, None], jj[:, None, :]][:, None]


@register("attack", "square", paper="Andriushchenko, Croce, Flammarion, Hein. Square Attack: a "
          "query-efficient black-box adversarial attack via random search. ECCV 2020",
          test_params={"max_queries": 20})
class Square(Attack):
    """Square Attack: random search with square-shaped updates at the boundary of the ball.

    Score-based black-box attack (needs probabilities or logits). Each sample
    starts at the paper's initialisation (linf: vertical stripes of width 1
    with random sign ``+-eps`` per channel and column; l2: a grid of
    pseudo-Gaussian bumps of random signs, rescaled to norm eps), then every
    iteration proposes one random square update per sample and keeps it if
    the loss decreases:

    * linf: a random ``s x s`` window is set to ``+-eps`` (one random sign
      per channel); proposals that would not change the image are resampled;
    * l2: the perturbation mass of two random windows is moved into the
      first one with a new pseudo-Gaussian pattern, keeping the norm at eps
      (Algorithm 3 of the paper).

    The side ``s = round(sqrt(p * H * W))`` follows the schedule of ``p``
    (:func:`p_schedule`: ``p_init`` halved at iterations 10, 50, 200, 500,
    1000, 2000, 4000, 6000 and 8000, rescaled to ``max_queries``). The loss is
    the margin ``log p_y - max_{k != y} log p_k`` (untargeted; equal to the
    logit margin) or the cross-entropy of the target (targeted). Only
    samples not yet fooled are queried; a sample stops at its first
    success. The initial point costs one query; ``AttackResult.queries``
    holds each sample's count (at most ``max_queries``).

    Parameters
    ----------
    max_queries : int
        Query budget per sample (the paper uses 10000, AutoAttack 5000).
    p_init : float
        Initial fraction of pixels in the square, in (0, 1]. The paper tunes
        it per dataset and norm (ImageNet: 0.05 linf, 0.1 l2; AutoAttack
        uses 0.8 on CIFAR-10/MNIST); 0.8 suits small images such as 8x8 digits.
    batch_size : int, optional
        Largest number of inputs per query call.
    stop_stalled : bool
        Untargeted runs: stop querying a sample once, after a fifth of its
        budget, even twice the margin decrease of its last ``max(max_queries /
        20, 100)`` queries, kept up for every query it has left, would not reach the
        boundary (the random search has stalled: nothing is left to find at
        its pace). The samples stopped are in ``meta["stalled"]`` (bool per
        sample). Off by default (the paper's attack spends the whole budget);
        :class:`~scrutiny.attacks.WorstCase` turns it on.

    Notes
    -----
    Needs images ``(N, C, H, W)``. On tiny images the windows are clipped to
    at least 1 (linf) or 3 (l2, odd sides) pixels and at most ``H - 1``, as
    in the reference implementation; the l2 update window never exceeds the
    image. Each sample draws its own window positions (the reference
    implementation shares the l2 window across the batch).

    References
    ----------
    .. [1] Andriushchenko, Croce, Flammarion, Hein. "Square Attack: a
       query-efficient black-box adversarial attack via random search".
       ECCV 2020.

    Examples
    --------
    >>> from scrutiny.models import QueryModel, pretrained
    >>> from scrutiny.data import load_digits
    >>> from scrutiny.types import ThreatModel
    >>> model, data = pretrained("digits-cnn", progress=False), load_digits(split="test")
    >>> black_box = QueryModel(model, output="probs")
    >>> res = Square(max_queries=300)(black_box, data.x[:32], data.y[:32],
    ...                             threat=ThreatModel("linf", 0.2))
    >>> res.success_rate() > 0.5, int(res.queries.max()) <= 300
    (True, True)
    """

    tags = Tags(white_box=False, output="probs", norms=("linf", "l2"), targeted=True,
                stochastic=True, image_only=True)

    max_queries: int = param(5000, integer=True, positive=True)
    p_init: float = param(0.8, between=(0, 1), interval="(]")
    batch_size: int | None = param(None, integer=True, positive=True)
    stop_stalled: bool = param(False, kind=bool)

    # ------------------------------------------------------------------ losses
    @staticmethod
    def _losses(logp: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to minimise, margin: > 0 while the sample is not yet fooled)."""
        margin = -margin_loss_terms(logp, y, t, "margin")
        loss = margin if t is None else -logp.gather(1, t[:, None])[:, 0]
        return loss, margin

    def _stalled(self, margin: torch.Tensor, checked: torch.Tensor, counts: torch.Tensor,
                 every: int) -> torch.Tensor:
        """Samples that cannot reach the boundary at twice their recent pace.

        Untargeted, the loss is the margin and never increases. A sample is
        stalled when, after at least a fifth of its budget, its margin exceeds
        twice the decrease of the last ``every`` iterations extrapolated
        linearly over its remaining queries (the schedule's squares only
        shrink, so the pace slows down, not up).
        """
        left = (self.max_queries - counts).to(margin.dtype)
        pace = (checked - margin).clamp_min(0) / every
        return (margin > 0) & (counts >= self.max_queries // 5) & (margin > 2 * pace * left)

    # ------------------------------------------------------------------ inits
    def _init_linf(self, x: torch.Tensor, eps: float) -> torch.Tensor:
        n, c, _, w = x.shape
        return eps * (torch.randint(0, 2, (n, c, 1, w), device=x.device) * 2 - 1).to(x.dtype)

    def _init_l2(self, x: torch.Tensor, eps: float) -> torch.Tensor:
        n, c, h, w = x.shape
        s = max(h // 5, 1)
        delta = torch.zeros_like(x)
        start = (h - 5 * s) // 2
        for top in range(start, h, s):
            for left in range(start, w, s):
                pat = meta_pattern(s).to(x)
                sign = torch.randint(0, 2, (n, c, 1, 1), device=x.device).to(x.dtype) * 2 - 1
                bottom, right = min(top + s, h), min(left + s, w)
                delta[:, :, top:bottom, left:right] += pat[:bottom - top, :right - left] * sign
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return delta / norms * eps

    # ------------------------------------------------------------------ steps
    def _step_linf(self, x: torch.Tensor, best: torch.Tensor, ends: torch.Tensor,
                   p: float) -> torch.Tensor:
        """One proposal per sample: a random ``s x s`` window set to ``x +- eps`` (one sign per
        channel), the rest kept; proposals that would leave the image unchanged are resampled.

        ``ends`` ``(n, 2, C, H, W)`` stacks ``x + eps`` and ``x - eps`` projected into the threat
        set once per run (the linf set is a box per pixel, so any mix of them and ``best`` stays
        inside it).
        """
        n, c, h, w = x.shape
        s = min(max(int(round(math.sqrt(p * h * w))), 1), max(h - 1, 1))
        inside = _windows(n, h, w, s, x.device)
        # per sample, sign (+eps, -eps) and channel: would the window's values leave it unchanged?
        keep = (((ends - best[:, None]).abs() >= 1e-7) & inside[:, None]).flatten(3).sum(dim=3) == 0
        keep_up, keep_down = keep[:, 0], keep[:, 1]
        moves = ~keep.all(dim=2).all(dim=1)  # some sign changes it (not e.g. a masked window)
        pos = torch.rand((n, c), device=x.device) < 0.5
        for _ in range(100):  # resample the signs of proposals that would change nothing
            same = torch.where(pos, keep_up, keep_down).all(dim=1) & moves
            if c == 1:  # the other sign is the only proposal, and it changes the window
                pos = pos ^ same[:, None]
                break
            if not bool(same.any()):
                break
            pos = torch.where(same[:, None], torch.rand((n, c), device=x.device) < 0.5, pos)
        return torch.where(inside, torch.where(pos[:, :, None, None], ends[:, 0], ends[:, 1]), best)

    def _step_l2(self, x: torch.Tensor, best: torch.Tensor, eps: float, p: float,
                 lo: float, hi: float) -> torch.Tensor:
        n, c, h, w = x.shape
        s = max(int(round(math.sqrt(p * h * w))), 3)
        if s % 2 == 0:
            s += 1
        s = min(s, h, w)
        delta = best - x
        m1, ii, jj = _window(n, h, w, s, x.device)
        m2, _, _ = _window(n, h, w, s, x.device)
        both = torch.maximum(m1, m2)
        norm_w1 = (delta * m1).pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
        norm_img = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        norm_both = (delta * both).pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
        sign = torch.randint(0, 2, (n, c, 1, 1), device=x.device).to(x.dtype) * 2 - 1
        upd = _place(meta_pattern(s), ii, jj).to(x) * sign * m1 + delta * m1 / (norm_w1 + 1e-10)
        upd = upd / upd.pow(2).sum(dim=(2, 3), keepdim=True).sqrt().clamp_min(1e-12)
        spare = (eps ** 2 - norm_img ** 2).clamp_min(0) / c + norm_both ** 2
        upd = upd * spare.sqrt()
        new = delta * (1 - both) + upd  # window 2 emptied, window 1 replaced
        norms = new.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return (x + new / norms * eps).clamp(lo, hi)

    # ------------------------------------------------------------------ run
    def _run(self, box: BlackBox, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             target: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
        n = len(x)
        lo, hi = threat.bounds
        eps = threat.eps
        if threat.norm == "l2" and not math.isfinite(eps):
            raise InputError("the l2 Square attack needs a finite eps")
        init = self._init_linf(x, eps) if threat.norm == "linf" else self._init_l2(x, eps)
        best = threat.project(x, (x + init).clamp(lo, hi))
        loss = torch.full((n,), float("inf"), device=x.device)
        margin = torch.full((n,), float("inf"), device=x.device)
        idx = torch.arange(n, device=x.device)
        live = box.fit(idx)
        if len(live):
            logp = box.log_probs(best[live], live)
            t = None if target is None else target[live]
            loss[live], margin[live] = self._losses(logp, y[live], t)
            box.best[live] = best[live]
        linf = threat.norm == "linf"
        if linf:  # the two values a linf window can take, once per run
            ends = torch.stack((threat.project(x, (x + eps).clamp(lo, hi)),
                                threat.project(x, (x - eps).clamp(lo, hi))), dim=1)
        stalled = torch.zeros(n, dtype=torch.bool, device=x.device)
        every = max(self.max_queries // 20, 100)  # the stall check's window, in iterations
        checked = margin.clone()
        iters = 0
        rows = None  # the samples queried last iteration, and their fixed data (gathered once)
        alive = margin > 0
        # one eval-mode switch for the whole search, not one per query
        with box.model.evaluating(), progress_bar(self.max_queries - 1, "square") as bar:
            for it in range(self.max_queries - 1):
                live = box.fit(idx[alive & (box.counts < self.max_queries) & ~stalled])
                if not len(live):
                    break
                if rows is None or len(rows) != len(live) or not torch.equal(rows, live):
                    rows, xl, yl = live, x[live], y[live]
                    tl = None if target is None else target[live]
                    endsl = ends[live] if linf else None
                p = p_schedule(self.p_init, it, self.max_queries)
                if linf:
                    cand = self._step_linf(xl, best[live], endsl, p)
                else:
                    cand = threat.project(xl, self._step_l2(xl, best[live], eps, p, lo, hi))
                logp = box.log_probs(cand, live)
                new_loss, new_margin = self._losses(logp, yl, tl)
                better = new_loss < loss[live]
                j, won = live[better], cand[better]
                best[j], loss[j], margin[j] = won, new_loss[better], new_margin[better]
                box.best[j] = won
                iters = it + 1
                if self.stop_stalled and target is None and iters % every == 0:
                    stalled |= self._stalled(margin, checked, box.counts, every)
                    checked = margin.clone()
                alive = margin > 0
                bar.advance(f"{int(alive.sum())} left")
        return best, {"iterations": iters, "stalled": stalled.cpu()}
