"""LAMMPS side of fitsnap-uq: uncertainty during MD with ``pair_style snap`` from a Posterior.

The hook itself (per-atom and global uncertainty, flagging, posterior ensembles of MD) is built in
the lammps_hooks issue; this package holds it. It reads :class:`fitsnap_uq.Posterior` files.
"""
