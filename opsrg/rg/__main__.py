"""``python -m opsrg.rg``."""

import sys

from opsrg.rg.cli import main

if __name__ == "__main__":
    sys.exit(main())
