"""MCMC sampling of linear-model posteriors with emcee, with convergence diagnostics (numpy + emcee).

Chains are independent emcee ensemble runs (each ``nwalkers`` walkers, its own seed). After burn-in
and thinning, each chain's samples are pooled over its walkers; the split R-hat (Gelman et al.) is
computed across the chains' halves and the effective sample size from emcee's integrated
autocorrelation time. The same seed gives the same samples.

Sampling happens in whitened coordinates ``x = x0 + L z`` (L: Cholesky factor of a Gaussian
approximation, e.g. the BAYES posterior), which keeps the proposals well scaled when the columns of
A differ by orders of magnitude.

Targets (log densities up to a constant) over ``[theta, log kappa]``, where ``kappa`` scales the
noise std of every row, ``sigma_i = kappa * sigma0_i``:

* :func:`gaussian_target`: ``y_i ~ N(a_i theta, sigma_i^2)``; evaluated from Gram sums (p x p per
  evaluation, vectorized over walkers), so its cost does not grow with the rows;
* :func:`student_t_target`: ``y_i ~ t_nu(a_i theta, sigma_i)`` (heavy tails);
* :func:`model_error_target`: the embedded model error's iid likelihood over ``[c, log s]``.

A Gaussian prior ``theta ~ N(0, diag(alpha)^-1)`` is added where ``alpha`` is given.

:func:`sample_posterior` is the whole BAYESMCMC computation on plain rows (the FitSNAP solver only
gathers the rows, calls it and writes the Posterior).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fitsnap_uq.errors import InputError, NumericalError
from fitsnap_uq.linear import noise as noise_model
from fitsnap_uq.linear.merr import fit_model_error
from fitsnap_uq.linear.rows import Rows, RowsFit, fit_weights
from fitsnap_uq.linear.threads import limited

LogProb = Callable[[np.ndarray], np.ndarray]  # (W, d) -> (W,)


@dataclass
class MCMCResult:
    """Samples and diagnostics.

    Attributes:
        samples: (S, d) pooled samples after burn-in and thinning (all chains and walkers).
        chains: (m, n, d) per chain, walkers pooled in step order.
        rhat: (d,) split R-hat across chains.
        ess: (d,) effective sample size of the pooled samples.
        acceptance: mean acceptance fraction.
        autocorr: (d,) integrated autocorrelation time in steps (per walker).
    """

    samples: np.ndarray
    chains: np.ndarray
    rhat: np.ndarray
    ess: np.ndarray
    acceptance: float
    autocorr: np.ndarray

    def report(self) -> dict[str, float]:
        """Summary numbers for a posterior file's header."""
        return {"rhat_max": float(np.max(self.rhat)), "ess_min": float(np.min(self.ess)),
                "acceptance": float(self.acceptance), "autocorr_max": float(np.max(self.autocorr)),
                "n_samples": int(self.samples.shape[0])}


def split_rhat(chains: np.ndarray) -> np.ndarray:
    """Split R-hat (Gelman et al., BDA3) of ``chains`` (m, n, d) -> (d,)."""
    m, n, d = chains.shape
    half = n // 2
    if half < 2:
        raise ValueError("chains too short for R-hat")
    split = np.concatenate([chains[:, :half], chains[:, n - half:]], axis=0)  # (2m, half, d)
    means = split.mean(axis=1)
    within = split.var(axis=1, ddof=1).mean(axis=0)
    between = half * means.var(axis=0, ddof=1)
    var_plus = (half - 1) / half * within + between / half
    with np.errstate(divide="ignore", invalid="ignore"):
        rhat = np.sqrt(var_plus / within)
    return np.where(within > 0, rhat, 1.0)


