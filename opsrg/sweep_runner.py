"""``python -m opsrg.sweep_runner drive SWEEP_MANIFEST``: the tmux sweep driver (a tracked task).

A stable entry point: the scripts opsrg writes into outputs folders and job scripts call this
name, and they outlive any one layout of the package.
"""

import sys

from opsrg.sweeps.tmux import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
