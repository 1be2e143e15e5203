"""A synthetic FitSNAP-like linear system at scale (for benchmarks/bench_scale.py and its tests).

Configurations of ``atoms`` atoms give one energy row and ``3 * atoms`` force rows each, spread over
``groups`` FitSNAP groups, so ``2 * groups`` noise classes (group x quantity). Descriptor columns are
correlated and span ``decades`` orders of magnitude (as SNAP bispectrum columns do); energy rows are
per-atom averages (smaller spread). Targets carry an embedded model error on a fifth of the
coefficients (per-row random offsets ``s_k xi_ik``) and a noise level per class; weights are per group
and quantity, as FitSNAP's ``eweight``/``fweight``. Generated block by block (memory: the arrays).
"""

from __future__ import annotations

import numpy as np

from fitsnap_uq.linear.rows import Rows


def synthetic_rows(rows: int = 300_000, cols: int = 500, groups: int = 20, atoms: int = 20,
                   decades: float = 3.0, seed: int = 0) -> Rows:
    """The system (see the module docstring): ``rows`` rows (rounded down to whole configurations)."""
    rng = np.random.default_rng(seed)
    per_conf = 1 + 3 * atoms
    nconf = max(rows // per_conf, 2 * groups)
    n = nconf * per_conf
    scales = np.logspace(0, decades, cols)
    mix = np.eye(cols) + 0.3 * rng.standard_normal((cols, cols)) / np.sqrt(cols)
    coef = rng.standard_normal(cols) / scales
    merr = np.zeros(cols)
    merr[rng.choice(cols, size=cols // 5, replace=False)] = 0.05
    merr /= scales
    group_of_conf = rng.integers(0, groups, size=nconf)
    noise = {"Energy": rng.uniform(1e-3, 1e-2, size=groups), "Force": rng.uniform(0.02, 0.2, size=groups)}
    weight = {"Energy": rng.uniform(50, 200, size=groups), "Force": rng.uniform(0.5, 2.0, size=groups)}
    a = np.empty((n, cols))
    b = np.empty(n)
    w = np.empty(n)
    kind = np.empty(n, dtype=object)
    group = np.empty(n, dtype=object)
    config = np.empty(n, dtype=object)
    block = 1000
    for c0 in range(0, nconf, block):
        c1 = min(c0 + block, nconf)
        k = c1 - c0
        s, e = c0 * per_conf, c1 * per_conf
        x = rng.standard_normal((k * per_conf, cols)) @ mix * scales
        x = x.reshape(k, per_conf, cols)
        x[:, 0] = x[:, 1:].mean(axis=1) * np.sqrt(3 * atoms) + 0.1 * scales  # energy row: per-atom mean
        x = x.reshape(k * per_conf, cols)
        g = np.repeat(group_of_conf[c0:c1], per_conf)
        is_e = np.tile(np.arange(per_conf) == 0, k)
        sd = np.where(is_e, noise["Energy"][g], noise["Force"][g])
        y = x @ coef + np.sum(x * merr * rng.standard_normal(x.shape), axis=1)
        y += sd * rng.standard_normal(x.shape[0])
        a[s:e] = x
        b[s:e] = y
        w[s:e] = np.where(is_e, weight["Energy"][g], weight["Force"][g])
        kind[s:e] = np.where(is_e, "Energy", "Force")
        group[s:e] = np.char.add("G", g.astype(str))
        config[s:e] = np.char.add("c", np.repeat(np.arange(c0, c1), per_conf).astype(str))
    return Rows(a=a, b=b, w=w, testing=np.zeros(n, dtype=bool), groups=group, row_types=kind, configs=config)
