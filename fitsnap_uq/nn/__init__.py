"""Uncertainty for neural networks: ensemble, MCMC and variational learners over torch modules."""

from fitsnap_uq.nn.learners import MCMC, Ensemble, EnsRegr, MCMCRegr, Variational, VIRegr

__all__ = ["Ensemble", "MCMC", "Variational", "EnsRegr", "MCMCRegr", "VIRegr"]
