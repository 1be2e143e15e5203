"""The seed talk's polynomial study: exact Bayesian posterior vs variational vs MCMC vs ensemble vs
embedded model error, for polynomial fits in interpolation and extrapolation.

    python examples/polynomial_uq/run.py [--outdir polynomial_uq_out] [--seed 0] [--quick]

Truth ``f(x) = sin(3x) + 0.5 x`` (not a polynomial), 30 noisy points (noise std 0.1). Interpolation:
train and test on [-1, 1]; extrapolation: train on [-1, 0.3], test on [0.3, 1]. Models: polynomials
of order 2, 3, 4, 5 (and 10 for interpolation), all linear in their parameters, as a torch module for
the learners. For each method: the fraction of held-out truths (noise-free f) inside its 95% interval
of the function, and the ratio of its RMS predicted std to the RMS actual error (1 is honest, below 1
overconfident). Writes ``table.md``, ``results.json`` and one PNG per scenario.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fitsnap_uq.linear.bayes import class_stats, fit_bayes  # noqa: E402
from fitsnap_uq.linear.merr import fit_model_error  # noqa: E402
from fitsnap_uq.plotting import pyplot, save  # noqa: E402

NOISE = 0.1
METHODS = ("exact Bayes", "variational", "MCMC", "ensemble", "model error")


def truth(x: np.ndarray) -> np.ndarray:
    return np.sin(3 * x) + 0.5 * x


def features(x: np.ndarray, order: int) -> np.ndarray:
    return np.stack([x**k for k in range(order + 1)], axis=1)


def make_poly(order: int):
    import torch

    class Poly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(order + 1, 1, bias=False)

        def forward(self, x):
            return self.linear(torch.cat([x**k for k in range(order + 1)], dim=1))

    return Poly


def run_case(order: int, scenario: str, seed: int, quick: bool) -> dict:
    from fitsnap_uq.nn import MCMC, Ensemble, Variational

    rng = np.random.default_rng(seed)
    hi = 1.0 if scenario == "interpolation" else 0.3
    x = rng.uniform(-1.0, hi, size=30)
    y = truth(x) + NOISE * rng.normal(size=x.size)
    xt = np.linspace(-1, 1, 200) if scenario == "interpolation" else np.linspace(0.3, 1.0, 100)
    grid = np.linspace(-1, 1, 200)
    a, at, ag = features(x, order), features(xt, order), features(grid, order)
    out: dict = {}
    # exact Bayesian posterior (evidence-optimized prior and noise)
    res = fit_bayes({"all": class_stats(a, y)}, prior="isotropic")
    out["exact Bayes"] = (at @ res.mean, np.sqrt(np.einsum("ij,jk,ik->i", at, res.cov, at)),
                          ag @ res.mean, np.sqrt(np.einsum("ij,jk,ik->i", ag, res.cov, ag)))
    poly = make_poly(order)
    scale = 0.3 if quick else 1.0
    learners = {
        "variational": Variational(poly, prior_std=10.0, epochs=int(3000 * scale), lr=2e-2, seed=seed),
        "MCMC": MCMC(poly, prior_std=10.0, samples=int(400 * scale) + 100, warmup=int(300 * scale) + 100,
                     seed=seed),
        "ensemble": Ensemble(poly, members=10, epochs=int(3000 * scale), lr=2e-2, seed=seed),
    }
    for name, learner in learners.items():
        learner.fit(x[:, None], y)
        mt, st = learner.predict_raw(xt[:, None], with_noise=False)
        mg, sg = learner.predict_raw(grid[:, None], with_noise=False)
        out[name] = (mt, st, mg, sg)
    me = fit_model_error(a, y, likelihood="iid", data_var=NOISE**2)
    var_t = (at**2) @ (me.sigma**2) + np.einsum("ij,jk,ik->i", at, me.coef_cov, at)
    var_g = (ag**2) @ (me.sigma**2) + np.einsum("ij,jk,ik->i", ag, me.coef_cov, ag)
    out["model error"] = (at @ me.coef, np.sqrt(var_t), ag @ me.coef, np.sqrt(var_g))
    ft = truth(xt)
    metrics = {}
    for name, (mt, st, _, _) in out.items():
        err = ft - mt
        metrics[name] = {"coverage95": float(np.mean(np.abs(err) <= 1.96 * st)),
                         "std_over_error": float(np.sqrt(np.mean(st**2)) / np.sqrt(np.mean(err**2)))}
    return {"metrics": metrics, "x": x, "y": y, "grid": grid,
            "curves": {k: v[2:] for k, v in out.items()}, "test_range": (float(xt.min()), float(xt.max()))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--outdir", default="polynomial_uq_out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="shorter training and sampling (tests)")
    args = ap.parse_args()
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    cases = ([(o, "interpolation") for o in (2, 3, 4, 5, 10)]
             + [(o, "extrapolation") for o in (2, 3, 4, 5)])
    results = {}
    for order, scenario in cases:
        results[(order, scenario)] = run_case(order, scenario, args.seed, args.quick)
        print(f"order {order:2d} {scenario:13s} " + "  ".join(
            f"{m}: {results[(order, scenario)]['metrics'][m]['coverage95']:.2f}" for m in METHODS),
            flush=True)
    lines = ["# Polynomial study: 95% coverage of held-out truths / (RMS predicted std / RMS error)", "",
             "Truth sin(3x) + 0.5x, 30 points, noise std 0.1. Intervals of the function (no noise).", "",
             "| order | scenario | " + " | ".join(METHODS) + " |", "|---|---|" + "---|" * len(METHODS)]
    for (order, scenario), r in results.items():
        lines.append(f"| {order} | {scenario} | " + " | ".join(
            f"{r['metrics'][m]['coverage95']:.2f} / {r['metrics'][m]['std_over_error']:.2f}"
            for m in METHODS) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(
        {f"{o}-{s}": r["metrics"] for (o, s), r in results.items()}, indent=1))
    plt = pyplot()
    for scenario in ("interpolation", "extrapolation"):
        orders = [o for o, s in cases if s == scenario]
        fig, axes = plt.subplots(len(orders), len(METHODS), sharex=True, squeeze=False,
                                 figsize=(3.2 * len(METHODS), 2.4 * len(orders)))
        for i, o in enumerate(orders):
            r = results[(o, scenario)]
            for j, m in enumerate(METHODS):
                ax = axes[i, j]
                mg, sg = r["curves"][m]
                ax.fill_between(r["grid"], mg - 1.96 * sg, mg + 1.96 * sg, alpha=0.3)
                ax.plot(r["grid"], mg, lw=1.2)
                ax.plot(r["grid"], truth(r["grid"]), "k--", lw=0.8)
                ax.plot(r["x"], r["y"], ".", ms=3, color="C3")
                ax.axvspan(*r["test_range"], color="0.9", zorder=0)
                ax.set_ylim(-3, 3)
                if i == 0:
                    ax.set_title(m, fontsize=9)
                if j == 0:
                    ax.set_ylabel(f"order {o}")
                ax.text(0.02, 0.04, f"cov {r['metrics'][m]['coverage95']:.2f}", transform=ax.transAxes,
                        fontsize=7)
        fig.suptitle(f"Polynomial fits, {scenario} (grey: held-out range; dashed: truth)")
        fig.tight_layout()
        save(fig, out / f"{scenario}.png")
    print(f"wrote {out / 'table.md'}, {out / 'results.json'}, {out / 'interpolation.png'}, "
          f"{out / 'extrapolation.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
