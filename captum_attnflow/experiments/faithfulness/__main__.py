"""``python -m captum_attnflow.experiments.faithfulness [--quick] [--tasks ...] [--seeds ...]``."""

import sys

from captum_attnflow.experiments.faithfulness.cli import main

if __name__ == "__main__":
    sys.exit(main())