def sample(log_prob: LogProb, x0: np.ndarray, chol: np.ndarray, nwalkers: int = 64, nsteps: int = 2000,
           burn: int = 500, thin: int = 1, nchains: int = 4, seed: int = 0,
           init_scale: float = 1.0, on_step: Callable[[], None] | None = None) -> MCMCResult:
    """Sample ``log_prob`` (vectorized over walkers) around ``x0`` in coordinates whitened by ``chol``.

    ``nchains`` independent ensemble runs (>= 2 for R-hat), each ``nwalkers`` walkers (at least
    2 d + 2) for ``nsteps`` steps, of which ``burn`` are discarded and every ``thin``-th kept.
    ``on_step()`` is called after every step of every chain (progress reporting; the draws are the same).

    Raises:
        NumericalError: the log density is not finite at the starting walkers (the sampler cannot
            start).
    """
    import emcee

    d = x0.size
    if nwalkers < 2 * d:
        nwalkers = 2 * d + 2
    if burn >= nsteps:
        raise ValueError(f"burn-in ({burn}) must be shorter than the run ({nsteps})")

    def logp_z(z: np.ndarray) -> np.ndarray:
        return log_prob(x0 + z @ chol.T)

    x = None  # (m, n, W, d) the kept draws, filled chain by chain (no stacked copies of the chains)
    acc = []
    tau = []
    for k in range(nchains):
        rng = np.random.default_rng([seed, k])
        z0 = init_scale * rng.standard_normal((nwalkers, d))
        lp0 = logp_z(z0)
        if not np.all(np.isfinite(lp0)):
            bad = int(np.sum(~np.isfinite(lp0)))
            raise NumericalError(f"the sampler cannot start: the log posterior is not finite at "
                                 f"{bad} of {nwalkers} starting walkers (check the likelihood's data "
                                 "and the starting point)")
        sampler = emcee.EnsembleSampler(nwalkers, d, logp_z, vectorize=True,
                                        moves=[(emcee.moves.DEMove(), 0.8),
                                               (emcee.moves.DESnookerMove(), 0.2)])
        sampler._random = np.random.RandomState(np.random.SeedSequence([seed, k]).generate_state(1)[0])
        if on_step is None:
            sampler.run_mcmc(z0, nsteps, progress=False)
        else:  # what run_mcmc does, one step at a time
            for _ in sampler.sample(z0, iterations=nsteps):
                on_step()
        chain = sampler.get_chain(discard=burn, thin=thin)  # (n, W, d)
        acc.append(float(np.mean(sampler.acceptance_fraction)))
        tau.append(emcee.autocorr.integrated_time(chain, quiet=True) * thin)
        del sampler  # its backend holds every step of every walker
        if x is None:
            x = np.empty((nchains, *chain.shape))
        np.matmul(chain, chol.T, out=x[k])
        x[k] += x0
        del chain
    m, n, w, _ = x.shape
    chains = x.reshape(m, n * w, d)  # walkers pooled in step order: halves are early/late steps
    rhat = split_rhat(chains)
    tau_max = np.max(np.stack(tau), axis=0)
    ess = m * w * n * thin / np.maximum(tau_max, 1.0)
    return MCMCResult(samples=chains.reshape(-1, d), chains=chains, rhat=rhat, ess=ess,
                      acceptance=float(np.mean(acc)), autocorr=tau_max)


