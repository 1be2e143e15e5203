"""The FitSNAP neural-network ensemble (solver ``NNENSEMBLE``): K FitSNAP PyTorch potentials, one file each.

Each member is FitSNAP's own PYTORCH solver (``fitsnap3lib.solvers.pytorch.PYTORCH``: its ``FitTorch``
network, loss, Adam optimizer and training loop; the ``[PYTORCH]`` section gives the network and training
settings) run on a resampled set of the training configurations with its own seed:

* ``nn_resample = bootstrap``: as many configurations as there are, drawn with replacement;
  ``fraction``: a random ``nn_fraction`` of them without replacement; ``none``: all of them (only the
  initialization and the batch order differ). Testing configurations are never trained on.
* the member's seed sets the network's initialization and FitSNAP's batch shuffling (torch's RNG);
  member seeds come from ``numpy.random.SeedSequence([UQ] seed).spawn(K)``, so a run is reproducible
  and does not depend on the number of MPI ranks.
* the training configurations a member did not draw (out of bag) are its validation set: FitSNAP prints
  their loss, and with ``nn_early_stopping = 1`` the member is the epoch of lowest out-of-bag loss
  (FitSNAP's ``model_best``); otherwise (or without out-of-bag configurations) the last epoch.

Under ``mpirun -np R`` member ``m`` is trained by rank ``m % R`` (the descriptors are in FitSNAP's
node-shared arrays, visible to every rank), and rank 0 collects the members' predictions.

The pure parts (resampling plan, ensemble moments, out-of-bag recalibration ratios, evaluating saved
members on descriptors) need numpy/torch only; the FitSNAP adapter (:func:`train_members`) imports
FitSNAP inside. The two patches that let FitSNAP treat NNENSEMBLE as its PYTORCH solver are
:data:`fitsnap_uq.compat.NNENSEMBLE_ADAPTERS`, applied by :func:`fitsnap_uq.fitsnap_plugin.activate`.

Outputs (prefix ``<potential>.nnensemble`` unless ``[UQ] nn_ensemble`` names the description file):
``<prefix>.member<m>.pt`` (FitSNAP's LAMMPS-ready ``TorchWrapper`` format, as PYTORCH writes),
``<prefix>.member<m>.loss.dat`` (epoch, train loss, out-of-bag loss), ``<prefix>.json`` (the ensemble
description: members, seeds, files, configurations each member trained on, SNAP and network
settings) and ``<prefix>.predictions.npz`` (truth, mean, std and each member's prediction of every
energy (eV/atom) and force component (eV/A) row, with groups and the testing flag).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fitsnap_uq import progress
from fitsnap_uq.errors import InputError
from fitsnap_uq.io import atomic_path, atomic_write
from fitsnap_uq.linear.rows import recalibration_map

RESAMPLING = ("bootstrap", "fraction", "none")
ACTIVATIONS: dict[str, type[torch.nn.Module]] = {
    "softplus": torch.nn.Softplus, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid, "relu": torch.nn.ReLU}
"""``[UQ] nn_activation`` names and their torch modules (softplus is FitSNAP's own)."""


# ----------------------------------------------------------------------------- pure numpy/torch part
@dataclass
class MemberPlan:
    """What one member trains on.

    Attributes:
        index: member number m (0-based).
        seed: torch seed of the member (initialization and batch order).
        train: (n_m,) indices into the list of all configurations (repeats for bootstrap draws).
        validation: (v_m,) training configurations the member did not draw (out of bag).
    """

    index: int
    seed: int
    train: np.ndarray
    validation: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))


