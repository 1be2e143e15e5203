"""Choosing the next configurations to label from a pool, with the strategies of
:mod:`fitsnap_uq.active.strategies` and the Bayesian linear fit of :mod:`fitsnap_uq.linear.rows`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fitsnap_uq.active import strategies as S
from fitsnap_uq.linear.rows import Rows, RowsFit, fit_rows


@dataclass
class QuerySettings:
    """Settings of a query strategy.

    Attributes:
        strategy: one of :data:`fitsnap_uq.active.strategies.STRATEGIES`.
        cost_gamma: divide scores by (atoms^3)^gamma (0: no cost weighting).
        committee: QBC learners K; fraction: bootstrap fraction f of each learner's training set.
        power: exponent of ``std_sampling``; shortlist: QBC's K-means shortlist factor.
        spread: ``max_std`` picks the best of each K-means cluster among the ``shortlist * n`` best
            (:func:`~fitsnap_uq.active.strategies.spread_by_kmeans`, as QBC) instead of the n best.
        spread_cost_gamma: the K-means spread (``max_std``, ``qbc``) labels each cluster's member with
            the best ``score / (atoms^3)^spread_cost_gamma`` (0: its best score): the cheapest frame of
            each kind of uncertain frame, where ``cost_gamma`` instead reorders all candidates by cost.
        fit: keyword arguments of :func:`fitsnap_uq.linear.rows.fit_rows`.
    """

    strategy: str = "max_std"
    cost_gamma: float = 0.0
    committee: int = 5
    fraction: float = 0.8
    power: float = 2.0
    shortlist: int = 3
    spread: bool = False
    spread_cost_gamma: float = 0.0
    fit: dict[str, Any] | None = None


def candidates_of(rows: Rows) -> tuple[S.Candidates, np.ndarray]:
    """The rows' configurations as :class:`Candidates` (rows of weight 0 left out), and their keys."""
    keep = rows.w != 0
    keys_all = rows.config_keys()
    keys = np.unique(keys_all)
    owner = np.searchsorted(keys, keys_all[keep])
    types = rows.row_types[keep].astype(str)
    force_rows = np.bincount(owner[types == "Force"], minlength=keys.size)
    natoms = np.maximum(force_rows // 3, 1)
    return S.Candidates(a=rows.a[keep], owner=owner, row_types=types, natoms=natoms), keys


def committee_scores(train: Rows, cands: S.Candidates, noise_var: dict[str, float],
                     settings: QuerySettings, rng: np.random.Generator) -> np.ndarray:
    """QBC disagreement: RMS over each candidate's rows of the committee's prediction std (in noise
    units); each learner is fitted on a bootstrap sample (fraction f) of the training configurations."""
    keys = train.config_keys()
    unique = np.unique(keys)
    size = max(2, int(round(settings.fraction * unique.size)))
    preds = []
    for _ in range(settings.committee):
        picked = rng.choice(unique, size=size, replace=True)
        counts = {k: c for k, c in zip(*np.unique(picked, return_counts=True))}
        idx = np.concatenate([np.repeat(np.flatnonzero(keys == k), c) for k, c in counts.items()])
        member = fit_rows(train.subset(idx), **(settings.fit or {}))
        preds.append(cands.a @ member.result.mean)
    spread = np.std(np.stack(preds), axis=0, ddof=1)
    return S.rms_by_owner(spread / S.row_scale(cands.row_types, noise_var), cands.owner, cands.size)


def select(train: Rows, pool: Rows, n: int, settings: QuerySettings, model: RowsFit | None = None,
           seed: int = 0) -> np.ndarray:
    """Configuration keys (of ``pool.config_keys()``) to label next, best first.

    Args:
        train: the labelled rows the model is fitted on.
        pool: the candidates' rows (their truths are not used).
        n: batch size.
        settings: the strategy and its settings.
        model: the current fit of ``train`` (fitted here when None).
        seed: seed of every random choice.
    """
    cands, keys = candidates_of(pool)
    if settings.strategy == "random":
        return keys[choose(cands, n, settings, None, {}, seed)]
    model = model or fit_rows(train, **(settings.fit or {}))
    return keys[choose(cands, n, settings, model.result.cov, model.noise_var, seed, train)]


def choose(cands: S.Candidates, n: int, settings: QuerySettings, cov: np.ndarray | None,
           noise_var: dict[str, float], seed: int = 0, train: Rows | None = None,
           strata: np.ndarray | None = None, counts: np.ndarray | None = None,
           weights: np.ndarray | None = None) -> np.ndarray:
    """Indices of the candidates to label next, best first.

    Args:
        cands: the candidates (m configurations).
        n: batch size (at most m are returned).
        settings: the strategy and its settings.
        cov: (p, p) covariance of the model's coefficients in the rows' layout (unused by ``random``).
        noise_var: {quantity: noise variance} that makes the rows dimensionless (1 where missing).
        seed: seed of every random choice.
        train: the training rows (``qbc`` only: its committee is fitted on them).
        strata: (m,) stratum index of each candidate (the loop: its MD run), or None. When given, the
            batch is balanced over strata (:func:`~fitsnap_uq.active.strategies.least_used`): each
            pick among the strata with the fewest picks, ``counts`` included; replaces the K-means
            spread (``random`` becomes stratified random; ``std_sampling`` refuses it).
        counts: (s,) use of each stratum before this batch (labels, or with ``weights`` their summed
            weights; default: none).
        weights: (m,) optional use of each candidate (its QM cost, atoms^3: the strata are balanced
            by the cost spent on them instead of the number of labels).
    """
    rng = np.random.default_rng(seed)
    n = min(n, cands.size)
    name = settings.strategy
    if strata is not None:
        strata = np.asarray(strata, dtype=int)
        counts = np.zeros(int(strata.max()) + 1 if strata.size else 0) if counts is None \
            else np.asarray(counts, dtype=float)
        if name == "std_sampling":
            raise ValueError("std_sampling samples by score: it has no balanced form")
    if name == "random":
        if strata is not None:
            return S.pick_balanced(rng.random(cands.size), n, strata, counts, weights)
        return S.pick_random(cands.size, n, rng)
    if name in ("max_std", "std_sampling"):
        scores = S.cost_weighted(S.coefficient_std_scores(cands, cov, noise_var), cands.natoms,
                                 settings.cost_gamma)
        if name == "std_sampling":
            return S.pick_std_sampling(scores, n, rng, settings.power)
        if strata is not None:
            return S.pick_balanced(scores, n, strata, counts, weights)
        if settings.spread:
            return S.spread_by_kmeans(scores, cands.fingerprints(), n, seed, settings.shortlist,
                                      cands.natoms, settings.spread_cost_gamma)
        return S.pick_top(scores, n)
    if name == "qbc":
        if train is None:
            raise ValueError("qbc needs the training rows")
        scores = S.cost_weighted(committee_scores(train, cands, noise_var, settings, rng), cands.natoms,
                                 settings.cost_gamma)
        if strata is not None:
            return S.pick_balanced(scores, n, strata, counts, weights)
        return S.spread_by_kmeans(scores, cands.fingerprints(), n, seed, settings.shortlist, cands.natoms,
                                  settings.spread_cost_gamma)
    grams = S.candidate_grams(cands, noise_var)
    if name == "d_optimal":
        return S.greedy_d_optimal(grams, cov, n, cands.natoms, settings.cost_gamma, strata, counts, weights)
    if name == "variance_reduction":
        return S.greedy_variance_reduction(grams, cov, grams.sum(axis=0), n, cands.natoms,
                                           settings.cost_gamma, strata, counts, weights)
    raise ValueError(f"unknown strategy {name!r}; known: {', '.join(S.STRATEGIES)}")
