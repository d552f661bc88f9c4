"""``python -m autoprune ...`` runs the ``autoprune`` command (where no console script is on
the PATH: a ``PYTHONPATH`` checkout, a carried environment)."""

import sys

from autoprune.cli import main

if __name__ == "__main__":
    sys.exit(main())
