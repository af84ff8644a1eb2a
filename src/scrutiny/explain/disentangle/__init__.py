"""Disentangled representations: the beta-VAE, latent traversals, attribute transfer and
the Mutual Information Gap (kind ``"learned"``)."""

from .beta_vae import VAE, BetaVAE, BetaVAEResult, VAEHistory, beta_vae
from .mig import MIGScore, discrete_mutual_information, mutual_information_gap

__all__ = ["VAE", "BetaVAE", "BetaVAEResult", "MIGScore", "VAEHistory", "beta_vae",
           "discrete_mutual_information", "mutual_information_gap"]
