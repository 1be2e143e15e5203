"""Query by committee (QBC) over any learners, as the seed talk describes it.

The algorithm (pool of P unlabelled points, N labelled, K learners, bootstrap fraction f, batch M):

1. each of the K learners gets ``round(f N)`` of the labelled points, drawn with replacement;
2. the learners are trained, each on its own points, and predict every pool point;
3. the M pool points of largest disagreement (the committee's std of the predictions) are picked
   (``qbc``; the seed selects "M points having highest disagreement" and notes that in low d they
   cluster). ``qbc_kmeans`` is a variant that is not the seed's: the batch is spread by K-means
   (:func:`fitsnap_uq.active.strategies.spread_by_kmeans`: the most disputed point of each of M
   clusters among the ``shortlist * M`` most disputed);
4. the new batch is labelled and shared (the seed's K-means step, "to discover geometry of selected
   data, distribute data from clusters evenly among learners, add fM points per learner with
   replacement"): K-means splits it into ``round(f M)`` clusters and each learner draws one point of
   every cluster (``round(f M)`` points per learner, with replacement across learners), so every
   learner sees the whole geometry of the batch but not the same points;
5. repeat from 2.

Learners are objects with ``fit(x, y)`` and ``predict(x) -> (mean, std)`` (the learners of
:mod:`fitsnap_uq.nn`, scikit-learn-like regressors wrapped to that API), made by a factory from a seed,
e.g. ``lambda seed: Ensemble(make_mlp, members=1, bootstrap=False, fraction=1.0, seed=seed)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from fitsnap_uq.active.strategies import pick_random, pick_std_sampling, pick_top, spread_by_kmeans

POOL_STRATEGIES = ("qbc", "qbc_kmeans", "max_std", "std_sampling", "random")


class Learner(Protocol):
    def fit(self, x: Any, y: Any) -> Any: ...

    def predict(self, x: Any) -> tuple[np.ndarray, np.ndarray]: ...


def share_batch(new: np.ndarray, features: np.ndarray, members: int, fraction: float, seed: int
                ) -> list[np.ndarray]:
    """Share a new labelled batch among the learners, spread over its K-means clusters.

    Args:
        new: (M,) indices (into the labelled set) of the new points.
        features: (M, d) their inputs (clustered after standardizing each column).
        members: K learners.
        fraction: f; each learner gets ``max(1, round(f M))`` points.
        seed: seed of the clustering and of the draws.

    Returns:
        K arrays of indices (from ``new``, repeats possible): learner k's share.
    """
    from sklearn.cluster import KMeans

    new = np.asarray(new)
    m = new.size
    if m == 0:
        return [new.copy() for _ in range(members)]
    per = max(1, int(round(fraction * m)))
    rng = np.random.default_rng(seed)
    n_clusters = min(per, m)
    if n_clusters > 1:
        x = np.asarray(features, dtype=float)
        x = (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-300)
        labels = KMeans(n_clusters=n_clusters, n_init=4, random_state=seed).fit_predict(x)
    else:
        labels = np.zeros(m, dtype=int)
    clusters = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    shares = []
    for _ in range(members):
        order = rng.permutation(len(clusters))
        picks = [rng.choice(clusters[order[j % len(clusters)]]) for j in range(per)]
        shares.append(new[np.array(picks, dtype=int)])
    return shares


class Committee:
    """K learners, each trained on its own multiset of the labelled points (QBC).

    Args:
        make_learner: ``make_learner(seed)`` returns a fresh, unfitted learner.
        members: K.
        fraction: f, the bootstrap fraction (points per learner = f x points labelled).
        seed: base seed (learner k is made with seed + k; draws and clusterings use seed too).

    Attributes:
        indices_: K arrays of indices into the labelled set (repeats are bootstrap repeats).
        learners_: the K fitted learners.
    """

    def __init__(self, make_learner: Callable[[int], Learner], members: int = 5, fraction: float = 0.8,
                 seed: int = 0) -> None:
        if members < 2:
            raise ValueError("a committee needs at least 2 members")
        if fraction <= 0:
            raise ValueError("fraction must be positive")
        self.make_learner = make_learner
        self.members = int(members)
        self.fraction = float(fraction)
        self.seed = int(seed)
        self.indices_: list[np.ndarray] = []
        self.learners_: list[Learner] = []
        self._round = 0

    def start(self, n_labelled: int) -> Committee:
        """Give each learner ``max(2, round(f N))`` of the N first labelled points, with replacement."""
        rng = np.random.default_rng([self.seed, 0])
        size = max(2, int(round(self.fraction * n_labelled)))
        self.indices_ = [rng.integers(0, n_labelled, size=size) for _ in range(self.members)]
        self._round = 0
        return self

    def add(self, new: np.ndarray, features: np.ndarray) -> Committee:
        """Share a new batch (indices into the labelled set, their (M, d) inputs) among the learners."""
        if not self.indices_:
            raise RuntimeError("call start() before add()")
        self._round += 1
        shares = share_batch(new, features, self.members, self.fraction, self.seed * 100_003 + self._round)
        self.indices_ = [np.concatenate([old, s]) for old, s in zip(self.indices_, shares)]
        return self

    def fit(self, x: np.ndarray, y: np.ndarray) -> Committee:
        """Train learner k on ``x[indices_[k]], y[indices_[k]]`` (x: (n, d), y: (n,), all labelled)."""
        if not self.indices_:
            raise RuntimeError("call start() before fit()")
        x, y = np.asarray(x), np.asarray(y).reshape(-1)
        self.learners_ = []
        for k, idx in enumerate(self.indices_):
            learner = self.make_learner(self.seed + k)
            learner.fit(x[idx], y[idx])
            self.learners_.append(learner)
        return self

    def predictions(self, x: np.ndarray) -> np.ndarray:
        """(K, m) each learner's mean prediction at ``x`` (m, d)."""
        if not self.learners_:
            raise RuntimeError("call fit() first")
        return np.stack([np.asarray(learner.predict(x)[0]).reshape(-1) for learner in self.learners_])

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Committee mean (m,) and disagreement (m,): the std over the learners (ddof 1)."""
        p = self.predictions(x)
        return p.mean(axis=0), p.std(axis=0, ddof=1)


def pick_from_pool(strategy: str, disagreement: np.ndarray | None, pool_x: np.ndarray, n: int,
                   seed: int, shortlist: int = 3, power: float = 2.0) -> np.ndarray:
    """Indices of n pool points to label next, best first.

    Args:
        strategy: ``qbc`` (the seed's: the n largest disagreements; ``max_std`` is the same),
            ``qbc_kmeans`` (largest disagreement spread by K-means: the most disputed point of each of
            n clusters among the ``shortlist * n`` most disputed), ``std_sampling`` (probability
            proportional to disagreement^power) or ``random``.
        disagreement: (P,) committee std at the pool points (not used by ``random``).
        pool_x: (P, d) pool inputs (the K-means features of ``qbc``).
        n: batch size M.
        seed: seed of every random choice.
    """
    rng = np.random.default_rng(seed)
    p = pool_x.shape[0]
    n = min(n, p)
    if strategy == "random":
        return pick_random(p, n, rng)
    if disagreement is None:
        raise ValueError(f"strategy {strategy!r} needs the committee's disagreement")
    if strategy in ("qbc", "max_std"):
        return pick_top(disagreement, n)
    if strategy == "qbc_kmeans":
        return spread_by_kmeans(disagreement, pool_x, n, seed, shortlist)
    if strategy == "std_sampling":
        return pick_std_sampling(disagreement, n, rng, power)
    raise ValueError(f"unknown pool strategy {strategy!r}; known: {', '.join(POOL_STRATEGIES)}")
