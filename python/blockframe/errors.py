"""Errors that carry their message and the exit code the CLI turns them into.

Everything below the edges (CLI, mount, HTTP) raises these; the edges translate them into
exit codes, errno values or HTTP statuses.
"""

from __future__ import annotations


class BlockFrameError(Exception):
    """Base class: a one-line message for the user and an exit code."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(BlockFrameError):
    """The command was used wrongly (bad flag, bad value, bad input file)."""

    exit_code = 2


class ConfigError(UsageError):
    """The configuration file is malformed or holds an invalid value."""


class SourceError(UsageError):
    """A file given to commit cannot be archived (missing, empty, special, unreadable)."""


class NotFoundError(UsageError):
    """No object by that name in the archive."""


class ArchiveError(BlockFrameError):
    """The archive directory itself cannot be used."""


class ConflictError(BlockFrameError):
    """The operation would overwrite something the user did not ask to replace."""


class ManifestError(BlockFrameError):
    """A manifest is damaged, inconsistent or of an unknown format."""


class IntegrityError(BlockFrameError):
    """Data is damaged beyond what parity can repair; no unverified byte was returned."""


class OutputError(BlockFrameError):
    """The restore destination cannot be written."""


class IsDirectoryError(UsageError):
    """A file operation was asked of a directory of the view."""


class NotDirectoryError(UsageError):
    """A directory operation was asked of a file of the view."""


class ReadOnlyError(UsageError):
    """Something tried to change the read-only view."""


class NotALinkError(UsageError):
    """readlink was asked of something that is not a symbolic link."""
