"""The names opsrg gives to what it keeps directly under an outputs folder.

Each is spelled here once. A run or a task named like one of them would write into opsrg's own
files, so they are reserved, and so is every name starting with ``_``: a later control folder can
never collide with a run.
"""

from __future__ import annotations

CONTROL = "_control"        # workflow state and its history, pod manifests, sync stop files
MANIFESTS = "_manifests"    # sweep manifests, CSV copies, LATEST, job scripts
TASKS = "_tasks"            # one folder per tracked task
REPLACED = "_replaced"      # run folders set aside by sweep-start --force
DOCS = "docs"               # the Slurm job list (docs/slurm_job_list.md)

# what opsrg writes into a run's folder beside the engine's own files (opsrg.rg.run.RunPaths)
RUN_MANIFEST = "run_manifest.json"  # the run's state across attempts (opsrg.sweeps.runs)
META = "meta.json"                  # its provenance: identity, git state, packages (opsrg.sweeps.provenance)
# In a checkout that `push` sent a working tree into: when, from where, at which commit.
PUSHED = ".opsrg-pushed.json"

# Under CONTROL on a pod that is not the client's machine: the project folder of the pod's own
# opsrg, which drives the sweeps there (its workflow.env, the CSVs and run configs sent to it).
POD_PROJECT = "project"

RESERVED_NAMES = frozenset({CONTROL, MANIFESTS, TASKS, REPLACED, DOCS})
RESERVED_PREFIX = "_"


def reserved(name: str) -> str | None:
    """Why ``name`` cannot name a run or a task folder, or None when it can."""
    if name.casefold() in RESERVED_NAMES:
        return f"{name!r} is reserved: opsrg keeps its own files under <outputs>/{name.casefold()}"
    if name.startswith(RESERVED_PREFIX):
        return f"{name!r} is reserved: names starting with {RESERVED_PREFIX!r} are opsrg's own folders"
    return None
