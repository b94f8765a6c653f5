"""``python -m captum_attnflow.experiments.sva train|evaluate|all [--quick] [--out DIR]``."""

import sys

from captum_attnflow.experiments.sva.cli import main

if __name__ == "__main__":
    sys.exit(main())
