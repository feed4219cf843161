"""``python -m opsrg.cli``: the ``opsrg`` command, for a venv whose scripts are not on PATH."""

from opsrg.cli import main

main()
