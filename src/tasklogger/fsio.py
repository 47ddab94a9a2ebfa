"""Low-level file helpers for the store: no-follow opens relative to directory fds, full writes, parallel fsync."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
_TAIL_CHUNK = 64 * 1024


def end_of_whole_lines(fd: int, end: int) -> int:
    """Offset just past the last newline before ``end`` (0 if none): where the line that ``end`` is in starts, and
    the size of a file's part made of whole lines when ``end`` is its size."""
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        pos = os.pread(fd, end - start, start).rfind(b"\n")
        if pos >= 0:
            return start + pos + 1
        end = start
    return 0


def exists_at(dir_fd: int, name: str) -> bool:
    """Whether ``name`` exists in ``dir_fd`` (a symlink counts, and is not followed)."""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_file(dir_fd: int, name: str) -> bytes | None:
    """The whole content of ``name`` in ``dir_fd``; None if it does not exist or is a symlink (never followed)."""
    fd = open_file(dir_fd, name)
    if fd is None:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def open_file(dir_fd: int, name: str) -> int | None:
    """A read-only fd for ``name`` in ``dir_fd``; None if it does not exist or is a symlink (never followed)."""
    try:
        return os.open(name, READ_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise


def open_dir(name: str, *, dir_fd: int | None = None, create: bool = False) -> tuple[int, bool]:
    """Open directory ``name`` without following a symlink; create it first if asked.

    Returns (fd, created). Raises NotADirectoryError or OSError(ELOOP) for a symlink or a file in the way.
    """
    created = False
    if create:
        try:
            os.mkdir(name, 0o755, dir_fd=dir_fd)
            created = True
        except FileExistsError:
            pass
    return os.open(name, DIR_FLAGS, dir_fd=dir_fd), created


#: Filesystems whose syncfs(2) writes back every dirty inode and commits the journal, so that one call makes all
#: of a batch's data, new files, renames and directory entries durable. Elsewhere (FUSE, NFS, ...) syncfs may
#: return without asking the backing store to persist anything, so each file is fsynced instead.
SYNCFS_TYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "tmpfs"})

_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(fd: int) -> None:
    """syncfs(2) on the filesystem holding ``fd``; raises OSError with the errno of any writeback failure that
    happened on that filesystem since the last call through this descriptor (Linux 5.8+ reports them)."""
    if _libc.syncfs(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def filesystem_type(path: Path) -> str:
    """The type of the filesystem ``path`` is on (``ext4``, ``fuse.x``, ...), from /proc/self/mountinfo."""
    target = os.path.realpath(path)
    best, best_type = "", "unknown"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                left, _, right = line.partition(" - ")
                mount_point = left.split()[4].replace("\\040", " ")
                inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, best_type = mount_point, right.split()[0]
    except (OSError, IndexError):
        pass
    return best_type


def write_file(dir_fd: int, name: str, flags: int, data: bytes) -> None:
    """Open ``name`` with ``flags``, write ``data``, close; durability comes from a later syncfs."""
    fd = os.open(name, flags, 0o644, dir_fd=dir_fd)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def write_synced(dir_fd: int, name: str, flags: int, data: bytes) -> None:
    """Open ``name`` with ``flags``, write ``data``, fsync, close: one file's whole share of a group commit.

    A failed fsync is never retried on the same descriptor (the kernel may have dropped the dirty pages): the
    caller undoes the batch and writes it again from the stream's redelivery.
    """
    fd = os.open(name, flags, 0o644, dir_fd=dir_fd)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def append_kept_open(dir_fd: int, name: str, data: bytes, opened: list[int]) -> None:
    """Append ``data`` to ``name`` (created if missing) and leave its descriptor in ``opened``, for the caller to
    fsync together with others in one round and then close."""
    fd = os.open(name, APPEND_FLAGS, 0o644, dir_fd=dir_fd)
    opened.append(fd)
    write_all(fd, data)


def truncate_synced(dir_fd: int, name: str, size: int) -> None:
    """Cut ``name`` back to ``size`` bytes and fsync it (never through a symlink)."""
    fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


class Syncer:
    """Runs a batch's file work on a small thread pool: creating a file and fsync release the GIL, so the
    kernel's share of many files overlaps across cores and the disk queue instead of adding up."""

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fsync") if threads > 1 else None

    def fsync_all(self, fds: Iterable[int]) -> None:
        """fsync every fd; raises the first OSError after all have been tried."""
        self.run_all([partial(os.fsync, fd) for fd in fds])

    def run_all(self, jobs: list[Callable[[], None]]) -> None:
        """Run every job, in parallel when there are several; raises the first OSError after all have run."""
        if self._pool is None or len(jobs) <= 1:
            first: OSError | None = None
            for job in jobs:
                try:
                    job()
                except OSError as exc:
                    first = first or exc
            if first is not None:
                raise first
            return
        errors = [exc for exc in self._pool.map(_capture, jobs) if exc is not None]
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Stop the pool's threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def _capture(job: Callable[[], None]) -> OSError | None:
    try:
        job()
    except OSError as exc:
        return exc
    return None
