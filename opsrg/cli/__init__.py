"""The ``opsrg`` command: every task of the project's ``inv --list``, from any folder at or
below one that holds a ``workflow.env`` (or with ``OPSRG_ENV_FILE`` naming one)."""

from __future__ import annotations


def main() -> None:
    from invoke import Program

    from opsrg import __version__
    from opsrg.cli.tasks import ns

    Program(namespace=ns, name="opsrg", binary="opsrg", version=__version__).run()
