"""``python -m opsrg.provenance begin|end ...``: open and close a run's meta.json.

A stable entry point: the scripts opsrg writes into outputs folders and job scripts call this
name, and they outlive any one layout of the package.
"""

import sys

from opsrg.sweeps.provenance import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
