"""Probabilistic learners over any ``torch.nn.Module``: ensemble, MCMC (NUTS) and variational.

The seed talk's wrappers (``EnsRegr``, ``MCMCRegr``, ``VIRegr``; aliases below) with one API::

    learner = Ensemble(lambda: MyNet(), members=10)   # or MCMC(MyNet()), Variational(MyNet())
    learner.fit(x, y)                                  # x (n, d), y (n,) or (n, 1): arrays or tensors
    mean, std = learner.predict_raw(x_new)             # (m,), (m,): predictive mean and raw std
    draws = learner.sample(x_new, 100)                 # (100, m) predictive function draws
    learner.save("model.pt"); learner = Ensemble.load("model.pt", lambda: MyNet())

Every learner also learns a homoscedastic noise std; ``predict_raw(..., with_noise=True)`` (the default)
adds it, ``with_noise=False`` gives the model (epistemic) part alone. The std is raw (the learners do
not recalibrate; ``predict`` is the same, for duck typing): ``Posterior.predict``, by contrast, returns a
calibrated half-width and ``Posterior.predict_raw`` the raw std, and there ``noise`` names a noise class.
Float64 throughout; every random choice is seeded (same seed, same result).

The estimator contract (as scikit-learn's): the constructor stores settings only; ``fit`` learns the
attributes with a trailing underscore (and ``n_features_in_``); ``fit``, ``predict`` and ``sample``
check their inputs (numeric, finite, ``x`` (n, d) or (n,), ``y`` n values, the same d as in ``fit``) and
raise :class:`ValueError` naming what is wrong; ``save`` writes plain tensors and numbers (read back with
``torch.load(..., weights_only=True)``, which runs no pickled code) including every constructor
setting, so ``load`` gives the learner that was saved.

* :class:`Ensemble`: K members from independent seeds, each trained (Adam, full batch) on a bootstrap
  sample or a random fraction of the data; spread = members' disagreement.
* :class:`MCMC`: NUTS (pyro) over all parameters and the log noise std, Gaussian prior N(0, prior_std^2)
  on the parameters; practical for small networks and linear-in-parameters models.
* :class:`Variational`: mean-field Gaussian over all parameters (Bayes by backprop, reparameterized
  gradients, analytic KL to the N(0, prior_std^2) prior); the seed's finding is that it
  underestimates the spread.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.func import functional_call

Factory = Callable[[], torch.nn.Module]
DTYPE = torch.float64


def _numeric(values: Any, name: str) -> np.ndarray:
    """``values`` as a numeric numpy array with finite entries, else ValueError."""
    arr = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has NaN or infinite values")
    return arr


def _tensor(x: Any, n_features: int | None = None) -> torch.Tensor:
    """Inputs (n, d) (or (n,): d = 1) as a float64 tensor; ``n_features``: the d that fit saw."""
    arr = _numeric(x, "x")
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"x must have shape (n, d) or (n,) with n, d >= 1, got {np.shape(x)}")
    if n_features is not None and arr.shape[1] != n_features:
        raise ValueError(f"x has {arr.shape[1]} features per row; the learner was fitted with {n_features}")
    return torch.as_tensor(arr, dtype=DTYPE)


def _target(y: Any, n: int) -> torch.Tensor:
    """Targets (n,) or (n, 1) as a float64 tensor (n,)."""
    arr = _numeric(y, "y")
    if arr.ndim not in (1, 2) or (arr.ndim == 2 and arr.shape[1] != 1) or arr.shape[0] != n:
        raise ValueError(f"y must have shape ({n},) or ({n}, 1) to match x, got {arr.shape}")
    return torch.as_tensor(arr, dtype=DTYPE).reshape(-1)


def _fit_data(x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    xt = _tensor(x)
    return xt, _target(y, xt.shape[0])


def _read(path: str, kind: str) -> dict[str, Any]:
    """A file written by a learner's ``save``: plain tensors, numbers and strings, so it is read with
    ``weights_only=True`` (no pickled code runs); its ``kind`` must be ``kind``."""
    blob = torch.load(path, weights_only=True)
    if not isinstance(blob, dict) or blob.get("kind") != kind:
        found = blob.get("kind") if isinstance(blob, dict) else type(blob).__name__
        raise ValueError(f"{path} is not a saved {kind} learner (it holds {found!r})")
    return blob


def _factory(module: torch.nn.Module | Factory) -> Factory:
    if isinstance(module, torch.nn.Module):
        proto = module

        def make() -> torch.nn.Module:
            return copy.deepcopy(proto)

        return make
    return module


def _reset(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Re-initialize every layer that can be reset, from ``seed`` (the global RNG is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in module.modules():
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
    return module.to(DTYPE)


def _flat_params(module: torch.nn.Module) -> tuple[list[str], list[torch.Size], torch.Tensor]:
    names, shapes, values = [], [], []
    for name, p in module.named_parameters():
        names.append(name)
        shapes.append(p.shape)
        values.append(p.detach().reshape(-1))
    return names, shapes, torch.cat(values)


def _unflatten(flat: torch.Tensor, names: list[str], shapes: list[torch.Size]) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for name, shape in zip(names, shapes):
        n = int(np.prod(shape)) if len(shape) else 1
        out[name] = flat[i:i + n].reshape(shape)
        i += n
    return out


def _out(module: torch.nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return functional_call(module, params, (x,)).reshape(-1)


class _Learner:
    """Shared API: predict from function draws plus the learned noise."""

    seed: int
    noise_std_: float
    n_features_in_: int

    def _draws(self, x: torch.Tensor, n: int | None) -> torch.Tensor:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The constructor's settings (all but the module), as saved with the learner."""
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if not hasattr(self, "noise_std_"):
            raise ValueError(f"this {type(self).__name__} is not fitted: call fit (or load) first")

    def _inputs(self, x: Any) -> torch.Tensor:
        self._check_fitted()
        return _tensor(x, getattr(self, "n_features_in_", None))

    def _blob(self, **state: Any) -> dict[str, Any]:
        return {"kind": type(self).__name__, "settings": self.settings(), "noise_std": self.noise_std_,
                "n_features": self.n_features_in_, "seed": self.seed, **state}

    def _restore(self, blob: dict[str, Any]) -> None:
        self.noise_std_ = float(blob["noise_std"])
        if "n_features" in blob:
            self.n_features_in_ = int(blob["n_features"])

    def sample(self, x: Any, n: int = 100) -> np.ndarray:
        """(n, m) draws of the learned function at ``x`` (no noise)."""
        if int(n) < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        xt = self._inputs(x)
        with torch.no_grad():
            return self._draws(xt, int(n)).numpy()

    def predict_raw(self, x: Any, with_noise: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Predictive mean (m,) and raw (not recalibrated) std (m,) at ``x``; ``with_noise`` adds the
        learned noise variance (False: the model's epistemic part alone)."""
        xt = self._inputs(x)
        with torch.no_grad():
            draws = self._draws(xt, None)
        mean = draws.mean(dim=0).numpy()
        var = draws.var(dim=0, unbiased=draws.shape[0] > 1).numpy()
        if with_noise:
            var = var + self.noise_std_**2
        return mean, np.sqrt(var)

    def predict(self, x: Any, with_noise: bool = True, **deprecated: Any) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict_raw` (the learners are not recalibrated; the name ``predict`` is kept for
        the scikit-learn-style duck typing of :mod:`fitsnap_uq.active.committee`).

        ``noise=`` (a bool) is the old name of ``with_noise``: accepted with a DeprecationWarning, since
        ``noise`` names a noise class everywhere else (``Posterior.predict``).
        """
        if "noise" in deprecated:
            import warnings

            warnings.warn("predict(noise=...) is deprecated: use with_noise=", DeprecationWarning,
                          stacklevel=2)
            with_noise = bool(deprecated.pop("noise"))
        if deprecated:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(deprecated))}")
        return self.predict_raw(x, with_noise=with_noise)


class Ensemble(_Learner):
    """K independently seeded members, each on a bootstrap sample (or a random fraction) of the data.

    Args:
        module: a module (deep-copied per member) or a factory of modules.
        members: K.
        bootstrap: resample the data with replacement for each member; otherwise each member sees a
            random ``fraction`` of it.
        epochs, lr, weight_decay: Adam, full batch.
        seed: base seed (member k uses seed + k).
    """

    def __init__(self, module: torch.nn.Module | Factory, members: int = 10, bootstrap: bool = True,
                 fraction: float = 0.8, epochs: int = 2000, lr: float = 1e-2, weight_decay: float = 0.0,
                 seed: int = 0) -> None:
        self.make = _factory(module)
        self.members = members
        self.bootstrap = bootstrap
        self.fraction = fraction
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.seed = seed
        self.models_: list[torch.nn.Module] = []

    def fit(self, x: Any, y: Any) -> Ensemble:
        """Train the members; the noise std is the RMS residual of the ensemble mean."""
        xt, yt = _fit_data(x, y)
        self.n_features_in_ = int(xt.shape[1])
        n = yt.shape[0]
        self.models_ = []
        for k in range(self.members):
            rng = np.random.default_rng(self.seed + k)
            idx = rng.integers(0, n, size=n) if self.bootstrap else \
                rng.choice(n, size=max(1, int(round(self.fraction * n))), replace=False)
            model = _reset(self.make(), self.seed + k)
            opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            xi, yi = xt[idx], yt[idx]
            for _ in range(self.epochs):
                opt.zero_grad()
                loss = torch.mean((model(xi).reshape(-1) - yi) ** 2)
                loss.backward()
                opt.step()
            self.models_.append(model.eval())
        with torch.no_grad():
            mean = self._draws(xt, None).mean(dim=0)
        self.noise_std_ = float(torch.sqrt(torch.mean((mean - yt) ** 2)))
        return self

    def _draws(self, x: torch.Tensor, n: int | None) -> torch.Tensor:
        preds = torch.stack([m(x).reshape(-1) for m in self.models_])
        if n is None or n == len(self.models_):
            return preds
        idx = np.random.default_rng(self.seed).integers(0, len(self.models_), size=n)
        return preds[idx]

    def settings(self) -> dict[str, Any]:
        return {"members": self.members, "bootstrap": self.bootstrap, "fraction": self.fraction,
                "epochs": self.epochs, "lr": self.lr, "weight_decay": self.weight_decay, "seed": self.seed}

    def save(self, path: str) -> None:
        """Members' weights (state dicts of tensors) and settings (torch.save)."""
        self._check_fitted()
        torch.save(self._blob(states=[m.state_dict() for m in self.models_]), path)

    @classmethod
    def load(cls, path: str, module: torch.nn.Module | Factory) -> Ensemble:
        """An ensemble saved by :meth:`save`, given the same module (or factory)."""
        blob = _read(path, "Ensemble")
        self = cls(module, **blob.get("settings", {"members": len(blob["states"]), "seed": blob["seed"]}))
        self.models_ = []
        for state in blob["states"]:
            m = self.make().to(DTYPE)
            m.load_state_dict(state)
            self.models_.append(m.eval())
        self._restore(blob)
        return self


class MCMC(_Learner):
    """NUTS (pyro) over the module's parameters and the log noise std.

    Args:
        module: the network (its architecture; parameters are sampled).
        prior_std: std of the Gaussian prior on every parameter.
        samples, warmup, chains: NUTS settings.
        seed: seed of pyro's random state.
    """

    def __init__(self, module: torch.nn.Module | Factory, prior_std: float = 1.0, samples: int = 500,
                 warmup: int = 300, seed: int = 0) -> None:
        self.make = _factory(module)
        self.prior_std = prior_std
        self.samples = samples
        self.warmup = warmup
        self.seed = seed

    def fit(self, x: Any, y: Any) -> MCMC:
        import pyro
        from pyro.infer import MCMC as PyroMCMC
        from pyro.infer import NUTS

        xt, yt = _fit_data(x, y)
        self.n_features_in_ = int(xt.shape[1])
        self.module_ = _reset(self.make(), self.seed)
        self.names_, self.shapes_, init = _flat_params(self.module_)
        prior_var = self.prior_std**2
        module, names, shapes = self.module_, self.names_, self.shapes_

        def potential(params: dict[str, torch.Tensor]) -> torch.Tensor:
            w, log_s = params["w"], params["log_noise"]
            pred = _out(module, _unflatten(w, names, shapes), xt)
            s2 = torch.exp(2 * log_s)
            nll = 0.5 * torch.sum((pred - yt) ** 2) / s2 + yt.shape[0] * log_s
            return nll + 0.5 * torch.sum(w**2) / prior_var

        pyro.set_rng_seed(self.seed)
        with torch.no_grad():
            resid = torch.std(_out(module, _unflatten(init, names, shapes), xt) - yt)
        kernel = NUTS(potential_fn=potential, adapt_step_size=True, adapt_mass_matrix=True)
        runner = PyroMCMC(kernel, num_samples=self.samples, warmup_steps=self.warmup,
                          initial_params={"w": init.clone(), "log_noise": torch.log(resid).reshape(())},
                          disable_progbar=True)
        runner.run()
        draws = runner.get_samples()
        self.w_ = draws["w"].detach()
        self.noise_std_ = float(torch.exp(draws["log_noise"]).mean())
        return self

    def _draws(self, x: torch.Tensor, n: int | None) -> torch.Tensor:
        w = self.w_ if n is None else self.w_[np.random.default_rng(self.seed).integers(0, len(self.w_), n)]
        return torch.stack([_out(self.module_, _unflatten(wi, self.names_, self.shapes_), x) for wi in w])

    def settings(self) -> dict[str, Any]:
        return {"prior_std": self.prior_std, "samples": self.samples, "warmup": self.warmup,
                "seed": self.seed}

    def save(self, path: str) -> None:
        """The parameter draws (a tensor) and settings (torch.save)."""
        self._check_fitted()
        torch.save(self._blob(w=self.w_), path)

    @classmethod
    def load(cls, path: str, module: torch.nn.Module | Factory) -> MCMC:
        """MCMC draws saved by :meth:`save`, given the same module (or factory)."""
        blob = _read(path, "MCMC")
        self = cls(module, **blob.get("settings", {"seed": blob["seed"]}))
        self.module_ = _reset(self.make(), self.seed)
        self.names_, self.shapes_, _ = _flat_params(self.module_)
        self.w_ = blob["w"]
        self._restore(blob)
        return self


class Variational(_Learner):
    """Mean-field Gaussian posterior over every parameter (Bayes by backprop).

    Args:
        module: the network.
        prior_std: std of the Gaussian prior.
        epochs, lr: Adam on the negative ELBO (full batch, ``mc`` reparameterized draws a step).
        draws: function draws used by ``predict``.
        seed: seed of the initialization and of every draw.
    """

    def __init__(self, module: torch.nn.Module | Factory, prior_std: float = 1.0, epochs: int = 3000,
                 lr: float = 1e-2, mc: int = 4, draws: int = 200, seed: int = 0) -> None:
        self.make = _factory(module)
        self.prior_std = prior_std
        self.epochs = epochs
        self.lr = lr
        self.mc = mc
        self.n_draws = draws
        self.seed = seed

    def fit(self, x: Any, y: Any) -> Variational:
        xt, yt = _fit_data(x, y)
        self.n_features_in_ = int(xt.shape[1])
        self.module_ = _reset(self.make(), self.seed)
        self.names_, self.shapes_, init = _flat_params(self.module_)
        mu = init.clone().requires_grad_(True)
        rho = torch.full_like(init, -5.0, requires_grad=True)
        log_s = torch.log(torch.std(yt) * 0.1).detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([mu, rho, log_s], lr=self.lr)
        gen = torch.Generator().manual_seed(self.seed)
        p2 = self.prior_std**2
        n = yt.shape[0]
        for _ in range(self.epochs):
            opt.zero_grad()
            sigma = torch.nn.functional.softplus(rho)
            nll = 0.0
            for _ in range(self.mc):
                w = mu + sigma * torch.randn(mu.shape, generator=gen, dtype=DTYPE)
                pred = _out(self.module_, _unflatten(w, self.names_, self.shapes_), xt)
                nll = nll + 0.5 * torch.sum((pred - yt) ** 2) * torch.exp(-2 * log_s) + n * log_s
            kl = 0.5 * torch.sum((sigma**2 + mu**2) / p2 - 1.0 - 2 * torch.log(sigma) + np.log(p2))
            loss = nll / self.mc + kl
            loss.backward()
            opt.step()
        self.mu_ = mu.detach()
        self.sigma_ = torch.nn.functional.softplus(rho).detach()
        self.noise_std_ = float(torch.exp(log_s.detach()))
        return self

    def _draws(self, x: torch.Tensor, n: int | None) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed + 1)
        k = self.n_draws if n is None else n
        eps = torch.randn((k, self.mu_.shape[0]), generator=gen, dtype=DTYPE)
        return torch.stack([_out(self.module_, _unflatten(self.mu_ + self.sigma_ * e, self.names_,
                                                          self.shapes_), x) for e in eps])

    def settings(self) -> dict[str, Any]:
        return {"prior_std": self.prior_std, "epochs": self.epochs, "lr": self.lr, "mc": self.mc,
                "draws": self.n_draws, "seed": self.seed}

    def save(self, path: str) -> None:
        """The variational means and stds (tensors) and settings (torch.save)."""
        self._check_fitted()
        torch.save(self._blob(mu=self.mu_, sigma=self.sigma_), path)

    @classmethod
    def load(cls, path: str, module: torch.nn.Module | Factory) -> Variational:
        """A variational posterior saved by :meth:`save`, given the same module (or factory)."""
        blob = _read(path, "Variational")
        self = cls(module, **blob.get("settings", {"seed": blob["seed"]}))
        self.module_ = _reset(self.make(), self.seed)
        self.names_, self.shapes_, _ = _flat_params(self.module_)
        self.mu_, self.sigma_ = blob["mu"], blob["sigma"]
        self._restore(blob)
        return self


EnsRegr = Ensemble
MCMCRegr = MCMC
VIRegr = Variational
