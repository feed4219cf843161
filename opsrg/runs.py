"""``python -m opsrg.runs shell-summary|command-summary RUN_DIR RC``: the summary.json of a shell or command row.

A stable entry point: the scripts opsrg writes into outputs folders and job scripts call this
name, and they outlive any one layout of the package.
"""

import sys

from opsrg.sweeps.runs import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