def plan_members(train_configs: np.ndarray, members: int, resample: str = "bootstrap",
                 fraction: float = 0.8, seed: int = 0) -> list[MemberPlan]:
    """Seeds and resampled configuration sets of ``members`` members.

    Args:
        train_configs: (n,) indices of the training configurations (testing ones excluded).
        members: number of members K (>= 1).
        resample: ``bootstrap``, ``fraction`` or ``none`` (see the module docstring).
        fraction: share of the configurations each member draws with ``fraction`` (0 < f <= 1).
        seed: seed of everything random here.

    Returns:
        K plans; the same arguments give the same plans.
    """
    if members < 1:
        raise ValueError(f"need at least 1 member, got {members}")
    if resample not in RESAMPLING:
        raise ValueError(f"resample must be one of {RESAMPLING}, not {resample!r}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    train_configs = np.asarray(train_configs, dtype=int)
    n = train_configs.size
    if n == 0:
        raise ValueError("no training configurations")
    plans = []
    for m, child in enumerate(np.random.SeedSequence(seed).spawn(members)):
        rng = np.random.default_rng(child)
        member_seed = int(child.generate_state(1, dtype=np.uint32)[0])
        if resample == "bootstrap":
            drawn = np.sort(rng.integers(0, n, size=n))
        elif resample == "fraction":
            drawn = np.sort(rng.choice(n, size=max(1, int(round(fraction * n))), replace=False))
        else:
            drawn = np.arange(n)
        out_of_bag = np.setdiff1d(np.arange(n), drawn)
        plans.append(MemberPlan(m, member_seed, train_configs[drawn], train_configs[out_of_bag]))
    return plans


def members_of_rank(members: int, rank: int, size: int) -> list[int]:
    """Members trained by ``rank`` of ``size`` ranks: ``m % size == rank``."""
    return [m for m in range(members) if m % size == rank]


def ensemble_moments(predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (population, ddof 0) over members of (K, n) predictions: (n,), (n,)."""
    predictions = np.asarray(predictions, dtype=float)
    return predictions.mean(axis=0), predictions.std(axis=0)


def floored_sigma(std: np.ndarray, row_types: np.ndarray, reference: np.ndarray,
                  floor: float = 1e-3) -> np.ndarray:
    """The ensemble std with a floor of ``floor`` x its RMS over the ``reference`` rows of each quantity.

    Members agree exactly where symmetry fixes the answer (zero forces in a perfect lattice); a zero or
    round-off sigma there makes the Gaussian NLL and z-scores of a calibration table meaningless.

    Args:
        std: (n,) members' std (eV/atom or eV/A).
        row_types: (n,) quantity of each row.
        reference: (n,) bool, rows that set the scale (e.g. training rows of nonzero weight).
    """
    std = np.asarray(std, dtype=float)
    out = std.copy()
    row_types = np.asarray(row_types).astype(str)
    for q in set(row_types.tolist()):
        sel = row_types == q
        ref = sel & np.asarray(reference, dtype=bool)
        scale = float(np.sqrt(np.mean(std[ref if ref.any() else sel] ** 2)))
        out[sel] = np.maximum(std[sel], floor * scale if scale > 0 else np.finfo(float).tiny)
    return out


def out_of_bag_ratios(truth: np.ndarray, predictions: np.ndarray, sigma: np.ndarray,
                      in_bag: np.ndarray) -> np.ndarray:
    """|truth - out-of-bag mean| / ensemble sigma per row, for the quantile recalibration.

    Args:
        truth: (n,) truths of the rows.
        predictions: (K, n) each member's prediction.
        sigma: (n,) spread of the whole ensemble (the sigma that is shown and thresholded).
        in_bag: (K, n) bool, whether member k trained on the row's configuration.

    Returns:
        (n,) ratios; NaN where no member left the row out or sigma is 0.
    """
    out = ~np.asarray(in_bag, dtype=bool)
    count = out.sum(axis=0)
    oob_mean = np.where(count > 0, (predictions * out).sum(axis=0) / np.maximum(count, 1), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.abs(truth - oob_mean) / sigma
    ratio[(count == 0) | ~(sigma > 0)] = np.nan
    return ratio


def set_activation(networks: Sequence[torch.nn.Sequential], name: str) -> None:
    """Replace, in place, the activations of FitSNAP's networks (``torch.nn.Sequential`` of ``Linear``
    and ``Softplus`` layers, as FitSNAP's ``create_torch_network`` builds them) by ``name``'s
    (:data:`ACTIVATIONS`). The layers, their sizes and FitSNAP's training are unchanged."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {name!r}")
    for net in networks:
        for i, layer in enumerate(net):
            if isinstance(layer, tuple(ACTIVATIONS.values())):
                net[i] = ACTIVATIONS[name]()


class NNEnsemble:
    """Members of a written NNENSEMBLE, evaluated on per-atom descriptors (the MD hook uses this).

    Args:
        description: path of the ensemble description (``<prefix>.json``).

    Attributes:
        info: the description (dict); ``snap`` its SNAP parameters, ``elements`` its element order.
        members: the K loaded FitSNAP ``TorchWrapper`` modules (float64, eval mode).
    """

    def __init__(self, description: str | Path) -> None:
        path = Path(description)
        self.path = path
        if not path.is_file():
            raise InputError("no such NNENSEMBLE description (<potential>.nnensemble.json)", file=str(path))
        try:
            self.info = json.loads(path.read_text())
            self.elements: list[str] = list(self.info["elements"])
            self.snap: dict[str, Any] = dict(self.info["snap"])
            members = list(self.info["members"])
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"not an NNENSEMBLE description ({type(exc).__name__}: {exc})",
                             file=str(path)) from None
        self.members = []
        if members:
            from fitsnap_uq import compat

            compat.apply()  # unpickling imports FitSNAP's network classes (and LAMMPS: libmpi first)
        for member in members:
            file = path.parent / str(member.get("file"))
            try:
                model = torch.load(file, weights_only=False, map_location="cpu")
            except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
                raise InputError(f"member {member.get('member')}: cannot load {file}: {exc}",
                                 file=str(path)) from None
            self.members.append(model.double().eval())

    def __len__(self) -> int:
        return len(self.members)

    def per_atom_energies(self, descriptors: np.ndarray, elements: np.ndarray) -> np.ndarray:
        """(K, n) per-atom energies (eV) of every member.

        Args:
            descriptors: (n, d) per-atom SNAP descriptors (``compute sna/atom`` with the ensemble's SNAP
                parameters; eV-free, dimensionless).
            elements: (n,) element index of each atom (0-based, in :attr:`elements` order).
        """
        x = torch.as_tensor(np.asarray(descriptors, dtype=np.float64))
        el = torch.as_tensor(np.asarray(elements, dtype=np.int64))
        with torch.no_grad():
            out = [m.model(x, el).reshape(-1) for m in self.members]
        return torch.stack(out).numpy() if out else np.zeros((0, x.shape[0]))

    def predict_energy(self, descriptors: np.ndarray, elements: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Per-atom energy mean and std over members, (n,), (n,) in eV."""
        return ensemble_moments(self.per_atom_energies(descriptors, elements))

    def member_betas(self, descriptors: np.ndarray, elements: np.ndarray) -> np.ndarray:
        """(K, n, d) ``beta_i^m = dE_i^m / dB_i`` of every member by torch autograd (eV per descriptor
        unit), on (n, d) per-atom descriptors and (n,) element indices."""
        x = torch.as_tensor(np.asarray(descriptors, dtype=np.float64))
        el = torch.as_tensor(np.asarray(elements, dtype=np.int64))
        out = []
        for m in self.members:
            xm = x.clone().requires_grad_(True)
            with torch.enable_grad():
                e = m.model(xm, el).reshape(-1)
                out.append(torch.autograd.grad(e.sum(), xm)[0])
        return torch.stack(out).numpy() if out else np.zeros((0,) + tuple(x.shape))

    def member_forces(self, descriptors: np.ndarray, elements: np.ndarray, dgrad: np.ndarray,
                      dgrad_index: np.ndarray, natoms: int | None = None) -> np.ndarray:
        """(K, N, 3) every member's force on every atom (eV/A), ``F_j^m = sum_i beta_i^m . G_ij``, from
        per-pair descriptor derivatives in the layout of LAMMPS' ``compute snap ... dgradflag 1`` (which
        FitSNAP trains on).

        Args:
            descriptors: (n, d) per-atom descriptors B_i (the ``bik`` rows of ``compute snap``).
            elements: (n,) element index of each atom.
            dgrad: (r, d) rows ``G_ij = -dB_i/dr_j`` (the component in ``dgrad_index[:, 2]``; 1/A).
            dgrad_index: (r, 3) integer rows ``[i, j, component]`` (0-based atom indices).
            natoms: N, the number of atoms j (default n).
        """
        betas = self.member_betas(descriptors, elements)
        idx = np.asarray(dgrad_index, dtype=np.int64)
        dgrad = np.asarray(dgrad, dtype=float)
        n = int(natoms if natoms is not None else np.shape(descriptors)[0])
        out = np.zeros((len(self.members), n, 3))
        for m, beta in enumerate(betas):
            contrib = np.einsum("rd,rd->r", dgrad, beta[idx[:, 0]])
            np.add.at(out[m], (idx[:, 1], idx[:, 2]), contrib)
        return out


# ----------------------------------------------------------------------------- FitSNAP adapter part


class _LocalPT:
    """FitSNAP's ParallelTools seen by one member: its rank-zero-only decorators run on every rank (each
    rank trains its own members) and its prints are silent (the member's log file gets the epochs)."""

    def __init__(self, pt: Any) -> None:
        self._pt = pt

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pt, name)

    def sub_rank_zero(self, method: Any) -> Any:
        return method

    rank_zero = sub_rank_zero

    def single_print(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass
class MemberResult:
    """A trained member's predictions and record (sent to rank 0).

    Attributes:
        energy: (n_configs,) predicted energy per atom (eV/atom) of every configuration.
        forces: (3 N_atoms,) predicted force components (eV/A), FitSNAP's order (x, y, z per atom).
        info: JSON-ready record (seed, files, losses, epochs, time).
    """

    index: int
    energy: np.ndarray
    forces: np.ndarray | None
    info: dict[str, Any]


def build_configs(solver_cls: Any, pt: Any, config: Any) -> list[Any]:
    """FitSNAP's ``Configuration`` list (views of the shared arrays), as its PYTORCH solver builds it."""
    template = solver_cls("PYTORCH", _LocalPT(pt), config)
    template.create_datasets(pt=_LocalPT(pt))
    return template.configs


def predict_configs(model: torch.nn.Module, configs: Sequence[Any], force: bool
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """Energy per atom (n_configs,) and force components (3 N,) of a ``FitTorch`` model, in float64.

    Same forward call as FitSNAP's ``PYTORCH.evaluate_configs`` (no re-standardization).
    """
    model = copy.deepcopy(model).to(torch.float64).eval()
    dtype = torch.float64
    energies, forces = [], []
    for c in configs:
        x = torch.tensor(c.descriptors, dtype=dtype).requires_grad_(True)
        types = torch.tensor(c.types).long()
        natoms = torch.tensor(c.natoms)
        indices = torch.repeat_interleave(torch.arange(1).long(), natoms)
        if force:
            dgrad = torch.tensor(c.dgrad, dtype=dtype)
            dbdrindx = torch.tensor(c.dgrad_indices).long()
            unique_i, unique_j = dbdrindx[:, 0], dbdrindx[:, 1]
        else:
            dgrad = dbdrindx = unique_i = unique_j = None
        e, f = model(x, dgrad, indices, natoms, types, dbdrindx, unique_j, unique_i, "cpu", dtype)
        energies.append(float(e.detach().reshape(-1)[0]) / int(c.natoms))
        if force:
            forces.append(f.detach().numpy().astype(float))
    return np.array(energies), (np.concatenate(forces) if force else None)


def _atomic_copy(src: Path, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


def train_member(solver_cls: Any, pt: Any, config: Any, configs: Sequence[Any], plan: MemberPlan,
                 prefix: Path, early_stopping: bool, activation: str = "softplus") -> MemberResult:
    """Train one member with FitSNAP's PYTORCH solver (its hidden layers' activation ``activation``,
    see :func:`set_activation`); write its ``.pt`` and loss files atomically.

    Runs in a scratch folder (FitSNAP writes ``loss_vs_epochs.dat`` and its checkpoint into the working
    folder), so members on different ranks never share a file.
    """
    section = config.sections["PYTORCH"]
    saved = (section.output_file, section.save_state_output)
    old_cwd = os.getcwd()
    member_configs = []
    for i in plan.train:
        c = copy.copy(configs[i])
        c.testing_bool = False
        member_configs.append(c)
    for i in plan.validation:
        c = copy.copy(configs[i])
        c.testing_bool = True
        member_configs.append(c)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"nnensemble-m{plan.index}-") as tmp:
        try:
            os.chdir(tmp)
            section.output_file = str(Path(tmp) / "last.pt")
            section.save_state_output = str(Path(tmp) / "best_state.pt")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(plan.seed)
                member = solver_cls("PYTORCH", _LocalPT(pt), config)
                set_activation(member.networks, activation)
                with contextlib.redirect_stdout(io.StringIO()):
                    member.perform_fit(configs=member_configs, pt=_LocalPT(pt),
                                       outfile=str(Path(tmp) / "epochs.log"), verbose=False)
            best = getattr(member, "model_best", None)
            chosen = best if (early_stopping and best is not None) else member.model
            chosen.write_lammps_torch(str(Path(tmp) / "member.pt"))
            model_file = Path(f"{prefix}.member{plan.index}.pt")
            loss_file = Path(f"{prefix}.member{plan.index}.loss.dat")
            _atomic_copy(Path(tmp) / "member.pt", model_file)
            losses = np.atleast_2d(np.loadtxt(Path(tmp) / "loss_vs_epochs.dat"))
            _atomic_copy(Path(tmp) / "loss_vs_epochs.dat", loss_file)
        finally:
            os.chdir(old_cwd)
            section.output_file, section.save_state_output = saved
    elapsed = time.perf_counter() - start
    energy, forces = predict_configs(chosen, configs, bool(pt.fitsnap_dict["force"]))
    val = losses[:, 2]
    best_epoch = int(np.nanargmin(val)) if np.isfinite(val).any() else None
    used_epoch = best_epoch if (early_stopping and best is not None) else int(losses[-1, 0])
    info = {
        "member": plan.index, "seed": plan.seed, "file": model_file.name, "loss_file": loss_file.name,
        "train_configs": [str(configs[i].filename) for i in plan.train],
        "validation_configs": [str(configs[i].filename) for i in plan.validation],
        "epochs": int(losses.shape[0]), "epoch_used": used_epoch,
        "train_loss_last": float(losses[-1, 1]),
        "validation_loss_used": (float(val[used_epoch]) if used_epoch is not None
                                 and np.isfinite(val[used_epoch]) else None),
        "train_seconds": elapsed,
    }
    return MemberResult(plan.index, energy, forces, info)


def _comm_of(pt: Any) -> Any:
    if getattr(pt, "stubs", 1) == 0 and getattr(pt, "_comm", None) is not None:
        return pt._comm
    return None


def train_members(pt: Any, config: Any, plans: Sequence[MemberPlan], prefix: Path,
                  early_stopping: bool, activation: str = "softplus"
                  ) -> tuple[list[Any], list[MemberResult] | None, int]:
    """Train the members, ``m % size`` on each rank; collective under MPI (``activation``: see
    :func:`train_member`).

    Returns:
        FitSNAP's configuration list, every member's result on rank 0 (None elsewhere), and the number
        of ranks that trained.

    Raises:
        RuntimeError: a member failed on some rank (re-raised on every rank, so none waits forever).
    """
    from fitsnap3lib.solvers.pytorch import PYTORCH

    comm = _comm_of(pt)
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm is not None else (0, 1)
    configs = build_configs(PYTORCH, pt, config)
    mine: list[MemberResult] = []
    error = None
    own = members_of_rank(len(plans), rank, size)
    progress.stage(f"fitsnap-uq NNENSEMBLE: training {len(plans)} members"
                   + (f" on {size} ranks (rank 0 trains {len(own)})" if size > 1 else ""), rank == 0)
    try:
        for m in progress.bar(own, desc="NNENSEMBLE: members", unit="members", show=rank == 0):
            result = train_member(PYTORCH, pt, config, configs, plans[m], prefix, early_stopping,
                                  activation)
            result.info["rank"] = rank
            mine.append(result)
    except Exception as exc:  # noqa: BLE001  (re-raised on every rank below)
        error = f"rank {rank}: {type(exc).__name__}: {exc}"
    if comm is None:
        if error:
            raise RuntimeError(f"NNENSEMBLE member training failed on {error}")
        return configs, mine, 1
    errors = [e for e in comm.allgather(error) if e]
    if errors:
        raise RuntimeError("NNENSEMBLE member training failed on " + "; ".join(errors))
    parts = comm.gather(mine, root=0)
    if rank != 0:
        return configs, None, size
    results = sorted((r for part in parts for r in part), key=lambda r: r.index)
    return configs, results, size


@dataclass
class EnsembleRows:
    """Energy and force rows of every configuration with the ensemble's predictions.

    Attributes (n rows: one energy row per configuration, then none; 3 N_c force rows per configuration,
    in FitSNAP's configuration order, each configuration's energy row first):
        truth, mean, std: (n,) eV/atom for energy rows, eV/A for force rows.
        members: (K, n) each member's prediction.
        in_bag: (K, n) bool, member k trained on the row's configuration.
        groups, row_types, configs: (n,) FitSNAP group, ``Energy``/``Force``, configuration file.
        testing, keep: (n,) bool, testing configuration; nonzero FitSNAP weight.
        config_index: (n,) index of the row's configuration.
    """

    truth: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    members: np.ndarray
    in_bag: np.ndarray
    groups: np.ndarray
    row_types: np.ndarray
    configs: np.ndarray
    testing: np.ndarray
    keep: np.ndarray
    config_index: np.ndarray


def ensemble_rows(configs: Sequence[Any], results: Sequence[MemberResult], plans: Sequence[MemberPlan]
                  ) -> EnsembleRows:
    """Assemble the rows of all configurations from the members' predictions (rank 0)."""
    k = len(results)
    offsets = np.cumsum([0] + [3 * int(c.natoms) for c in configs])
    has_force = results[0].forces is not None
    truth, preds, groups, types, files, testing, keep, index = [], [], [], [], [], [], [], []
    for i, c in enumerate(configs):
        w = np.atleast_1d(np.asarray(c.weights, dtype=float))
        truth.append([float(c.energy)])
        preds.append(np.array([[r.energy[i]] for r in results]))
        n_rows = 1
        types.append(["Energy"])
        keep.append([w[0] != 0])
        if has_force:
            f = np.asarray(c.forces, dtype=float)
            truth.append(f)
            preds.append(np.stack([r.forces[offsets[i]:offsets[i + 1]] for r in results]))
            types.append(["Force"] * f.size)
            keep.append([w[-1] != 0] * f.size)
            n_rows += f.size
        groups.append([str(c.group)] * n_rows)
        files.append([str(c.filename)] * n_rows)
        testing.append([bool(c.testing_bool)] * n_rows)
        index.append([i] * n_rows)
    members = np.concatenate(preds, axis=1).reshape(k, -1)
    config_index = np.concatenate(index).astype(int)
    bag = np.zeros((k, len(configs)), dtype=bool)
    for r in results:
        bag[r.index, plans[r.index].train] = True
    mean, std = ensemble_moments(members)
    return EnsembleRows(truth=np.concatenate(truth), mean=mean, std=std, members=members,
                        in_bag=bag[:, config_index], groups=np.concatenate(groups),
                        row_types=np.concatenate(types), configs=np.concatenate(files),
                        testing=np.concatenate(testing), keep=np.concatenate(keep).astype(bool),
                        config_index=config_index)


def ensemble_sigma(rows: EnsembleRows, recalibrate: bool = True
                   ) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
    """The ensemble's raw sigma of every row (:func:`floored_sigma` over the training rows) and its
    quantile recalibration on the out-of-bag ratios of the training rows
    (:func:`~fitsnap_uq.linear.rows.recalibration_map`; None without ``recalibrate`` or with fewer than
    10 ratios of every quantity). Returns (n,) sigma (eV/atom, eV/A) and the map."""
    testing, keep = np.asarray(rows.testing, bool), np.asarray(rows.keep, bool)
    row_types = np.asarray(rows.row_types).astype(str)
    sigma = floored_sigma(rows.std, row_types, ~testing & keep)
    if not recalibrate:
        return sigma, None
    train = ~testing & keep
    ratios = out_of_bag_ratios(rows.truth[train], rows.members[:, train], sigma[train],
                               rows.in_bag[:, train])
    recal = recalibration_map({q: ratios[row_types[train] == q] for q in sorted(set(row_types.tolist()))})
    return sigma, (recal if len(recal) > 1 else None)


def load_predictions(path: str | Path) -> EnsembleRows:
    """The rows :func:`write_predictions` saved (``<potential>.nnensemble.predictions.npz``)."""
    with np.load(path) as d:
        return EnsembleRows(**{name: d[name] for name in EnsembleRows.__dataclass_fields__})


def write_predictions(path: Path, rows: EnsembleRows) -> Path:
    """Save the rows (``np.savez``, atomically) for later analysis."""
    def write(fh: Any) -> None:
        np.savez(fh, truth=rows.truth, mean=rows.mean, std=rows.std, members=rows.members,
                 in_bag=rows.in_bag, groups=rows.groups.astype(str), row_types=rows.row_types.astype(str),
                 configs=rows.configs.astype(str), testing=rows.testing, keep=rows.keep,
                 config_index=rows.config_index)

    atomic_write(path, write)
    return Path(path)
