"""``python -m swan_policy.cli`` (and ``torchrun -m swan_policy.cli``): run ``swan``."""

import sys

from swan_policy.cli import main

if __name__ == "__main__":
    sys.exit(main())
