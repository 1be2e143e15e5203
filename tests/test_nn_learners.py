"""Ensemble, MCMC and variational learners over torch modules on 1-D toys."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fitsnap_uq.nn import MCMC, Ensemble, Variational  # noqa: E402


def mlp():
    return torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32),
                               torch.nn.Tanh(), torch.nn.Linear(32, 1))


class Poly(torch.nn.Module):
    """Linear in its parameters: y = sum_k w_k x^k (k = 0..order)."""

    def __init__(self, order: int = 3) -> None:
        super().__init__()
        self.order = order
        self.linear = torch.nn.Linear(order + 1, 1, bias=False)

    def forward(self, x):
        return self.linear(torch.cat([x**k for k in range(self.order + 1)], dim=1))


def toy(seed=0, n=80):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=n)
    return x, np.sin(3 * x) + 0.1 * rng.normal(size=n)


def coverage(learner, seed=1):
    rng = np.random.default_rng(seed)
    xt = rng.uniform(-0.95, 0.95, size=300)
    yt = np.sin(3 * xt) + 0.1 * rng.normal(size=xt.size)
    mean, std = learner.predict(xt[:, None])
    return float(np.mean(np.abs(yt - mean) <= 1.96 * std))


def test_ensemble_covers_interpolation(tmp_path):
    x, y = toy()
    ens = Ensemble(mlp, members=8, epochs=800, lr=1e-2, seed=0).fit(x[:, None], y)
    cov = coverage(ens)
    assert cov >= 0.85
    mean, std = ens.predict_raw(np.array([[0.0], [3.0]]), with_noise=False)
    assert std[1] > 3 * std[0]  # extrapolation is less certain
    ens.save(tmp_path / "ens.pt")
    back = Ensemble.load(tmp_path / "ens.pt", mlp)
    np.testing.assert_allclose(back.predict(x[:5, None])[0], ens.predict(x[:5, None])[0])
    again = Ensemble(mlp, members=8, epochs=800, lr=1e-2, seed=0).fit(x[:, None], y)
    np.testing.assert_array_equal(again.predict(x[:5, None])[0], ens.predict(x[:5, None])[0])


def test_variational_coverage_is_measured():
    x, y = toy()
    vi = Variational(mlp, epochs=1500, lr=1e-2, seed=0).fit(x[:, None], y)
    cov = coverage(vi)
    print(f"variational 95% coverage on the 1-D toy: {cov:.3f}")
    assert 0.0 <= cov <= 1.0 and vi.noise_std_ > 0
    _, std_model = vi.predict_raw(x[:, None], with_noise=False)
    assert np.all(std_model >= 0)


def test_mcmc_mean_matches_the_exact_posterior():
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, size=200)
    y = 0.5 - x + 2 * x**3 + 0.1 * rng.normal(size=x.size)
    learner = MCMC(Poly(3), prior_std=10.0, samples=600, warmup=400, seed=0).fit(x[:, None], y)
    a = np.stack([x**k for k in range(4)], axis=1)
    s2 = learner.noise_std_**2
    prec = a.T @ a / s2 + np.eye(4) / 100.0
    exact = np.linalg.solve(prec, a.T @ y / s2)
    w = learner.w_.numpy()
    post_sd = np.sqrt(np.diag(np.linalg.inv(prec)))
    assert np.all(np.abs(w.mean(axis=0) - exact) <= 0.25 * post_sd)  # MC error of ~600 draws
    np.testing.assert_allclose(w.std(axis=0), post_sd, rtol=0.2)
    assert learner.noise_std_ == pytest.approx(0.1, rel=0.2)
    xt = np.linspace(-1, 1, 7)
    mean, _ = learner.predict(xt[:, None])
    np.testing.assert_allclose(mean, np.stack([xt**k for k in range(4)], 1) @ exact, atol=0.03)


@pytest.mark.slow
def test_polynomial_study_command(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "polynomial_uq" / "run.py"
    proc = subprocess.run([sys.executable, str(script), "--quick", "--outdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (tmp_path / "table.md").read_text()
    assert table.count("| 10 | interpolation |") == 1 and table.count("extrapolation") == 4
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["3-extrapolation"]) == {"exact Bayes", "variational", "MCMC", "ensemble",
                                                "model error"}
    for name in ("interpolation.png", "extrapolation.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- the estimator contract
def tiny():
    return torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))


def cheap(kind):
    """A learner of ``kind`` with settings that differ from the defaults, quick to fit."""
    if kind == "Ensemble":
        return Ensemble(tiny, members=3, bootstrap=False, fraction=0.6, epochs=5, lr=3e-3, weight_decay=1e-4,
                        seed=7)
    if kind == "MCMC":
        return MCMC(tiny, prior_std=0.5, samples=6, warmup=4, seed=7)
    return Variational(tiny, prior_std=0.5, epochs=5, lr=3e-3, mc=2, draws=9, seed=7)


KINDS = ["Ensemble", "MCMC", "Variational"]


def data2d(n=12):
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, size=(n, 2))
    return x, x[:, 0] - 0.5 * x[:, 1]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("x, y, message", [
    (np.zeros((4, 2, 1)), np.zeros(4), r"x must have shape \(n, d\)"),
    (np.zeros((0, 2)), np.zeros(0), r"x must have shape \(n, d\)"),
    (np.zeros((4, 2)), np.zeros(5), r"y must have shape \(4,\)"),
    (np.zeros((4, 2)), np.zeros((4, 2)), r"y must have shape \(4,\) or \(4, 1\)"),
    (np.array([["a", "b"]] * 4), np.zeros(4), "x must be numeric"),
    (np.zeros((4, 2)), np.array(["1"] * 4), "y must be numeric"),
    (np.array([[0.0, np.nan]] * 4), np.zeros(4), "x has NaN or infinite"),
    (np.zeros((4, 2)), np.array([0.0, np.inf, 0.0, 0.0]), "y has NaN or infinite"),
])
def test_fit_refuses_bad_inputs(kind, x, y, message):
    with pytest.raises(ValueError, match=message):
        cheap(kind).fit(x, y)


@pytest.mark.parametrize("kind", KINDS)
def test_predict_checks_fitted_and_features(kind, tmp_path):
    learner = cheap(kind)
    with pytest.raises(ValueError, match="not fitted"):
        learner.predict(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="not fitted"):
        learner.save(tmp_path / "x.pt")
    x, y = data2d()
    learner.fit(x, y[:, None])  # (n, 1) targets are accepted
    assert learner.n_features_in_ == 2
    with pytest.raises(ValueError, match="x has 3 features per row; the learner was fitted with 2"):
        learner.predict(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="x has NaN"):
        learner.sample(np.full((2, 2), np.nan), 3)
    with pytest.raises(ValueError, match="n must be at least 1"):
        learner.sample(x, 0)
    mean, std = learner.predict(torch.as_tensor(x[:3]))  # tensors as well as arrays
    assert mean.shape == std.shape == (3,)


@pytest.mark.parametrize("kind", KINDS)
def test_load_keeps_every_setting_and_reads_weights_only(kind, tmp_path):
    x, y = data2d()
    learner = cheap(kind).fit(x, y)
    path = tmp_path / f"{kind}.pt"
    learner.save(path)
    blob = torch.load(path, weights_only=True)  # plain tensors and numbers: no pickled code
    assert blob["kind"] == kind and blob["settings"] == learner.settings()
    cls = type(learner)
    back = cls.load(path, tiny)
    assert back.settings() == learner.settings() and back.settings() != cls(tiny).settings()
    assert back.n_features_in_ == 2 and back.noise_std_ == learner.noise_std_
    np.testing.assert_array_equal(back.predict(x)[0], learner.predict(x)[0])
    np.testing.assert_array_equal(back.predict(x)[1], learner.predict(x)[1])
    np.testing.assert_array_equal(back.sample(x, 4), learner.sample(x, 4))
    other = next(k for k in KINDS if k != kind)
    with pytest.raises(ValueError, match=f"not a saved {other} learner"):
        {"Ensemble": Ensemble, "MCMC": MCMC, "Variational": Variational}[other].load(path, tiny)


def test_predict_raw_and_the_deprecated_noise_keyword():
    """``predict_raw`` names what it returns; ``predict`` is the same; ``noise=`` (a bool, while
    ``noise`` names a noise class in Posterior.predict) still works with a DeprecationWarning."""
    from fitsnap_uq.nn import Ensemble

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (40, 1))
    y = np.sin(3 * x[:, 0])
    ens = Ensemble(lambda: torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)),
                   members=2, epochs=20, seed=1).fit(x, y)
    raw = ens.predict_raw(x[:5])
    np.testing.assert_array_equal(ens.predict(x[:5])[1], raw[1])
    with pytest.warns(DeprecationWarning, match="with_noise"):
        old = ens.predict(x[:5], noise=False)
    np.testing.assert_array_equal(old[1], ens.predict_raw(x[:5], with_noise=False)[1])
    assert np.all(old[1] < raw[1])
    with pytest.raises(TypeError, match="unexpected"):
        ens.predict(x[:5], nois=False)
