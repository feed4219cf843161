"""One exception tree for the whole product.

Every error a user can cause or meet derives from :class:`OpsError` and carries its exit code,
so ``tasks.py`` maps failures to exit statuses in one place and messages carry their evidence.
"""

from __future__ import annotations

from typing import Protocol


class CommandResult(Protocol):
    """What a host's ``run`` returns (opsrg.hosts.base.RunResult): kept on the errors it causes."""

    command: str
    exited: int
    stdout: str
    stderr: str


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


class CommandError(OpsError):
    """A failure that a command caused: ``result`` is the command's (what ran, exit status, output)."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, result: CommandResult | None = None) -> None:
        super().__init__(message, hint=hint)
        self.result = result


class HostError(CommandError):
    """A host operation failed (command, copy, connection); ``result`` is the command's, when one ran."""


class UnreachableError(HostError):
    """The host did not answer within the retry budget; not a task failure."""

    exit_code = 3


class LinkDropped(UnreachableError):
    """The link dropped while a command ran: no exit status came back. The command may have
    run in part or in full; a caller that knows it is safe to repeat may simply try again."""


class SlurmError(CommandError):
    """A Slurm command failed; carries the command and the scheduler's message (and its result)."""


class StillRunning(OpsError):
    """A wait with a time limit ended with the work unfinished (exit 124, as timeout(1))."""

    exit_code = 124


class BackendUnavailableError(OpsError):
    """A compute backend was requested explicitly but cannot run here."""

    exit_code = 2
