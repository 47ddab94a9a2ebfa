"""A passthrough FUSE filesystem that can fail fsync (and writes) with EIO on demand, for the real-EIO tests.

    python tests/faultfs.py BACKING MOUNTPOINT FLAGFILE

While FLAGFILE exists, every fsync (of files and directories) and every write fails with EIO; otherwise every
operation passes through to BACKING. Runs in the foreground until unmounted.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

import mfusepy as fuse  # type: ignore[import-not-found]


class FaultFS(fuse.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, root: str, flag: str) -> None:
        self.root = root
        self.flag = flag

    def _path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def _failing(self) -> bool:
        return os.path.exists(self.flag)

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._path(path), amode):
            raise fuse.FuseOSError(errno.EACCES)
        return 0

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.lstat(self._path(path))
        keys = ("st_atime_ns", "st_ctime_ns", "st_gid", "st_mode", "st_mtime_ns", "st_nlink", "st_size", "st_uid")
        out = {key: getattr(st, key) for key in keys}
        out.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        return out

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._path(path))]

    def readlink(self, path: str) -> str:
        return os.readlink(self._path(path))

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(self._path(path), mode)

    def rmdir(self, path: str) -> None:
        os.rmdir(self._path(path))

    def unlink(self, path: str) -> None:
        os.unlink(self._path(path))

    def symlink(self, target: str, source: str) -> None:
        os.symlink(source, self._path(target))

    def rename(self, old: str, new: str) -> None:
        os.rename(self._path(old), self._path(new))

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._path(path), mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.chown(self._path(path), uid, gid)

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> None:
        os.utime(self._path(path), ns=times) if times else os.utime(self._path(path))

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self._path(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_flag",
                "f_frsize", "f_namemax")  # fmt: skip
        return {key: getattr(st, key) for key in keys}

    def open(self, path: str, flags: int) -> int:
        return os.open(self._path(path), flags)

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        return os.open(self._path(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        if self._failing():
            raise fuse.FuseOSError(errno.EIO)
        return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        os.truncate(self._path(path), length)

    def flush(self, path: str, fh: int) -> None:
        pass

    def release(self, path: str, fh: int) -> None:
        os.close(fh)

    def fsync(self, path: str, datasync: bool, fh: int) -> None:
        if self._failing():
            raise fuse.FuseOSError(errno.EIO)
        os.fsync(fh)

    def fsyncdir(self, path: str, datasync: bool, fh: int) -> None:
        if self._failing():
            raise fuse.FuseOSError(errno.EIO)


if __name__ == "__main__":
    backing, mountpoint, flag = sys.argv[1:4]
    fuse.FUSE(FaultFS(backing, flag), mountpoint, foreground=True, nothreads=True, direct_io=True)
