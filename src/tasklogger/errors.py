"""The exception tree; each ``except`` clause elsewhere reads as the policy.

::

    TaskLoggerError
    ├── ConfigError        a setting is invalid or the logs directory is unusable: exit with one line
    ├── AlreadyRunning     another process holds the logs directory's writer lock
    ├── BadEntry           a stream entry that cannot be understood: dead-letter it, move on
    │   └── UnsafeTaskId   a task or webhook id that is not safe as one directory name
    ├── StorageDamage      something in the logs directory is in one task's way (a directory where a file
    │                      belongs, ...): that entry alone is retried, then dead-lettered
    └── Transient          wait it out: do not acknowledge, back off, retry
        ├── RedisDown      Redis does not answer
        └── DiskError      the disk refused a write (ENOSPC, EIO, EACCES, ...)
"""

from __future__ import annotations

import errno


class TaskLoggerError(Exception):
    """Base of every error tasklogger raises on purpose."""


class ConfigError(TaskLoggerError):
    """Raised at start-up when a setting is invalid or the logs directory cannot be used."""


class AlreadyRunning(TaskLoggerError):
    """Raised when a second writer tries to take a logs directory that another process holds."""


class BadEntry(TaskLoggerError):
    """Raised by the decoder for an entry that must go to the dead-letter store.

    ``reason`` is a stable machine-readable code (see docs/records.md); ``detail`` says what was wrong.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class UnsafeTaskId(BadEntry):
    """Raised when a task or webhook id cannot safely become a single directory or file name."""

    def __init__(self, detail: str, *, reason: str = "unsafe_task_id") -> None:
        super().__init__(reason, detail)


class StorageDamage(TaskLoggerError):
    """Raised when an OS error is specific to what lies on disk for one task, not to the disk as a whole."""


class Transient(TaskLoggerError):
    """A failure that must be waited out: nothing is acknowledged while it lasts."""

    kind = "transient"


class RedisDown(Transient):
    """Raised when Redis cannot be reached or stops answering."""

    kind = "redis_unreachable"


class DiskError(Transient):
    """Raised when writing or fsyncing the logs directory fails; ``kind`` names the cause for /health."""

    def __init__(self, message: str, err: int | None) -> None:
        super().__init__(message)
        self.errno = err
        self.kind = _DISK_KINDS.get(err or 0, "disk_error")


_DISK_KINDS = {
    errno.ENOSPC: "disk_full",
    errno.EDQUOT: "disk_full",
    errno.EACCES: "disk_permission_denied",
    errno.EPERM: "disk_permission_denied",
    errno.EROFS: "disk_read_only",
    errno.EIO: "disk_io_error",
}


#: OS errors that concern the whole disk or process and pass by themselves (or by an operator's hand).
TRANSIENT_ERRNOS = frozenset(
    {
        errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO, errno.EAGAIN,
        errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EBUSY, errno.EINTR, errno.ESTALE,
    }
)  # fmt: skip


class WriterProcessFailed(OSError):
    """The writer child process died, or answered out of step: not the disk's fault, but handled like an EIO (the
    batch is cut back and retried after the back-off, by a new child)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


def os_failure(exc: OSError, what: str) -> DiskError | StorageDamage:
    """Classify an OSError from the logs directory: wait out a disk-wide fault, isolate a per-task one."""
    if isinstance(exc, WriterProcessFailed):
        failed = DiskError(f"{what}: {exc.strerror}", exc.errno)
        failed.kind = "writer_process_failed"  # /health and the error counters tell it from a disk's EIO
        return failed
    if exc.errno in TRANSIENT_ERRNOS:
        return DiskError(f"{what}: {exc}", exc.errno)
    return StorageDamage(f"{what}: {exc}")
