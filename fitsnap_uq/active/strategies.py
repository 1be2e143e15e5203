"""Query strategies: which candidate configurations to label next (numpy, scikit-learn's KMeans).

Candidates are configurations, each a block of unweighted descriptor rows (FitSNAP's layout) with
its row types; the model is a Bayesian linear fit (:mod:`fitsnap_uq.linear.rows`). Scores are made
dimensionless per row with the model's noise std of the row's quantity, so energies, forces and
stresses add up. Every strategy returns the chosen candidates' indices, best first.

* ``random``: uniform, the baseline;
* ``max_std``: largest predictive (coefficient) std, RMS over the configuration's rows;
* ``std_sampling``: random with probability proportional to ``std^power``, so picks do not all
  cluster where the std is largest (the seed talk's remedy);
* ``qbc``: query by committee: K learners, each fitted on a bootstrap fraction f of the training
  configurations; disagreement is the committee's std of the predictions; the batch is spread by
  K-means over the candidates' mean descriptor rows (the most disputed candidate of each cluster);
* ``d_optimal``: greedy maximum information gain ``log det(I + A_c S A_c^T / sigma^2)``
  (D-optimal design / max volume for linear models), updating S after each pick;
* ``variance_reduction``: greedy largest expected reduction of the predictive variance summed over
  the pool, ``tr(A_pool S A_c^T M_c^-1 A_c S A_pool^T)``, computed in p x p through the pool's Gram
  matrix.

Optional cost weighting divides a score by ``cost^gamma`` (QM cost ~ atoms^3).

Optional balance over strata (:func:`least_used`): each candidate belongs to a stratum (in the loop,
the MD run it comes from: start structure x temperature x pressure) and each pick is restricted to the
strata with the fewest picks so far (earlier batches' labels included), the strategy choosing within
them; greedy strategies still absorb every pick into the posterior before the next. With weights
(QM cost) the use of a stratum is the cost spent on it, and a pick goes to the stratum that has spent
the least once the pick is paid for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fitsnap_uq.linear.gaussian import row_variance

STRATEGIES = ("random", "max_std", "std_sampling", "qbc", "d_optimal", "variance_reduction")


@dataclass
class Candidates:
    """Candidate configurations as blocks of rows.

    Attributes:
        a: (n, p) unweighted descriptor rows of all candidates.
        owner: (n,) candidate index of each row.
        row_types: (n,) ``Energy``/``Force``/``Stress``.
        natoms: (m,) atoms per candidate (for cost weighting).
    """

    a: np.ndarray
    owner: np.ndarray
    row_types: np.ndarray
    natoms: np.ndarray

    @property
    def size(self) -> int:
        return int(self.natoms.size)

    def fingerprints(self) -> np.ndarray:
        """(m, p) mean descriptor row of each candidate's energy rows (all rows if it has none)."""
        m, p = self.size, self.a.shape[1]
        out = np.zeros((m, p))
        energy = self.row_types == "Energy"
        use = energy if energy.any() else np.ones_like(energy)
        np.add.at(out, self.owner[use], self.a[use])
        counts = np.bincount(self.owner[use], minlength=m)
        return out / np.maximum(counts, 1)[:, None]


def row_scale(row_types: np.ndarray, noise_var: dict[str, float]) -> np.ndarray:
    """(n,) the noise std of each row's quantity (1 where unknown)."""
    return np.array([np.sqrt(noise_var.get(str(q), 1.0)) for q in row_types])


def rms_by_owner(values: np.ndarray, owner: np.ndarray, m: int) -> np.ndarray:
    """(m,) root mean square of ``values`` over each candidate's rows."""
    sums = np.bincount(owner, weights=values**2, minlength=m)
    counts = np.bincount(owner, minlength=m)
    return np.sqrt(sums / np.maximum(counts, 1))


def coefficient_std_scores(cands: Candidates, cov: np.ndarray, noise_var: dict[str, float]) -> np.ndarray:
    """(m,) RMS over rows of the coefficient std of the prediction, in units of the noise std."""
    std = np.sqrt(np.maximum(row_variance(cands.a, cov), 0.0))
    return rms_by_owner(std / row_scale(cands.row_types, noise_var), cands.owner, cands.size)


