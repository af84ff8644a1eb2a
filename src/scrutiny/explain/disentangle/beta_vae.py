"""beta-VAE: a variational autoencoder whose latents tend to align with generative factors."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from scrutiny.data import ArrayDataset
from scrutiny.errors import InputError
from scrutiny.explain.disentangle.mig import MIGScore, mutual_information_gap
from scrutiny.explain.learned import Learned, LearnedResult
from scrutiny.models.training import fixed_threads
from scrutiny.params import param
from scrutiny.progress import progress_bar
from scrutiny.registry import register

__all__ = ["VAE", "BetaVAE", "BetaVAEResult", "VAEHistory", "beta_vae"]


class VAE(nn.Module):
    """A fully connected VAE: Gaussian encoder ``q(z|x) = N(mu, diag(exp(logvar)))``, a
    standard normal prior and a Bernoulli decoder (the MLP of Higgins et al. for dSprites,
    narrower). ``encode(x) -> (mu, logvar)``, ``decode(z)`` gives images in ``[0, 1]``
    (Bernoulli means), ``decode_logits(z)`` their logits."""

    def __init__(self, input_shape: Sequence[int], latent_dim: int, hidden: int) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.latent_dim = int(latent_dim)
        d = math.prod(self.input_shape)
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(),
                                     nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(),
                                     nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, d))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior's mean and log-variance, each ``(N, latent_dim)``."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """The Bernoulli logits of the pixels, shaped like the inputs."""
        return self.decoder(z).view(len(z), *self.input_shape)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoded images (Bernoulli means in ``[0, 1]``)."""
        return torch.sigmoid(self.decode_logits(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of ``x`` from its posterior mean."""
        return self.decode(self.encode(x)[0])


def kl_per_latent(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, 1))`` per sample and latent, ``(N, L)``, in nats."""
    return 0.5 * (mu.square() + logvar.exp() - logvar - 1)


@dataclass
class VAEHistory:
    """Per epoch, means over the training images: the loss ``recon + beta * kl``, the
    reconstruction term (Bernoulli negative log-likelihood, nats per image) and the KL
    term (nats per image)."""

    loss: list[float] = field(default_factory=list)
    recon: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)


@dataclass(repr=False)
class BetaVAEResult(LearnedResult):
    """A trained beta-VAE and what it says about its latents.

    Attributes
    ----------
    vae : VAE
        The trained model (``encode``, ``decode``), in eval mode.
    history : VAEHistory
        The training curves.
    kl : torch.Tensor
        ``(latent_dim,)``: the mean KL of each latent on the training data, in nats. A latent
        near 0 is unused (the decoder ignores it); the others are the active dimensions.
    """

    vae: VAE
    history: VAEHistory
    kl: torch.Tensor

    def active(self, threshold: float = 0.05) -> torch.Tensor:
        """Indices of the latents with a mean KL above ``threshold`` nats, most informative
        first."""
        order = self.kl.argsort(descending=True)
        return order[self.kl[order] > threshold]

    def _images(self, x: torch.Tensor, what: str) -> tuple[torch.Tensor, bool]:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise InputError(f"{what} must be a float tensor, got {type(x).__name__}")
        shape = self.vae.input_shape
        single = tuple(x.shape) == shape
        x = x[None] if single else x
        if tuple(x.shape[1:]) != shape:
            raise InputError(f"{what} must have shape {shape} or (N, *{shape}), got "
                             f"{tuple(x.shape)}")
        return x.to(next(self.vae.parameters()).device, torch.float32), single

    def _latents(self, latents: int | Sequence[int]) -> list[int]:
        idx = [latents] if isinstance(latents, int) else list(latents)
        bad = [j for j in idx if isinstance(j, bool) or not isinstance(j, int)
               or not 0 <= j < self.vae.latent_dim]
        if bad or not idx:
            raise InputError(f"latents must be indices in [0, {self.vae.latent_dim}), got "
                             f"{latents!r}")
        return idx

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior means of ``x`` (one image or a batch), ``(N, latent_dim)``."""
        x, _ = self._images(x, "x")
        return self.vae.encode(x)[0]

    @torch.no_grad()
    def traverse(self, x: torch.Tensor, latent: int,
                 values: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
        """Latent traversal: decode ``x``'s code with latent ``latent`` set to each of
        ``values`` (default 7 values from -3 to 3, the prior's range), the other latents
        kept at ``x``'s posterior mean.

        Returns ``(V, C, H, W)`` for one image, ``(N, V, C, H, W)`` for a batch.
        """
        (j,) = self._latents(latent)
        x, single = self._images(x, "x")
        v = torch.linspace(-3, 3, 7) if values is None else torch.as_tensor(values).float()
        if v.ndim != 1 or not len(v) or not bool(torch.isfinite(v).all()):
            raise InputError(f"values must be a non-empty 1-D sequence of finite numbers, got "
                             f"{values!r}")
        z = self.vae.encode(x)[0]
        z = z[:, None].repeat(1, len(v), 1)
        z[:, :, j] = v.to(z.device)
        out = self.vae.decode(z.flatten(0, 1)).view(len(x), len(v), *self.vae.input_shape)
        return out[0] if single else out

    @torch.no_grad()
    def transfer(self, a: torch.Tensor, b: torch.Tensor, latents: int | Sequence[int]
                 ) -> torch.Tensor:
        """Attribute transfer: decode ``a``'s code with the chosen ``latents`` taken from
        ``b``'s code (``a`` and ``b`` of the same shape, or ``b`` one image for all).
        Returns images shaped like ``a``."""
        idx = self._latents(latents)
        a, single = self._images(a, "a")
        b, _ = self._images(b, "b")
        if len(b) not in (1, len(a)):
            raise InputError(f"b must hold 1 or {len(a)} images (as many as a), got {len(b)}")
        za, zb = self.vae.encode(a)[0], self.vae.encode(b)[0].expand(len(a), -1)
        za[:, idx] = zb[:, idx]
        out = self.vae.decode(za)
        return out[0] if single else out

    def mig(self, x: torch.Tensor, factors: torch.Tensor, *, bins: int = 20,
            factor_names: Sequence[str] | None = None) -> MIGScore:
        """The Mutual Information Gap (:func:`mutual_information_gap`) of the posterior
        means of ``x`` against the factor levels ``factors`` (``(N, K)``)."""
        return mutual_information_gap(self.encode(x), factors, bins=bins,
                                      factor_names=factor_names)

    def save(self, path: str | Path) -> None:
        """Write the weights (and the settings and history, as metadata) to a
        ``.safetensors`` file; :class:`BetaVAE` called with ``weights=path`` reads it."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise InputError(f"weights must be a .safetensors path, got {str(path)!r}")
        meta = {"config": json.dumps(_config(self.meta)),
                "history": json.dumps(asdict(self.history))}
        save_file({k: v.detach().cpu().contiguous() for k, v in self.vae.state_dict().items()},
                  str(path), metadata=meta)


def _config(meta: dict[str, Any]) -> dict[str, Any]:
    """The settings a saved model must match to be reused."""
    return {k: meta[k] for k in ("beta", "latent_dim", "hidden", "epochs", "lr", "batch_size",
                                 "seed", "n", "input_shape")}


@register("learned", "beta_vae", paper="Higgins, Matthey, Pal, Burgess, Glorot, Botvinick, "
          "Mohamed, Lerchner. beta-VAE: learning basic visual concepts with a constrained "
          "variational framework. ICLR 2017",
          test_params={"epochs": 1, "latent_dim": 2, "hidden": 8})
class BetaVAE(Learned):
    """beta-VAE: a VAE trained with the KL term weighted by ``beta``, for disentangled latents.

    Trains a :class:`VAE` (fully connected encoder and decoder, Gaussian latent of size
    ``latent_dim`` with a standard normal prior, Bernoulli decoder) on the images of
    ``data`` (values in ``[0, 1]``; the labels are not used) by minimising, per image,

    ``BCE(x, decode(z)) + beta * KL(q(z|x) || N(0, I))``,  ``z ~ q(z|x)``

    (one reparameterised sample per image and step, Adam). ``beta = 1`` is the plain VAE
    (Kingma & Welling); ``beta > 1`` [1]_ limits the information each latent may carry and,
    with the factorised posterior, pushes the latents towards independent generative
    factors of the data: traversing one latent (:meth:`BetaVAEResult.traverse`) then
    changes one factor, and swapping chosen latents between two codes
    (:meth:`BetaVAEResult.transfer`) carries over that attribute [2]_. The result's
    :meth:`~BetaVAEResult.mig` scores this against known factors (Mutual Information Gap).

    The initial weights, the order of the data and the latent samples follow the call's
    ``seed``; training runs on ``threads`` threads so the same seed gives the same model.
    The call takes ``model=None`` (the VAE learns from the data alone) and, optionally,
    ``weights=path.safetensors``: an existing file trained with the same settings, seed and
    data size is loaded instead of training, otherwise the trained weights are written there.

    On a budget of minutes, whether ``beta > 1`` disentangles better than ``beta = 1`` depends
    on the seed (as Locatello et al. 2019 found at scale): see docs/learned.md for the
    measured MIG across seeds.

    Parameters
    ----------
    beta : float
        Weight of the KL term (1: a plain VAE; > 1: the beta-VAE's bottleneck).
    latent_dim : int
        Size of the Gaussian latent.
    hidden : int
        Width of the two hidden layers of the encoder and of the decoder.
    epochs : int
        Passes over the data.
    lr : float
        Adam's learning rate.
    batch_size : int
        Images per step.
    threads : int
        Torch threads while training (fixed, for reproducible results).

    References
    ----------
    .. [1] Higgins, Matthey, Pal, Burgess, Glorot, Botvinick, Mohamed, Lerchner.
       "beta-VAE: learning basic visual concepts with a constrained variational
       framework". ICLR 2017.
    .. [2] Zhang et al. AAAI 2019: attribute transfer between two images by exchanging
       the latent units that encode the attribute.
    .. [3] Kingma, Welling. "Auto-encoding variational Bayes". ICLR 2014.

    Examples
    --------
    >>> from scrutiny.data import make_factors
    >>> fd = make_factors(n=256, seed=0)
    >>> r = BetaVAE(beta=4.0, latent_dim=4, epochs=3)(None, fd.data)
    >>> len(r.history.loss), r.history.loss[-1] < r.history.loss[0]
    (3, True)
    >>> tuple(r.traverse(fd.data.x[0], latent=0, values=[-2, 0, 2]).shape)
    (3, 1, 16, 16)
    >>> tuple(r.transfer(fd.data.x[:5], fd.data.x[5], latents=[1, 2]).shape)
    (5, 1, 16, 16)
    >>> 0 <= r.mig(fd.data.x, fd.factors).score <= 1
    True
    """

    needs_model = False

    beta: float = param(4.0, nonneg=True)
    latent_dim: int = param(6, integer=True, positive=True)
    hidden: int = param(128, integer=True, positive=True)
    epochs: int = param(60, integer=True, positive=True)
    lr: float = param(3e-3, positive=True)
    batch_size: int = param(32, integer=True, positive=True)
    threads: int = param(1, integer=True, positive=True)

    def _run(self, model: Any, data: ArrayDataset | None, *, seed: int | None,
             weights: str | Path | None = None) -> BetaVAEResult:
        if model is not None:
            raise InputError("beta_vae learns from data alone: call it with model=None")
        if data is None or not len(data):
            raise InputError("beta_vae needs data: an ArrayDataset of images in [0, 1]")
        x = data.x
        if x.ndim < 2 or float(x.min()) < 0 or float(x.max()) > 1:
            raise InputError(f"beta_vae's Bernoulli decoder needs inputs in [0, 1], got range "
                             f"[{float(x.min()):.3g}, {float(x.max()):.3g}]")
        seed = 0 if seed is None else int(seed)
        meta = {"method": "beta_vae", **self.get_params(), "seed": seed, "n": len(x),
                "input_shape": list(x.shape[1:])}
        vae = VAE(x.shape[1:], self.latent_dim, self.hidden)
        path = None if weights is None else Path(weights)
        if path is not None and path.suffix != ".safetensors":
            raise InputError(f"weights must be a .safetensors path, got {str(path)!r}")
        if path is not None and path.exists():
            history = _load(path, vae, meta)
        else:
            with fixed_threads(self.threads):
                history = self._train(vae, x, seed)
        vae.eval().requires_grad_(False)
        with torch.no_grad(), fixed_threads(self.threads):
            kl = torch.cat([kl_per_latent(*vae.encode(xb)) for xb in x.split(256)]).mean(0)
        result = BetaVAEResult(vae=vae, history=history, kl=kl, meta=meta)
        if path is not None and not path.exists():
            result.save(path)
        return result

    def _train(self, vae: VAE, x: torch.Tensor, seed: int) -> VAEHistory:
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(vae.parameters(), lr=self.lr)
        history = VAEHistory()
        vae.train()
        with progress_bar(self.epochs, "beta-VAE") as bar:
            for _ in range(self.epochs):
                perm = torch.randperm(len(x), generator=gen)
                tot = {"loss": 0.0, "recon": 0.0, "kl": 0.0}
                for i in range(0, len(x), self.batch_size):
                    xb = x[perm[i:i + self.batch_size]]
                    mu, logvar = vae.encode(xb)
                    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
                    recon = F.binary_cross_entropy_with_logits(
                        vae.decode_logits(z), xb, reduction="sum") / len(xb)
                    kl = kl_per_latent(mu, logvar).sum(1).mean()
                    loss = recon + self.beta * kl
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    for k, v in (("loss", loss), ("recon", recon), ("kl", kl)):
                        tot[k] += float(v.detach()) * len(xb)
                for k in tot:
                    getattr(history, k).append(tot[k] / len(x))
                bar.advance(f"recon {history.recon[-1]:.1f} kl {history.kl[-1]:.2f}")
        opt.zero_grad(set_to_none=True)
        return history

    @classmethod
    def common_call(cls, method: Learned, model: Any, data: ArrayDataset, *,
                    seed: int | None = 0) -> LearnedResult:
        """A tiny run on the images of ``data``; no model."""
        return method(None, data, seed=seed)


def _load(path: Path, vae: VAE, meta: dict[str, Any]) -> VAEHistory:
    """Load weights saved by :meth:`BetaVAEResult.save` into ``vae``, checking the settings."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        saved = f.metadata() or {}
    if "config" not in saved:
        raise InputError(f"{path} holds no beta-VAE settings (not written by beta_vae)")
    config, want = json.loads(saved["config"]), _config(meta)
    diff = [f"{k}={config.get(k)!r} (now {want[k]!r})" for k in want if config.get(k) != want[k]]
    if diff:
        raise InputError(f"{path} was trained with other settings: {', '.join(diff)}; delete it "
                         f"or give another path")
    vae.load_state_dict(load_file(str(path)))
    return VAEHistory(**json.loads(saved["history"]))


def beta_vae(data: ArrayDataset, *, seed: int | None = 0, weights: str | Path | None = None,
             **hyperparameters: Any) -> BetaVAEResult:
    """Function twin of :class:`BetaVAE`: ``beta_vae(data, seed=0, weights=None,
    **hyperparameters)`` trains a beta-VAE on ``data``'s images."""
    return BetaVAE(**hyperparameters)(None, data, seed=seed, weights=weights)
