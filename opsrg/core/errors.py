"""One exception tree for the whole product.

Every error a user can cause or meet derives from :class:`OpsError` and carries its exit code,
so ``tasks.py`` maps failures to exit statuses in one place and messages carry their evidence.
"""

from __future__ import annotations


class OpsError(Exception):
    """Root of opsrg's errors; ``exit_code`` is what the command line exits with."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  -> {self.hint}"


class ConfigError(OpsError):
    """A bad setting or input file; names the file, line and key."""

    exit_code = 2


class InputError(OpsError):
    """A bad argument or input file (CSV, NPZ, id)."""

    exit_code = 2


class IllegalStateError(OpsError):
    """A command called in a workflow state where it is not allowed."""

    exit_code = 2


class TaskError(OpsError):
    """A tracked task could not be started, found or controlled."""

    exit_code = 1


class HostError(OpsError):
    """A host operation failed (command, copy, connection)."""

    exit_code = 1


class UnreachableError(HostError):
    """The host did not answer within the retry budget; not a task failure."""

    exit_code = 3


class BackendUnavailableError(OpsError):
    """A compute backend was requested explicitly but cannot run here."""

    exit_code = 2