def cost_weighted(scores: np.ndarray, natoms: np.ndarray, gamma: float) -> np.ndarray:
    """Scores divided by the QM cost ``natoms^3`` to the power ``gamma`` (0: no weighting)."""
    return scores / np.power(natoms.astype(float) ** 3, gamma) if gamma else scores


def pick_top(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n largest scores, best first (ties by index)."""
    order = np.lexsort((np.arange(scores.size), -scores))
    return order[:n]


def pick_random(m: int, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(m, size=min(n, m), replace=False)


def pick_std_sampling(scores: np.ndarray, n: int, rng: np.random.Generator, power: float = 2.0
                      ) -> np.ndarray:
    """Sample without replacement with probability proportional to ``score^power``."""
    w = np.power(np.maximum(scores, 0.0), power)
    if not np.any(w > 0):
        return pick_random(scores.size, n, rng)
    w = w / w.sum()
    k = min(n, int(np.count_nonzero(w)))
    return rng.choice(scores.size, size=k, replace=False, p=w)


def spread_by_kmeans(scores: np.ndarray, fingerprints: np.ndarray, n: int, seed: int,
                     shortlist: int = 3, natoms: np.ndarray | None = None, cost_gamma: float = 0.0
                     ) -> np.ndarray:
    """One candidate of each of n K-means clusters among the ``shortlist * n`` best scores: the
    best-scored one, or with ``natoms`` and ``cost_gamma`` > 0 the one with the best score per QM cost,
    ``score / (natoms^3)^cost_gamma`` (a cluster is one kind of uncertain frame; its cheapest
    well-scored member is labelled instead of, say, the same environments in a cell 3x larger).
    Best first (by score)."""
    from sklearn.cluster import KMeans

    top = pick_top(scores, min(scores.size, shortlist * n))
    if top.size <= n:
        return top
    x = fingerprints[top]
    x = (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-300)
    labels = KMeans(n_clusters=n, n_init=4, random_state=seed).fit_predict(x)
    value = scores if natoms is None else cost_weighted(scores, natoms, cost_gamma)
    chosen = [top[labels == k][np.argmax(value[top[labels == k]])] for k in range(n) if np.any(labels == k)]
    chosen = np.array(chosen)
    return chosen[np.argsort(-scores[chosen])]


def least_used(strata: np.ndarray, counts: np.ndarray, available: np.ndarray,
               weights: np.ndarray | None = None) -> np.ndarray:
    """(m,) bool: the available candidates whose stratum has the least use among the strata that
    still have an available candidate.

    Args:
        strata: (m,) stratum index of each candidate, in [0, s).
        counts: (s,) use of each stratum so far: picks (labels), or with ``weights`` their summed weight.
        available: (m,) bool, candidates not yet chosen.
        weights: (m,) optional weight of each candidate (e.g. its QM cost, atoms^3): the use is then
            the stratum's use after taking the candidate, ``counts[stratum] + weight``, so a stratum of
            costly candidates waits until the others have spent as much.
    """
    if not available.any():
        return available
    used = counts[strata] + (0.0 if weights is None else weights)
    low = used[available].min()
    return available & (used <= low + 1e-12 * abs(low))


def pick_balanced(scores: np.ndarray, n: int, strata: np.ndarray, counts: np.ndarray,
                  weights: np.ndarray | None = None) -> np.ndarray:
    """Indices of n candidates, one at a time: the best score among the least-used strata
    (:func:`least_used`), whose use then grows by one (or by the pick's weight); ties by index.
    ``counts`` is not changed."""
    counts = np.asarray(counts, dtype=float).copy()
    available = np.ones(scores.size, dtype=bool)
    chosen: list[int] = []
    for _ in range(min(n, scores.size)):
        allowed = least_used(strata, counts, available, weights)
        best = int(np.flatnonzero(allowed)[np.argmax(scores[allowed])])
        chosen.append(best)
        available[best] = False
        counts[strata[best]] += 1.0 if weights is None else weights[best]
    return np.array(chosen, dtype=int)


def candidate_grams(cands: Candidates, noise_var: dict[str, float]) -> np.ndarray:
    """(m, p, p) Gram matrix ``A_c^T A_c`` of each candidate's rows in units of their noise std."""
    an = cands.a / row_scale(cands.row_types, noise_var)[:, None]
    p = an.shape[1]
    grams = np.zeros((cands.size, p, p))
    for c in range(cands.size):
        ac = an[cands.owner == c]
        grams[c] = ac.T @ ac
    return grams


def _absorb(s: np.ndarray, g_c: np.ndarray) -> np.ndarray:
    """Posterior covariance after adding rows with Gram ``g_c``: ``S - S (I + G_c S)^-1 G_c S``."""
    p = s.shape[0]
    return s - s @ np.linalg.solve(np.eye(p) + g_c @ s, g_c @ s)


def _greedy(grams: np.ndarray, cov: np.ndarray, n: int, gain: Any, natoms: np.ndarray | None,
            cost_gamma: float, strata: np.ndarray | None = None, counts: np.ndarray | None = None,
            weights: np.ndarray | None = None) -> np.ndarray:
    """Pick n candidates one by one by ``gain(G_c, S)``, absorbing each pick into S; with ``strata``
    ((m,) ints) and ``counts`` ((s,) earlier use per stratum), only among the least-used strata
    (``weights``: see :func:`least_used`)."""
    m = grams.shape[0]
    s = cov.copy()
    available = np.ones(m, dtype=bool)
    counts = None if strata is None else np.asarray(
        counts if counts is not None else np.zeros(int(strata.max()) + 1), dtype=float).copy()
    chosen: list[int] = []
    for _ in range(min(n, m)):
        allowed = available if strata is None else least_used(strata, counts, available, weights)
        idx = np.flatnonzero(allowed)
        gains = np.array([gain(grams[c], s) for c in idx])
        if natoms is not None:
            gains = cost_weighted(gains, natoms[idx], cost_gamma)
        best = int(idx[np.argmax(gains)])
        chosen.append(best)
        available[best] = False
        if counts is not None:
            counts[strata[best]] += 1.0 if weights is None else weights[best]
        s = _absorb(s, grams[best])
    return np.array(chosen, dtype=int)


def greedy_d_optimal(grams: np.ndarray, cov: np.ndarray, n: int, natoms: np.ndarray | None = None,
                     cost_gamma: float = 0.0, strata: np.ndarray | None = None,
                     counts: np.ndarray | None = None, weights: np.ndarray | None = None) -> np.ndarray:
    """Greedy maximum information gain ``log det(I + A_c S A_c^T) = log det(I + G_c S)``; S is
    updated after each pick. p x p work per candidate (``grams``: (m, p, p) from
    :func:`candidate_grams`; ``cov``: (p, p)). With ``strata`` ((m,) ints) and ``counts`` ((s,) earlier
    picks per stratum; default none) each pick is among the least-used strata (:func:`least_used`;
    ``weights``: (m,) use of each candidate, default 1)."""
    eye = np.eye(cov.shape[0])
    return _greedy(grams, cov, n, lambda g, s: np.linalg.slogdet(eye + g @ s)[1], natoms, cost_gamma,
                   strata, counts, weights)


def greedy_variance_reduction(grams: np.ndarray, cov: np.ndarray, pool_gram: np.ndarray, n: int,
                              natoms: np.ndarray | None = None, cost_gamma: float = 0.0,
                              strata: np.ndarray | None = None, counts: np.ndarray | None = None,
                              weights: np.ndarray | None = None) -> np.ndarray:
    """Greedy largest expected reduction of the predictive variance summed over the pool's rows,
    ``tr((I + G_c S)^-1 G_c S G S)`` with ``G`` the pool's Gram matrix; S updated after each pick;
    ``strata``/``counts``/``weights`` as :func:`greedy_d_optimal`."""
    eye = np.eye(cov.shape[0])

    def gain(g: np.ndarray, s: np.ndarray) -> float:
        return float(np.trace(np.linalg.solve(eye + g @ s, g @ (s @ pool_gram @ s))))

    return _greedy(grams, cov, n, gain, natoms, cost_gamma, strata, counts, weights)
