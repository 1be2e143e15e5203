"""``python -m fitsnap_uq`` is ``fitsnap-uq``."""

from fitsnap_uq.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
