"""The archive: objects by name over a storage backend (one directory, or volumes and
buckets), verified readers over them, commit and restore; and the remote archive that
``blockframe serve`` shares (:mod:`blockframe.archive.remote`)."""

from blockframe.archive.archive import Archive, Backend, open_archive_at, open_location
from blockframe.archive.entry import CommitResult, Entry, Index, Problem, RestoreReport
from blockframe.archive.reader import ArchivedObject

__all__ = [
    "Archive",
    "ArchivedObject",
    "Backend",
    "CommitResult",
    "Entry",
    "Index",
    "Problem",
    "RestoreReport",
    "open_archive_at",
    "open_location",
]
