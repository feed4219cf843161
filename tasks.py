"""opsrg's tasks for `inv`: the collection that the installed `opsrg` command serves."""

from opsrg.cli.tasks import ns  # noqa: F401