def _prior_energy(theta: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``theta^T Lambda theta`` per walker (W,) for ``theta`` (W, p): ``Lambda = diag(alpha)`` for
    ``alpha`` (p,), the matrix itself for (p, p) (prior ``g``'s ``BayesResult.prior_precision``)."""
    if np.ndim(alpha) == 2:
        return np.einsum("wi,ij,wj->w", theta, alpha, theta)
    return np.einsum("wi,i,wi->w", theta, alpha, theta)


def gaussian_target(g: np.ndarray, h: np.ndarray, yy: float, n: int, alpha: np.ndarray | None = None,
                    noise_known: bool = False) -> LogProb:
    """Log posterior over ``[theta, log kappa]`` for Gaussian noise, from the Gram sums of the rows
    scaled by ``1 / sigma0_i``: ``g = A'^T A'``, ``h = A'^T y'``, ``yy = y'^T y'``, ``n`` rows.
    The prior precision ``alpha``: (p,) its diagonal, or (p, p) the matrix. With ``noise_known`` the
    unknowns are ``theta`` alone (kappa = 1): the posterior is then exactly Gaussian, ``N(S h, S)``
    with ``S = (g + diag(alpha))^-1`` (``(g + alpha)^-1`` for a matrix)."""

    def logp(x: np.ndarray) -> np.ndarray:
        if noise_known:
            theta, logk = x, np.zeros(x.shape[0])
        else:
            theta, logk = x[:, :-1], x[:, -1]
        quad = yy - 2.0 * theta @ h + np.einsum("wi,ij,wj->w", theta, g, theta)
        out = -0.5 * quad * np.exp(-2.0 * logk) - n * logk
        if alpha is not None:
            out -= 0.5 * _prior_energy(theta, alpha)
        return out

    return logp


def student_t_target(a: np.ndarray, y: np.ndarray, nu: float, alpha: np.ndarray | None = None) -> LogProb:
    """Log posterior over ``[theta, log kappa]`` for Student-t noise on rows scaled by 1/sigma0_i
    (prior precision ``alpha`` as in :func:`gaussian_target`)."""
    from scipy.special import gammaln

    const = gammaln((nu + 1) / 2) - gammaln(nu / 2) - 0.5 * np.log(nu * np.pi)

    def logp(x: np.ndarray) -> np.ndarray:
        theta, logk = x[:, :-1], x[:, -1]
        r = (y[:, None] - a @ theta.T) * np.exp(-logk)[None, :]  # (n, W)
        out = y.size * (const - logk) - 0.5 * (nu + 1) * np.sum(np.log1p(r**2 / nu), axis=0)
        if alpha is not None:
            out -= 0.5 * _prior_energy(theta, alpha)
        return out

    return logp


def model_error_target(a: np.ndarray, y: np.ndarray, embed: np.ndarray, data_var: float) -> LogProb:
    """Log likelihood of the embedded model error (iid) over ``[c, log s]``, flat priors."""
    ae2 = a[:, embed] ** 2
    p = a.shape[1]

    def logp(x: np.ndarray) -> np.ndarray:
        c, logs = x[:, :p], x[:, p:]
        v = ae2 @ np.exp(2.0 * logs).T + data_var  # (n, W)
        r = y[:, None] - a @ c.T
        return -0.5 * np.sum(r**2 / v + np.log(v), axis=0)

    return logp


LIKELIHOODS = ("gaussian", "student_t", "model_error")


@dataclass
class PosteriorSamples:
    """Outcome of :func:`sample_posterior` (FitSNAP's column layout).

    Attributes:
        theta: (S, p) pooled coefficient draws (all chains and walkers, after burn-in and thinning).
        kept: (k,) indices into ``theta`` of the draws to store with the Posterior.
        noise_var: {quantity or noise class: physical noise variance} for prediction.
        mcmc: the sampler's samples and diagnostics (over the sampled coordinates).
        kappa: the posterior median of the common noise scale (Gaussian/Student-t), else None.
    """

    theta: np.ndarray
    kept: np.ndarray
    noise_var: dict[str, float]
    mcmc: MCMCResult
    kappa: float | None = None

    @property
    def mean(self) -> np.ndarray:
        """(p,) sample mean of the coefficients."""
        return self.theta.mean(axis=0)

    @property
    def cov(self) -> np.ndarray:
        """(p, p) sample covariance of the coefficients."""
        return np.cov(self.theta.T)


@limited(lambda train, *args, **kwargs: train.ncols())
def sample_posterior(train: Rows, base: RowsFit, likelihood: str = "gaussian", noise_classes: str = "group",
                     weights: str = "ratios", prior: str = "isotropic", student_nu: float = 4.0,
                     max_samples: int = 2000, seed: int = 0, nwalkers: int = 64, nsteps: int = 2000,
                     burn: int = 500, thin: int = 1, nchains: int = 4,
                     on_step: Callable[[], None] | None = None) -> PosteriorSamples:
    """MCMC samples of the coefficients of the training rows ``train`` (unweighted, nonzero weight).

    ``gaussian``/``student_t``: the noise model of the BAYES fit ``base`` fixes each row's noise std
    ``sigma0_i`` (its class, its weight); the sampler draws ``[theta, log kappa]`` on the rows scaled by
    ``1 / sigma0_i``, over ``base``'s active columns, whitened by ``base``'s posterior covariance, with
    ``base``'s prior unless ``prior = none``; the noise variances are ``base``'s times ``kappa^2``
    (posterior median). ``model_error``: the embedded model error (iid) of the weighted rows samples
    ``[c, log s]`` of the coefficients with a nonzero model error, and the draws are ``c + s xi``.

    Args:
        noise_classes, weights, prior: as given to the BAYES fit ``base``.
        max_samples: at most this many draws are kept (:attr:`PosteriorSamples.kept`).
        seed, nwalkers, nsteps, burn, thin, nchains, on_step: the sampler's settings (see
            :func:`sample`).

    BLAS threads: one below ``PARALLEL_MIN_COLS`` columns (:mod:`fitsnap_uq.linear.threads`): each
    step's products of the rows with the walkers' coefficients are small.

    Raises:
        InputError: ``model_error`` and the model-error fit found no model error to sample.
    """
    live = base.result.active
    rng = np.random.default_rng(seed)
    kw = {"nwalkers": nwalkers, "nsteps": nsteps, "burn": burn, "thin": thin, "nchains": nchains,
          "seed": seed, "on_step": on_step}
    p = train.a.shape[1]
    kappa = None
    if likelihood in ("gaussian", "student_t"):
        labels = noise_model.class_labels(train.groups, train.row_types, noise_classes)
        sigma0 = np.sqrt(noise_model.row_noise_var(base.result, base.classes, labels,
                                                   fit_weights(train, weights)))
        sa = train.a[:, live] / sigma0[:, None]
        sy = train.b / sigma0
        alpha = None
        if prior != "none":  # the base fit's prior: diagonal, or prior g's matrix
            pp = base.result.prior_precision
            alpha = base.result.alpha[live] if pp is None else pp[np.ix_(live, live)]
        if likelihood == "gaussian":
            target = gaussian_target(sa.T @ sa, sa.T @ sy, float(sy @ sy), sy.size, alpha)
        else:
            target = student_t_target(sa, sy, student_nu, alpha)
        x0 = np.append(base.result.mean[live], 0.0)
        chol = np.zeros((x0.size, x0.size))
        chol[:-1, :-1] = np.linalg.cholesky(base.result.cov[np.ix_(live, live)])
        chol[-1, -1] = 1.0 / np.sqrt(2.0 * sy.size)
        res = sample(target, x0, chol, **kw)
        theta = np.zeros((res.samples.shape[0], p))
        theta[:, live] = res.samples[:, :-1]
        kappa = float(np.exp(np.median(res.samples[:, -1])))
        noise_var = {k: v * kappa**2 for k, v in base.noise_var.items()}
    elif likelihood == "model_error":
        aw, bw = train.weighted()
        me = fit_model_error(aw, bw, likelihood="iid")
        emb = np.flatnonzero(me.sigma > 0)
        if emb.size == 0:
            raise InputError("the model-error fit found no model error to sample (every embedded std "
                             "is 0); use mcmc_likelihood = gaussian")
        target = model_error_target(aw, bw, emb, me.data_var)
        x0 = np.concatenate([me.coef, np.log(me.sigma[emb])])
        chol = np.zeros((x0.size, x0.size))
        cc = me.coef_cov + 1e-30 * np.eye(p)
        live_idx = np.flatnonzero(live)
        chol[np.ix_(live_idx, live_idx)] = np.linalg.cholesky(cc[np.ix_(live, live)])
        chol[p:, p:] = 0.1 * np.eye(emb.size)
        res = sample(target, x0, chol, **kw)
        s = np.exp(res.samples[:, p:])
        theta = res.samples[:, :p].copy()
        theta[:, emb] += s * rng.standard_normal(s.shape)
        noise_var = noise_model.quantity_noise_var(me.data_var, train.row_types, train.w)
    else:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, not {likelihood!r}")
    kept = rng.choice(theta.shape[0], size=min(max_samples, theta.shape[0]), replace=False)
    return PosteriorSamples(theta=theta, kept=kept, noise_var=noise_var, mcmc=res, kappa=kappa)
